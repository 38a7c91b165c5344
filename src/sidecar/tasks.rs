//! The daemon's loops: the schedule, the heartbeat (registration and readiness), the
//! sizes measured ahead of runs, the traffic counters sampled, the watch over the local
//! master's replicas, and the evacuation of the local member. Each returns only once shutdown is asked for; anything else is a failure
//! its supervisor reports.
//!
//! Owns: when runs start on their own, what this sidecar publishes in etcd. Does not
//! own: the runs (`run`), the operation slot (`super::operation`).

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use chrono::Utc;
use tracing::{debug, info, warn};

use super::Sidecar;
use super::supervise::failpoint::{self, Fault};
use crate::api::bodies::{Progress, Registration};
use crate::decide::SkipReason;
use crate::run::{RunState, Skip, Trigger};

/// How soon the sizer looks again while an operation runs; also the least time between
/// two refreshes timed to a scheduled run.
const BUSY_RETRY: Duration = Duration::from_secs(10);
/// A refresh timed to a scheduled run starts this long ahead of it, plus twice the time
/// the last refresh took.
const REFRESH_LEAD: Duration = Duration::from_secs(10);

/// How often a sidecar looks at its own master's replicas.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long a replica whose link was reset is given to resync before it is looked at again.
const RESET_AGAIN_AFTER: Duration = Duration::from_secs(10);
/// How long the watch keeps its node's address before it asks a seed again (not every
/// second: a seed frozen would hold each look for the connection timeout).
const FIND_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// Injects the fault configured for `name` (debug builds): panics, or says to return.
fn injected(name: &str) -> bool {
    match failpoint::hit(name) {
        Some(Fault::Panic) => panic!("failpoint {name}"),
        Some(Fault::Return) => true,
        None => false,
    }
}

impl Sidecar {
    /// The schedule loop. A run that outlasts its slot makes the slots it covered pass
    /// unrun: the next wake is computed after it ends.
    pub(super) async fn scheduler(self: Arc<Self>) {
        let m = &self.ctx.metrics;
        if !self.ctx.config.schedule.enabled {
            info!("schedule.enabled = false: serving the API, never waking on schedule");
            m.next_run_timestamp_seconds.set(0.0);
            self.ctx.skip_outside(Skip::new(SkipReason::Disabled, "schedule.enabled = false: no scheduled run"));
            return self.shutdown.cancelled().await;
        }
        loop {
            let Some(next) = self.schedule.next_after(Utc::now()) else {
                warn!(cron = self.schedule.expression(), "the schedule never fires again");
                return self.shutdown.cancelled().await;
            };
            *self.next_run.lock().unwrap() = Some(next);
            m.next_run_timestamp_seconds.set(next.timestamp() as f64);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if injected("scheduler") {
                return;
            }
            let slot = next.to_rfc3339();
            match self.run(Trigger::Scheduled { slot: next }).await {
                Ok(f) => info!(
                    slot,
                    outcome = f.outcome.label(),
                    reason = f.outcome.reason().unwrap_or("-"),
                    "scheduled run done"
                ),
                Err(e) => info!(slot, "scheduled run not started: {e}"),
            }
        }
    }

    /// Registration and readiness: every TTL/3, write our state to etcd and note whether
    /// etcd answered; refresh the evacuation flag from etcd.
    pub(super) async fn heartbeat(self: Arc<Self>) {
        let period = self.ctx.config.etcd.as_ref().map(|e| e.lease_ttl.0 / 3).unwrap_or(Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if injected("heartbeat") {
                return;
            }
            // The evacuation flag first, so the registration below reflects it.
            if let Ok(ev) = self.ctx.coordinator.evacuations().await {
                let mine = ev.into_iter().find(|e| e.member == self.member());
                let wake = {
                    let mut s = self.evacuation.lock().unwrap();
                    let was = s.active;
                    s.active = mine.is_some();
                    s.request = mine;
                    s.active && !was
                };
                if wake {
                    self.evac_wake.notify_one();
                }
            }
            let res = self.ctx.coordinator.register(&self.registration()).await.map_err(|e| e.to_string());
            if let Err(e) = &res {
                warn!(cause = %e, "etcd heartbeat failed");
            }
            if !self.ctx.coordinator.is_standalone() {
                self.ctx.metrics.etcd_up.set(res.is_ok() as i64);
            }
            *self.etcd.lock().unwrap() = res;
        }
    }

