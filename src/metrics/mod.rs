//! Prometheus metrics: one registry, one field per metric, fixed-cardinality labels with
//! every value created up front (a dashboard sees zeros, not gaps). Never labelled by
//! bucket.
//!
//! Owns: names, help texts, label sets, the text exposition; `placement` and `traffic`
//! the gauges of those two planners. Does not own: when figures change (callers set them).

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder, core::Collector,
};

use crate::decide::SkipReason;
use crate::model::ClusterSnapshot;
use crate::plan::Plan;

use crate::decide::FailReason;

/// `runs_total`'s outcome label: the kind of a `run::Outcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Rebalanced,
    Skipped,
    Failed,
    Stopped,
}

impl RunOutcome {
    pub const ALL: [RunOutcome; 4] =
        [RunOutcome::Rebalanced, RunOutcome::Skipped, RunOutcome::Failed, RunOutcome::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Rebalanced => "rebalanced",
            RunOutcome::Skipped => "skipped",
            RunOutcome::Failed => "failed",
            RunOutcome::Stopped => "stopped",
        }
    }
}

/// `lock_acquisitions_total`'s result label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockResult {
    Acquired,
    HeldElsewhere,
    Error,
}

impl LockResult {
    pub const ALL: [LockResult; 3] = [LockResult::Acquired, LockResult::HeldElsewhere, LockResult::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            LockResult::Acquired => "acquired",
            LockResult::HeldElsewhere => "held_elsewhere",
            LockResult::Error => "error",
        }
    }
}

/// `moves_total`'s outcome label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    Done,
    Failed,
    /// Refused by the fence: the lock was lost (the bucket stays recorded for the next
    /// holder).
    LockLost,
    /// Planned, never started: the run stopped first, or the byte budget or a target's
    /// room held it back.
    NotStarted,
}

impl MoveOutcome {
    pub const ALL: [MoveOutcome; 4] =
        [MoveOutcome::Done, MoveOutcome::Failed, MoveOutcome::LockLost, MoveOutcome::NotStarted];

    pub fn as_str(self) -> &'static str {
        match self {
            MoveOutcome::Done => "done",
            MoveOutcome::Failed => "failed",
            MoveOutcome::LockLost => "lock_lost",
            MoveOutcome::NotStarted => "not_started",
        }
    }
}
mod placement;
mod traffic;

/// The `engine` label of `build_info` until the backend has said what it runs on.
pub const ENGINE_UNKNOWN: &str = "unknown";

/// Every metric of the sidecar, named `autobalancer_<field>`. Each is described once, by
/// its help text where it is registered: `Metrics::new`, `PlacementMetrics::new` or
/// `TrafficMetrics::new` (the README's table repeats them for readers).
pub struct Metrics {
    pub registry: Registry,
    pub runs_total: IntCounterVec,
    pub skips_total: IntCounterVec,
    pub lock_held: IntGauge,
    pub lock_acquisitions_total: IntCounterVec,
    pub lock_age_seconds: Gauge,
    pub last_run_timestamp_seconds: Gauge,
    pub next_run_timestamp_seconds: Gauge,
    pub transfer_size_bytes: IntGauge,
    pub cluster_size_bytes: IntGauge,
    pub transfer_ratio: Gauge,
    pub size_threshold_ratio: Gauge,
    pub member_load_bytes: GaugeVec,
    pub member_used_memory_bytes: GaugeVec,
    pub member_info: IntGaugeVec,
    pub member_buckets: GaugeVec,
    pub member_target_bytes: GaugeVec,
    pub big_keys: IntGaugeVec,
    pub stray_keys: IntGaugeVec,
    pub cluster_down: IntGauge,
    pub moves_no_room_total: IntCounter,
    pub moves_unreplicated_total: IntCounter,
    pub keys_set_aside_total: IntCounter,
    pub moves_total: IntCounterVec,
    pub failures_total: IntCounterVec,
    pub moved_bytes_total: IntCounter,
    pub rebalance_in_progress: IntGauge,
    pub rebalance_moves_planned: IntGauge,
    pub rebalance_moves_done: IntGauge,
    pub move_duration_seconds: Histogram,
    pub plan_duration_seconds: Histogram,
    pub snapshot_duration_seconds: Histogram,
    pub sizing_duration_seconds: Histogram,
    pub sizing_age_seconds: Gauge,
    pub size_refresh_timestamp_seconds: Gauge,
    pub etcd_up: IntGauge,
    pub evacuation_buckets_left: IntGauge,
    pub evacuation_bytes_left: IntGauge,
    pub build_info: IntGaugeVec,
    pub placement: placement::PlacementMetrics,
    pub traffic: traffic::TrafficMetrics,
    /// While a run holds the lock: whether it still does, asked at each scrape, so
    /// `lock_held` drops the moment the lock is gone (a holder frozen past its lease
    /// included), not when the run has wound down.
    lock_check: std::sync::Mutex<Option<Box<dyn Fn() -> bool + Send + Sync>>>,
}

