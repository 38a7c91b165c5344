//! One run of the pipeline: lock -> repair -> snapshot -> plan -> decide -> execute ->
//! record. Shared by the daemon's schedule, `PUT /rebalance`, evacuations and the
//! `rebalance --once` command, so every path passes the same gates.
//!
//! Layout: this file owns the run context (backend, coordinator, metrics, status) and the
//! steps a dry run shares with a real one (snapshot with the operator's state applied,
//! plan, simulate); `pipeline` the gates and the order of the steps; `outcome` how a
//! run ends, typed; `place` placement's role changes after the moves; `traffic` the
//! traffic readings a plan uses. Does not own: the steps themselves (`cluster`, `plan`, `decide`,
//! `execute`), when runs start or how many at once (the daemon).

mod outcome;
mod pipeline;
mod place;
mod traffic;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tracing::warn;

use crate::cluster::{AnyCluster, Cluster};
use crate::config::Config;
use crate::coord::{Coordinator, Evacuation};
use crate::decide::{Decision, Thresholds, decide};
use crate::execute::Progress;
use crate::metrics::Metrics;
use crate::model::ClusterSnapshot;
use crate::plan::{Plan, PlanError, PlanOptions, plan};
use crate::report::Answer;

pub use crate::decide::FailReason;
pub use outcome::{End, Failure, Finished, Outcome, RunError, SetupError, Skip};

/// What started a run.
#[derive(Clone, Debug, PartialEq)]
pub enum Trigger {
    /// The cron slot this run belongs to.
    Scheduled { slot: DateTime<Utc> },
    /// By hand (`PUT /rebalance`, `rebalance --once`); `force` ignores the thresholds.
    Manual {
        force: bool,
        /// Moves buckets pinned by a key above `execution.max-key-bytes` too (`--force`
        /// does not).
        allow_big_keys: bool,
    },
    /// Draining evacuated members.
    Evacuation,
}

impl Trigger {
    pub fn operation(&self) -> Operation {
        match self {
            Trigger::Scheduled { .. } => Operation::Scheduled,
            Trigger::Manual { .. } => Operation::Manual,
            Trigger::Evacuation => Operation::Evacuation,
        }
    }
}

/// `manual`, `scheduled` or `evacuation`: what runs in this process's operation slot (a
/// run of that trigger). The registration and the lock record carry it as a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Scheduled,
    Manual,
    Evacuation,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Scheduled => "scheduled",
            Operation::Manual => "manual",
            Operation::Evacuation => "evacuation",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `cluster.member-id` (or the first seed) as the backend names the member for good
/// (Redis: the node id of the node an address or hostname names now). The coordinator's
/// records (lock holder, evacuation, registration) and the metric labels use it.
pub async fn stable_member_id(config: &Config) -> Result<String, crate::cluster::ClusterError> {
    AnyCluster::from_config(config)?.member_id(&config.member_id()).await
}

/// Everything a run needs, built once per process.
pub struct Context {
    pub config: Config,
    pub cluster: AnyCluster,
    pub coordinator: Coordinator,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<Progress>,
    pub status: Arc<std::sync::Mutex<RunStatus>>,
    /// The traffic rates this sidecar keeps (its master's, or standalone every master's).
    pub traffic: std::sync::Mutex<crate::traffic::TrafficTable>,
    /// What plans use: the above with every sidecar's published rates.
    traffic_view: std::sync::Mutex<crate::traffic::TrafficTable>,
}

/// Where a sidecar stands: `/status`'s and the registration's `state`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    #[default]
    Idle,
    /// Under the lock: repair, snapshot, plan, decide.
    Planning,
    Moving,
    /// Moving buckets off the local member, or (between runs) evacuated with some left.
    Evacuating,
    /// The local member is evacuated and holds nothing.
    Evacuated,
}

/// What `/status` shows of runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunStatus {
    pub state: RunState,
    pub operation: Option<Operation>,
    pub last_decision: Option<Decision>,
    pub last_run_at: Option<DateTime<Utc>>,
    pub last_outcome: Option<crate::metrics::RunOutcome>,
    pub last_moved_bytes: u64,
    pub last_error: Option<String>,
    /// Per member, of the last run that moved buckets.
    pub last_report: Option<Vec<crate::report::MemberReport>>,
    /// What the last snapshot observed: how sizes were taken, engine, per-member facts.
    pub observed: Option<crate::model::Observed>,
    /// Where the local member was at the last snapshot (its id stays; this may change).
    pub address: Option<String>,
    /// The last placement this sidecar computed (a run's or a plan's).
    pub placement: Option<crate::plan::placement::Placement>,
    /// The mover the last run chose, and why.
    pub mover: Option<String>,
}

impl Context {
    pub fn new(config: Config) -> Result<Context, SetupError> {
        let coordinator = Coordinator::for_config(&config)?;
        Context::with(config, coordinator)
    }

    /// A context that only reads (`simulate`, `snapshot`): standalone, it leaves the state
    /// file to the process that holds it.
    pub fn reader(config: Config) -> Result<Context, SetupError> {
        let coordinator = Coordinator::reader_for_config(&config)?;
        Context::with(config, coordinator)
    }

