//! The sidecar daemon: wires the schedule, the API, the heartbeat and evacuations around
//! one `run::Context`, and shuts them down in order.
//!
//! Owns: task lifecycle, "one operation at a time in this process", evacuation progress,
//! readiness. Does not own: what a run does (`run`), HTTP details (`api`).
//!
//! Shutdown order, on SIGTERM/SIGINT or `shutdown.cancel()`:
//! 1. the scheduler stops waking and no new operation starts;
//! 2. the running operation is cancelled: the move in flight finishes (a slot is never
//!    left half-moved), no further move starts, the lock is released;
//! 3. the registration is removed from etcd;
//! 4. the HTTP server stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::coord::Evacuation;
use crate::report::Outcome;
use crate::run::{Context, Trigger};
use crate::schedule::Schedule;

#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    #[error("{0}")]
    Config(String),
    #[error("api.listen {addr}: {cause}")]
    Bind { addr: String, cause: String },
}

/// Why an operation cannot start now (each maps to its own API code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("a {0} is already running on this sidecar")]
    Running(String),
}

/// Evacuation progress of the local member.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EvacuationStatus {
    pub active: bool,
    /// Buckets and bytes still on the member at the last look; None before the first.
    pub buckets_left: Option<u64>,
    pub bytes_left: Option<u64>,
    pub request: Option<Evacuation>,
}

pub struct Sidecar {
    pub ctx: Arc<Context>,
    pub schedule: Schedule,
    pub token: Option<String>,
    pub shutdown: CancellationToken,
    /// The operation running in this process, and how to stop it.
    current: Mutex<Option<(String, CancellationToken)>>,
    pub next_run: std::sync::Mutex<Option<DateTime<Utc>>>,
    /// Ok, or why etcd is not usable (readiness).
    pub etcd: std::sync::Mutex<Result<(), String>>,
    pub evacuation: std::sync::Mutex<EvacuationStatus>,
    /// Wakes the evacuation task.
    evac_wake: tokio::sync::Notify,
}

impl Sidecar {
    pub fn new(config: Config, shutdown: CancellationToken) -> Result<Arc<Sidecar>, SidecarError> {
        let schedule = Schedule::new(&config.schedule.cron, &config.schedule.timezone)
            .map_err(|e| SidecarError::Config(e.to_string()))?;
        let token = match &config.api.token_file {
            Some(p) => {
                Some(crate::config::read_secret(p, "api.token-file").map_err(|e| SidecarError::Config(e.to_string()))?)
            }
            None => None,
        };
        let ctx = Context::new(config).map_err(SidecarError::Config)?;
        Ok(Arc::new(Sidecar {
            ctx: Arc::new(ctx),
            schedule,
            token,
            shutdown,
            current: Mutex::new(None),
            next_run: std::sync::Mutex::new(None),
            etcd: std::sync::Mutex::new(Ok(())),
            evacuation: std::sync::Mutex::new(EvacuationStatus::default()),
            evac_wake: tokio::sync::Notify::new(),
        }))
    }

    pub fn member(&self) -> &str {
        self.ctx.coordinator.member()
    }

    pub async fn current_operation(&self) -> Option<String> {
        self.current.lock().await.as_ref().map(|(o, _)| o.clone())
    }

    /// Runs one operation through the shared pipeline, refusing a second one in this
    /// process while the first runs.
    pub async fn run(&self, trigger: Trigger) -> Result<Outcome, Busy> {
        let token = {
            let mut cur = self.current.lock().await;
            if let Some((op, _)) = cur.as_ref() {
                return Err(Busy::Running(op.clone()));
            }
            let t = self.shutdown.child_token();
            *cur = Some((trigger.operation().to_string(), t.clone()));
            t
        };
        let out = self.ctx.run_once(trigger, &token).await;
        *self.current.lock().await = None;
        Ok(out)
    }

    /// Stops the running operation at its next safe point. Returns what was stopped.
    pub async fn stop_current(&self) -> Option<String> {
        let cur = self.current.lock().await;
        cur.as_ref().map(|(op, t)| {
            t.cancel();
            op.clone()
        })
    }

