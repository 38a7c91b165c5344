//! The sidecar daemon: wires the schedule, the API, the heartbeat and evacuations around
//! one `run::Context`, supervises them, and shuts them down in order within a bound.
//!
//! Layout: this file owns the daemon's state, its start and its shutdown order;
//! `operation` the one-operation-at-a-time slot and detached runs; `supervise` task
//! supervision and failpoints; `tasks` the schedule, heartbeat and evacuation loops;
//! `control` the control handle the HTTP API calls. Does not own: what a run does
//! (`run`) or HTTP details (`api`).
//!
//! Shutdown order, on SIGTERM/SIGINT, `shutdown.cancel()` or a failed task; every step
//! bounded by `execution.shutdown-timeout` from the signal:
//! 1. the loops stop waking and no new operation starts;
//! 2. the running operation is cancelled: moves in flight finish (a slot is never left
//!    half-moved), no further move starts, the lock is released. If that outlasts the
//!    timeout, the operation is abandoned where it stands: its moves in flight stay
//!    recorded as intents, which the next holder's repair reads;
//! 3. the loops end;
//! 4. the registration is removed from etcd;
//! 5. the HTTP server stops, after the callers of a run got their answer.

mod control;
mod operation;
mod supervise;
mod tasks;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::bodies::EvacuationStatus;
use crate::config::Config;
use crate::coord::Evacuation;
use crate::run::{Context, Finished, RunError, SetupError, Trigger};
use crate::schedule::Schedule;
use operation::{Operations, RunHandle};
use supervise::Supervisor;
pub use supervise::TaskFailure;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("api.listen {addr}: {cause}")]
    Bind { addr: String, cause: String },
    /// A supervised task panicked or ended before shutdown.
    #[error(transparent)]
    TaskFailed(#[from] TaskFailure),
}

/// How long a shutdown may take, from the signal to the exit (`execution.shutdown-timeout`).
pub fn shutdown_timeout(config: &Config) -> Duration {
    config.execution.shutdown_timeout.0
}

pub struct Sidecar {
    pub ctx: Arc<Context>,
    pub schedule: Schedule,
    pub shutdown: CancellationToken,
    ops: Arc<Operations>,
    supervisor: Arc<Supervisor>,
    pub next_run: Mutex<Option<DateTime<Utc>>>,
    /// Ok, or why etcd is not usable (readiness).
    pub etcd: Mutex<Result<(), String>>,
    pub evacuation: Mutex<EvacuationStatus>,
    /// Wakes the evacuation task.
    evac_wake: Notify,
}

/// The API's bearer token: a token file must hold one.
fn read_token(config: &Config) -> Result<Option<String>, SidecarError> {
    let Some(p) = &config.api.token_file else { return Ok(None) };
    crate::config::read_secret(p, "api.token-file").map(Some).map_err(|e| SidecarError::Config(e.to_string()))
}

impl Sidecar {
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Arc<Sidecar>, SidecarError> {
        let schedule = Schedule::new(&config.schedule.cron, &config.schedule.timezone)
            .map_err(|e| SidecarError::Config(e.to_string()))?;
        let ctx = Context::new(config)?;
        Ok(Arc::new(Sidecar {
            ctx: Arc::new(ctx),
            schedule,
            supervisor: Arc::new(Supervisor::new(shutdown.clone())),
            shutdown,
            ops: Arc::default(),
            next_run: Mutex::new(None),
            etcd: Mutex::new(Ok(())),
            evacuation: Mutex::new(EvacuationStatus::default()),
            evac_wake: Notify::new(),
        }))
    }

    pub fn member(&self) -> &str {
        self.ctx.coordinator.member()
    }

    pub fn current_operation(&self) -> Option<crate::run::Operation> {
        self.ops.current()
    }

    /// Starts a run in a task of its own, refusing a second one in this process. The
    /// handle gives its answer; dropping the handle leaves the run going.
    pub fn start(&self, trigger: Trigger) -> Result<RunHandle, RunError> {
        let (ctx, sup, shutdown) = (self.ctx.clone(), self.supervisor.clone(), self.shutdown.clone());
        self.ops.spawn(trigger.operation(), &self.shutdown, move |cancel| async move {
            let finished = sup.catch("run", ctx.run_once(trigger, &cancel)).await;
            if finished.as_ref().is_some_and(|f| f.moved) {
                // The caller has its answer now; the check measures the moved slots after
                // it, in a task of its own (it only reads: the next operation may start).
                tokio::spawn(async move {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = sup.catch("check after the run", ctx.check_after_run()) => {}
                    }
                });
            }
            finished
        })
    }

    /// Starts a run and waits for its end.
    pub async fn run(&self, trigger: Trigger) -> Result<Finished, RunError> {
        self.start(trigger)?.finish().await
    }

    /// Stops the running operation at its next safe point. Returns what was stopped.
    pub fn stop_current(&self) -> Option<crate::run::Operation> {
        self.ops.stop()
    }

    /// Starts (or updates) the persistent evacuation of the local member.
    pub async fn start_evacuation(&self, rate: u64, migrate_to: Vec<String>) -> Result<Evacuation, RunError> {
        let e = Evacuation { member: self.member().to_string(), started_at: Utc::now(), rate, migrate_to };
        self.ctx.coordinator.set_evacuation(self.member(), Some(&e)).await?;
        {
            let mut s = self.evacuation.lock().unwrap();
            s.active = true;
            s.request = Some(e.clone());
        }
        self.evac_wake.notify_one();
        Ok(e)
    }

    pub async fn stop_evacuation(&self) -> Result<(), RunError> {
        self.ctx.coordinator.set_evacuation(self.member(), None).await?;
        *self.evacuation.lock().unwrap() = EvacuationStatus::default();
        self.ctx.metrics.evacuation_buckets_left.set(0);
        self.ctx.metrics.evacuation_bytes_left.set(0);
        // An evacuation run in progress stops at its next safe point.
        self.ops.stop_if(Trigger::Evacuation.operation());
        Ok(())
    }
}

