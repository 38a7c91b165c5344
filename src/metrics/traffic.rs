//! What traffic the last plan saw, as gauges: CPU and network rates per master and the
//! slots too hot to move, where the servers measure traffic (absent otherwise).

use prometheus::{GaugeVec, IntGaugeVec};

use super::{Builder, MEMBER, Metrics};
use crate::model::ClusterSnapshot;
use crate::plan::Plan;
use crate::plan::traffic::{TrafficInput, per_member};

pub struct TrafficMetrics {
    pub member_cpu_usec_rate: GaugeVec,
    pub member_network_bytes_rate: GaugeVec,
    pub hot_slots: IntGaugeVec,
}

impl TrafficMetrics {
    pub(super) fn new(r: &Builder) -> TrafficMetrics {
        TrafficMetrics {
            member_cpu_usec_rate: r.gauges(
                "member_cpu_usec_rate",
                "CPU microseconds per second the slots of each master cost, decayed over traffic.window.",
                MEMBER,
            ),
            member_network_bytes_rate: r.gauges(
                "member_network_bytes_rate",
                "Network bytes per second in and out of the slots of each master, decayed over traffic.window.",
                &["member", "direction"],
            ),
            hot_slots: r.int_gauges(
                "hot_slots",
                "Slots on each master whose CPU rate alone is above any master's band: named, not moved.",
                MEMBER,
            ),
        }
    }
}

impl Metrics {
    /// The traffic of the last plan; the gauges are emptied where traffic is off.
    pub fn observe_traffic(&self, snap: &ClusterSnapshot, input: Option<&TrafficInput>, plan: &Plan) {
        let g = &self.traffic;
        g.member_cpu_usec_rate.reset();
        g.member_network_bytes_rate.reset();
        g.hot_slots.reset();
        let (Some(t), Some(tp)) = (input, plan.traffic.as_ref()) else { return };
        let (cpu, rx, tx) = (per_member(snap, &t.cpu), per_member(snap, &t.net_in), per_member(snap, &t.net_out));
        for (i, m) in snap.members.iter().enumerate() {
            g.member_cpu_usec_rate.with_label_values(&[&m.id]).set(cpu[i]);
            g.member_network_bytes_rate.with_label_values(&[&m.id, "in"]).set(rx[i]);
            g.member_network_bytes_rate.with_label_values(&[&m.id, "out"]).set(tx[i]);
            let hot = tp.hot.iter().filter(|h| h.member == m.label()).count();
            g.hot_slots.with_label_values(&[&m.id]).set(hot as i64);
        }
    }
}