/// Histogram buckets, seconds: from a 1 ms plan to a 5 min sizing or move.
const DURATION_BUCKETS: [f64; 14] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Creates each metric under `autobalancer_` and registers it, so `Metrics::new` reads
/// as a table: field, kind, name, help, labels.
pub(super) struct Builder<'a>(&'a Registry);

impl Builder<'_> {
    fn add<M: Collector + Clone + 'static>(&self, m: Result<M, prometheus::Error>) -> M {
        let m = m.expect("a valid metric descriptor");
        self.0.register(Box::new(m.clone())).expect("each metric name registered once");
        m
    }

    fn opts(name: &str, help: &str) -> Opts {
        Opts::new(format!("autobalancer_{name}"), help)
    }

    fn counter(&self, name: &str, help: &str) -> IntCounter {
        self.add(IntCounter::with_opts(Self::opts(name, help)))
    }

    pub(super) fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Self::opts(name, help), labels))
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::with_opts(Self::opts(name, help)))
    }

    pub(super) fn int_gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Self::opts(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.add(Gauge::with_opts(Self::opts(name, help)))
    }

    pub(super) fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        self.add(GaugeVec::new(Self::opts(name, help), labels))
    }

    fn histogram(&self, name: &str, help: &str) -> Histogram {
        let opts = HistogramOpts::new(format!("autobalancer_{name}"), help).buckets(DURATION_BUCKETS.to_vec());
        self.add(Histogram::with_opts(opts))
    }
}

pub(super) const MEMBER: &[&str] = &["member"];