    /// Keeps the sizes a run needs measured ahead of it (`cluster.sizing-refresh`): the
    /// slots of the local member, published for whichever sidecar takes the lock;
    /// standalone, every master, into this process's cache. With a schedule, the refresh
    /// before a scheduled run is timed to end shortly before it. Waits while an operation
    /// runs (its snapshot measures what it needs); a refresh under way when one starts
    /// goes on within the same per-master budget. A refresh ends at shutdown: it only
    /// reads.
    pub(super) async fn sizer(self: Arc<Self>) {
        let every = self.ctx.config.cluster.sizing_refresh.0;
        // A snapshot file has nothing to measure.
        if every.is_zero() || self.ctx.config.cluster.backend == crate::config::Backend::File {
            return self.shutdown.cancelled().await;
        }
        let scheduled = self.ctx.config.schedule.enabled;
        loop {
            if injected("sizer") {
                return;
            }
            // Busy: looks again soon rather than a whole interval later; failed (the
            // member or etcd down): tries again within a minute.
            let mut wait = every.min(BUSY_RETRY);
            if self.ops.current().is_none() {
                let started = std::time::Instant::now();
                let done = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    done = self.refresh_sizes() => done,
                };
                wait = match done {
                    true if scheduled => {
                        let lead = started.elapsed() * 2 + REFRESH_LEAD;
                        let floor = (every / 4).max(BUSY_RETRY);
                        self.schedule.refresh_wait(Utc::now(), every, lead, floor)
                    }
                    true => every,
                    false => every.min(Duration::from_secs(60)),
                };
                debug!(next_in_seconds = wait.as_secs_f64(), "next size refresh");
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads the slot counters every `traffic.sample-every` (`[traffic]`): its own
    /// master's, published for the lock holder; standalone, every master's. Reads only,
    /// so it runs beside operations and ends at shutdown.
    pub(super) async fn sampler(self: Arc<Self>) {
        let c = &self.ctx.config.traffic;
        if !c.enabled || self.ctx.config.cluster.backend == crate::config::Backend::File {
            return self.shutdown.cancelled().await;
        }
        let all = self.ctx.coordinator.is_standalone();
        let mut tick = tokio::time::interval(c.sample_every.0);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if injected("sampler") {
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.ctx.sample_traffic(all) => match r {
                    Ok(n) => debug!(masters = n, "traffic sampled"),
                    Err(e) => warn!(cause = %e, "traffic sampling failed"),
                },
            }
        }
    }

    /// Every [`WATCH_EVERY`], the replicas of this sidecar's node (when it is a master)
    /// that it lists online and that acknowledge nothing have their link reset: a
    /// replica whose stream broke right after a move must resync before a failover can
    /// promote it, whether or not the holder that made the move is still there to see
    /// it. A replica reset is left alone for [`RESET_AGAIN_AFTER`] (a frozen one would
    /// otherwise be asked every second). Runs beside operations and ends at shutdown.
    pub(super) async fn replica_watch(self: Arc<Self>) {
        if self.ctx.config.cluster.backend == crate::config::Backend::File {
            return self.shutdown.cancelled().await;
        }
        let mut reset_at: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
        let (mut addr, mut found_at) = (None, tokio::time::Instant::now());
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            reset_at.retain(|_, at| at.elapsed() < RESET_AGAIN_AFTER);
            if !reset_at.is_empty() {
                continue;
            }
            let member = self.ctx.coordinator.member().to_string();
            if found_at.elapsed() >= FIND_AGAIN_AFTER {
                addr = None;
            }
            let had = addr.is_some();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                r = self.ctx.cluster.reset_stuck_replicas(&member, &mut addr) => match r {
                    Ok(reset) => reset_at.extend(reset.into_iter().map(|r| (r, tokio::time::Instant::now()))),
                    Err(e) => debug!(cause = %e, "replica watch: cannot read the topology"),
                },
            }
            if !had && addr.is_some() {
                found_at = tokio::time::Instant::now();
            }
        }
    }

    /// One refresh; false when it failed (logged).
    async fn refresh_sizes(&self) -> bool {
        debug!("size refresh started");
        let started = std::time::Instant::now();
        let (ctx, member) = (&self.ctx, self.member());
        if ctx.coordinator.is_standalone() {
            match ctx.cluster.warm_sizes().await {
                Ok(measured) => {
                    info!(keys_measured_now = measured, seconds = started.elapsed().as_secs_f64(), "sizes refreshed")
                }
                Err(e) => {
                    warn!(cause = %e, "size refresh failed");
                    return false;
                }
            }
        } else {
            let table = match ctx.cluster.measure_member(member).await {
                Ok(t) => t,
                Err(e) => {
                    warn!(member, cause = %e, "size refresh failed");
                    return false;
                }
            };
            if let Err(e) = ctx.coordinator.publish_sizes(table.as_ref().map(|(t, _)| t)).await {
                warn!(member, cause = %e, "cannot publish the member's sizes");
                return false;
            }
            match table {
                Some((t, measured)) => info!(
                    member,
                    buckets = t.buckets.len(),
                    keys = t.buckets.iter().map(|b| b.keys).sum::<u64>(),
                    keys_measured_now = measured,
                    seconds = started.elapsed().as_secs_f64(),
                    "sizes published"
                ),
                None => debug!(member, "no buckets on the member: no sizes published"),
            }
        }
        ctx.metrics.size_refresh_timestamp_seconds.set(Utc::now().timestamp() as f64);
        true
    }

    /// What this sidecar publishes under `sidecars/<member>`.
    pub fn registration(&self) -> Registration {
        let status = self.ctx.status.lock().unwrap().clone();
        let evacuation = self.evacuation.lock().unwrap().clone();
        let p = &self.ctx.progress;
        let running = self.current_operation();
        let state = match running {
            Some(_) => status.state,
            None if evacuation.active && evacuation.buckets_left == Some(0) => RunState::Evacuated,
            None if evacuation.active => RunState::Evacuating,
            None => RunState::Idle,
        };
        Registration {
            member: self.member().to_string(),
            address: status.address,
            api: self.ctx.config.api.listen.clone(),
            host: self.ctx.config.cluster.host.clone(),
            zone: self.ctx.config.cluster.zone.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state,
            operation: running.map(|o| o.as_str().to_string()),
            progress: Progress {
                moves_planned: p.planned.load(Relaxed),
                moves_done: p.done.load(Relaxed),
                moves_failed: p.failed.load(Relaxed),
                bytes_planned: p.bytes_planned.load(Relaxed),
                bytes_done: p.bytes_done.load(Relaxed),
            },
            last_decision: status.last_decision,
            last_run_at: status.last_run_at,
            last_outcome: status.last_outcome.map(|o| o.as_str().to_string()),
            last_report: status.last_report,
            next_run: *self.next_run.lock().unwrap(),
            evacuation,
            updated_at: Utc::now(),
        }
    }

    /// Drains the local member while an evacuation is requested: runs until it holds
    /// nothing, waiting out pauses and other holders of the lock.
    pub(super) async fn evacuator(self: Arc<Self>) {
        loop {
            let active = self.evacuation.lock().unwrap().active;
            if !active {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.evac_wake.notified() => continue,
                }
            }
            if self.measure_what_is_left().await == Some(0) {
                // Evacuated: stays so (503 on /availability) until stopped.
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.evac_wake.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                }
            }
            if self.ctx.coordinator.paused().await.ok().flatten().is_none() {
                match self.run(Trigger::Evacuation).await {
                    Ok(f) => info!(
                        outcome = f.outcome.label(),
                        moved = f.answer.moved_bytes.unwrap_or(0),
                        reason = f.outcome.reason().unwrap_or("-"),
                        "evacuation round done"
                    ),
                    Err(e) => info!("evacuation waits: {e}"),
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.evac_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Buckets still on the local member (and their bytes, in the status and gauges);
    /// None when the snapshot failed.
    async fn measure_what_is_left(&self) -> Option<u64> {
        let s = match self.ctx.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                warn!(cause = %e, "evacuation: snapshot failed; retrying");
                return None;
            }
        };
        let (buckets, bytes) = match s.member_index(self.member()) {
            Some(i) => {
                s.buckets.iter().filter(|b| b.copies.contains(&i)).fold((0u64, 0u64), |a, b| (a.0 + 1, a.1 + b.bytes))
            }
            None => (0, 0),
        };
        {
            let mut st = self.evacuation.lock().unwrap();
            st.buckets_left = Some(buckets);
            st.bytes_left = Some(bytes);
        }
        self.ctx.metrics.evacuation_buckets_left.set(buckets as i64);
        self.ctx.metrics.evacuation_bytes_left.set(bytes as i64);
        Some(buckets)
    }
}
