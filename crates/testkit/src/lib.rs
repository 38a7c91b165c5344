//! The test kit: real servers on loopback for autobalancer's integration tests,
//! benchmarks and demo. A dev-dependency only; it never links the `autobalancer`
//! library, so what it reads back from a cluster is an independent check of the library.
//!
//! Layout:
//!
//! - [`engine`]: Redis 7 or Valkey 9, and where its server binary is.
//! - [`cluster`]: a local cluster of either engine (masters, empty masters, replicas,
//!   password, an ACL user), its views, a skewed data set and a digest of every key,
//!   and traffic on it (slot statistics, a client driving INCRs).
//! - [`etcd`]: a single-member etcd that can be stopped and restarted.
//! - [`prometheus`]: a Prometheus scraping given targets with rules loaded.
//! - [`tls`]: a CA, server and client certificates for TLS clusters and their clients.
//! - [`ports`], [`proc`]: loopback ports, and child processes killed on drop.
//!
//! Every server runs in a temporary directory removed on drop unless started with
//! `start_in` (the demo's `--keep`). Errors are strings: they end in a test's panic.

pub mod cluster;
pub mod engine;
pub mod etcd;
pub mod ports;
pub mod proc;
pub mod prometheus;
pub mod tls;

pub use cluster::{AclUser, ClusterSpec, Driver, LocalCluster, Login, Node, digest_diff, key_slot};
pub use engine::Engine;
pub use etcd::LocalEtcd;
pub use ports::free_port;
pub use proc::Proc;
pub use prometheus::LocalPrometheus;
pub use tls::TlsFiles;

pub type Result<T> = std::result::Result<T, String>;

/// Runs an async scenario `async fn name(engine: Engine)` once per engine: each `name`
/// becomes a module holding the tests `redis` and `valkey` (`name::redis`,
/// `name::valkey`), on a two-thread tokio runtime.
///
/// ```text
/// async fn rebalance_loses_nothing(engine: Engine) { /* ... */ }
/// on_each_engine!(rebalance_loses_nothing);
/// ```
#[macro_export]
macro_rules! on_each_engine {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn redis() {
                    super::$name($crate::Engine::Redis).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn valkey() {
                    super::$name($crate::Engine::Valkey).await
                }
            }
        )+
    };
}
