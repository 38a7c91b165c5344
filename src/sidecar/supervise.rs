//! Supervision of the daemon's tasks. A task that panics, or returns before shutdown was
//! asked for, is a failure: `/healthz` answers 503 from then on and the daemon shuts down
//! and exits non-zero, so whatever supervises the process (Kubernetes, systemd)
//! restarts it.
//!
//! Owns: the failure record, the wrappers that catch panics and early ends, and the
//! failpoints that let tests produce such a fault in a real process (debug builds only).
//! Does not own: the shutdown order (the parent module).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::FutureExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// Which task failed, and how.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("task {task} {cause}")]
pub struct TaskFailure {
    pub task: &'static str,
    pub cause: String,
}

pub struct Supervisor {
    shutdown: CancellationToken,
    /// The first failure; later ones only log.
    failure: Mutex<Option<TaskFailure>>,
    failed: CancellationToken,
}

impl Supervisor {
    /// Tasks may end once `shutdown` is cancelled; before, ending is a failure.
    pub fn new(shutdown: CancellationToken) -> Supervisor {
        Supervisor { shutdown, failure: Mutex::new(None), failed: CancellationToken::new() }
    }

    pub fn fail(&self, task: &'static str, cause: String) {
        let f = TaskFailure { task, cause };
        error!(task, cause = %f.cause, "supervised task failed: the process will exit non-zero");
        self.failure.lock().unwrap().get_or_insert(f);
        self.failed.cancel();
    }

    pub fn failure(&self) -> Option<TaskFailure> {
        self.failure.lock().unwrap().clone()
    }

    /// Resolves at the first failure.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Runs `fut`; a panic is recorded as `task`'s failure and gives None.
    pub async fn catch<T>(&self, task: &'static str, fut: impl Future<Output = T>) -> Option<T> {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(v) => Some(v),
            Err(panic) => {
                self.fail(task, format!("panicked: {}", panic_message(panic.as_ref())));
                None
            }
        }
    }

    /// Spawns a long-lived task: a panic, or an end before shutdown, is a failure.
    pub fn spawn(
        self: &Arc<Self>,
        task: &'static str,
        fut: impl Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let sup = self.clone();
        tokio::spawn(async move {
            if sup.catch(task, fut).await.is_some() && !sup.shutdown.is_cancelled() {
                sup.fail(task, "ended unexpectedly".into());
            }
        })
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Faults injected by name, from the environment variable `FAILPOINTS`, in a subset of the
/// `fail` crate's syntax: `heartbeat=panic;scheduler=2*off->return` (the second one fires
/// from its third hit on). Read in debug builds only: a release binary has none.
pub mod failpoint {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Fault {
        Panic,
        Return,
    }

    /// Name -> (hits to let pass first, fault).
    type Points = HashMap<String, (u64, Fault)>;

    pub fn parse(spec: &str) -> Result<Points, String> {
        let mut out = Points::new();
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, action) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected name=action"))?;
            let (skip, action) = match action.split_once("*off->") {
                Some((n, a)) => (n.parse().map_err(|_| format!("{item:?}: bad count {n:?}"))?, a),
                None => (0, action),
            };
            let fault = match action {
                "panic" => Fault::Panic,
                "return" => Fault::Return,
                a => return Err(format!("{item:?}: unknown action {a:?} (panic, return)")),
            };
            out.insert(name.trim().to_string(), (skip, fault));
        }
        Ok(out)
    }

    fn points() -> &'static Mutex<Points> {
        static POINTS: OnceLock<Mutex<Points>> = OnceLock::new();
        POINTS.get_or_init(|| {
            let spec = std::env::var("FAILPOINTS").unwrap_or_default();
            Mutex::new(parse(&spec).unwrap_or_else(|e| panic!("FAILPOINTS: {e}")))
        })
    }

    /// The fault to inject at `name` now, if any.
    pub fn hit(name: &str) -> Option<Fault> {
        if !cfg!(debug_assertions) {
            return None;
        }
        let mut points = points().lock().unwrap();
        let (skip, fault) = points.get_mut(name)?;
        if *skip > 0 {
            *skip -= 1;
            return None;
        }
        Some(*fault)
    }
}

#[cfg(test)]
mod tests {
    use super::failpoint::{Fault, parse};
    use super::*;

    #[test]
    fn failpoint_specs() {
        let p = parse("heartbeat=panic; scheduler=2*off->return").unwrap();
        assert_eq!(p["heartbeat"], (0, Fault::Panic));
        assert_eq!(p["scheduler"], (2, Fault::Return));
        assert!(parse("x=explode").unwrap_err().contains("unknown action"));
        assert!(parse("").unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_panic_or_an_early_end_is_a_failure_an_end_after_shutdown_is_not() {
        let shutdown = CancellationToken::new();
        let sup = Arc::new(Supervisor::new(shutdown.clone()));
        sup.spawn("quiet", std::future::pending()).abort();
        sup.spawn("early", async {}).await.unwrap();
        assert_eq!(sup.failure().unwrap(), TaskFailure { task: "early", cause: "ended unexpectedly".into() });
        let sup = Arc::new(Supervisor::new(shutdown.clone()));
        sup.spawn("boom", async { panic!("at the disco") }).await.unwrap();
        sup.failed().await;
        assert_eq!(sup.failure().unwrap().cause, "panicked: at the disco");
        let sup = Arc::new(Supervisor::new(shutdown.clone()));
        shutdown.cancel();
        sup.spawn("late", async {}).await.unwrap();
        assert!(sup.failure().is_none());
    }
}