const SET_ASIDE_HELP: &str = "Keys found on both sides of a slot with different values: the owner's value kept, the other renamed to autobalancer:aside:{tag}:<ms>:<key> in the same slot.";

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = Builder(&registry);
        let m = Metrics {
            runs_total: r.counters("runs_total", "Runs by outcome.", &["outcome"]),
            skips_total: r.counters("skips_total", "Skipped runs by reason.", &["reason"]),
            lock_held: r.int_gauge("lock_held", "1 while this sidecar holds the cluster lock."),
            lock_acquisitions_total: r.counters("lock_acquisitions_total", "Lock attempts by result.", &["result"]),
            lock_age_seconds: r.gauge("lock_age_seconds", "Seconds the lock had been held when a run last found another holder."),
            last_run_timestamp_seconds: r.gauge("last_run_timestamp_seconds", "When the last run ended, Unix seconds."),
            next_run_timestamp_seconds: r
                .gauge("next_run_timestamp_seconds", "When the schedule fires next, Unix seconds (0 when disabled)."),
            transfer_size_bytes: r.int_gauge("transfer_size_bytes", "Transfer size of the last simulation."),
            cluster_size_bytes: r.int_gauge("cluster_size_bytes", "Total size of the last simulation."),
            transfer_ratio: r.gauge("transfer_ratio", "Transfer / total of the last simulation."),
            size_threshold_ratio: r.gauge(
                "size_threshold_ratio",
                "balance.size-threshold-percent / 100, to draw beside the transfer ratio.",
            ),
            member_load_bytes: r.gauges("member_load_bytes", "Bytes per member at the last snapshot.", MEMBER),
            member_used_memory_bytes: r.gauges("member_used_memory_bytes", "Used memory per member (server's).", MEMBER),
            member_info: r.int_gauges(
                "member_info",
                "1 per member at the last snapshot, with its address and hostname.",
                &["member", "address", "hostname"],
            ),
            member_buckets: r.gauges("member_buckets", "Buckets per member at the last snapshot.", MEMBER),
            member_target_bytes: r.gauges("member_target_bytes", "Target bytes per member at the last plan.", MEMBER),
            big_keys: r.int_gauges("big_keys", "Keys above execution.max-key-bytes per member.", MEMBER),
            stray_keys: r.int_gauges("stray_keys", "Keys per member outside the slots it owns.", MEMBER),
            cluster_down: r.int_gauge(
                "cluster_down",
                "1 when the last run found a node whose view leaves a slot unserved, or an open slot naming a node that is no longer a master (skip reason cluster_down).",
            ),
            moves_no_room_total: r.counter(
                "moves_no_room_total",
                "Moves not started because the target's used memory would pass balance.critical-memory-percent.",
            ),
            moves_unreplicated_total: r.counter(
                "moves_unreplicated_total",
                "Moves done whose target's replicas did not acknowledge the data within the wait: a failover of that target would lose it (the run stops, replicas_behind).",
            ),
            keys_set_aside_total: r.counter("keys_set_aside_total", SET_ASIDE_HELP),
            moves_total: r.counters("moves_total", "Bucket moves by outcome.", &["outcome"]),
            failures_total: r.counters("failures_total", "Failed runs by reason.", &["reason"]),
            moved_bytes_total: r.counter("moved_bytes_total", "Bytes moved."),
            rebalance_in_progress: r
                .int_gauge("rebalance_in_progress", "1 while a rebalance or evacuation moves buckets."),
            rebalance_moves_planned: r
                .int_gauge("rebalance_moves_planned", "Moves planned for the running or last rebalance."),
            rebalance_moves_done: r.int_gauge("rebalance_moves_done", "Moves done in the running or last rebalance."),
            move_duration_seconds: r.histogram("move_duration_seconds", "Duration of one bucket move."),
            plan_duration_seconds: r.histogram("plan_duration_seconds", "Duration of planning."),
            snapshot_duration_seconds: r.histogram("snapshot_duration_seconds", "Duration of a snapshot."),
            sizing_duration_seconds: r.histogram("sizing_duration_seconds", "Duration of sizing a snapshot's buckets."),
            sizing_age_seconds: r.gauge("sizing_age_seconds", "Age of the oldest bucket size the last snapshot used."),
            size_refresh_timestamp_seconds: r.gauge(
                "size_refresh_timestamp_seconds",
                "When this sidecar last measured (and published) its sizes ahead of runs, Unix seconds (0: not yet).",
            ),
            etcd_up: r.int_gauge("etcd_up", "1 while etcd answers the heartbeat (1 when standalone)."),
            evacuation_buckets_left: r.int_gauge(
                "evacuation_buckets_left",
                "Buckets still on the local member while it is evacuated (0 otherwise).",
            ),
            evacuation_bytes_left: r.int_gauge(
                "evacuation_bytes_left",
                "Bytes still on the local member while it is evacuated (0 otherwise).",
            ),
            build_info: r.int_gauges("build_info", "Always 1; the version and engine as labels.", &["version", "engine"]),
            placement: placement::PlacementMetrics::new(&r),
            traffic: traffic::TrafficMetrics::new(&r),
            lock_check: std::sync::Mutex::new(None),
            registry,
        };
        m.create_label_values();
        m
    }

    /// Every fixed label value exists from the start, so dashboards see zeros, not gaps.
    fn create_label_values(&self) {
        for o in RunOutcome::ALL {
            self.runs_total.with_label_values(&[o.as_str()]);
        }
        for r in SkipReason::ALL {
            self.skips_total.with_label_values(&[r.as_str()]);
        }
        for r in LockResult::ALL {
            self.lock_acquisitions_total.with_label_values(&[r.as_str()]);
        }
        for o in MoveOutcome::ALL {
            self.moves_total.with_label_values(&[o.as_str()]);
        }
        for r in FailReason::ALL {
            self.failures_total.with_label_values(&[r.as_str()]);
        }
        self.placement.create_label_values();
        self.set_engine(ENGINE_UNKNOWN);
    }

    /// Names the engine the cluster runs (e.g. `redis-7.2.4`, `valkey-9.0.0`) in `build_info`.
    pub fn set_engine(&self, engine: &str) {
        self.build_info.reset();
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), engine]).set(1);
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

    /// Records what a snapshot observed beside the layout: the servers' own memory
    /// figures, stray and big keys per member, the sizing's duration and age, the engine.
    pub fn observe_snapshot(&self, snap: &ClusterSnapshot) {
        let o = &snap.observed;
        self.member_used_memory_bytes.reset();
        self.member_info.reset();
        self.stray_keys.reset();
        self.big_keys.reset();
        // A backend that observes nothing beside the layout (a snapshot file) saw no
        // stray or big keys; it has no memory figure to show.
        for (i, m) in snap.members.iter().enumerate() {
            let f = o.members.get(i).cloned().unwrap_or_default();
            let hostname = m.hostname.as_deref().unwrap_or("");
            self.member_info.with_label_values(&[&m.id, &m.address, hostname]).set(1);
            if o.members.get(i).is_some() {
                self.member_used_memory_bytes.with_label_values(&[&m.id]).set(f.used_memory_bytes as f64);
            }
            self.stray_keys.with_label_values(&[&m.id]).set(f.stray_keys as i64);
            self.big_keys.with_label_values(&[&m.id]).set(f.big_keys as i64);
        }
        if let Some(s) = &o.sizing {
            self.sizing_duration_seconds.observe(s.duration_seconds);
            self.sizing_age_seconds.set(s.oldest_seconds);
        }
        if let Some(e) = &o.engine {
            self.set_engine(&e.replace(' ', "-"));
        }
    }

    pub fn count_move(&self, outcome: MoveOutcome, n: u64) {
        self.moves_total.with_label_values(&[outcome.as_str()]).inc_by(n);
    }

    /// `lock_held` from `check` until [`Metrics::lock_released`].
    pub fn lock_taken(&self, check: impl Fn() -> bool + Send + Sync + 'static) {
        self.lock_held.set(1);
        *self.lock_check.lock().unwrap() = Some(Box::new(check));
    }

    pub fn lock_released(&self) {
        *self.lock_check.lock().unwrap() = None;
        self.lock_held.set(0);
    }

    pub fn render(&self) -> String {
        if let Some(check) = self.lock_check.lock().unwrap().as_ref() {
            self.lock_held.set(check() as i64);
        }
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
mod tests;
