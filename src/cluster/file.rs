//! The file backend: a snapshot JSON as the cluster, for what-if runs and for exercising
//! the lock, executor and API without a data store.
//!
//! Moves apply to the layout in memory; the file is written behind them by a writer task
//! that gathers the moves of a burst into one write (a 16384-bucket file is about 1 MB,
//! and rewriting it per move made large runs take minutes). The file is also written
//! before the next snapshot and when the backend is dropped, so repeated runs converge as
//! they would on a live cluster. Owns: that batching. Does not own: planning or limits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::{Cluster, ClusterError, Fence, MoveStats, Pace, RepairOptions, RepairReport};
use crate::model::ClusterSnapshot;
use crate::plan::{Move, apply_moves};

/// How long the writer waits for more moves before it writes.
const GATHER: Duration = Duration::from_millis(20);

pub struct FileCluster {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    cluster_id: String,
    /// The layout moves apply to, whether it differs from the file, and whether the
    /// writer task runs.
    state: Mutex<State>,
    wake: Arc<Notify>,
}

#[derive(Default)]
struct State {
    layout: Option<ClusterSnapshot>,
    dirty: bool,
    writer: bool,
}

impl Inner {
    fn read(&self) -> Result<ClusterSnapshot, ClusterError> {
        let mut s = ClusterSnapshot::read_file(&self.path).map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        if s.cluster_id.is_empty() {
            s.cluster_id = self.cluster_id.clone();
        }
        Ok(s)
    }

    /// Writes the layout if it differs from the file (atomically: temp file, rename).
    fn write_if_dirty(&self) -> Result<(), ClusterError> {
        let mut st = self.state.lock().unwrap();
        let (Some(layout), true) = (st.layout.as_ref(), st.dirty) else {
            return Ok(());
        };
        write_atomically(&self.path, &layout.to_json())?;
        st.dirty = false;
        Ok(())
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), ClusterError> {
    let fail = |m: String| ClusterError::Snapshot(m);
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, text).map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| fail(format!("rename to {}: {e}", path.display())))
}

/// Writes behind the moves until the backend is dropped.
async fn writer(inner: std::sync::Weak<Inner>, wake: Arc<Notify>) {
    loop {
        wake.notified().await;
        tokio::time::sleep(GATHER).await;
        let Some(i) = inner.upgrade() else { return };
        if let Err(e) = i.write_if_dirty() {
            tracing::warn!(cause = %e, "could not write the snapshot file; retrying after the next move");
        }
    }
}

impl FileCluster {
    pub fn new(path: PathBuf, cluster_id: String) -> FileCluster {
        FileCluster {
            inner: Arc::new(Inner { path, cluster_id, state: Mutex::new(State::default()), wake: Arc::default() }),
        }
    }
}

impl Drop for FileCluster {
    fn drop(&mut self) {
        // Ends the writer task: it finds no backend to write for.
        self.inner.wake.notify_one();
        if let Err(e) = self.inner.write_if_dirty() {
            tracing::error!(cause = %e, "moves not written to the snapshot file");
        }
    }
}

impl Cluster for FileCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        self.inner.write_if_dirty()?;
        let s = self.inner.read()?;
        self.inner.state.lock().unwrap().layout = Some(s.clone());
        Ok(s)
    }

    /// A file has nothing half-done: moves apply whole. Recorded intents are settled.
    async fn repair<F: Fence>(&self, opts: &RepairOptions, _fence: &F) -> Result<RepairReport, ClusterError> {
        Ok(RepairReport { intents_done: opts.intents.iter().map(|i| i.bucket).collect(), ..Default::default() })
    }

    fn moves_can_be_left_open(&self) -> bool {
        false
    }

    async fn move_bucket<P: Pace, F: Fence>(
        &self,
        _s: &ClusterSnapshot,
        mv: &Move,
        pace: &P,
        fence: &F,
    ) -> Result<MoveStats, ClusterError> {
        pace.take(mv.bytes).await;
        // A move applies whole: its commit is its only step.
        fence.check().await.map_err(|cause| ClusterError::Fenced { bucket: mv.bucket, cause })?;
        let loaded = self.inner.state.lock().unwrap().layout.is_some();
        let fresh = if loaded { None } else { Some(self.inner.read()?) };
        let start_writer = {
            let mut st = self.inner.state.lock().unwrap();
            if let Some(f) = fresh {
                st.layout.get_or_insert(f);
            }
            let layout = st.layout.as_mut().expect("loaded");
            apply_moves(layout, std::slice::from_ref(mv)).map_err(|message| ClusterError::Move {
                bucket: mv.bucket,
                message,
                open: false,
            })?;
            st.dirty = true;
            !std::mem::replace(&mut st.writer, true)
        };
        if start_writer {
            tokio::spawn(writer(Arc::downgrade(&self.inner), self.inner.wake.clone()));
        }
        self.inner.wake.notify_one();
        Ok(MoveStats { keys: 0, bytes: mv.bytes, fallback: false, ..Default::default() })
    }
}
