//! The standalone coordinator's state (no `[etcd]`): in process, and, when
//! `cluster.state-file` names a file, the part that must outlive the process written
//! there after every change: recorded moves, the last scheduled cron slot, pause,
//! evacuations and the last run. A run killed mid-move leaves its intent in the file, so
//! the next run repairs the slot as its own instead of leaving it as someone else's.
//!
//! Owns: the state and its file (JSON, replaced atomically: a temporary file renamed over
//! it), and the file lock beside it (`<file>.lock`, holding the pid) that keeps a second
//! process off the same state for as long as this one lives: two standalone processes
//! never run at once, nor overwrite each other's intents. Does not own: the run lock (in
//! process) or registrations (they describe live processes).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::lock::Holder;
use super::state::{Evacuation, RunRecord};
use super::{Backend, Coordinator, LockError};
use crate::model::MoveIntent;

#[derive(Default)]
pub(crate) struct LocalState {
    pub(crate) holder: Option<(u64, Holder)>,
    pub(crate) next_id: u64,
    pub(crate) sidecars: BTreeMap<String, serde_json::Value>,
    pub(crate) kept: Kept,
    file: Option<PathBuf>,
    /// The lock on `<file>.lock`, held while this value lives.
    _held: Option<std::fs::File>,
}

/// What the state file holds.
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case")]
pub(crate) struct Kept {
    pub(crate) moves: BTreeMap<u64, MoveIntent>,
    pub(crate) scheduled: Option<i64>,
    pub(crate) paused: Option<String>,
    pub(crate) evacuations: BTreeMap<String, Evacuation>,
    pub(crate) last_run: Option<RunRecord>,
    pub(crate) roles: super::roles::RoleHistory,
}

impl LocalState {
    /// Reads the state file when it exists; a file that does not parse is an error
    /// naming it (never silently replaced: it may hold a move in flight).
    pub(crate) fn open(path: &Path) -> Result<LocalState, LockError> {
        let held = hold(path)?;
        Ok(LocalState { kept: kept(path)?, file: Some(path.to_path_buf()), _held: Some(held), ..LocalState::default() })
    }

    /// The state as the file holds it now, for a process that only reads (a dry run, a
    /// snapshot): no lock taken, nothing ever written.
    pub(crate) fn read(path: &Path) -> Result<LocalState, LockError> {
        Ok(LocalState { kept: kept(path)?, ..LocalState::default() })
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Writes the kept part to the state file, if there is one: a temporary file beside
    /// it, synced, then renamed over it, so a crash leaves the old or the new state.
    pub(crate) fn save(&self) -> Result<(), LockError> {
        let Some(path) = &self.file else { return Ok(()) };
        let fail = |e: std::io::Error| LockError::Unavailable(format!("state file {}: {e}", path.display()));
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&serde_json::to_vec_pretty(&self.kept).expect("state serializes")).map_err(fail)?;
        f.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }
}

/// What the state file at `path` holds; nothing yet when it does not exist.
fn kept(path: &Path) -> Result<Kept, LockError> {
    let named = |e: &dyn std::fmt::Display| LockError::Config(format!("cluster.state-file {}: {e}", path.display()));
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| named(&e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Kept::default()),
        Err(e) => Err(named(&e)),
    }
}

/// Takes the lock beside the state file `path` (creating its directory when missing),
/// or says which process holds it.
fn hold(path: &Path) -> Result<std::fs::File, LockError> {
    let named = |e: std::io::Error| LockError::Config(format!("cluster.state-file {}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(named)?;
    }
    let lock_path = path.with_extension("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(named)?;
    match f.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&lock_path).unwrap_or_default();
            let pid = holder.trim();
            return Err(LockError::Config(format!(
                "cluster.state-file {} is in use by another autobalancer process{}: one standalone process per state file (stop it, use its API, or give this one its own cluster.state-file)",
                path.display(),
                if pid.is_empty() { String::new() } else { format!(" (pid {pid})") }
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(named(e)),
    }
    f.set_len(0).map_err(named)?;
    f.write_all(std::process::id().to_string().as_bytes()).map_err(named)?;
    Ok(f)
}

impl Coordinator {
    /// Applies `f` to the standalone state's kept part and saves it.
    pub(crate) async fn update_kept<T>(&self, f: impl FnOnce(&mut Kept) -> T) -> Result<T, LockError> {
        let Backend::Local(s) = &self.backend else { unreachable!("standalone state asked for with etcd") };
        let mut s = s.lock().expect("local state");
        let out = f(&mut s.kept);
        s.save()?;
        Ok(out)
    }

    /// A copy of the standalone state's kept part.
    pub(crate) async fn kept(&self) -> Kept {
        let Backend::Local(s) = &self.backend else { unreachable!("standalone state asked for with etcd") };
        s.lock().expect("local state").kept.clone()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use crate::coord::{Acquire, Coordinator};
    use crate::model::MoveIntent;

    #[tokio::test]
    async fn intents_pause_and_scheduled_slot_outlive_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let intent =
            MoveIntent { bucket: 7, from: "a".into(), to: "b".into(), holder: "m1".into(), started_at: Utc::now() };
        {
            let c = Coordinator::standalone("x", "m1", Some(&path)).unwrap();
            let Acquire::Acquired(g) = c.try_lock("scheduled").await.unwrap() else { panic!("not acquired") };
            c.record_moves(&g, std::slice::from_ref(&intent)).await.unwrap();
            assert!(c.claim_scheduled_slot(&g, 100).await.unwrap());
            c.set_paused(Some("ops".into())).await.unwrap();
        }
        let c = Coordinator::standalone("x", "m1", Some(&path)).unwrap();
        assert_eq!(c.moves().await.unwrap().iter().map(|m| m.bucket).collect::<Vec<_>>(), [7]);
        assert_eq!(c.scheduled_slot().await.unwrap(), Some(100));
        assert_eq!(c.paused().await.unwrap().as_deref(), Some("ops"));
        c.clear_moves(&[7]).await.unwrap();
        // The process that held the file lets go of it (exits) before the next opens it.
        drop(c);
        let c = Coordinator::standalone("x", "m1", Some(&path)).unwrap();
        assert!(c.moves().await.unwrap().is_empty(), "a cleared intent stays cleared");
    }

    #[test]
    fn a_second_holder_of_a_state_file_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deep/state.json");
        let first = Coordinator::standalone("x", "m1", Some(&path)).unwrap();
        assert_eq!(first.state_file().as_deref(), Some(path.as_path()));
        let err = Coordinator::standalone("x", "m2", Some(&path)).err().unwrap().to_string();
        assert!(err.contains("in use by another autobalancer process") && err.contains("state.json"), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(first);
        Coordinator::standalone("x", "m2", Some(&path)).expect("free once the first is gone");
    }

    #[test]
    fn a_state_file_that_does_not_parse_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(&path, "{ not json").unwrap();
        let err = Coordinator::standalone("x", "m1", Some(&path)).err().unwrap().to_string();
        assert!(err.contains("cluster.state-file") && err.contains("state.json"), "{err}");
    }
}
