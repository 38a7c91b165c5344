//! The decision: rebalance, or skip with exactly one reason from a closed set.
//!
//! Owns: the gate order and the Geode AutoBalancer formula, kept exact:
//! `off_balance <=> transfer > minimum_size AND floor(100 * transfer / total) >= threshold`.
//! Does not own: the skip reasons that arise before a plan exists (lock, pause, schedule,
//! what repair found); those come from the sidecar, but share this enum. A run that
//! could not read the cluster or plan fails instead, with a [`FailReason`] from the closed
//! set beside it.

use std::fmt;

use serde::Serialize;

use crate::model::{ClusterSnapshot, Health};
use crate::plan::Plan;

/// Every reason a run can skip. Used as a metric label, in logs and in API answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    Disabled,
    Paused,
    LockHeldElsewhere,
    AlreadyRanThisSlot,
    LockUnavailable,
    Standalone,
    TooFewHealthy,
    MemberDown,
    MigrationInProgress,
    CriticalMember,
    BelowMinimumSize,
    BelowThreshold,
    NothingToMove,
    /// A node's view leaves a slot unserved (`cluster_state:fail`), or an open slot names
    /// a node that is no longer a master: clients get CLUSTERDOWN until it is settled.
    ClusterDown,
    /// What must move has no receiver with room below `balance.critical-memory-percent`.
    NoRoom,
    /// Bytes are balanced enough and traffic is measured, but not every slot's rate is
    /// trusted yet (`traffic.min-samples` readings on its present owner).
    TrafficUnsettled,
}

impl SkipReason {
    pub const ALL: [SkipReason; 16] = [
        SkipReason::Disabled,
        SkipReason::Paused,
        SkipReason::LockHeldElsewhere,
        SkipReason::AlreadyRanThisSlot,
        SkipReason::LockUnavailable,
        SkipReason::Standalone,
        SkipReason::TooFewHealthy,
        SkipReason::MemberDown,
        SkipReason::MigrationInProgress,
        SkipReason::CriticalMember,
        SkipReason::BelowMinimumSize,
        SkipReason::BelowThreshold,
        SkipReason::NothingToMove,
        SkipReason::ClusterDown,
        SkipReason::NoRoom,
        SkipReason::TrafficUnsettled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Disabled => "disabled",
            SkipReason::Paused => "paused",
            SkipReason::LockHeldElsewhere => "lock_held_elsewhere",
            SkipReason::AlreadyRanThisSlot => "already_ran_this_slot",
            SkipReason::LockUnavailable => "lock_unavailable",
            SkipReason::Standalone => "standalone",
            SkipReason::TooFewHealthy => "too_few_healthy",
            SkipReason::MemberDown => "member_down",
            SkipReason::MigrationInProgress => "migration_in_progress",
            SkipReason::CriticalMember => "critical_member",
            SkipReason::BelowMinimumSize => "below_minimum_size",
            SkipReason::BelowThreshold => "below_threshold",
            SkipReason::NothingToMove => "nothing_to_move",
            SkipReason::ClusterDown => "cluster_down",
            SkipReason::NoRoom => "no_room",
            SkipReason::TrafficUnsettled => "traffic_unsettled",
        }
    }
}

/// Why a run failed, from a closed set: the `autobalancer_failures_total` label, the run
/// record's and the answer's reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    SnapshotFailed,
    PlanFailed,
    RepairFailed,
    MoveFailed,
    MoverUnsupported,
}

impl FailReason {
    pub const ALL: [FailReason; 5] = [
        FailReason::SnapshotFailed,
        FailReason::PlanFailed,
        FailReason::RepairFailed,
        FailReason::MoveFailed,
        FailReason::MoverUnsupported,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::SnapshotFailed => "snapshot_failed",
            FailReason::PlanFailed => "plan_failed",
            FailReason::RepairFailed => "repair_failed",
            FailReason::MoveFailed => "move_failed",
            FailReason::MoverUnsupported => "mover_unsupported",
        }
    }
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    pub size_threshold_percent: u32,
    pub minimum_size: u64,
    /// Ignore the two figures above (`rebalance --force`); every other gate holds.
    pub force: bool,
}

