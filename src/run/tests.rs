//! The gates and the one place a run's end is said, in process: the file backend as the
//! cluster, the standalone coordinator as the lock.

use tokio_util::sync::CancellationToken;

use super::{Context, Outcome, Trigger};
use crate::config::Config;
use crate::coord::Acquire;
use crate::decide::SkipReason;
use crate::model::fixtures::{make_members, make_snapshot};

/// A context over a snapshot file in `dir` holding `layout` (None: no file at all).
fn context(dir: &std::path::Path, layout: Option<&[(u64, Vec<u32>)]>) -> Context {
    let path = dir.join("snap.json");
    if let Some(l) = layout {
        std::fs::write(&path, make_snapshot(make_members(2), l).to_json()).unwrap();
    }
    let text = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"m1\"\n[balance]\nminimum-size = 0\nsize-threshold-percent = 10\n",
        path.display()
    );
    Context::new(Config::from_toml_with_env(&text, std::iter::empty()).unwrap()).unwrap()
}

fn counted(ctx: &Context, metric: &str) -> f64 {
    let text = ctx.metrics.render();
    text.lines().find(|l| l.starts_with(metric)).and_then(|l| l.rsplit(' ').next()?.parse().ok()).unwrap_or(-1.0)
}

/// Three buckets on the first of two members, one on the second: off balance.
fn skewed() -> Vec<(u64, Vec<u32>)> {
    vec![(100, vec![0]), (100, vec![0]), (100, vec![0]), (100, vec![1])]
}

const MANUAL: Trigger = Trigger::Manual { force: false, allow_big_keys: false };

#[tokio::test]
async fn each_end_is_said_once_by_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Some(&skewed()));
    let never = CancellationToken::new();

    // The lock held elsewhere: the first gate that says no ends the run, as a skip.
    let Acquire::Acquired(held) = ctx.coordinator.try_lock("other").await.unwrap() else { panic!("not acquired") };
    let f = ctx.run_once(MANUAL, &never).await;
    assert_eq!(f.outcome.skip_reason(), Some(SkipReason::LockHeldElsewhere));
    assert_eq!(
        (f.answer.outcome.as_deref(), f.answer.reason.as_deref()),
        (Some("skipped"), Some("lock_held_elsewhere"))
    );
    assert_eq!(f.outcome.exit_code(), 0);
    assert_eq!(counted(&ctx, "autobalancer_skips_total{reason=\"lock_held_elsewhere\"}"), 1.0);
    ctx.coordinator.release(held).await;

    // A stop asked before the first move: stopped, exit 4, nothing moved.
    let stop = CancellationToken::new();
    stop.cancel();
    let f = ctx.run_once(MANUAL, &stop).await;
    assert!(matches!(f.outcome, Outcome::Stopped(crate::execute::StopReason::Cancelled)), "{:?}", f.outcome);
    assert_eq!((f.answer.reason.as_deref(), f.outcome.exit_code()), (Some("cancelled"), 4));
    assert_eq!(counted(&ctx, "autobalancer_runs_total{outcome=\"stopped\"}"), 1.0);
    assert_eq!(counted(&ctx, "autobalancer_moves_total{outcome=\"not_started\"}"), 1.0);

    // Off balance: rebalanced, then the next run finds nothing worth moving.
    let f = ctx.run_once(MANUAL, &never).await;
    assert_eq!((f.answer.outcome.as_deref(), f.outcome.exit_code()), (Some("rebalanced"), 0), "{:?}", f.answer);
    assert_eq!(counted(&ctx, "autobalancer_moves_total{outcome=\"done\"}"), 1.0);
    let f = ctx.run_once(MANUAL, &never).await;
    assert!(matches!(f.outcome.skip_reason(), Some(SkipReason::BelowThreshold | SkipReason::NothingToMove)));
    let status = ctx.status.lock().unwrap().clone();
    assert_eq!((status.last_outcome, status.last_error), (Some(crate::metrics::RunOutcome::Skipped), None));
    assert_eq!(counted(&ctx, "autobalancer_runs_total{outcome=\"rebalanced\"}"), 1.0);
}

