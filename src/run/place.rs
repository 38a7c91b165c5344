//! Placement in a run: the role changes [`crate::plan::placement`] chose, carried out
//! after the slot moves, under the same lock, in the same answer. Placement has its own
//! reasons: `size-threshold-percent` and `minimum-size` gate slot moves only; a broken
//! rule acts whenever it is broken. Nothing is changed when the run failed or stopped,
//! or while a member is down or a move is open; a change refused is reported in the
//! server's words and not tried again in the same run.
//!
//! Each change's intent is recorded first (`pending` in the role history: `roles` in
//! etcd, the state file standalone) and cleared once it has ended. A change is a single
//! command the server carries out whole (a manual failover completes or is abandoned by
//! the server within its own 5 s; a CLUSTER REPLICATE is applied at once and the sync
//! goes on by itself), so there is nothing half-done to settle: the next holder reports
//! the intent it finds, reads the roles as they stand and plans from them.
//!
//! Owns: whether placement acts in a run, the order, the byte budget for full syncs, the
//! outcomes and their metric. Does not own: the rules or the commands.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Context, Finished, Outcome, Trigger};
use crate::cluster::{Cluster, ClusterError};
use crate::coord::{GuardFence, LockGuard};
use crate::decide::SkipReason;
use crate::metrics::MoveOutcome;
use crate::model::ClusterSnapshot;
use crate::plan::placement::{Placement, PlacementOptions, RoleChange, RoleResult, place};

impl Context {
    /// What placement makes of `snap`: always computed and shown, acted on only when
    /// `topology.enabled` (default: the nodes stand on more than one host). A run
    /// (`trigger` given) notes the roles it sees in the fleet's role history, for
    /// failback; a dry run only reads it.
    pub(super) async fn placement(&self, trigger: Option<&Trigger>, snap: &ClusterSnapshot) -> Placement {
        let t = &self.config.topology;
        let now = chrono::Utc::now();
        let mut history = match self.coordinator.roles().await {
            Ok(h) => h,
            Err(e) => {
                warn!(cause = %e, "cannot read the role history: every node taken as quiet");
                Default::default()
            }
        };
        history.observe(snap, now, t.failback_after.0);
        let cut = if trigger.is_some() { history.pending.take() } else { history.pending.clone() };
        if trigger.is_some()
            && let Err(e) = self.coordinator.set_roles(&history).await
        {
            warn!(cause = %e, "cannot write the role history; the next run sees these roles as new");
        }
        let opts = PlacementOptions {
            replicas_per_master: t.replicas_per_master,
            max_role_changes: t.max_role_changes_per_run,
            tolerance_percent: self.config.balance.tolerance_percent,
            settling: history.settling(now, t.failback_after.0).into_iter().collect(),
            flapping: history.flapping(t.failback_after.0).into_iter().collect(),
            former_masters: history.former_masters().into_iter().collect(),
        };
        let mut p = place(snap, &opts);
        if let Some(c) = cut {
            p.explanation.insert(
                0,
                format!(
                    "placement: a role change by {} was cut short (started {}): {}; the roles are read as they stand now",
                    c.holder,
                    c.started_at.to_rfc3339(),
                    c.change
                ),
            );
        }
        self.metrics.observe_placement(snap, &p);
        self.status.lock().unwrap().placement = Some(p.clone());
        let why_not = match t.enabled {
            Some(false) => Some("topology.enabled = false"),
            None if p.hosts.len() < 2 => Some("every node stands on one host"),
            _ if trigger == Some(&Trigger::Evacuation) => Some("an evacuation changes no roles"),
            _ => None,
        };
        if let Some(why) = why_not
            && !p.actions.is_empty()
        {
            p.explanation.push(format!("placement: {} role change(s) wanted, none made: {why}", p.actions.len()));
            p.actions.clear();
        }
        p
    }

