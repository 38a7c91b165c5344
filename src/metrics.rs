//! Prometheus metrics: one registry, one field per metric, fixed-cardinality labels with
//! every value created up front (a dashboard sees zeros, not gaps). Never labelled by
//! bucket.
//!
//! Owns: names, help texts, label sets, the text exposition. Does not own: when figures
//! change (callers set them).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::decide::SkipReason;
use crate::plan::Plan;

pub const RUN_OUTCOMES: [&str; 4] = ["rebalanced", "skipped", "failed", "stopped"];
pub const LOCK_RESULTS: [&str; 3] = ["acquired", "held_elsewhere", "error"];
pub const MOVE_OUTCOMES: [&str; 3] = ["done", "failed", "cancelled"];

pub struct Metrics {
    pub registry: Registry,
    /// Runs by outcome.
    pub runs_total: IntCounterVec,
    /// Skipped runs by reason.
    pub skips_total: IntCounterVec,
    /// 1 while this sidecar holds the cluster lock.
    pub lock_held: IntGauge,
    /// Lock attempts by result.
    pub lock_acquisitions_total: IntCounterVec,
    /// When the last run (of any outcome) ended, Unix seconds.
    pub last_run_timestamp_seconds: Gauge,
    /// When the schedule fires next, Unix seconds (0 when disabled).
    pub next_run_timestamp_seconds: Gauge,
    /// Transfer size of the last simulation.
    pub transfer_size_bytes: IntGauge,
    /// Total size of the last simulation.
    pub cluster_size_bytes: IntGauge,
    /// Transfer / total of the last simulation, to set beside the threshold.
    pub transfer_ratio: Gauge,
    /// Bytes per member at the last snapshot.
    pub member_load_bytes: GaugeVec,
    /// Buckets per member at the last snapshot.
    pub member_buckets: GaugeVec,
    /// Target bytes per member at the last plan.
    pub member_target_bytes: GaugeVec,
    /// Bucket moves by outcome.
    pub moves_total: IntCounterVec,
    /// Bytes moved.
    pub moved_bytes_total: IntCounter,
    /// 1 while a rebalance or evacuation moves buckets.
    pub rebalance_in_progress: IntGauge,
    /// Moves planned for the running (or last) rebalance.
    pub rebalance_moves_planned: IntGauge,
    /// Moves done in the running (or last) rebalance.
    pub rebalance_moves_done: IntGauge,
    /// Duration of one bucket move.
    pub move_duration_seconds: Histogram,
    /// Duration of planning.
    pub plan_duration_seconds: Histogram,
    /// Duration of a snapshot.
    pub snapshot_duration_seconds: Histogram,
    /// Always 1; the version as a label.
    pub build_info: IntGaugeVecOne,
    /// balance.size-threshold-percent / 100, to draw beside the transfer ratio.
    pub size_threshold_ratio: Gauge,
    /// 1 while etcd answers the heartbeat (always 1 when standalone).
    pub etcd_up: IntGauge,
    /// Buckets still on the local member while it is evacuated (0 otherwise).
    pub evacuation_buckets_left: IntGauge,
    /// Bytes still on the local member while it is evacuated (0 otherwise).
    pub evacuation_bytes_left: IntGauge,
}

/// `autobalancer_build_info{version}`.
pub type IntGaugeVecOne = prometheus::IntGaugeVec;

