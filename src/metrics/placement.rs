//! What placement found, as gauges: masters per host and zone, replicas in sync per
//! master, broken rules.

use super::Metrics;
use crate::model::ClusterSnapshot;
use crate::plan::placement::{Placement, Rule};

impl Metrics {
    pub fn observe_placement(&self, snap: &ClusterSnapshot, p: &Placement) {
        self.masters.reset();
        for h in &p.hosts {
            self.masters.with_label_values(&[&h.name]).set(h.masters.len() as i64);
        }
        self.masters_by_zone.reset();
        for z in &p.zones {
            self.masters_by_zone.with_label_values(&[&z.name]).set(z.masters.len() as i64);
        }
        self.shard_replicas.reset();
        for m in &snap.members {
            let n =
                snap.replicas.iter().filter(|r| r.master.as_deref() == Some(&m.id) && r.healthy && r.in_sync).count();
            self.shard_replicas.with_label_values(&[&m.id]).set(n as i64);
        }
        for r in Rule::ALL {
            self.placement_violations.with_label_values(&[r.as_str()]).set(p.violations_of(r) as i64);
        }
    }
}