    /// Starts (or updates) the persistent evacuation of the local member.
    pub async fn start_evacuation(&self, rate: u64, migrate_to: Vec<String>) -> Result<Evacuation, String> {
        let e = Evacuation { member: self.member().to_string(), started_at: Utc::now(), rate, migrate_to };
        self.ctx.coordinator.set_evacuation(self.member(), Some(&e)).await.map_err(|x| x.to_string())?;
        {
            let mut s = self.evacuation.lock().unwrap();
            s.active = true;
            s.request = Some(e.clone());
        }
        self.evac_wake.notify_one();
        Ok(e)
    }

    pub async fn stop_evacuation(&self) -> Result<(), String> {
        self.ctx.coordinator.set_evacuation(self.member(), None).await.map_err(|x| x.to_string())?;
        *self.evacuation.lock().unwrap() = EvacuationStatus::default();
        self.ctx.metrics.evacuation_buckets_left.set(0);
        self.ctx.metrics.evacuation_bytes_left.set(0);
        // An evacuation run in progress stops at its next safe point.
        let cur = self.current.lock().await;
        if let Some((op, t)) = cur.as_ref()
            && op == "evacuation"
        {
            t.cancel();
        }
        Ok(())
    }

    /// The schedule loop. A run that outlasts its slot makes the slots it covered pass
    /// unrun: the next wake is computed after it ends.
    async fn scheduler(self: Arc<Self>) {
        let m = &self.ctx.metrics;
        if !self.ctx.config.schedule.enabled {
            info!("schedule.enabled = false: serving the API, never waking on schedule");
            m.next_run_timestamp_seconds.set(0.0);
            m.record_skip(crate::decide::SkipReason::Disabled);
            return;
        }
        loop {
            let Some(next) = self.schedule.next_after(Utc::now()) else {
                warn!(cron = self.schedule.expression(), "the schedule never fires again");
                return;
            };
            *self.next_run.lock().unwrap() = Some(next);
            m.next_run_timestamp_seconds.set(next.timestamp() as f64);
            let wait = (next - Utc::now()).to_std().unwrap_or_default();
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            match self.run(Trigger::Scheduled { slot: next }).await {
                Ok(o) => info!(slot = %next.to_rfc3339(), outcome = crate::run::outcome_label(&o),
                               reason = o.decision.reason.map(|r| r.as_str()).unwrap_or("-"), "scheduled run done"),
                Err(b) => info!(slot = %next.to_rfc3339(), "scheduled run not started: {b}"),
            }
        }
    }

