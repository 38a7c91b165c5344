//! The daemon as the HTTP API's control handle.
//!
//! Owns: what each API call reads or starts here (status documents, detached runs).
//! Does not own: HTTP (`api`), the runs themselves (`run`).

use super::Sidecar;
use crate::api::bodies::{ClusterStatus, LockStatus, ScheduleStatus, Status};
use crate::api::{Availability, Control};
use crate::cluster::{HANDOFF_WITHIN, Handoff, HandoffError};
use crate::coord::Evacuation;
use crate::model::ClusterSnapshot;
use crate::report::Answer;
use crate::run::{RunError, Trigger};

impl Control for Sidecar {
    fn member(&self) -> &str {
        Sidecar::member(self)
    }

    fn metrics(&self) -> String {
        self.ctx.metrics.render()
    }

    fn health(&self) -> Result<(), String> {
        self.supervisor.failure().map_or(Ok(()), |f| Err(f.to_string()))
    }

    fn readiness(&self) -> Result<(), String> {
        self.etcd.lock().unwrap().clone()
    }

    fn availability(&self) -> Availability {
        let e = self.evacuation.lock().unwrap().clone();
        let state = match (e.active, e.buckets_left) {
            (false, _) => "available",
            (true, Some(0)) => "evacuated",
            (true, _) => "evacuating",
        };
        Availability { available: !e.active, state, member: self.member().to_string() }
    }

    async fn status(&self) -> Status {
        let holder = self.ctx.coordinator.holder().await;
        let paused = self.ctx.coordinator.paused().await;
        let config = &self.ctx.config;
        let lock = match holder {
            Ok(Some(h)) => LockStatus {
                age_seconds: Some((chrono::Utc::now() - h.started_at).num_milliseconds() as f64 / 1000.0),
                held_here: Some(h.member == self.member() && self.current_operation().is_some()),
                holder: Some(h.member),
                operation: Some(h.operation),
                since: Some(h.started_at),
                ..LockStatus::default()
            },
            Ok(None) => LockStatus::default(),
            Err(e) => LockStatus { error: Some(e.to_string()), ..LockStatus::default() },
        };
        // The last snapshot's sizes ("sizes: exact, measured 3 s ago ...") and findings.
        let observed = self.ctx.status.lock().unwrap().observed.clone();
        Status {
            registration: self.registration(),
            cluster: config.cluster.id.clone(),
            schedule: ScheduleStatus {
                cron: self.schedule.expression().to_string(),
                timezone: config.schedule.timezone.clone(),
                enabled: config.schedule.enabled,
            },
            standalone: self.ctx.coordinator.is_standalone(),
            lock,
            paused: paused.ok().flatten(),
            etcd: self.etcd.lock().unwrap().clone().err(),
            sizes: observed.as_ref().and_then(|o| o.sizing.as_ref()).map(|s| s.line()),
            traffic: self.ctx.traffic_line(),
            observed,
        }
    }

    async fn cluster_status(&self) -> Result<ClusterStatus, RunError> {
        let c = &self.ctx.coordinator;
        Ok(ClusterStatus {
            cluster: self.ctx.config.cluster.id.clone(),
            lock_holder: c.holder().await?,
            paused: c.paused().await?,
            evacuations: c.evacuations().await?,
            last_run: c.last_run().await?,
            sidecars: c.sidecars().await?,
            placement: self.ctx.status.lock().unwrap().placement.clone(),
        })
    }

    async fn plan(&self, force: bool) -> Result<Answer, RunError> {
        self.ctx.simulate(force).await
    }

    async fn rebalance(&self, force: bool) -> Result<Answer, RunError> {
        self.start(Trigger::Manual { force, allow_big_keys: false })?.finish().await?.into_answer()
    }

    fn stop(&self) -> Option<crate::run::Operation> {
        self.stop_current()
    }

    async fn snapshot(&self) -> Result<ClusterSnapshot, RunError> {
        self.ctx.snapshot().await
    }

    async fn start_evacuation(&self, rate: u64, migrate_to: Vec<String>) -> Result<Evacuation, RunError> {
        Sidecar::start_evacuation(self, rate, migrate_to).await
    }

    async fn stop_evacuation(&self) -> Result<(), RunError> {
        Sidecar::stop_evacuation(self).await
    }

    async fn set_paused(&self, by: Option<String>) -> Result<(), RunError> {
        Ok(self.ctx.coordinator.set_paused(by).await?)
    }

    async fn handoff(&self) -> Result<Handoff, HandoffError> {
        self.ctx.cluster.handoff(self.member(), HANDOFF_WITHIN).await
    }
}