/// The daemon's long-lived tasks.
struct Tasks {
    http: JoinHandle<()>,
    http_stop: CancellationToken,
    loops: Vec<(&'static str, JoinHandle<()>)>,
    signals: JoinHandle<()>,
}

/// Runs the daemon until `shutdown` is cancelled, SIGTERM/SIGINT arrive, or a supervised
/// task fails (then the answer is that failure).
pub async fn serve(mut config: Config, shutdown: CancellationToken) -> Result<(), SidecarError> {
    let Some(member) = named_member(&config, &shutdown).await else { return Ok(()) };
    config.cluster.member_id = Some(member);
    let listen = config.api.listen.clone();
    let grace = shutdown_timeout(&config);
    let token = read_token(&config)?;
    let sc = Sidecar::new(config, shutdown.clone())?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| SidecarError::Bind { addr: listen.clone(), cause: e.to_string() })?;
    info!(member = sc.member(), api = %listen, cron = sc.schedule.expression(), "sidecar started");
    sc.ctx.warn_if_standalone();
    let tasks = sc.spawn_tasks(listener, token);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = sc.supervisor.failed() => shutdown.cancel(),
    }
    sc.shut_down(tasks, Instant::now() + grace).await;
    match sc.supervisor.failure() {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}

/// The local member's stable id: asks the cluster until it answers (a pod's data node
/// may start after its sidecar), every failure logged. None: shutdown came first.
async fn named_member(config: &Config, shutdown: &CancellationToken) -> Option<String> {
    let named = config.member_id();
    let signalled = signals(shutdown.clone());
    tokio::pin!(signalled);
    let mut wait = Duration::from_secs(1);
    loop {
        let answer = tokio::select! {
            _ = &mut signalled => return None,
            a = crate::run::stable_member_id(config) => a,
        };
        match answer {
            Ok(id) => {
                if id != named {
                    info!(member = %id, named = %named, "the member is named by its node id");
                }
                return Some(id);
            }
            Err(e) => warn!(member = %named, cause = %e, retry_in = ?wait, "cannot name the local member yet"),
        }
        tokio::select! {
            _ = &mut signalled => return None,
            _ = tokio::time::sleep(wait) => wait = (wait * 2).min(Duration::from_secs(10)),
        }
    }
}

impl Sidecar {
    fn spawn_tasks(self: &Arc<Self>, listener: tokio::net::TcpListener, token: Option<String>) -> Tasks {
        let sup = &self.supervisor;
        let signals = sup.spawn("signals", signals(self.shutdown.clone()));
        let http_stop = CancellationToken::new();
        let app = crate::api::router(self.clone(), token);
        let stop = http_stop.clone();
        let http = sup.spawn("http", async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            if let Err(e) = served {
                warn!(cause = %e, "the HTTP server failed");
            }
        });
        let loops = vec![
            ("scheduler", sup.spawn("scheduler", self.clone().scheduler())),
            ("evacuator", sup.spawn("evacuator", self.clone().evacuator())),
            ("heartbeat", sup.spawn("heartbeat", self.clone().heartbeat())),
            ("sizer", sup.spawn("sizer", self.clone().sizer())),
            ("sampler", sup.spawn("sampler", self.clone().sampler())),
            ("replica-watch", sup.spawn("replica-watch", self.clone().replica_watch())),
        ];
        Tasks { http, http_stop, loops, signals }
    }

    /// The shutdown order of the module's header, every step bounded by `deadline`.
    async fn shut_down(&self, tasks: Tasks, deadline: Instant) {
        // A share of the time is kept for the steps after the run.
        let tail = (deadline.saturating_duration_since(Instant::now()) / 4).min(Duration::from_secs(2));
        if let Some(op) = self.ops.stop() {
            info!(operation = op.as_str(), "shutting down: stopping the running operation at its next safe point");
        }
        if !self.ops.wait_idle(deadline - tail).await
            && let Some(op) = self.ops.abort()
        {
            warn!(
                operation = op.as_str(),
                "shutdown timeout reached: abandoning the moves in flight; their intents stay recorded for the next run's repair"
            );
            self.ops.wait_idle(deadline).await;
        }
        for (name, task) in tasks.loops {
            join_by(name, task, deadline).await;
        }
        if tokio::time::timeout_at(deadline, self.ctx.coordinator.deregister()).await.is_err() {
            warn!("registration not removed in time: its lease expires by itself");
        }
        tasks.http_stop.cancel();
        join_by("http", tasks.http, deadline).await;
        tasks.signals.abort();
        info!("sidecar stopped");
    }
}

/// Waits for `task` until `deadline`, then abandons it.
async fn join_by(name: &str, mut task: JoinHandle<()>, deadline: Instant) {
    if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
        warn!(task = name, "did not stop in time: abandoned");
        task.abort();
    }
}

/// SIGTERM or SIGINT cancel `shutdown`.
async fn signals(shutdown: CancellationToken) {
    tokio::select! {
        which = signalled() => info!("{which}: shutting down"),
        _ = shutdown.cancelled() => {}
    }
    shutdown.cancel();
}

/// Resolves at the first SIGINT or SIGTERM, naming it.
pub async fn signalled() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