impl Thresholds {
    pub fn from_config(b: &crate::config::BalanceConfig, force: bool) -> Thresholds {
        Thresholds { size_threshold_percent: b.size_threshold_percent, minimum_size: b.minimum_size.0, force }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// `rebalance` or `skip`.
    pub action: Action,
    /// The skip reason; `None` when rebalancing.
    pub reason: Option<SkipReason>,
    /// Why it rebalances; `None` when skipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<ActionReason>,
    /// One sentence for people.
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Rebalance,
    Skip,
}

/// Why a run moves, from a closed set.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionReason {
    /// The byte transfer crosses `size-threshold-percent` and `minimum-size`.
    OffBalance,
    /// `--force`: the two figures ignored.
    Forced,
    /// Bytes are balanced enough, but the busiest master's CPU rate is above its share by
    /// more than `traffic.threshold-percent` and the planned moves bring it under.
    TrafficImbalance,
}

impl Decision {
    pub fn skip(reason: SkipReason, message: impl Into<String>) -> Decision {
        Decision { action: Action::Skip, reason: Some(reason), cause: None, message: message.into() }
    }

    pub fn rebalance(cause: ActionReason, message: impl Into<String>) -> Decision {
        Decision { action: Action::Rebalance, reason: None, cause: Some(cause), message: message.into() }
    }

    /// A run that failed before it could decide (no reason: a failure is not a skip).
    pub fn failed(message: impl Into<String>) -> Decision {
        Decision { action: Action::Skip, reason: None, cause: None, message: message.into() }
    }

    pub fn is_rebalance(&self) -> bool {
        self.action == Action::Rebalance
    }
}

/// `floor(100 * transfer / total)`, the integer percent the formula compares.
pub fn transfer_percent_floor(transfer: u64, total: u64) -> u64 {
    if total == 0 { 0 } else { ((transfer as u128 * 100) / total as u128) as u64 }
}

/// Decides on a plan of `snapshot`. Gates, in order: standalone, member_down,
/// too_few_healthy, migration_in_progress, critical_member, nothing_to_move,
/// below_threshold, below_minimum_size.
pub fn decide(snapshot: &ClusterSnapshot, plan: &Plan, t: &Thresholds) -> Decision {
    use crate::config::human_bytes as hb;
    if let Some(d) = precondition(snapshot, plan) {
        return d;
    }
    let moves = plan.moves.len();
    if let Some(d) = no_room(plan) {
        return d;
    }
    // The threshold is on the bytes the byte plan moves; traffic moves are judged apart.
    let traffic_bytes = plan.traffic.as_ref().map_or(0, |t| t.transfer_bytes);
    let byte_transfer = plan.transfer_bytes - traffic_bytes;
    if moves == 0 || plan.total_bytes == 0 {
        if let Some(d) = traffic_gate(plan, "nothing to move by bytes") {
            return d;
        }
        let why = if plan.total_bytes == 0 {
            "the cluster holds no data"
        } else {
            "every member is as close to target as bucket sizes allow"
        };
        return Decision::skip(SkipReason::NothingToMove, format!("nothing to move: {why}"));
    }
    let pct = transfer_percent_floor(byte_transfer, plan.total_bytes);
    let figures = format!(
        "transfer {} of {} ({pct}%; threshold {}%, minimum {})",
        hb(byte_transfer),
        hb(plan.total_bytes),
        t.size_threshold_percent,
        hb(t.minimum_size)
    );
    if t.force {
        return Decision::rebalance(ActionReason::Forced, format!("forced: {figures}{}", unplaced(plan)));
    }
    if pct < t.size_threshold_percent as u64 {
        let bytes = format!("balanced enough by bytes: {figures}");
        return traffic_gate(plan, &bytes)
            .unwrap_or_else(|| Decision::skip(SkipReason::BelowThreshold, format!("balanced enough: {figures}")));
    }
    if byte_transfer <= t.minimum_size {
        let bytes = format!("too little to move by bytes: {figures}");
        return traffic_gate(plan, &bytes)
            .unwrap_or_else(|| Decision::skip(SkipReason::BelowMinimumSize, format!("too little to move: {figures}")));
    }
    Decision::rebalance(ActionReason::OffBalance, format!("off balance: {figures}{}", unplaced(plan)))
}

