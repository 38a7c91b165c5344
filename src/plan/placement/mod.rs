//! Placement: where masters and replicas stand, and the role changes that set it right.
//! No slot moves here; the byte plan is [`super::plan`]'s.
//!
//! Rules, in priority order (a lower one never undoes a higher one):
//! 1. *redundancy*: every master has `topology.replicas-per-master` healthy replicas
//!    (default: the most common count). A short one gets a replica of a master with more
//!    than it needs (`CLUSTER REPLICATE`), preferring one on another host and zone.
//! 2. *apart*: no replica on its master's host; where zones are known and there are
//!    enough of them, a shard's nodes in distinct zones. Fixed by a role swap within the
//!    shard where that separates it (no data moves), else by exchanging the replica with
//!    one of another shard (two full syncs).
//! 3. *spread*: masters per host, and per zone, within one of each other, fixed by
//!    `CLUSTER FAILOVER` on an in-sync replica where the role is wanted (never TAKEOVER).
//!    Among the failovers that fix the count, the one leaving the busiest host with the
//!    fewest master bytes.
//! 4. *failback* (within spread): a failover that gives the role back to a replica that
//!    was a master comes first; no failover touches a node that changed role within
//!    `topology.failback-after`, or one that flaps (two changes within it).
//!
//! Each rule is applied to a simulated layout, so later actions see earlier ones; one
//! action per shard, at most `max_role_changes` in all. The plan is deterministic: ties
//! go by node id.
//!
//! Owns: the layout (shards, hosts, zones), the rules and the actions. Does not own: how
//! a backend reads the layout or carries out an action.

mod layout;
mod rules;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use layout::{Layout, Stand};

use crate::model::ClusterSnapshot;

/// A placement rule: `autobalancer_placement_violations{rule}` and an action's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    Redundancy,
    Apart,
    Spread,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::Redundancy, Rule::Apart, Rule::Spread];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Redundancy => "redundancy",
            Rule::Apart => "apart",
            Rule::Spread => "spread",
        }
    }
}

/// One role change. Nodes are named by node id, with their address for messages.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RoleChange {
    /// `CLUSTER REPLICATE <to_master>` on the replica `node`: it follows `to_master` and
    /// takes a full copy of its data (`bytes`).
    Replicate { node: String, address: String, from_master: String, to_master: String, bytes: u64 },
    /// `CLUSTER FAILOVER` on `node`, an in-sync replica of `master`: the two swap roles.
    Failover { node: String, address: String, master: String },
}

impl RoleChange {
    /// The shards (master ids, before the change) the change touches.
    pub fn shards(&self) -> Vec<&str> {
        match self {
            RoleChange::Replicate { from_master, to_master, .. } => vec![from_master, to_master],
            RoleChange::Failover { master, .. } => vec![master],
        }
    }

    /// Data the change copies: a replica re-pointed syncs its new master in full.
    pub fn bytes(&self) -> u64 {
        match self {
            RoleChange::Replicate { bytes, .. } => *bytes,
            RoleChange::Failover { .. } => 0,
        }
    }
}

/// A role change and why; once a run has tried it, how that went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleAction {
    pub rule: Rule,
    #[serde(flatten)]
    pub change: RoleChange,
    pub why: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RoleResult>,
}

/// How a role change went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleResult {
    /// `done`, `failed`, `lock_lost` or `not_started` (`role_changes_total`'s outcome).
    pub outcome: String,
    /// What the server did, or its words for why not.
    pub message: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, Default)]
pub struct PlacementOptions {
    pub replicas_per_master: Option<u32>,
    pub max_role_changes: u32,
    pub tolerance_percent: u32,
    /// Nodes that changed role within `topology.failback-after`: spread neither
    /// promotes nor demotes them yet.
    pub settling: BTreeSet<String>,
    /// Nodes with two role changes within `failback-after` of each other: left alone.
    pub flapping: BTreeSet<String>,
    /// Replicas that were masters: spread gives the role back to one of them first.
    pub former_masters: BTreeSet<String>,
}

/// What placement found and would do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Placement {
    /// Replicas every master should have.
    pub replicas_per_master: u32,
    /// Each host (then each zone, if any is known): its masters, replicas and bytes on
    /// masters, before the actions.
    pub hosts: Vec<Stand>,
    pub zones: Vec<Stand>,
    /// Broken rules before the actions, with how many times each is broken.
    pub violations: BTreeMap<Rule, u32>,
    pub actions: Vec<RoleAction>,
    /// What is broken and stays so, and why; what is unknown (no zones).
    pub explanation: Vec<String>,
}

impl Placement {
    pub fn violations_of(&self, rule: Rule) -> u32 {
        self.violations.get(&rule).copied().unwrap_or(0)
    }
}

/// Placement of `snap`'s nodes: what stands where, what is broken, what would fix it.
pub fn place(snap: &ClusterSnapshot, opts: &PlacementOptions) -> Placement {
    let mut layout = Layout::of(snap);
    let r = opts.replicas_per_master.unwrap_or_else(|| layout.most_common_replica_count());
    let mut p = Placement {
        replicas_per_master: r,
        hosts: layout.stands(|n| Some(n.host.clone())),
        zones: layout.stands(|n| n.zone.clone()),
        ..Placement::default()
    };
    p.violations =
        Rule::ALL.iter().map(|&rule| (rule, rules::violations(&layout, rule, r))).filter(|(_, n)| *n > 0).collect();
    if !layout.zones_known() {
        p.explanation.push("placement: zones unknown (no availability-zone, no topology.zones): zone rules off".into());
    }
    if let Some(r) = layout.unsettled.first() {
        p.explanation.push(format!(
            "placement: roles are settling ({r} follows no master of this snapshot): no role changes this run"
        ));
        return p;
    }
    let mut plan = rules::Planner::new(&mut layout, r, opts);
    plan.run();
    p.actions = plan.actions;
    p.explanation.extend(plan.left);
    p
}
