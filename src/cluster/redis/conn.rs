//! Connections to the nodes of one cluster: one multiplexed connection per node, cached,
//! dropped after a transport error so the next call reconnects; AUTH and TLS from the config.
//!
//! Owns: connecting (plaintext, or TLS on rustls with `cluster.ca-file` and the client
//! certificate), timeouts, the error text that names the node and the likely cause when TLS
//! is on at one end only. Does not own: what is sent (topology, sizing, movers).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo,
    RedisError, RedisResult, TlsCertificates,
};
use std::sync::Mutex;

use crate::config::ClusterConfig;

/// Credentials as MIGRATE must repeat them to the target.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

/// TLS to every node (`cluster.tls`): the CA (`ca-file`; the system's roots without one)
/// and the client certificate (`cert-file`, `key-file`) as PEM, read once at start.
#[derive(Clone)]
pub struct Tls(TlsCertificates);

impl Tls {
    /// `None` when `cluster.tls` is off; errors name the key and the path. What the files
    /// hold was checked when the config was loaded.
    pub fn from_config(c: &ClusterConfig) -> Result<Option<Tls>, String> {
        if !c.tls {
            return Ok(None);
        }
        // The process-wide provider rustls builds every client config with (Cargo.toml says
        // why it is chosen here); an error means one is installed already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read =
            |key: &str, p: &Path| std::fs::read(p).map_err(|e| format!("{key} {}: cannot read: {e}", p.display()));
        let root_cert = c.ca_file.as_deref().map(|p| read("cluster.ca-file", p)).transpose()?;
        let client_tls = match (&c.cert_file, &c.key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read("cluster.cert-file", cert)?,
                client_key: read("cluster.key-file", key)?,
            }),
            _ => None,
        };
        Ok(Some(Tls(TlsCertificates { client_tls, root_cert })))
    }
}

pub struct Conns {
    redis_info: RedisConnectionInfo,
    pub auth: Auth,
    tls: Option<Tls>,
    /// How long one reply may take (above `migrate-timeout`: a MIGRATE blocks that long).
    response_timeout: Duration,
    cache: Mutex<HashMap<String, MultiplexedConnection>>,
}

impl Conns {
    pub fn new(auth: Auth, tls: Option<Tls>, response_timeout: Duration) -> Conns {
        let mut redis_info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(u) = &auth.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &auth.password {
            redis_info = redis_info.set_password(p);
        }
        Conns { redis_info, auth, tls, response_timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// A connection to one node (cached; dropped on error so the next call reconnects).
    pub async fn conn(&self, addr: &str) -> Result<MultiplexedConnection, String> {
        // The cache's lock is never held across an await.
        if let Some(c) = self.cache.lock().expect("connection cache").get(addr) {
            return Ok(c.clone());
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr} is not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{addr} is not host:port"))?;
        let c = self.connect(host, port).await.map_err(|e| format!("connect to {addr}: {e}{}", self.hint(&e)))?;
        self.cache.lock().expect("connection cache").insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A client for one node: TLS with the configured certificates, or plaintext. The
    /// server's certificate must name `host` (an IP address SAN for `ip:port`).
    fn client(&self, host: &str, port: u16) -> RedisResult<Client> {
        let Some(Tls(certs)) = &self.tls else {
            let info = ConnectionAddr::Tcp(host.to_string(), port).into_connection_info()?;
            return Client::open(info.set_redis_settings(self.redis_info.clone()));
        };
        let addr = ConnectionAddr::TcpTls { host: host.to_string(), port, insecure: false, tls_params: None };
        let info = addr.into_connection_info()?.set_redis_settings(self.redis_info.clone());
        Client::build_with_tls(info, certs.clone())
    }

    /// Connects, and proves the connection with a PING before it is cached: a TLS-only port
    /// accepts a plaintext connection and drops it at the first command, and a server that
    /// wants a client certificate may refuse it (TLS 1.3) only after the handshake.
    async fn connect(&self, host: &str, port: u16) -> RedisResult<MultiplexedConnection> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout.min(Duration::from_secs(5))));
        let mut c = self.client(host, port)?.get_multiplexed_async_connection_with_config(&cfg).await?;
        redis::cmd("PING").query_async::<()>(&mut c).await?;
        // The PING had a connect's bound; commands have the configured one.
        c.set_response_timeout(self.response_timeout);
        Ok(c)
    }