    fn with(config: Config, coordinator: Coordinator) -> Result<Context, SetupError> {
        let cluster = AnyCluster::from_config(&config)?;
        let metrics = Arc::new(Metrics::new());
        metrics.size_threshold_ratio.set(config.balance.size_threshold_percent as f64 / 100.0);
        metrics.etcd_up.set(coordinator.is_standalone() as i64);
        Ok(Context {
            config,
            cluster,
            coordinator,
            metrics,
            progress: Arc::new(Progress::default()),
            status: Arc::new(std::sync::Mutex::new(RunStatus::default())),
            traffic: Default::default(),
            traffic_view: Default::default(),
        })
    }

    /// Says so when the lock is in-process only (for the commands that take it).
    pub fn warn_if_standalone(&self) {
        if self.coordinator.is_standalone() {
            warn!(
                "no [etcd] section: running standalone with an in-process lock; run only one sidecar per cluster like this"
            );
            if let Some(p) = self.coordinator.state_file() {
                tracing::info!(state_file = %p.display(), "moves are recorded in the state file before they start");
            }
        }
    }

    fn set_state(&self, state: RunState, operation: Option<Operation>) {
        let mut s = self.status.lock().unwrap();
        s.state = state;
        s.operation = operation;
    }

    /// Snapshot with the operator's persistent state applied (evacuated members drain).
    pub async fn snapshot(&self) -> Result<ClusterSnapshot, RunError> {
        self.snapshot_and_evacuations(None).await.map(|(s, _)| s).map_err(RunError::Snapshot)
    }

    /// As `snapshot`, also returning the evacuations it applied (one read of etcd);
    /// starting from what the repair just before read, where it read something.
    async fn snapshot_and_evacuations(
        &self,
        reading: Option<crate::cluster::Reading>,
    ) -> Result<(ClusterSnapshot, Vec<Evacuation>), crate::cluster::ClusterError> {
        let t0 = Instant::now();
        self.adopt_published_sizes().await;
        self.gather_traffic().await;
        let mut snap = self.cluster.snapshot_after(reading).await?;
        let registered = self.registered_stands().await;
        place::apply_stands(&mut snap, &self.config.topology.zones, &registered);
        self.metrics.snapshot_duration_seconds.observe(t0.elapsed().as_secs_f64());
        self.metrics.observe_snapshot(&snap);
        {
            let mut status = self.status.lock().unwrap();
            status.observed = Some(snap.observed.clone());
            let me = snap.member_index(self.coordinator.member()).map(|i| &snap.members[i as usize]);
            status.address = me.map(|m| m.address.clone());
        }
        let evacuations = match self.coordinator.evacuations().await {
            Ok(ev) => ev,
            Err(e) => {
                warn!(cause = %e, "cannot read evacuations; planning without them");
                Vec::new()
            }
        };
        for e in &evacuations {
            if let Some(m) = snap.members.iter_mut().find(|m| m.id == e.member) {
                m.draining = true;
            }
        }
        Ok((snap, evacuations))
    }

    /// The sizes other sidecars measured on their members (`cluster.sizing-refresh`), for
    /// the snapshot to use where they still hold. Without them it measures those slots.
    async fn adopt_published_sizes(&self) {
        if self.coordinator.is_standalone() {
            return;
        }
        match self.coordinator.size_tables().await {
            Ok(tables) => self.cluster.adopt_sizes(tables),
            Err(e) => warn!(cause = %e, "cannot read the sizes sidecars published; measuring every slot"),
        }
    }

    pub fn plan(&self, snap: &ClusterSnapshot) -> Result<Plan, RunError> {
        self.plan_with(snap, None).map_err(RunError::Plan)
    }

    /// Plans with an optional receiver list (an evacuation's `--migrate-to`).
    fn plan_with(&self, snap: &ClusterSnapshot, receivers: Option<Vec<String>>) -> Result<Plan, PlanError> {
        let t0 = Instant::now();
        let mut opts = PlanOptions::from_config(&self.config.balance);
        opts.receivers = receivers;
        let traffic = self.traffic_input(snap);
        opts.traffic = traffic.clone().and_then(Result::ok);
        let mut p = plan(snap, &opts)?;
        if let Some(Err(why)) = traffic {
            p.explanation.push(format!("traffic: off: {why}"));
        }
        self.metrics.plan_duration_seconds.observe(t0.elapsed().as_secs_f64());
        self.metrics.observe_plan(&p);
        self.metrics.observe_traffic(snap, opts.traffic.as_ref(), &p);
        Ok(p)
    }

    /// A dry run: snapshot, plan, decide; moves nothing, takes no lock.
    pub async fn simulate(&self, force: bool) -> Result<Answer, RunError> {
        let snap = self.snapshot().await?;
        let mut p = self.plan(&snap)?;
        let mover = match self.cluster.describe_mover().await {
            Ok(line) => line,
            Err(e) => Some(format!("mover: none: {e}")),
        };
        p.explanation.extend(mover.clone());
        let t = Thresholds::from_config(&self.config.balance, force);
        let d = decide(&snap, &p, &t);
        let mut answer = Answer::new(&snap, &p, d, &t);
        answer.mover = mover;
        answer.placement = Some(self.placement(None, &snap).await);
        Ok(answer)
    }
}

#[cfg(test)]
mod tests;
