//! Local clusters on loopback for tests, benchmarks and the demo: a real Redis Cluster
//! (`redis-server` in cluster mode) and a real etcd, in temporary directories, stopped
//! when dropped. Also a skewed, hash-tagged data set and a digest of every key and value.
//!
//! Owns: starting and stopping these processes and shaping their data. Not used by the
//! sidecar itself.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

pub type Result<T> = std::result::Result<T, String>;

/// A child process killed on drop.
pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Proc {
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A free port whose +10000 (the Redis cluster bus) is free too. Ports come from
/// 10000..20000 (buses 20000..30000), below the kernel's ephemeral range, so a bus port
/// never collides with another cluster's node port or an outgoing connection; a counter
/// keeps one process from handing the same port out twice.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        (std::process::id().wrapping_mul(7919) ^ nanos) % 10000
    });
    for _ in 0..10000 {
        let p = 10000 + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % 10000) as u16;
        if port_free(p) && port_free(p + 10000) {
            return p;
        }
    }
    panic!("no free port pair on loopback");
}

fn need(bin: &str) -> Result<()> {
    match Command::new(bin).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => Ok(()),
        Err(_) => Err(format!("{bin} not found: install it (apt-get install etcd-server redis-server redis-tools)")),
    }
}

async fn connect(addr: &str, password: Option<&str>) -> Result<MultiplexedConnection> {
    let (h, p) = addr.rsplit_once(':').unwrap();
    let mut info = redis::RedisConnectionInfo::default();
    if let Some(pw) = password {
        info = info.set_password(pw);
    }
    let ci = redis::IntoConnectionInfo::into_connection_info(redis::ConnectionAddr::Tcp(h.into(), p.parse().unwrap()))
        .map_err(|e| e.to_string())?
        .set_redis_settings(info);
    let client = redis::Client::open(ci).map_err(|e| e.to_string())?;
    client.get_multiplexed_async_connection().await.map_err(|e| format!("{addr}: {e}"))
}

pub struct RedisNode {
    pub port: u16,
    pub proc: Option<Proc>,
    pub id: String,
    /// Index of the master it replicates.
    pub replica_of: Option<usize>,
}

impl RedisNode {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

pub struct LocalRedisCluster {
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub nodes: Vec<RedisNode>,
    pub masters: Vec<usize>,
    pub password: Option<String>,
}

impl LocalRedisCluster {
    /// `loaded` masters share the 16384 slots evenly, `empty` masters hold none, and every
    /// master gets `replicas` replicas.
    pub async fn start(loaded: usize, empty: usize, replicas: usize, password: Option<&str>) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("ab-redis-").tempdir().map_err(|e| e.to_string())?;
        let mut c = Self::start_in(tmp.path(), loaded, empty, replicas, password).await?;
        c._tmp = Some(tmp);
        Ok(c)
    }