/// Where bytes would not move: a move for traffic, a skip while its rates are untrusted,
/// or nothing to say (bytes decide).
fn traffic_gate(plan: &Plan, bytes: &str) -> Option<Decision> {
    let tp = plan.traffic.as_ref()?;
    if !tp.settled {
        return Some(Decision::skip(
            SkipReason::TrafficUnsettled,
            format!("{bytes}; traffic: the rates of {} slot(s) are not trusted yet", tp.untrusted),
        ));
    }
    let (busiest, share) =
        tp.members.iter().map(|m| (m.before, m.target)).max_by(|a, b| (a.0 - a.1).total_cmp(&(b.0 - b.1)))?;
    (tp.off_balance && tp.brings_under && tp.moves > 0).then(|| {
        Decision::rebalance(
            ActionReason::TrafficImbalance,
            format!(
                "{bytes}; off balance for traffic: the busiest master runs {busiest:.0} µs/s of CPU against a share of {share:.0}; {} move(s) ({}) bring it under",
                tp.moves,
                crate::config::human_bytes(tp.transfer_bytes)
            ),
        )
    })
}

/// What stops a run before its figures count: too few members, one down, an open
/// migration, receivers above critical memory.
fn precondition(snapshot: &ClusterSnapshot, plan: &Plan) -> Option<Decision> {
    let members = &snapshot.members;
    if members.len() < 2 {
        return Some(Decision::skip(
            SkipReason::Standalone,
            format!("the cluster has {} member: nothing to balance between", members.len()),
        ));
    }
    if let Some(m) = members.iter().find(|m| m.health == Health::Down) {
        return Some(Decision::skip(
            SkipReason::MemberDown,
            format!("member {} is down: no moves until it returns or is removed", m.label()),
        ));
    }
    let healthy = members.iter().filter(|m| m.health == Health::Healthy && !m.draining).count();
    let usable = members.iter().filter(|m| m.health != Health::Down && !m.draining).count();
    if usable < 2 && !members.iter().any(|m| m.draining) {
        return Some(Decision::skip(SkipReason::TooFewHealthy, format!("only {usable} member(s) can hold data")));
    }
    if healthy == 0 {
        return Some(Decision::skip(SkipReason::TooFewHealthy, "no healthy member can receive data".to_string()));
    }
    if let Some(o) = snapshot.open_migrations.first() {
        return Some(Decision::skip(
            SkipReason::MigrationInProgress,
            format!(
                "{} bucket(s) are mid-migration (first: {}): close them before planning",
                snapshot.open_migrations.len(),
                o.bucket
            ),
        ));
    }
    if plan.transfer_bytes == 0
        && plan.lower_bound_bytes > 0
        && let Some(m) = members.iter().find(|m| m.health == Health::Critical)
    {
        return Some(Decision::skip(
            SkipReason::CriticalMember,
            format!(
                "the cluster is off-balance but the members that could take data are above critical memory (first: {})",
                m.label()
            ),
        ));
    }
    None
}

/// A plan that must empty members but can place nothing of theirs for want of room.
fn no_room(plan: &Plan) -> Option<Decision> {
    (plan.unplaced_bytes > 0 && plan.transfer_bytes == 0).then(|| {
        Decision::skip(
            SkipReason::NoRoom,
            format!(
                "{} must leave members with target 0, and no receiver has room for it below critical memory",
                crate::config::human_bytes(plan.unplaced_bytes)
            ),
        )
    })
}

