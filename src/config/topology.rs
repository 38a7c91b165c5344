//! `[topology]`: where masters and replicas should stand (placement); the rules these
//! keys tune are the placement planner's.
//!
//! Owns: the section's keys, defaults and checks. Does not own: the rules.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Dur, Size};

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TopologyConfig {
    /// None: on when the nodes stand on more than one host.
    pub enabled: Option<bool>,
    /// Replicas every master should have in sync; None: the most common count.
    pub replicas_per_master: Option<u32>,
    /// Role changes (a failover or a replica re-pointed) per run, one shard at a time.
    pub max_role_changes_per_run: u32,
    /// A replica further behind its master than this is not in sync: never promoted.
    pub max_lag_bytes: Size,
    /// A node gets the master role back (or gives it up) only after this long in its
    /// present role; two role changes within it and it is left alone.
    pub failback_after: Dur,
    /// Zone of a host or node (hostname, IP, `ip:port` or node id), where the server
    /// reports none (Valkey's `availability-zone`).
    pub zones: BTreeMap<String, String>,
}

impl Default for TopologyConfig {
    fn default() -> Self {
        TopologyConfig {
            enabled: None,
            replicas_per_master: None,
            max_role_changes_per_run: 2,
            max_lag_bytes: Size(1 << 20),
            failback_after: Dur(std::time::Duration::from_secs(600)),
            zones: BTreeMap::new(),
        }
    }
}

impl TopologyConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if let Some(n) = self.replicas_per_master
            && n > 16
        {
            errs.push(format!("topology.replicas-per-master must be 0..=16, got {n}"));
        }
        if self.max_role_changes_per_run > 64 {
            errs.push(format!(
                "topology.max-role-changes-per-run must be 0..=64, got {}",
                self.max_role_changes_per_run
            ));
        }
        for (k, v) in &self.zones {
            if v.trim().is_empty() {
                errs.push(format!("topology.zones.{k:?}: the zone is empty"));
            }
        }
    }
}
