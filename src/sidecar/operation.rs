//! One operation at a time in this process, each run in a task of its own.
//!
//! Owns: the slot of the running operation, the RAII guard that frees it on every path
//! (the run ends, errs, panics or is aborted), stopping and aborting it, and waiting for
//! it with a deadline. Does not own: what a run does (`run`) or when one starts (the
//! daemon's tasks and the API).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::run::{Finished, Operation, RunError};

struct Running {
    id: u64,
    operation: Operation,
    cancel: CancellationToken,
    abort: Option<AbortHandle>,
}

/// The operation slot of this process.
#[derive(Default)]
pub struct Operations {
    current: watch::Sender<Option<Running>>,
    next_id: AtomicU64,
}

/// The slot, held. Dropping it frees the slot, whichever way the run ended.
pub struct OperationGuard {
    ops: Arc<Operations>,
    id: u64,
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.ops.current.send_if_modified(|cur| match cur {
            Some(r) if r.id == self.id => {
                *cur = None;
                true
            }
            _ => false,
        });
    }
}

/// A run started in its own task. Awaiting it gives the answer; dropping it leaves the
/// run going.
pub struct RunHandle(JoinHandle<Option<Finished>>);

impl RunHandle {
    pub async fn finish(self) -> Result<Finished, RunError> {
        match self.0.await {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(RunError::Lost("the run panicked".into())),
            Err(e) if e.is_cancelled() => Err(RunError::Lost("abandoned at shutdown".into())),
            Err(e) => Err(RunError::Lost(e.to_string())),
        }
    }
}

impl Operations {
    /// Takes the slot for `operation` and spawns `run` with a token that stops it (a child
    /// of `parent`). Refused while another operation runs, or once `parent` is cancelled.
    pub fn spawn<F>(
        self: &Arc<Self>,
        operation: Operation,
        parent: &CancellationToken,
        run: impl FnOnce(CancellationToken) -> F,
    ) -> Result<RunHandle, RunError>
    where
        F: Future<Output = Option<Finished>> + Send + 'static,
    {
        let (guard, cancel) = self.take(operation, parent)?;
        let id = guard.id;
        let fut = run(cancel);
        let task = tokio::spawn(async move {
            // Moved into the task: freed when it ends, however it ends.
            let _guard = guard;
            fut.await
        });
        let abort = task.abort_handle();
        self.current.send_modify(|cur| {
            if let Some(r) = cur.as_mut().filter(|r| r.id == id) {
                r.abort = Some(abort);
            }
        });
        Ok(RunHandle(task))
    }

    fn take(
        self: &Arc<Self>,
        operation: Operation,
        parent: &CancellationToken,
    ) -> Result<(OperationGuard, CancellationToken), RunError> {
        if parent.is_cancelled() {
            return Err(RunError::ShuttingDown);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cancel = parent.child_token();
        let mut busy = None;
        self.current.send_if_modified(|cur| match cur {
            Some(r) => {
                busy = Some(r.operation);
                false
            }
            None => {
                *cur = Some(Running { id, operation, cancel: cancel.clone(), abort: None });
                true
            }
        });
        match busy {
            Some(op) => Err(RunError::Busy(op)),
            None => Ok((OperationGuard { ops: self.clone(), id }, cancel)),
        }
    }

    /// What runs now, if anything.
    pub fn current(&self) -> Option<Operation> {
        self.current.borrow().as_ref().map(|r| r.operation)
    }

    /// Stops the running operation at its next safe point. Returns what was stopped.
    pub fn stop(&self) -> Option<Operation> {
        self.current.borrow().as_ref().map(|r| {
            r.cancel.cancel();
            r.operation
        })
    }

    /// As `stop`, only if `operation` is what runs.
    pub fn stop_if(&self, operation: Operation) {
        if let Some(r) = self.current.borrow().as_ref().filter(|r| r.operation == operation) {
            r.cancel.cancel();
        }
    }

    /// Waits until nothing runs, or `deadline`. True when nothing runs.
    pub async fn wait_idle(&self, deadline: Instant) -> bool {
        let mut rx = self.current.subscribe();
        tokio::time::timeout_at(deadline, rx.wait_for(Option::is_none)).await.is_ok()
    }

    /// Abandons the running operation where it stands (its task is dropped at its next
    /// await). Returns what was abandoned.
    pub fn abort(&self) -> Option<Operation> {
        self.current.borrow().as_ref().map(|r| {
            if let Some(a) = &r.abort {
                a.abort();
            }
            r.operation
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ops() -> Arc<Operations> {
        Arc::new(Operations::default())
    }

    #[tokio::test]
    async fn one_at_a_time_and_the_slot_frees_when_the_run_ends() {
        let ops = ops();
        let parent = CancellationToken::new();
        let h = ops
            .spawn(Operation::Manual, &parent, |cancel| async move {
                cancel.cancelled().await;
                None
            })
            .unwrap();
        assert_eq!(ops.current(), Some(Operation::Manual));
        let second = ops.spawn(Operation::Scheduled, &parent, |_| async { None });
        assert!(matches!(second, Err(RunError::Busy(Operation::Manual))));
        assert_eq!(ops.stop(), Some(Operation::Manual));
        assert!(matches!(h.finish().await, Err(RunError::Lost(_))));
        assert!(ops.wait_idle(Instant::now() + Duration::from_secs(1)).await);
        assert_eq!(ops.current(), None);
    }

    #[tokio::test]
    async fn a_dropped_handle_leaves_the_run_going() {
        let ops = ops();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = ops
            .spawn(Operation::Manual, &CancellationToken::new(), |_| async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.send(()).unwrap();
                None
            })
            .unwrap();
        drop(h);
        rx.await.expect("the run finished after its caller went away");
        assert!(ops.wait_idle(Instant::now() + Duration::from_secs(1)).await);
    }

    #[tokio::test]
    async fn a_panicking_run_frees_the_slot() {
        let ops = ops();
        let h = ops.spawn(Operation::Manual, &CancellationToken::new(), |_| async { panic!("boom") }).unwrap();
        assert!(matches!(h.finish().await, Err(RunError::Lost(_))));
        assert!(ops.wait_idle(Instant::now() + Duration::from_secs(1)).await);
        assert!(ops.spawn(Operation::Manual, &CancellationToken::new(), |_| async { None }).is_ok());
    }

    #[tokio::test]
    async fn abort_frees_the_slot_and_shutdown_refuses_new_runs() {
        let ops = ops();
        let parent = CancellationToken::new();
        let h = ops.spawn(Operation::Evacuation, &parent, |_| std::future::pending()).unwrap();
        assert!(!ops.wait_idle(Instant::now() + Duration::from_millis(50)).await);
        assert_eq!(ops.abort(), Some(Operation::Evacuation));
        assert!(matches!(h.finish().await, Err(RunError::Lost(m)) if m.contains("shutdown")));
        assert!(ops.wait_idle(Instant::now() + Duration::from_secs(1)).await);
        parent.cancel();
        assert!(matches!(ops.spawn(Operation::Manual, &parent, |_| async { None }), Err(RunError::ShuttingDown)));
    }
}