/// What a plan that moves leaves unplaced for want of room, as a clause.
fn unplaced(plan: &Plan) -> String {
    match plan.unplaced_bytes {
        0 => String::new(),
        n => format!("; {} cannot be placed: no receiver has room for it (no_room)", crate::config::human_bytes(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;
    use crate::plan::{PlanOptions, plan};

    const MIB: u64 = 1 << 20;

    fn thresholds(pct: u32, min: u64) -> Thresholds {
        Thresholds { size_threshold_percent: pct, minimum_size: min, force: false }
    }

    /// Two members: m1 holds `a` buckets of `size`, m2 holds `b`.
    fn two(a: usize, b: usize, size: u64) -> ClusterSnapshot {
        let mut layout = vec![(size, vec![0]); a];
        layout.extend(vec![(size, vec![1]); b]);
        make_snapshot(make_members(2), &layout)
    }

    fn run(s: &ClusterSnapshot, t: Thresholds) -> (Decision, crate::plan::Plan) {
        let p = plan(s, &PlanOptions { tolerance_percent: 0, ..Default::default() }).unwrap();
        (decide(s, &p, &t), p)
    }

    #[test]
    fn threshold_boundary_is_floor_of_percent() {
        // 70 vs 30 buckets of 1 MiB: transfer 20 of 100 = 20%.
        let s = two(70, 30, MIB);
        let (d, p) = run(&s, thresholds(20, 0));
        assert_eq!(p.transfer_bytes, 20 * MIB);
        assert_eq!(d.action, Action::Rebalance, "{d:?}");
        let (d, _) = run(&s, thresholds(21, 0));
        assert_eq!(d.reason, Some(SkipReason::BelowThreshold), "{d:?}");
        // 20.9% floors to 20.
        assert_eq!(transfer_percent_floor(209, 1000), 20);
        assert_eq!(transfer_percent_floor(0, 0), 0);
    }

    #[test]
    fn minimum_size_is_strictly_greater() {
        let s = two(70, 30, MIB);
        let (d, _) = run(&s, thresholds(10, 20 * MIB));
        assert_eq!(d.reason, Some(SkipReason::BelowMinimumSize), "{d:?}");
        let (d, _) = run(&s, thresholds(10, 20 * MIB - 1));
        assert_eq!(d.action, Action::Rebalance);
    }

    #[test]
    fn above_threshold_but_not_above_minimum() {
        let s = two(90, 10, 1024);
        let (d, _) = run(&s, thresholds(10, 100 * MIB));
        assert_eq!(d.reason, Some(SkipReason::BelowMinimumSize));
    }

    #[test]
    fn force_ignores_only_the_figures() {
        let s = two(52, 48, 1024);
        let t = Thresholds { force: true, ..thresholds(99, u64::MAX) };
        let (d, _) = run(&s, t);
        assert_eq!(d.action, Action::Rebalance);
        let mut down = s.clone();
        down.members[1].health = Health::Down;
        assert_eq!(run(&down, t).0.reason, Some(SkipReason::MemberDown));
    }

    #[test]
    fn total_zero_is_nothing_to_move() {
        let s = two(5, 0, 0);
        let (d, _) = run(&s, thresholds(10, 0));
        assert_eq!(d.reason, Some(SkipReason::NothingToMove));
    }

    #[test]
    fn one_member_is_standalone() {
        let s = make_snapshot(make_members(1), &[(10, vec![0])]);
        assert_eq!(run(&s, thresholds(10, 0)).0.reason, Some(SkipReason::Standalone));
    }

    #[test]
    fn a_down_member_skips() {
        let mut s = two(70, 30, MIB);
        s.members[0].health = Health::Down;
        assert_eq!(run(&s, thresholds(10, 0)).0.reason, Some(SkipReason::MemberDown));
    }

    #[test]
    fn open_migration_skips() {
        let mut s = two(70, 30, MIB);
        s.open_migrations.push(crate::model::OpenMigration { bucket: 3, from: None, to: None });
        assert_eq!(run(&s, thresholds(10, 0)).0.reason, Some(SkipReason::MigrationInProgress));
    }

    #[test]
    fn all_receivers_critical_skips() {
        let mut s = make_snapshot(make_members(3), &[(100, vec![0]), (100, vec![0]), (100, vec![0])]);
        s.members[1].health = Health::Critical;
        s.members[2].health = Health::Critical;
        let (d, _) = run(&s, thresholds(10, 0));
        assert_eq!(d.reason, Some(SkipReason::CriticalMember), "{d:?}");
        s.members[2].health = Health::Healthy;
        assert_eq!(run(&s, thresholds(10, 0)).0.action, Action::Rebalance);
    }

    #[test]
    fn no_healthy_receiver_is_too_few_healthy() {
        let mut s = two(10, 0, MIB);
        s.members[1].health = Health::Critical;
        let extra = crate::model::Member { health: Health::Critical, ..crate::model::Member::new("m3") };
        s.members.push(extra);
        s.members[0].health = Health::Critical;
        let (d, _) = run(&s, thresholds(10, 0));
        assert_eq!(d.reason, Some(SkipReason::TooFewHealthy), "{d:?}");
    }

    #[test]
    fn simulating_the_result_again_skips() {
        let s = two(70, 30, MIB);
        let (d, p) = run(&s, thresholds(10, 0));
        assert!(d.is_rebalance());
        let mut after = s.clone();
        crate::plan::apply_moves(&mut after, &p.moves).unwrap();
        let (d2, _) = run(&after, thresholds(10, 0));
        assert!(matches!(d2.reason, Some(SkipReason::BelowThreshold | SkipReason::NothingToMove)), "{d2:?}");
    }

    #[test]
    fn reason_names_are_the_closed_set() {
        let names: Vec<&str> = SkipReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names.join(","),
            "disabled,paused,lock_held_elsewhere,already_ran_this_slot,lock_unavailable,standalone,too_few_healthy,member_down,migration_in_progress,critical_member,below_minimum_size,below_threshold,nothing_to_move,cluster_down,no_room,traffic_unsettled"
        );
        for r in SkipReason::ALL {
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::Value::String(r.as_str().into()));
        }
    }

    /// Bytes balanced; four slots of m1 carry its CPU far above its share.
    fn hot_on_m1(untrusted: usize) -> (ClusterSnapshot, crate::plan::Plan) {
        let s = two(6, 6, MIB);
        let mut cpu = vec![1.0; 12];
        cpu[..4].copy_from_slice(&[300.0; 4]);
        let t = crate::plan::traffic::TrafficInput {
            keys: vec![1; 12],
            net_in: vec![0.0; 12],
            net_out: vec![0.0; 12],
            cpu,
            tolerance_percent: 20,
            threshold_percent: 50,
            untrusted,
            ..Default::default()
        };
        let p = plan(&s, &PlanOptions { tolerance_percent: 20, traffic: Some(t), ..Default::default() }).unwrap();
        (s, p)
    }

    #[test]
    fn bytes_balanced_but_one_master_hot_is_a_traffic_imbalance_that_moves() {
        let (s, p) = hot_on_m1(0);
        let d = decide(&s, &p, &thresholds(10, 0));
        assert_eq!((d.action, d.cause), (Action::Rebalance, Some(ActionReason::TrafficImbalance)), "{d:?}");
        assert!(d.message.contains("off balance for traffic"), "{}", d.message);
        // The byte threshold is on byte moves only: the traffic moves' bytes do not count.
        assert!(d.message.starts_with("balanced enough by bytes"), "{}", d.message);
    }

    #[test]
    fn untrusted_rates_skip_as_traffic_unsettled_and_move_nothing() {
        let (s, p) = hot_on_m1(3);
        let d = decide(&s, &p, &thresholds(10, 0));
        assert_eq!(d.reason, Some(SkipReason::TrafficUnsettled), "{d:?}");
        assert_eq!(p.traffic.as_ref().unwrap().moves, 0, "nothing moves for traffic while unsettled");
    }
}
