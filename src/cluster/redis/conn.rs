//! Connections to the nodes of one cluster: one multiplexed connection per node, cached,
//! dropped after a transport error so the next call reconnects; AUTH from the config.
//!
//! Owns: connecting, timeouts, the error text that names the node. Does not own: what
//! is sent (topology, sizing, movers).

use std::collections::HashMap;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use tokio::sync::Mutex;

/// Credentials as MIGRATE must repeat them to the target.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub username: Option<String>,
    pub password: Option<String>,
}

pub struct Conns {
    redis_info: RedisConnectionInfo,
    pub auth: Auth,
    /// How long one reply may take (above `migrate-timeout`: a MIGRATE blocks that long).
    response_timeout: Duration,
    cache: Mutex<HashMap<String, MultiplexedConnection>>,
}

pub(super) fn err(e: redis::RedisError) -> String {
    e.to_string()
}

impl Conns {
    pub fn new(auth: Auth, response_timeout: Duration) -> Conns {
        let mut redis_info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(u) = &auth.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &auth.password {
            redis_info = redis_info.set_password(p);
        }
        Conns { redis_info, auth, response_timeout, cache: Mutex::new(HashMap::new()) }
    }

    /// A connection to one node (cached; dropped on error so the next call reconnects).
    pub async fn conn(&self, addr: &str) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.cache.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr} is not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{addr} is not host:port"))?;
        let info: ConnectionInfo = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(err)?
            .set_redis_settings(self.redis_info.clone());
        let client = Client::open(info).map_err(err)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.response_timeout));
        let c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        self.cache.lock().await.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    pub async fn forget(&self, addr: &str) {
        self.cache.lock().await.remove(addr);
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