    /// Registration and readiness: every TTL/3, write our state to etcd and note whether
    /// etcd answered; refresh the evacuation flag from etcd.
    async fn heartbeat(self: Arc<Self>) {
        let period = self.ctx.config.etcd.as_ref().map(|e| e.lease_ttl.0 / 3).unwrap_or(Duration::from_secs(5));
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => {}
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
            let state = self.registration().await;
            let res = self.ctx.coordinator.register(&state).await.map_err(|e| e.to_string());
            if let Err(e) = &res {
                warn!(cause = %e, "etcd heartbeat failed");
            }
            if !self.ctx.coordinator.is_standalone() {
                self.ctx.metrics.etcd_up.set(res.is_ok() as i64);
            }
            *self.etcd.lock().unwrap() = res;
        }
    }

    /// What this sidecar publishes under `sidecars/<member>`.
    pub async fn registration(&self) -> serde_json::Value {
        let status = self.ctx.status.lock().unwrap().clone();
        let evac = self.evacuation.lock().unwrap().clone();
        let p = &self.ctx.progress;
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.current_operation().await;
        let state = match running.as_deref() {
            Some(_) => status.state.clone(),
            None if evac.active && evac.buckets_left == Some(0) => "evacuated".into(),
            None if evac.active => "evacuating".into(),
            None => "idle".into(),
        };
        serde_json::json!({
            "member": self.member(),
            "api": self.ctx.config.api.listen,
            "version": env!("CARGO_PKG_VERSION"),
            "state": state,
            "operation": running,
            "progress": {
                "moves_planned": p.planned.load(Relaxed), "moves_done": p.done.load(Relaxed),
                "moves_failed": p.failed.load(Relaxed), "bytes_planned": p.bytes_planned.load(Relaxed),
                "bytes_done": p.bytes_done.load(Relaxed),
            },
            "last_decision": status.last_decision,
            "last_run_at": status.last_run_at,
            "last_outcome": status.last_outcome,
            "last_report": status.last_report,
            "next_run": *self.next_run.lock().unwrap(),
            "evacuation": evac,
            "updated_at": Utc::now(),
        })
    }

    /// Drains the local member while an evacuation is requested: runs until it holds
    /// nothing, waiting out pauses and other holders of the lock.
    async fn evacuator(self: Arc<Self>) {
        loop {
            let active = self.evacuation.lock().unwrap().active;
            if !active {
                tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    _ = self.evac_wake.notified() => continue,
                }
            }
            // How much is left?
            match self.ctx.snapshot().await {
                Ok(s) => {
                    let me = s.member_index(self.member());
                    let (b, bytes) = match me {
                        Some(i) => s
                            .buckets
                            .iter()
                            .filter(|b| b.copies.contains(&i))
                            .fold((0u64, 0u64), |a, b| (a.0 + 1, a.1 + b.bytes)),
                        None => (0, 0),
                    };
                    {
                        let mut st = self.evacuation.lock().unwrap();
                        st.buckets_left = Some(b);
                        st.bytes_left = Some(bytes);
                    }
                    self.ctx.metrics.evacuation_buckets_left.set(b as i64);
                    self.ctx.metrics.evacuation_bytes_left.set(bytes as i64);
                    if b == 0 {
                        // Evacuated: stays so (503 on /availability) until stopped.
                        tokio::select! {
                            _ = self.shutdown.cancelled() => return,
                            _ = self.evac_wake.notified() => continue,
                            _ = tokio::time::sleep(Duration::from_secs(10)) => continue,
                        }
                    }
                }
                Err(e) => warn!(cause = %e, "evacuation: snapshot failed; retrying"),
            }
            if self.ctx.coordinator.paused().await.ok().flatten().is_none() {
                match self.run(Trigger::Evacuation).await {
                    Ok(o) => info!(
                        outcome = crate::run::outcome_label(&o),
                        moved = o.moved_bytes.unwrap_or(0),
                        reason = o.decision.reason.map(|r| r.as_str()).unwrap_or("-"),
                        "evacuation round done"
                    ),
                    Err(b) => info!("evacuation waits: {b}"),
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = self.evac_wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// Runs the daemon until `shutdown` is cancelled (or SIGTERM/SIGINT arrive).
pub async fn serve(config: Config, shutdown: CancellationToken) -> Result<(), SidecarError> {
    let listen = config.api.listen.clone();
    let sc = Sidecar::new(config, shutdown.clone())?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|e| SidecarError::Bind { addr: listen.clone(), cause: e.to_string() })?;
    info!(member = sc.member(), api = %listen, cron = sc.schedule.expression(), "sidecar started");
    sc.ctx.warn_if_standalone();
    let signals = {
        let s = shutdown.clone();
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
                _ = term.recv() => info!("SIGTERM: shutting down"),
                _ = s.cancelled() => {}
            }
            s.cancel();
        })
    };
    let http_stop = CancellationToken::new();
    let app = crate::api::router(sc.clone());
    let hs = http_stop.clone();
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, app).with_graceful_shutdown(async move { hs.cancelled().await }).await;
    });
    let heartbeat = tokio::spawn(sc.clone().heartbeat());
    let evacuator = tokio::spawn(sc.clone().evacuator());
    let scheduler = tokio::spawn(sc.clone().scheduler());

    shutdown.cancelled().await;
    // 1-2: no new operations; the running one stops at its safe point and releases.
    sc.stop_current().await;
    let _ = scheduler.await;
    let _ = evacuator.await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while sc.current_operation().await.is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = heartbeat.await;
    // 3: registration.
    sc.ctx.coordinator.deregister().await;
    // 4: HTTP.
    http_stop.cancel();
    let _ = http.await;
    signals.abort();
    info!("sidecar stopped");
    Ok(())
}