    /// As `start`, in a directory that outlives the value (the demo's `--keep`).
    pub async fn start_in(
        dir: &Path,
        loaded: usize,
        empty: usize,
        replicas: usize,
        password: Option<&str>,
    ) -> Result<Self> {
        need("redis-server")?;
        let n_masters = loaded + empty;
        let mut nodes = Vec::new();
        for i in 0..n_masters * (1 + replicas) {
            let port = free_port();
            let d = dir.join(format!("node-{port}"));
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "3000"])
                // An emptied master stays a master (Redis 7 would otherwise make it a replica).
                .args(["--cluster-allow-replica-migration", "no"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode", "no"])
                .args(["--logfile", "redis.log"])
                .arg("--dir")
                .arg(&d)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if let Some(pw) = password {
                cmd.args(["--requirepass", pw, "--masterauth", pw]);
            }
            let child = cmd.spawn().map_err(|e| format!("redis-server: {e}"))?;
            let replica_of = (i >= n_masters).then(|| (i - n_masters) % n_masters);
            nodes.push(RedisNode {
                port,
                proc: Some(Proc { child, name: format!("redis-{port}") }),
                id: String::new(),
                replica_of,
            });
        }
        let mut c = LocalRedisCluster {
            dir: dir.to_path_buf(),
            _tmp: None,
            nodes,
            masters: (0..n_masters).collect(),
            password: password.map(str::to_string),
        };
        for i in 0..c.nodes.len() {
            let addr = c.nodes[i].addr();
            let deadline = Instant::now() + Duration::from_secs(10);
            let id: String = loop {
                match c.conn(&addr).await {
                    Ok(mut con) => match redis::cmd("CLUSTER").arg("MYID").query_async(&mut con).await {
                        Ok(id) => break id,
                        Err(e) if Instant::now() > deadline => return Err(format!("{addr}: {e}")),
                        Err(_) => {}
                    },
                    Err(e) if Instant::now() > deadline => return Err(e),
                    Err(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            c.nodes[i].id = id;
        }
        // Meet, then slots, then replicas once every node knows every other.
        let first = c.nodes[0].port;
        for i in 1..c.nodes.len() {
            let mut con = c.conn(&c.nodes[i].addr()).await?;
            redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(first)
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| e.to_string())?;
        }
        for m in 0..loaded {
            let lo = m * 16384 / loaded;
            let hi = (m + 1) * 16384 / loaded - 1;
            let mut con = c.conn(&c.nodes[m].addr()).await?;
            redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(lo)
                .arg(hi)
                .query_async::<()>(&mut con)
                .await
                .map_err(|e| e.to_string())?;
        }
        c.wait_known(c.nodes.len()).await?;
        for i in 0..c.nodes.len() {
            if let Some(m) = c.nodes[i].replica_of {
                let mid = c.nodes[m].id.clone();
                let mut con = c.conn(&c.nodes[i].addr()).await?;
                redis::cmd("CLUSTER")
                    .arg("REPLICATE")
                    .arg(mid)
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        c.wait_ok(Duration::from_secs(30)).await?;
        c.wait_roles(n_masters).await?;
        Ok(c)
    }

    /// Waits until every live node sees exactly `masters` masters (replicas settled).
    async fn wait_roles(&self, masters: usize) -> Result<()> {
        self.wait_views("replica roles to settle", |text| {
            crate::cluster::redis::parse_nodes(text)
                .is_ok_and(|n| n.iter().filter(|x| x.is_master()).count() == masters)
        })
        .await
    }

    /// Polls every live node's CLUSTER NODES until `settled` holds for all (30 s at most).
    async fn wait_views(&self, what: &str, settled: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut all = true;
            for a in self.live_addrs() {
                all &= settled(&self.info(&a, &["CLUSTER", "NODES"]).await?);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after 30 s waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn conn(&self, addr: &str) -> Result<MultiplexedConnection> {
        connect(addr, self.password.as_deref()).await
    }

    pub fn master_addrs(&self) -> Vec<String> {
        self.masters.iter().map(|&i| self.nodes[i].addr()).collect()
    }

    pub fn live_addrs(&self) -> Vec<String> {
        self.nodes.iter().filter(|n| n.proc.is_some()).map(|n| n.addr()).collect()
    }

    async fn info(&self, addr: &str, what: &[&str]) -> Result<String> {
        let mut con = self.conn(addr).await?;
        let mut c = redis::cmd(what[0]);
        for a in &what[1..] {
            c.arg(*a);
        }
        c.query_async(&mut con).await.map_err(|e| format!("{addr}: {e}"))
    }

    async fn wait_known(&self, n: usize) -> Result<()> {
        self.wait_views("every node to meet every other", |text| {
            text.lines().filter(|l| !l.contains("handshake") && !l.trim().is_empty()).count() >= n
        })
        .await
    }

    /// Waits until every live node says `cluster_state:ok` with all slots assigned.
    pub async fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if self.all_ok().await.unwrap_or(false) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("cluster not ok within {within:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn all_ok(&self) -> Result<bool> {
        for a in self.live_addrs() {
            let info = self.info(&a, &["CLUSTER", "INFO"]).await?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_assigned:16384") {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Slots any live master reports MIGRATING or IMPORTING.
    pub async fn open_slots(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for a in self.live_addrs() {
            let nodes = self.info(&a, &["CLUSTER", "NODES"]).await?;
            for l in nodes.lines().filter(|l| l.contains("myself")) {
                out.extend(l.split_whitespace().filter(|w| w.starts_with('[')).map(|w| format!("{a} {w}")));
            }
        }
        Ok(out)
    }

    /// Kills one node (a crash: no shutdown).
    pub fn kill(&mut self, addr: &str) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.addr() == addr)
            && let Some(mut p) = n.proc.take()
        {
            p.kill();
        }
    }

    /// Loads `keys` keys: tenants with hash tags (all of a tenant in one slot), sizes
    /// heavy-tailed, and values larger on the first master's slots: the masters start
    /// unequal in bytes although equal in slots.
    pub async fn load_skewed(&self, keys: usize, seed: u64) -> Result<u64> {
        let first = self.master_addrs()[0].clone();
        let mut any = self.conn(&first).await?;
        let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let mut next = move || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            rng >> 33
        };
        let tenants = (keys / 40).max(10);
        let names: Vec<String> = (0..keys)
            .map(|i| {
                let r = next();
                // A fifth of keys are tenant keys with a heavy-tailed tenant choice.
                if r % 5 == 0 {
                    let u = (next() % 10_000) as f64 / 10_000.0 + 0.0001;
                    let t = ((tenants as f64) * u.powf(3.0)) as usize;
                    format!("{{tenant{t}}}:k{i}")
                } else {
                    format!("user:{i}:{}", next() % 1000)
                }
            })
            .collect();
        let mut slots = Vec::with_capacity(keys);
        for chunk in names.chunks(2000) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
            }
            let s: Vec<u16> = p.query_async(&mut any).await.map_err(|e| e.to_string())?;
            slots.extend(s);
        }
        let owner = self.slot_owners().await?;
        let mut per: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        let mut total = 0u64;
        for (k, s) in names.into_iter().zip(slots) {
            let base = 64 + (next() % 256) as usize;
            let size = if owner[s as usize] == first { base * 3 } else { base };
            let v: Vec<u8> = (0..size).map(|j| b'a' + ((j + s as usize) % 26) as u8).collect();
            total += v.len() as u64;
            per.entry(owner[s as usize].clone()).or_default().push((k, v));
        }
        for (addr, kvs) in per {
            let mut con = self.conn(&addr).await?;
            for chunk in kvs.chunks(1000) {
                let mut p = redis::pipe();
                for (k, v) in chunk {
                    p.cmd("SET").arg(k).arg(v.as_slice()).ignore();
                }
                p.query_async::<()>(&mut con).await.map_err(|e| format!("{addr}: {e}"))?;
            }
        }
        Ok(total)
    }

    /// Slot -> owner address, from the first master's view.
    pub async fn slot_owners(&self) -> Result<Vec<String>> {
        let mut owner = vec![String::new(); 16384];
        let addr = self.live_addrs().into_iter().find(|a| self.master_addrs().contains(a)).unwrap();
        let nodes = crate::cluster::redis::parse_nodes(&self.info(&addr, &["CLUSTER", "NODES"]).await?)?;
        for n in nodes.iter().filter(|n| n.is_master()) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    owner[s as usize] = n.addr.clone();
                }
            }
        }
        Ok(owner)
    }

