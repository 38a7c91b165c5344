//! The legacy mover: the documented slot-migration protocol.
//!
//! A move: SETSLOT IMPORTING on the target, MIGRATING on the source, then
//! GETKEYSINSLOT + MIGRATE ... KEYS in batches bounded by keys and bytes, then SETSLOT NODE
//! on the source, the target ([`super::commit`] says why in that order), and the other
//! masters. Once started, a move runs to its end (or fails and says the slot is open), so
//! a stop never leaves a half-moved slot behind.
//!
//! Owns: those steps, BUSYKEY handling. Does not own: which slot moves, or closing slots a
//! crash left open ([`super::repair`]).

use std::time::Duration;

use tracing::{debug, warn};

use super::follow::{BATCH_WAIT, HOLD_WAIT};
use super::nodes::Nodes;
use super::sizing::Sizer;
use super::topology::Topology;
use crate::cluster::{ClusterError, Fence, MoveStats, Pace, SetAside};

/// A key on the source side against the key of that name on the target side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyPair {
    /// Not on the source (moved or deleted meanwhile).
    Gone,
    /// On the source only.
    OnlyHere,
    /// On both, with identical values.
    Same,
    /// On both, with different values.
    Different,
}

/// How keys are migrated (`execution.migrate-batch-keys`, `migrate-batch-bytes`,
/// `migrate-timeout`).
#[derive(Clone, Copy, Debug)]
pub(super) struct MigrateOptions {
    pub batch_keys: u32,
    pub batch_bytes: u64,
    /// How long one MIGRATE may take (the server's timeout; replies wait longer).
    pub timeout: Duration,
}

/// The legacy mover: a part of the backend holding no state of its own, borrowing the
/// nodes and the sizer.
pub(super) struct Legacy<'a> {
    pub(super) nodes: &'a Nodes,
    pub(super) sizer: &'a Sizer,
    pub(super) opts: MigrateOptions,
}

/// One slot to move between two masters (by address).
#[derive(Clone, Copy, Debug)]
pub(super) struct SlotMove<'a> {
    pub slot: u16,
    pub src: &'a str,
    pub dst: &'a str,
    /// Continues a move a crash interrupted (either side may be past its first step).
    pub resume: bool,
    /// The slot's measured size, 0 when unknown (the mover then measures its keys).
    pub estimate: u64,
}

