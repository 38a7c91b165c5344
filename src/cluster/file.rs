//! The file backend: a snapshot JSON as the cluster, for what-if runs and for exercising
//! the lock, executor and API without a data store. Moves rewrite the file, so repeated
//! runs converge as they would on a live cluster.

use std::path::PathBuf;

use tokio::sync::Mutex;

use super::{Cluster, ClusterError, MoveStats, Pace};
use crate::model::ClusterSnapshot;
use crate::plan::{Move, apply_moves};

pub struct FileCluster {
    path: PathBuf,
    cluster_id: String,
    /// Serialises read-modify-write of the file between concurrent moves.
    write: Mutex<()>,
}

impl FileCluster {
    pub fn new(path: PathBuf, cluster_id: String) -> FileCluster {
        FileCluster { path, cluster_id, write: Mutex::new(()) }
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
        let _g = self.write.lock().await;
        self.read()
    }

    async fn repair(&self) -> Result<Vec<String>, ClusterError> {
        Ok(Vec::new())
    }

    async fn move_bucket<P: Pace>(&self, _s: &ClusterSnapshot, mv: &Move, pace: &P) -> Result<MoveStats, ClusterError> {
        pace.take(mv.bytes).await;
        let _g = self.write.lock().await;
        let mut s = self.read()?;
        let fail = |message: String| ClusterError::Move { bucket: mv.bucket, message, open: false };
        apply_moves(&mut s, std::slice::from_ref(mv)).map_err(fail)?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, s.to_json()).map_err(|e| fail(format!("write {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail(format!("rename to {}: {e}", self.path.display())))?;
        Ok(MoveStats { keys: 0, bytes: mv.bytes })
    }
}