    /// Carries out `p`'s role changes once the slot part of the run has ended as
    /// `finished` says, and puts the placement in its answer.
    pub(super) async fn place_after(
        &self,
        guard: &LockGuard,
        cancel: &CancellationToken,
        mut p: Placement,
        finished: &mut Finished,
    ) {
        let held = match &finished.outcome {
            Outcome::Rebalanced => None,
            Outcome::Skipped(
                SkipReason::BelowThreshold
                | SkipReason::BelowMinimumSize
                | SkipReason::NothingToMove
                | SkipReason::CriticalMember
                | SkipReason::NoRoom,
            ) => None,
            other => Some(format!("the run ended {}: role changes wait for the next run", other.label())),
        };
        let fence = GuardFence { coordinator: &self.coordinator, guard };
        let budget = self.config.execution.max_bytes_per_run.0;
        let mut spent = finished.answer.moved_bytes.unwrap_or(0);
        for a in &mut p.actions {
            let bytes = a.change.bytes();
            let not_started = if let Some(why) = &held {
                Some(why.clone())
            } else if cancel.is_cancelled() || guard.lost.is_cancelled() {
                Some("the run was stopped".to_string())
            } else if budget > 0 && spent + bytes > budget {
                Some(format!("a full sync of {bytes} bytes would pass execution.max-bytes-per-run"))
            } else {
                None
            };
            let started = std::time::Instant::now();
            let (outcome, message) = match not_started {
                Some(why) => (MoveOutcome::NotStarted, why),
                None => match self.with_intent(&a.change, self.cluster.change_role(&a.change, &fence)).await {
                    Ok(done) => {
                        spent += bytes;
                        info!(rule = a.rule.as_str(), why = %a.why, seconds = done.seconds, "placement: {}", done.message);
                        (MoveOutcome::Done, done.message)
                    }
                    Err(ClusterError::RoleFenced(e)) => (MoveOutcome::LockLost, e.to_string()),
                    Err(e) => {
                        warn!(rule = a.rule.as_str(), why = %a.why, cause = %e, "placement: role change failed");
                        (MoveOutcome::Failed, e.to_string())
                    }
                },
            };
            self.metrics.placement.role_changes_total.with_label_values(&[outcome.as_str()]).inc();
            let seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
            a.result = Some(RoleResult { outcome: outcome.as_str().to_string(), message, seconds });
        }
        self.note_failovers(&p).await;
        finished.answer.placement = Some(p);
    }

    /// Runs `change`, its intent recorded in the role history first and cleared after:
    /// a holder killed mid-change leaves it for the next holder to report.
    async fn with_intent<T>(&self, change: &RoleChange, run: impl std::future::Future<Output = T>) -> T {
        let pending = crate::coord::roles::PendingChange {
            holder: self.coordinator.member().to_string(),
            started_at: chrono::Utc::now(),
            change: describe(change),
        };
        let mut history = self.coordinator.roles().await.unwrap_or_default();
        history.pending = Some(pending);
        if let Err(e) = self.coordinator.set_roles(&history).await {
            warn!(cause = %e, "cannot record the role change's intent");
        }
        let out = run.await;
        if let Ok(mut h) = self.coordinator.roles().await {
            h.pending = None;
            let _ = self.coordinator.set_roles(&h).await;
        }
        out
    }

    /// The failovers this run made, in the fleet's role history.
    async fn note_failovers(&self, p: &Placement) {
        let done =
            p.actions.iter().filter(|a| a.result.as_ref().is_some_and(|r| r.outcome == MoveOutcome::Done.as_str()));
        let swaps: Vec<(&str, &str)> = done
            .filter_map(|a| match &a.change {
                RoleChange::Failover { node, master, .. } => Some((node.as_str(), master.as_str())),
                RoleChange::Replicate { .. } => None,
            })
            .collect();
        if swaps.is_empty() {
            return;
        }
        let now = chrono::Utc::now();
        let Ok(mut history) = self.coordinator.roles().await else { return };
        for (promoted, demoted) in swaps {
            history.note(promoted, true, now);
            history.note(demoted, false, now);
        }
        if let Err(e) = self.coordinator.set_roles(&history).await {
            warn!(cause = %e, "cannot write the role history; the next run sees these roles as new");
        }
    }
}