#[tokio::test]
async fn a_cluster_that_cannot_be_read_fails_the_run_and_is_no_skip() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), None);
    let f = ctx.run_once(MANUAL, &CancellationToken::new()).await;
    assert!(matches!(f.outcome, Outcome::Failed(crate::run::Failure::Snapshot(_))), "{:?}", f.outcome);
    assert_eq!((f.answer.outcome.as_deref(), f.answer.reason.as_deref()), (Some("failed"), Some("snapshot_failed")));
    assert_eq!(f.outcome.exit_code(), 1);
    assert_eq!(f.answer.decision.reason, None, "a failure carries no skip reason");
    assert_eq!(counted(&ctx, "autobalancer_failures_total{reason=\"snapshot_failed\"}"), 1.0);
    assert_eq!(counted(&ctx, "autobalancer_runs_total{outcome=\"failed\"}"), 1.0);
    assert_eq!(counted(&ctx, "autobalancer_runs_total{outcome=\"skipped\"}"), 0.0);
    let status = ctx.status.lock().unwrap().clone();
    assert!(status.last_error.as_deref().is_some_and(|e| e.contains("snap.json")), "{:?}", status.last_error);
}

#[test]
fn exit_codes() {
    use crate::execute::StopReason as S;
    let code = |o: Outcome| o.exit_code();
    assert_eq!(code(Outcome::Rebalanced), 0);
    assert_eq!(code(Outcome::Skipped(SkipReason::Paused)), 0);
    assert_eq!(code(Outcome::Stopped(S::NoRoom)), 0);
    assert_eq!(code(Outcome::Failed(crate::run::Failure::Mover("m".into()))), 1);
    assert_eq!(code(Outcome::Stopped(S::LockLost)), 3);
    assert_eq!(code(Outcome::Stopped(S::Deadline)), 4);
    assert_eq!(code(Outcome::Stopped(S::Cancelled)), 4);
}

#[tokio::test]
async fn the_gates_say_no_in_order_pause_lock_then_the_cron_slot() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), Some(&skewed()));
    let never = CancellationToken::new();
    let slot = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    let scheduled = Trigger::Scheduled { slot };

    // Paused and the lock held elsewhere: the pause is the first gate.
    ctx.coordinator.set_paused(Some("ops".into())).await.unwrap();
    let Acquire::Acquired(held) = ctx.coordinator.try_lock("other").await.unwrap() else { panic!("not acquired") };
    let f = ctx.run_once(scheduled.clone(), &never).await;
    assert_eq!(f.outcome.skip_reason(), Some(SkipReason::Paused), "{:?}", f.outcome);
    assert!(f.answer.decision.message.contains("ops"), "{}", f.answer.decision.message);
    // Unpaused, the lock comes next; the cron slot is not claimed by a run without it.
    ctx.coordinator.set_paused(None).await.unwrap();
    let f = ctx.run_once(scheduled.clone(), &never).await;
    assert_eq!(f.outcome.skip_reason(), Some(SkipReason::LockHeldElsewhere), "{:?}", f.outcome);
    assert_eq!(ctx.coordinator.scheduled_slot().await.unwrap(), None, "claimed without the lock");
    ctx.coordinator.release(held).await;

    // The first run of the slot claims it and runs; its record says how it ended.
    let f = ctx.run_once(scheduled.clone(), &never).await;
    assert_eq!(f.answer.outcome.as_deref(), Some("rebalanced"), "{:?}", f.answer);
    assert_eq!(ctx.coordinator.scheduled_slot().await.unwrap(), Some(slot.timestamp()));
    let record = ctx.coordinator.last_run().await.unwrap().expect("a run record");
    assert_eq!(
        (record.slot, record.outcome.as_str(), record.reason.as_deref(), record.moved_bytes > 0),
        (Some(slot.timestamp()), "rebalanced", None, true)
    );
    // The same slot again: skipped under the lock; the record stays the run's that did it.
    let f = ctx.run_once(scheduled, &never).await;
    assert_eq!(f.outcome.skip_reason(), Some(SkipReason::AlreadyRanThisSlot), "{:?}", f.outcome);
    assert_eq!(ctx.coordinator.last_run().await.unwrap().as_ref(), Some(&record));
    // An on-demand run passes no slot gate.
    let f = ctx.run_once(MANUAL, &never).await;
    assert!(matches!(f.outcome.skip_reason(), Some(SkipReason::BelowThreshold | SkipReason::NothingToMove)));
    for (reason, n) in [("paused", 1.0), ("lock_held_elsewhere", 1.0), ("already_ran_this_slot", 1.0)] {
        assert_eq!(counted(&ctx, &format!("autobalancer_skips_total{{reason=\"{reason}\"}}")), n, "{reason}");
    }
}

