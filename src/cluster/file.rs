//! The file backend: a snapshot JSON as the cluster, for what-if runs and for exercising
//! the lock, executor and API without a data store. Moves apply to the layout in memory
//! and the file is rewritten once at the end of each run (`flush`), so repeated runs
//! converge as they would on a live cluster.

use std::path::PathBuf;

use tokio::sync::Mutex;

use super::{Cluster, ClusterError, MoveStats, Pace};
use crate::model::ClusterSnapshot;
use crate::plan::{Move, apply_moves};

pub struct FileCluster {
    path: PathBuf,
    cluster_id: String,
    /// The layout moves apply to, and whether it differs from the file.
    state: Mutex<Option<(ClusterSnapshot, bool)>>,
}

impl FileCluster {
    pub fn new(path: PathBuf, cluster_id: String) -> FileCluster {
        FileCluster { path, cluster_id, state: Mutex::new(None) }
    }

    fn read(&self) -> Result<ClusterSnapshot, ClusterError> {
        let mut s = ClusterSnapshot::read_file(&self.path).map_err(|e| ClusterError::Snapshot(e.to_string()))?;
        if s.cluster_id.is_empty() {
            s.cluster_id = self.cluster_id.clone();
        }
        Ok(s)
    }
}

impl Cluster for FileCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        let mut st = self.state.lock().await;
        match st.as_ref() {
            // Moves not yet written are part of the cluster's state.
            Some((s, true)) => Ok(s.clone()),
            _ => {
                let s = self.read()?;
                *st = Some((s.clone(), false));
                Ok(s)
            }
        }
    }

    async fn repair(&self) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }

    async fn flush(&self) -> Result<(), ClusterError> {
        let mut st = self.state.lock().await;
        if let Some((s, dirty @ true)) = st.as_mut() {
            let fail = |m: String| ClusterError::Snapshot(m);
            let tmp = self.path.with_extension("json.tmp");
            std::fs::write(&tmp, s.to_json()).map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &self.path).map_err(|e| fail(format!("rename to {}: {e}", self.path.display())))?;
            *dirty = false;
        }
        Ok(())
    }

    async fn move_bucket<P: Pace>(&self, _s: &ClusterSnapshot, mv: &Move, pace: &P) -> Result<MoveStats, ClusterError> {
        pace.take(mv.bytes).await;
        let mut st = self.state.lock().await;
        if st.is_none() {
            *st = Some((self.read()?, false));
        }
        let (s, dirty) = st.as_mut().expect("loaded");
        apply_moves(s, std::slice::from_ref(mv)).map_err(|message| ClusterError::Move {
            bucket: mv.bucket,
            message,
            open: false,
        })?;
        *dirty = true;
        Ok(MoveStats { keys: 0, bytes: mv.bytes })
    }
}