/// A role change in a sentence, for the intent a holder records.
fn describe(c: &RoleChange) -> String {
    match c {
        RoleChange::Failover { address, master, .. } => format!("CLUSTER FAILOVER on {address} (replica of {master})"),
        RoleChange::Replicate { address, to_master, .. } => format!("CLUSTER REPLICATE {to_master} on {address}"),
    }
}

/// What a sidecar says of the node beside it: (member id, `cluster.host`, `cluster.zone`).
pub(super) type Registered = (String, Option<String>, Option<String>);

impl Context {
    /// The hosts and zones the sidecars registered (this one's own from its config).
    pub(super) async fn registered_stands(&self) -> Vec<Registered> {
        let c = &self.config.cluster;
        /// The part of a registration placement reads.
        #[derive(serde::Deserialize)]
        struct Stand {
            member: String,
            host: Option<String>,
            zone: Option<String>,
        }
        let mut out = vec![(self.coordinator.member().to_string(), c.host.clone(), c.zone.clone())];
        if let Ok(sidecars) = self.coordinator.sidecars::<Stand>().await {
            out.extend(sidecars.into_iter().map(|s| (s.member, s.host, s.zone)));
        }
        out.retain(|(_, h, z)| h.is_some() || z.is_some());
        out
    }
}

/// Hosts and zones for the nodes the server gave none: a node's zone from the sidecar
/// beside it, else from `topology.zones` by host, address or node id; its host from the
/// sidecar beside it where it announces no hostname.
pub(super) fn apply_stands(
    snap: &mut ClusterSnapshot,
    zones: &std::collections::BTreeMap<String, String>,
    registered: &[Registered],
) {
    let beside = |id: &str, address: &str| registered.iter().find(|(m, _, _)| m == id || m == address);
    let zone_of = |host: &str, address: &str, id: &str| {
        beside(id, address)
            .and_then(|(_, _, z)| z.clone())
            .or_else(|| [host, address, id].iter().find_map(|k| zones.get(*k)).cloned())
    };
    for m in snap.members.iter_mut() {
        if m.hostname.is_none() {
            m.hostname = beside(&m.id, &m.address).and_then(|(_, h, _)| h.clone());
        }
        if m.zone.is_none() {
            m.zone = zone_of(m.host(), &m.address, &m.id);
        }
    }
    for r in snap.replicas.iter_mut() {
        if r.hostname.is_none() {
            r.hostname = beside(&r.id, &r.address).and_then(|(_, h, _)| h.clone());
        }
        if r.zone.is_none() {
            r.zone = zone_of(r.host(), &r.address, &r.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;

    #[test]
    fn a_sidecars_registration_wins_over_the_zone_map_and_the_server_over_both() {
        let mut s = make_snapshot(make_members(3), &[(1, vec![0]), (1, vec![1]), (1, vec![2])]);
        s.members[0].zone = Some("from-server".into());
        s.members[1].address = "10.0.0.2:6379".into();
        s.members[2].address = "10.0.0.3:6379".into();
        let zones =
            [("10.0.0.2".to_string(), "map-zone".to_string()), ("10.0.0.3".to_string(), "map-zone".to_string())];
        let registered = vec![("m3".to_string(), Some("node-c".to_string()), Some("registered".to_string()))];
        apply_stands(&mut s, &zones.into_iter().collect(), &registered);
        let got: Vec<(Option<&str>, &str)> = s.members.iter().map(|m| (m.zone.as_deref(), m.host())).collect();
        assert_eq!(got[0].0, Some("from-server"));
        assert_eq!(got[1], (Some("map-zone"), "10.0.0.2"), "the map, by the host (the IP)");
        assert_eq!(got[2], (Some("registered"), "node-c"), "the sidecar beside it");
    }
}