#[tokio::test]
async fn a_skip_outside_the_pipeline_is_said_as_every_run_end_is() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path(), None);
    let f = ctx.skip_outside(super::Skip::new(SkipReason::Disabled, "schedule.enabled = false"));
    assert_eq!((f.answer.outcome.as_deref(), f.answer.reason.as_deref()), (Some("skipped"), Some("disabled")));
    assert_eq!(counted(&ctx, "autobalancer_skips_total{reason=\"disabled\"}"), 1.0);
    assert_eq!(counted(&ctx, "autobalancer_runs_total{outcome=\"skipped\"}"), 1.0);
    // No run ran: the last run's time and /status stay as they were.
    assert_eq!(counted(&ctx, "autobalancer_last_run_timestamp_seconds"), 0.0);
    let status = ctx.status.lock().unwrap().clone();
    assert_eq!((status.last_outcome, status.last_run_at, status.last_decision), (None, None, None));
}

#[tokio::test]
async fn a_run_sets_the_metrics_of_its_lock_plan_moves_and_snapshot() {
    use crate::model::MemberFacts;
    let dir = tempfile::tempdir().unwrap();
    let mut snap = make_snapshot(make_members(2), &skewed());
    // What a backend observes beside the layout, as a snapshot file may carry it.
    snap.observed.members = vec![
        MemberFacts { used_memory_bytes: 1_000, stray_keys: 2, big_keys: 1 },
        MemberFacts { used_memory_bytes: 500, stray_keys: 0, big_keys: 0 },
    ];
    snap.observed.engine = Some("redis 7.0.15".into());
    std::fs::write(dir.path().join("snap.json"), snap.to_json()).unwrap();
    let ctx = context(dir.path(), None);
    let never = CancellationToken::new();
    let value = |m: &str| counted(&ctx, m);
    assert_eq!((value("autobalancer_size_threshold_ratio"), value("autobalancer_etcd_up")), (0.1, 1.0));

    // Held elsewhere for a while: the lock's age is what the run found.
    let Acquire::Acquired(held) = ctx.coordinator.try_lock("other").await.unwrap() else { panic!("not acquired") };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    ctx.run_once(MANUAL, &never).await;
    assert!(value("autobalancer_lock_age_seconds") >= 0.05, "{}", value("autobalancer_lock_age_seconds"));
    assert_eq!(value("autobalancer_lock_acquisitions_total{result=\"held_elsewhere\"}"), 1.0);
    assert_eq!(value("autobalancer_snapshot_duration_seconds_count"), 0.0, "a skip at the lock reads nothing");
    ctx.coordinator.release(held).await;

    let started = chrono::Utc::now().timestamp() as f64;
    let f = ctx.run_once(MANUAL, &never).await;
    assert_eq!(f.answer.outcome.as_deref(), Some("rebalanced"), "{:?}", f.answer);
    let moves = f.answer.moves.len() as f64;
    assert!(moves >= 1.0);
    let expected = [
        ("autobalancer_lock_acquisitions_total{result=\"acquired\"}", 1.0),
        ("autobalancer_lock_age_seconds", 0.0),
        ("autobalancer_lock_held", 0.0),
        ("autobalancer_transfer_size_bytes", f.answer.transfer_bytes as f64),
        ("autobalancer_cluster_size_bytes", f.answer.total_bytes as f64),
        ("autobalancer_rebalance_moves_planned", moves),
        ("autobalancer_rebalance_moves_done", moves),
        ("autobalancer_rebalance_in_progress", 0.0),
        ("autobalancer_move_duration_seconds_count", moves),
        ("autobalancer_plan_duration_seconds_count", 1.0),
        ("autobalancer_snapshot_duration_seconds_count", 1.0),
        ("autobalancer_member_used_memory_bytes{member=\"m1\"}", 1_000.0),
        ("autobalancer_stray_keys{member=\"m1\"}", 2.0),
        ("autobalancer_big_keys{member=\"m1\"}", 1.0),
        ("autobalancer_big_keys{member=\"m2\"}", 0.0),
    ];
    for (metric, want) in expected {
        assert_eq!(value(metric), want, "{metric}");
    }
    assert!(f.answer.transfer_bytes > 0 && f.answer.total_bytes >= f.answer.transfer_bytes);
    let ended = value("autobalancer_last_run_timestamp_seconds");
    assert!(ended >= started && ended <= chrono::Utc::now().timestamp() as f64 + 1.0, "{ended} vs {started}");
    let text = ctx.metrics.render();
    let info = text.lines().find(|l| l.starts_with("autobalancer_build_info{")).expect("build_info");
    assert!(info.contains("engine=\"redis-7.0.15\"") && info.ends_with(" 1"), "{info}");
}
