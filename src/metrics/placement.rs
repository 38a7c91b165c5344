//! What placement found, as gauges: masters per host and zone, replicas in sync per
//! master, broken rules.

use prometheus::{IntCounterVec, IntGaugeVec};

use super::{Builder, MEMBER, Metrics, MoveOutcome};
use crate::model::ClusterSnapshot;
use crate::plan::placement::{Placement, Rule};

pub struct PlacementMetrics {
    pub masters: IntGaugeVec,
    pub masters_by_zone: IntGaugeVec,
    pub shard_replicas: IntGaugeVec,
    pub placement_violations: IntGaugeVec,
    /// Outcomes as moves count theirs: done, failed, lock_lost, not_started.
    pub role_changes_total: IntCounterVec,
}

impl PlacementMetrics {
    pub(super) fn new(r: &Builder) -> PlacementMetrics {
        PlacementMetrics {
            masters: r.int_gauges("masters", "Masters standing on each host.", &["host"]),
            masters_by_zone: r.int_gauges("masters_by_zone", "Masters standing in each zone (zones known).", &["zone"]),
            shard_replicas: r.int_gauges("shard_replicas", "Replicas in sync with each master.", MEMBER),
            placement_violations: r.int_gauges(
                "placement_violations",
                "Times each placement rule is broken, at the last snapshot a run placed.",
                &["rule"],
            ),
            role_changes_total: r.counters("role_changes_total", "Placement role changes by outcome.", &["outcome"]),
        }
    }

    pub(super) fn create_label_values(&self) {
        for r in Rule::ALL {
            self.placement_violations.with_label_values(&[r.as_str()]);
        }
        for o in MoveOutcome::ALL {
            self.role_changes_total.with_label_values(&[o.as_str()]);
        }
    }
}

impl Metrics {
    pub fn observe_placement(&self, snap: &ClusterSnapshot, p: &Placement) {
        let g = &self.placement;
        g.masters.reset();
        for h in &p.hosts {
            g.masters.with_label_values(&[&h.name]).set(h.masters.len() as i64);
        }
        g.masters_by_zone.reset();
        for z in &p.zones {
            g.masters_by_zone.with_label_values(&[&z.name]).set(z.masters.len() as i64);
        }
        g.shard_replicas.reset();
        for m in &snap.members {
            let n =
                snap.replicas.iter().filter(|r| r.master.as_deref() == Some(&m.id) && r.healthy && r.in_sync).count();
            g.shard_replicas.with_label_values(&[&m.id]).set(n as i64);
        }
        for r in Rule::ALL {
            g.placement_violations.with_label_values(&[r.as_str()]).set(p.violations_of(r) as i64);
        }
    }
}
