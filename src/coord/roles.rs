//! What the fleet has seen of each node's role over time (`roles` in etcd, the state file
//! standalone): when it last changed role, its recent changes, and whether it has been a
//! master. Placement reads it for failback: a node gets the master role back only once
//! it has been quiet for `topology.failback-after`, and a node that flaps is left alone.
//!
//! Owns: the record, its update from a snapshot, and what it says about a node. Does not
//! own: what placement does with that ([`crate::plan::placement`]).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Backend, Coordinator, LockError};
use crate::model::ClusterSnapshot;

/// Role changes kept per node, for this many failback periods.
const KEEP_PERIODS: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RoleHistory {
    pub nodes: BTreeMap<String, NodeRoles>,
    /// The role change a holder is making: written before it is sent, cleared once it
    /// has ended. Found set by the next holder, it was cut short (the holder died or
    /// lost the lock), and that holder reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingChange>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingChange {
    pub holder: String,
    pub started_at: DateTime<Utc>,
    /// The change, in a sentence.
    pub change: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRoles {
    pub master: bool,
    /// When it took its present role; None: it had it when first seen.
    pub since: Option<DateTime<Utc>>,
    /// Its role changes seen within the last few failback periods.
    pub changes: Vec<DateTime<Utc>>,
    /// It has been seen as a master.
    pub was_master: bool,
    /// When a snapshot last showed it; None in records written before this was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<DateTime<Utc>>,
}

impl RoleHistory {
    /// Notes each node's role in `snap` at `now`: a node seen in another role than last
    /// time changed role now. A node a snapshot does not show (a replica that did not
    /// answer, one whose role the views disagree on) keeps its record for a few failback
    /// periods after it was last seen: a node read as new would lose its changes, so a
    /// flapping one would pass for quiet and a former master for a replica.
    /// A node is listed in one role: a master in the snapshot is not also a replica.
    pub fn observe(&mut self, snap: &ClusterSnapshot, now: DateTime<Utc>, failback_after: Duration) {
        let keep = chrono::Duration::from_std(failback_after * KEEP_PERIODS).unwrap_or(chrono::Duration::MAX);
        let masters: std::collections::BTreeSet<&str> = snap.members.iter().map(|m| m.id.as_str()).collect();
        let seen = snap.members.iter().map(|m| (m.id.as_str(), true)).chain(
            snap.replicas
                .iter()
                .filter(|r| r.healthy && !masters.contains(r.id.as_str()))
                .map(|r| (r.id.as_str(), false)),
        );
        let mut next = BTreeMap::new();
        for (id, master) in seen {
            let mut n = self.nodes.remove(id).unwrap_or(NodeRoles {
                master,
                since: None,
                changes: vec![],
                was_master: false,
                seen: None,
            });
            n.seen = Some(now);
            if n.master != master {
                n.master = master;
                n.since = Some(now);
                n.changes.push(now);
            }
            n.was_master |= master;
            n.changes.retain(|t| now - *t <= keep);
            next.insert(id.to_string(), n);
        }
        for (id, mut n) in std::mem::take(&mut self.nodes) {
            n.changes.retain(|t| now - *t <= keep);
            if n.seen.is_some_and(|t| now - t <= keep) {
                next.insert(id, n);
            }
        }
        self.nodes = next;
    }

    /// Notes a role change this fleet made (a failover), so the next run counts it
    /// even if the role has changed back by then.
    pub fn note(&mut self, id: &str, master: bool, now: DateTime<Utc>) {
        let n = self.nodes.entry(id.to_string()).or_insert(NodeRoles {
            master: !master,
            since: None,
            changes: vec![],
            was_master: false,
            seen: Some(now),
        });
        if n.master != master {
            n.master = master;
            n.since = Some(now);
            n.changes.push(now);
        }
        n.was_master |= master;
    }

    /// Nodes that changed role within `window` of `now`.
    pub fn settling(&self, now: DateTime<Utc>, window: Duration) -> Vec<String> {
        let w = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        self.nodes.iter().filter(|(_, n)| n.since.is_some_and(|s| now - s < w)).map(|(id, _)| id.clone()).collect()
    }

    /// Nodes with two role changes less than `window` apart among those kept: flapping.
    pub fn flapping(&self, window: Duration) -> Vec<String> {
        let w = chrono::Duration::from_std(window).unwrap_or(chrono::Duration::MAX);
        self.nodes
            .iter()
            .filter(|(_, n)| n.changes.windows(2).any(|p| p[1] - p[0] < w))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Replicas that have been masters: the shard's former master, for failback.
    pub fn former_masters(&self) -> Vec<String> {
        self.nodes.iter().filter(|(_, n)| !n.master && n.was_master).map(|(id, _)| id.clone()).collect()
    }
}

impl Coordinator {
    pub async fn roles(&self) -> Result<RoleHistory, LockError> {
        match &self.backend {
            Backend::Local(_) => Ok(self.kept().await.roles),
            Backend::Etcd(_) => Ok(self.get_json(self.keys.roles()).await?.unwrap_or_default()),
        }
    }

    pub async fn set_roles(&self, roles: &RoleHistory) -> Result<(), LockError> {
        match &self.backend {
            Backend::Local(_) => self.update_kept(|k| k.roles = roles.clone()).await,
            Backend::Etcd(_) => self.put_json(self.keys.roles(), roles, None).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Replica, fixtures::*};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).unwrap()
    }

    /// A replica of `master`, answering (and in sync) when `healthy`.
    fn replica(id: &str, master: &str, healthy: bool) -> Replica {
        Replica {
            id: id.into(),
            address: String::new(),
            hostname: None,
            zone: None,
            master: Some(master.into()),
            healthy,
            in_sync: healthy,
        }
    }

    #[test]
    fn a_role_change_is_dated_and_a_flapping_node_is_named() {
        let w = Duration::from_secs(600);
        let mut snap = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
        let replica = |id: &str, master: &str| replica(id, master, true);
        snap.replicas = vec![replica("r1", "m1")];
        let mut h = RoleHistory::default();
        h.observe(&snap, at(0), w);
        assert!(h.settling(at(0), w).is_empty(), "roles held when first seen are not changes");
        assert!(h.former_masters().is_empty());
        // r1 takes m1's role; m1 comes back as its replica.
        snap.members[0].id = "r1".into();
        snap.replicas = vec![replica("m1", "r1")];
        h.observe(&snap, at(60), w);
        assert_eq!(h.settling(at(60), w), vec!["m1".to_string(), "r1".to_string()]);
        assert_eq!(h.former_masters(), vec!["m1".to_string()]);
        assert!(h.settling(at(700), w).is_empty(), "quiet after failback-after");
        assert_eq!(h.flapping(w), Vec::<String>::new(), "one change each");
        // Back within the window: both flap.
        snap.members[0].id = "m1".into();
        snap.replicas = vec![replica("r1", "m1")];
        h.observe(&snap, at(300), w);
        assert_eq!(h.flapping(w), vec!["m1".to_string(), "r1".to_string()]);
        // Changes older than three periods are forgotten.
        h.observe(&snap, at(300 + 1900), w);
        assert!(h.flapping(w).is_empty());
    }

    #[test]
    fn a_node_a_snapshot_leaves_out_keeps_its_changes() {
        let w = Duration::from_secs(10);
        let mut snap = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
        snap.replicas = vec![replica("r1", "m1", true)];
        let mut h = RoleHistory::default();
        h.observe(&snap, at(0), w);
        // r1 takes m1's role; m1, resyncing, does not answer at first.
        snap.members[0].id = "r1".into();
        snap.replicas = vec![replica("m1", "r1", false)];
        h.observe(&snap, at(1), w);
        snap.replicas = vec![replica("m1", "r1", true)];
        h.observe(&snap, at(2), w);
        assert_eq!(h.former_masters(), vec!["m1".to_string()], "{h:?}");
        assert_eq!(h.nodes["m1"].since, Some(at(2)), "dated once, when first seen in its new role");
        assert!(h.settling(at(12), w).is_empty(), "quiet 10 s after the change: {h:?}");
        // A view listing r1 as a master and as a replica at once does not date a change.
        snap.replicas.push(replica("r1", "m1", true));
        h.observe(&snap, at(13), w);
        assert!(h.settling(at(13), w).is_empty(), "{h:?}");
        // Gone for good: forgotten once its changes are older than three periods.
        snap.members[0].id = "m3".into();
        snap.replicas.clear();
        h.observe(&snap, at(14), w);
        assert!(h.nodes.contains_key("r1"));
        h.observe(&snap, at(45), w);
        assert!(!h.nodes.contains_key("r1") && !h.nodes.contains_key("m1"), "{h:?}");
    }
}