    /// Every key on every live master with its DUMP payload.
    pub async fn digest(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for a in self.master_addrs() {
            if !self.live_addrs().contains(&a) {
                continue;
            }
            let mut con = self.conn(&a).await?;
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut con).await.map_err(|e| e.to_string())?;
            if !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                continue;
            }
            let mut cursor: u64 = 0;
            loop {
                let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(2000)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| e.to_string())?;
                if !keys.is_empty() {
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("DUMP").arg(k.as_slice());
                    }
                    let vals: Vec<Option<Vec<u8>>> = p.query_async(&mut con).await.map_err(|e| e.to_string())?;
                    for (k, v) in keys.into_iter().zip(vals) {
                        if let Some(v) = v
                            && out.insert(k.clone(), v).is_some()
                        {
                            return Err(format!("key {:?} found on two masters", String::from_utf8_lossy(&k)));
                        }
                    }
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(out)
    }

    /// Keys per master address.
    pub async fn key_counts(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for a in self.master_addrs() {
            if let Ok(mut con) = self.conn(&a).await {
                let n: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.map_err(|e| e.to_string())?;
                out.insert(a, n);
            }
        }
        Ok(out)
    }
}

/// A single-member etcd on loopback.
pub struct LocalEtcd {
    pub port: u16,
    pub peer_port: u16,
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    scheme: &'static str,
}

impl LocalEtcd {
    pub fn start() -> Result<LocalEtcd> {
        Self::start_with(Vec::new(), "http")
    }

    /// Starts with extra flags (TLS, auth); `scheme` is the client URL scheme.
    pub fn start_with(extra: Vec<String>, scheme: &'static str) -> Result<LocalEtcd> {
        let tmp = tempfile::Builder::new().prefix("ab-etcd-").tempdir().map_err(|e| e.to_string())?;
        let mut e = Self::start_in(tmp.path(), extra, scheme)?;
        e._tmp = Some(tmp);
        Ok(e)
    }

    /// As `start_with`, in a directory that outlives the value (the demo's `--keep`).
    pub fn start_in(dir: &Path, extra: Vec<String>, scheme: &'static str) -> Result<LocalEtcd> {
        need("etcd")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mut e = LocalEtcd {
            port: free_port(),
            peer_port: free_port(),
            proc: None,
            dir: dir.to_path_buf(),
            _tmp: None,
            extra,
            scheme,
        };
        e.spawn()?;
        Ok(e)
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        self.proc = Some(Proc { child, name: "etcd".into() });
        // Wait for the client port.
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err("etcd did not listen within 15 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