fn buckets() -> Vec<f64> {
    vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let opts = |name: &str, help: &str| Opts::new(format!("autobalancer_{name}"), help.to_string());
        let hopts = |name: &str, help: &str| {
            HistogramOpts::new(format!("autobalancer_{name}"), help.to_string()).buckets(buckets())
        };
        let m = Metrics {
            runs_total: IntCounterVec::new(opts("runs_total", "Runs by outcome."), &["outcome"]).unwrap(),
            skips_total: IntCounterVec::new(opts("skips_total", "Skipped runs by reason."), &["reason"]).unwrap(),
            lock_held: IntGauge::with_opts(opts("lock_held", "1 while this sidecar holds the cluster lock.")).unwrap(),
            lock_acquisitions_total: IntCounterVec::new(
                opts("lock_acquisitions_total", "Lock attempts by result."),
                &["result"],
            )
            .unwrap(),
            last_run_timestamp_seconds: Gauge::with_opts(opts(
                "last_run_timestamp_seconds",
                "When the last run ended, Unix seconds.",
            ))
            .unwrap(),
            next_run_timestamp_seconds: Gauge::with_opts(opts(
                "next_run_timestamp_seconds",
                "When the schedule fires next, Unix seconds (0 when disabled).",
            ))
            .unwrap(),
            transfer_size_bytes: IntGauge::with_opts(opts(
                "transfer_size_bytes",
                "Transfer size of the last simulation.",
            ))
            .unwrap(),
            cluster_size_bytes: IntGauge::with_opts(opts("cluster_size_bytes", "Total size of the last simulation."))
                .unwrap(),
            transfer_ratio: Gauge::with_opts(opts("transfer_ratio", "Transfer / total of the last simulation."))
                .unwrap(),
            member_load_bytes: GaugeVec::new(
                opts("member_load_bytes", "Bytes per member at the last snapshot."),
                &["member"],
            )
            .unwrap(),
            member_buckets: GaugeVec::new(
                opts("member_buckets", "Buckets per member at the last snapshot."),
                &["member"],
            )
            .unwrap(),
            member_target_bytes: GaugeVec::new(
                opts("member_target_bytes", "Target bytes per member at the last plan."),
                &["member"],
            )
            .unwrap(),
            moves_total: IntCounterVec::new(opts("moves_total", "Bucket moves by outcome."), &["outcome"]).unwrap(),
            moved_bytes_total: IntCounter::with_opts(opts("moved_bytes_total", "Bytes moved.")).unwrap(),
            rebalance_in_progress: IntGauge::with_opts(opts(
                "rebalance_in_progress",
                "1 while a rebalance or evacuation moves buckets.",
            ))
            .unwrap(),
            rebalance_moves_planned: IntGauge::with_opts(opts(
                "rebalance_moves_planned",
                "Moves planned for the running or last rebalance.",
            ))
            .unwrap(),
            rebalance_moves_done: IntGauge::with_opts(opts(
                "rebalance_moves_done",
                "Moves done in the running or last rebalance.",
            ))
            .unwrap(),
            move_duration_seconds: Histogram::with_opts(hopts("move_duration_seconds", "Duration of one bucket move."))
                .unwrap(),
            plan_duration_seconds: Histogram::with_opts(hopts("plan_duration_seconds", "Duration of planning."))
                .unwrap(),
            snapshot_duration_seconds: Histogram::with_opts(hopts(
                "snapshot_duration_seconds",
                "Duration of a snapshot.",
            ))
            .unwrap(),
            size_threshold_ratio: Gauge::with_opts(opts(
                "size_threshold_ratio",
                "balance.size-threshold-percent / 100, to draw beside the transfer ratio.",
            ))
            .unwrap(),
            etcd_up: IntGauge::with_opts(opts("etcd_up", "1 while etcd answers the heartbeat (1 when standalone)."))
                .unwrap(),
            evacuation_buckets_left: IntGauge::with_opts(opts(
                "evacuation_buckets_left",
                "Buckets still on the local member while it is evacuated (0 otherwise).",
            ))
            .unwrap(),
            evacuation_bytes_left: IntGauge::with_opts(opts(
                "evacuation_bytes_left",
                "Bytes still on the local member while it is evacuated (0 otherwise).",
            ))
            .unwrap(),
            build_info: prometheus::IntGaugeVec::new(
                opts("build_info", "Always 1; the version as a label."),
                &["version"],
            )
            .unwrap(),
            registry,
        };
        m.register_all();
        for o in RUN_OUTCOMES {
            m.runs_total.with_label_values(&[o]);
        }
        for r in SkipReason::ALL {
            m.skips_total.with_label_values(&[r.as_str()]);
        }
        for r in LOCK_RESULTS {
            m.lock_acquisitions_total.with_label_values(&[r]);
        }
        for o in MOVE_OUTCOMES {
            m.moves_total.with_label_values(&[o]);
        }
        m.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    fn register_all(&self) {
        let r = &self.registry;
        r.register(Box::new(self.runs_total.clone())).unwrap();
        r.register(Box::new(self.skips_total.clone())).unwrap();
        r.register(Box::new(self.lock_held.clone())).unwrap();
        r.register(Box::new(self.lock_acquisitions_total.clone())).unwrap();
        r.register(Box::new(self.last_run_timestamp_seconds.clone())).unwrap();
        r.register(Box::new(self.next_run_timestamp_seconds.clone())).unwrap();
        r.register(Box::new(self.transfer_size_bytes.clone())).unwrap();
        r.register(Box::new(self.cluster_size_bytes.clone())).unwrap();
        r.register(Box::new(self.transfer_ratio.clone())).unwrap();
        r.register(Box::new(self.member_load_bytes.clone())).unwrap();
        r.register(Box::new(self.member_buckets.clone())).unwrap();
        r.register(Box::new(self.member_target_bytes.clone())).unwrap();
        r.register(Box::new(self.moves_total.clone())).unwrap();
        r.register(Box::new(self.moved_bytes_total.clone())).unwrap();
        r.register(Box::new(self.rebalance_in_progress.clone())).unwrap();
        r.register(Box::new(self.rebalance_moves_planned.clone())).unwrap();
        r.register(Box::new(self.rebalance_moves_done.clone())).unwrap();
        r.register(Box::new(self.move_duration_seconds.clone())).unwrap();
        r.register(Box::new(self.plan_duration_seconds.clone())).unwrap();
        r.register(Box::new(self.snapshot_duration_seconds.clone())).unwrap();
        r.register(Box::new(self.build_info.clone())).unwrap();
        r.register(Box::new(self.size_threshold_ratio.clone())).unwrap();
        r.register(Box::new(self.etcd_up.clone())).unwrap();
        r.register(Box::new(self.evacuation_buckets_left.clone())).unwrap();
        r.register(Box::new(self.evacuation_bytes_left.clone())).unwrap();
    }

    /// Records the figures of a simulation.
    pub fn observe_plan(&self, plan: &Plan) {
        self.transfer_size_bytes.set(plan.transfer_bytes as i64);
        self.cluster_size_bytes.set(plan.total_bytes as i64);
        self.transfer_ratio.set(if plan.total_bytes == 0 {
            0.0
        } else {
            plan.transfer_bytes as f64 / plan.total_bytes as f64
        });
        self.member_load_bytes.reset();
        self.member_buckets.reset();
        self.member_target_bytes.reset();
        for m in &plan.members {
            self.member_load_bytes.with_label_values(&[&m.id]).set(m.before.bytes as f64);
            self.member_buckets.with_label_values(&[&m.id]).set(m.before.buckets as f64);
            self.member_target_bytes.with_label_values(&[&m.id]).set(m.target_bytes as f64);
        }
    }

    pub fn record_skip(&self, reason: SkipReason) {
        self.runs_total.with_label_values(&["skipped"]).inc();
        self.skips_total.with_label_values(&[reason.as_str()]).inc();
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("text encoding");
        String::from_utf8(buf).expect("utf-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_design_metric_is_exported_with_its_labels() {
        let m = Metrics::new();
        let text = m.render();
        for name in [
            "autobalancer_runs_total{outcome=\"stopped\"} 0",
            "autobalancer_skips_total{reason=\"snapshot_failed\"} 0",
            "autobalancer_lock_held 0",
            "autobalancer_lock_acquisitions_total{result=\"held_elsewhere\"} 0",
            "autobalancer_last_run_timestamp_seconds 0",
            "autobalancer_next_run_timestamp_seconds 0",
            "autobalancer_transfer_size_bytes 0",
            "autobalancer_cluster_size_bytes 0",
            "autobalancer_transfer_ratio 0",
            "autobalancer_moves_total{outcome=\"cancelled\"} 0",
            "autobalancer_moved_bytes_total 0",
            "autobalancer_rebalance_in_progress 0",
            "autobalancer_rebalance_moves_planned 0",
            "autobalancer_rebalance_moves_done 0",
            "autobalancer_move_duration_seconds_count 0",
            "autobalancer_plan_duration_seconds_count 0",
            "autobalancer_snapshot_duration_seconds_count 0",
            "autobalancer_build_info{version=",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        assert_eq!(text.matches("autobalancer_skips_total{").count(), 14);
        use crate::model::fixtures::*;
        let s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![0]), (100, vec![0]), (100, vec![1])]);
        let p = crate::plan::plan(&s, &Default::default()).unwrap();
        m.observe_plan(&p);
        let text = m.render();
        assert!(text.contains("autobalancer_member_load_bytes{member=\"m1\"} 300"), "{text}");
        assert!(text.contains("autobalancer_member_buckets{member=\"m1\"} 3"));
        assert!(text.contains("autobalancer_member_target_bytes{member=\"m2\"} 200"));
        assert!(text.contains("autobalancer_transfer_ratio 0.25"));
    }
}