    /// The likely cause of a failed connect that the error alone does not name: TLS on one
    /// end only, or no client certificate. A plaintext client at a TLS-only port sees the
    /// connection dropped; a TLS client at a plaintext port reads a reply that is no TLS
    /// record, or none at all; a server that wants a client certificate drops a client
    /// without one.
    fn hint(&self, e: &RedisError) -> &'static str {
        // The server's own refusal (NOAUTH, LOADING) or a closed port says enough.
        if e.code().is_some() || e.is_connection_refusal() {
            return "";
        }
        match &self.tls {
            None => " (is the server TLS-only? set cluster.tls = true)",
            Some(_) if e.is_timeout() || e.to_string().contains("corrupt message") => {
                " (is the server plaintext? set cluster.tls = false)"
            }
            // TLS 1.3 refuses a missing client certificate after the handshake: the
            // client reads either the server's CertificateRequired alert or a drop.
            Some(Tls(certs))
                if certs.client_tls.is_none()
                    && (e.is_connection_dropped() || e.to_string().contains("CertificateRequired")) =>
            {
                " (does the server want a client certificate? set cluster.cert-file and cluster.key-file)"
            }
            Some(_) => "",
        }
    }

    pub async fn forget(&self, addr: &str) {
        self.cache.lock().expect("connection cache").remove(addr);
    }

    pub async fn query<T: redis::FromRedisValue>(&self, addr: &str, cmd: &redis::Cmd) -> Result<T, String> {
        let mut c = self.conn(addr).await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(addr, e).await),
        }
    }

    pub async fn pipeline<T: redis::FromRedisValue>(&self, addr: &str, p: &redis::Pipeline) -> Result<Vec<T>, String> {
        self.pipeline_as(addr, p).await
    }

    /// Drops the cached connection after a transport error (the next call reconnects);
    /// says which node failed.
    pub async fn failed(&self, addr: &str, e: redis::RedisError) -> String {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            self.forget(addr).await;
        }
        format!("{addr}: {e}")
    }

    /// A pipeline read as one value (a tuple, for commands of different reply types).
    pub async fn pipeline_as<T: redis::FromRedisValue>(&self, addr: &str, p: &redis::Pipeline) -> Result<T, String> {
        let mut c = self.conn(addr).await?;
        match p.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(addr, e).await),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use redis::ServerErrorKind;

    use super::*;

    fn conns(tls: bool) -> Conns {
        let tls = tls.then_some(Tls(TlsCertificates { client_tls: None, root_cert: None }));
        Conns::new(Auth::default(), tls, Duration::from_secs(1))
    }

    #[test]
    fn a_dropped_plaintext_connection_asks_about_tls() {
        let reset = RedisError::from(Error::new(ErrorKind::ConnectionReset, "reset by peer"));
        assert_eq!(conns(false).hint(&reset), " (is the server TLS-only? set cluster.tls = true)");
        // A closed port, or the server's own refusal, is not about TLS.
        assert_eq!(conns(false).hint(&RedisError::from(Error::from(ErrorKind::ConnectionRefused))), "");
        let loading = RedisError::from((redis::ErrorKind::Server(ServerErrorKind::BusyLoading), "loading"));
        assert_eq!(conns(false).hint(&loading), "");
    }

    #[test]
    fn a_tls_handshake_without_answer_asks_about_plaintext() {
        let timeout = RedisError::from(Error::from(ErrorKind::TimedOut));
        assert_eq!(conns(true).hint(&timeout), " (is the server plaintext? set cluster.tls = false)");
        // A certificate the client refused names itself.
        let refused = RedisError::from(Error::new(ErrorKind::InvalidData, "invalid peer certificate: UnknownIssuer"));
        assert_eq!(conns(true).hint(&refused), "");
    }

    #[test]
    fn a_tls_connection_dropped_without_a_client_certificate_asks_for_one() {
        let dropped = RedisError::from(Error::from(ErrorKind::BrokenPipe));
        let hint = conns(true).hint(&dropped);
        assert_eq!(hint, " (does the server want a client certificate? set cluster.cert-file and cluster.key-file)");
        let with_cert = Tls(TlsCertificates {
            client_tls: Some(ClientTlsConfig { client_cert: Vec::new(), client_key: Vec::new() }),
            root_cert: None,
        });
        assert_eq!(Conns::new(Auth::default(), Some(with_cert), Duration::from_secs(1)).hint(&dropped), "");
    }
}