impl Legacy<'_> {
    pub(super) fn migrate_cmd(&self, dst: &str, keys: &[Vec<u8>], replace: bool) -> redis::Cmd {
        let (host, port) = dst.rsplit_once(':').unwrap_or((dst, "6379"));
        let mut c = redis::cmd("MIGRATE");
        c.arg(host).arg(port).arg("").arg(0).arg(self.opts.timeout.as_millis() as u64);
        if replace {
            c.arg("REPLACE");
        }
        match (&self.nodes.conns.auth.username, &self.nodes.conns.auth.password) {
            (Some(u), Some(p)) => {
                c.arg("AUTH2").arg(u).arg(p);
            }
            (None, Some(p)) => {
                c.arg("AUTH").arg(p);
            }
            _ => {}
        }
        c.arg("KEYS");
        for k in keys {
            c.arg(k.as_slice());
        }
        c
    }

    /// Migrates `keys` from `src` to `dst`. On BUSYKEY, a key present on both sides is
    /// replaced when both values are identical; otherwise the target's is set aside under
    /// another name first ([`super::aside`]: clients read the source's), recorded in `aside`.
    async fn migrate_batch(
        &self,
        (slot, src, dst): (u16, &str, &str),
        keys: &[Vec<u8>],
        then: Option<redis::Cmd>,
        aside: &mut Vec<SetAside>,
    ) -> Result<Option<Vec<Vec<u8>>>, ClusterError> {
        let fail = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        let mut c = self.nodes.conns.conn(src).await.map_err(fail)?;
        let res: Result<Option<Vec<Vec<u8>>>, redis::RedisError> = match &then {
            Some(list) => {
                let mut p = redis::pipe();
                p.add_command(self.migrate_cmd(dst, keys, false)).ignore().add_command(list.clone());
                p.query_async::<(Vec<Vec<u8>>,)>(&mut c).await.map(|(k,)| Some(k))
            }
            None => self.migrate_cmd(dst, keys, false).query_async::<redis::Value>(&mut c).await.map(|_| None),
        };
        let e = match res {
            Ok(next) => return Ok(next),
            Err(e) => e,
        };
        // MIGRATE relays the target's refusal inside its own error:
        // "ERR Target instance replied with error: BUSYKEY Target key name already exists."
        let busy = e.code() == Some("BUSYKEY") || e.to_string().contains("BUSYKEY");
        if !busy {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.nodes.conns.forget(src).await;
            }
            return Err(fail(format!("MIGRATE from {src} to {dst}: {e}")));
        }
        // Keys MIGRATE did move are gone from the source; look at the rest one by one.
        for k in keys {
            let replace = match self.compare_key(src, dst, k, false).await.map_err(fail)? {
                KeyPair::Gone => continue,
                KeyPair::OnlyHere => false,
                KeyPair::Same => true,
                KeyPair::Different => {
                    aside.extend(self.nodes.set_aside(slot, dst, k).await.map_err(fail)?);
                    false
                }
            };
            self.migrate_one(src, dst, k, replace, false).await.map_err(fail)?;
        }
        Ok(None)
    }

    /// How a key on `src` compares with the key of that name on `dst` (by DUMP).
    /// `asking` reaches a slot `src` does not own (it must be importing it).
    pub(super) async fn compare_key(&self, src: &str, dst: &str, key: &[u8], asking: bool) -> Result<KeyPair, String> {
        let dump = |addr: &'static str, on: String| {
            let mut p = redis::pipe();
            if asking || addr == "dst" {
                p.cmd("ASKING").ignore();
            }
            p.cmd("DUMP").arg(key);
            async move {
                self.nodes.conns.pipeline::<Option<Vec<u8>>>(&on, &p).await.map(|v| v.into_iter().next().flatten())
            }
        };
        let here = if asking { dump("src", src.to_string()).await? } else { self.dump_at_source(src, key).await? };
        let Some(here) = here else {
            return Ok(KeyPair::Gone);
        };
        Ok(match dump("dst", dst.to_string()).await? {
            None => KeyPair::OnlyHere,
            Some(t) if t == here => KeyPair::Same,
            Some(_) => KeyPair::Different,
        })
    }

    /// MEMORY USAGE of each key on the source; 0 for a key gone since it was listed (a
    /// client deleted it or it expired: a migrating source answers ASK for it).
    async fn key_sizes(&self, src: &str, keys: &[Vec<u8>]) -> Result<Vec<u64>, String> {
        let mut p = redis::pipe();
        p.ignore_errors();
        for k in keys {
            p.cmd("MEMORY").arg("USAGE").arg(k.as_slice());
        }
        let sizes: Vec<redis::RedisResult<Option<u64>>> = self.nodes.conns.pipeline_as(src, &p).await?;
        sizes
            .into_iter()
            .map(|r| match r {
                Ok(size) => Ok(size.unwrap_or(0)),
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => Ok(0),
                Err(e) => Err(format!("{src}: MEMORY USAGE: {e}")),
            })
            .collect()
    }

    /// DUMP on a source that owns the slot; None when the key is not there. A source
    /// migrating the slot answers ASK for a key it no longer holds (a MIGRATE that
    /// refused one key of a batch moved the others): that is "not here" too.
    async fn dump_at_source(&self, src: &str, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut c = self.nodes.conns.conn(src).await?;
        match redis::cmd("DUMP").arg(key).query_async::<Option<Vec<u8>>>(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::Ask) => Ok(None),
            Err(e) => Err(self.nodes.conns.failed(src, e).await),
        }
    }

    /// MIGRATE of one key, replacing the target's copy when `replace`.
    pub(super) async fn migrate_one(
        &self,
        src: &str,
        dst: &str,
        key: &[u8],
        replace: bool,
        asking: bool,
    ) -> Result<(), String> {
        let mut p = redis::pipe();
        if asking {
            p.cmd("ASKING").ignore();
        }
        p.add_command(self.migrate_cmd(dst, &[key.to_vec()], replace)).ignore();
        self.nodes
            .conns
            .pipeline_as::<()>(src, &p)
            .await
            .map_err(|e| format!("MIGRATE of {:?}: {e}", String::from_utf8_lossy(key)))
    }

    /// Moves every key of `slot` from `src` to `dst`, in batches by keys and bytes.
    /// `estimate` is the slot's size from the snapshot (0 = unknown): a slot well under
    /// `migrate-batch-bytes` skips sizing its keys. The last MIGRATE of each listing is
    /// pipelined with the next listing, so an emptied slot costs no extra round trip.
    pub(super) async fn drain_slot<P: Pace>(
        &self,
        m: SlotMove<'_>,
        dst_replicas: usize,
        pace: &P,
    ) -> Result<MoveStats, ClusterError> {
        let SlotMove { slot, src, dst, estimate, .. } = m;
        let fail = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        let list = || {
            let mut c = redis::cmd("CLUSTER");
            c.arg("GETKEYSINSLOT").arg(slot).arg(self.opts.batch_keys);
            c
        };
        let mut stats = MoveStats::default();
        let mut keys: Vec<Vec<u8>> = self.nodes.conns.query(src, &list()).await.map_err(fail)?;
        let mut first = true;
        // A batch a replica did not acknowledge in time: confirmed once more at the end.
        let mut behind = false;
        while !keys.is_empty() {
            let small = first
                && estimate > 0
                && estimate.saturating_mul(2) <= self.opts.batch_bytes
                && keys.len() < self.opts.batch_keys as usize;
            first = false;
            let sizes: Vec<u64> = if small {
                vec![estimate / keys.len() as u64; keys.len()]
            } else {
                self.key_sizes(src, &keys).await.map_err(fail)?
            };
            let mut start = 0;
            let mut next = None;
            while start < keys.len() {
                let mut end = start;
                let mut bytes = 0u64;
                while end < keys.len() && (end == start || bytes + sizes[end] <= self.opts.batch_bytes) {
                    bytes += sizes[end];
                    end += 1;
                }
                pace.take(bytes).await;
                let last = end == keys.len();
                next = self
                    .migrate_batch((slot, src, dst), &keys[start..end], last.then(list), &mut stats.set_aside)
                    .await?;
                // Once a batch was not acknowledged, the slot's end waits for them all.
                if !behind && let Some(why) = self.nodes.replicas_hold(slot, dst, dst_replicas, BATCH_WAIT).await {
                    warn!(slot, node = %dst, cause = %why, "the target's replicas did not acknowledge a batch in time");
                    behind = true;
                }
                stats.keys += (end - start) as u64;
                stats.bytes += bytes;
                start = end;
            }
            keys = match next {
                Some(k) => k,
                None => self.nodes.conns.query(src, &list()).await.map_err(fail)?,
            };
        }
        if behind {
            stats.unreplicated = self.nodes.replicas_hold(slot, dst, dst_replicas, HOLD_WAIT).await;
        }
        Ok(stats)
    }

    /// Assigns `slot` to `dst_id`: on the source, then the target ([`super::commit`]), then
    /// the others.
    async fn assign(
        &self,
        topo: &Topology,
        slot: u16,
        (src, src_id): (&str, &str),
        (dst, dst_id): (&str, &str),
    ) -> Result<(), ClusterError> {
        let commit = self.commit(((src, src_id), (dst, dst_id)), &[slot]).await;
        if let Some(Err(message)) = commit.results.into_iter().next() {
            return Err(ClusterError::Move { bucket: slot as u64, message, open: true });
        }
        self.nodes.follow_demoted(dst, dst_id, &commit.demoted).await;
        let others = topo.masters.iter().filter(|m| m.addr != src && m.addr != dst && !m.is_failed());
        let results = futures::future::join_all(
            others
                .map(|m| async move { (m.addr.as_str(), self.nodes.setslot(&m.addr, slot, &["NODE", dst_id]).await) }),
        )
        .await;
        for (addr, r) in results {
            if let Err(e) = r {
                debug!(slot, node = %addr, cause = %e, "SETSLOT NODE on another master failed; gossip will carry it");
            }
        }
        Ok(())
    }

    /// Moves `slot` from `src` to `dst`. `resume` continues a move a crash interrupted,
    /// where either side may be past its first step; a fresh move requires both steps,
    /// so a stale plan (the source no longer owns the slot) fails before any key moves.
    pub(super) async fn finish<P: Pace, F: Fence>(
        &self,
        topo: &Topology,
        m: SlotMove<'_>,
        pace: &P,
        fence: &F,
    ) -> Result<MoveStats, ClusterError> {
        let SlotMove { slot, src, dst, resume, .. } = m;
        let src_id = self.nodes.node_id_of(topo, src)?;
        let dst_id = self.nodes.node_id_of(topo, dst)?;
        // A refused step is settled as an open slot: replicas may have taken it (see
        // `legacy_group`).
        let early = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        if let Err(e) = self.nodes.setslot(dst, slot, &["IMPORTING", &src_id]).await {
            if !resume {
                return Err(early(format!("IMPORTING on {dst}: {e}")));
            }
            debug!(slot, cause = %e, "IMPORTING not set");
        }
        if let Err(e) = self.nodes.setslot(src, slot, &["MIGRATING", &dst_id]).await {
            if !resume {
                // Undo the first step: nothing has moved yet.
                let _ = self.nodes.setslot(dst, slot, &["STABLE"]).await;
                return Err(early(format!("MIGRATING on {src}: {e}")));
            }
            debug!(slot, cause = %e, "MIGRATING not set");
        }
        let dst_replicas = topo.replica_count(&dst_id);
        // drain_slot returns only once GETKEYSINSLOT on the source answers empty.
        let stats = self.drain_slot(m, dst_replicas, pace).await?;
        // The commit fence: a holder that lost the lock leaves the slot open (and its
        // move recorded) for the next holder's repair, which finishes it.
        if let Err(cause) = fence.check().await {
            return Err(ClusterError::Fenced { bucket: slot as u64, cause });
        }
        self.assign(topo, slot, (src, &src_id), (dst, &dst_id)).await?;
        Ok(stats)
    }
}
