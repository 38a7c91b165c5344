//! The daemon as the HTTP API's control handle.
//!
//! Owns: what each API call reads or starts here (status documents, detached runs).
//! Does not own: HTTP (`api`), the runs themselves (`run`).

use serde_json::json;

use super::Sidecar;
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

    async fn status(&self) -> serde_json::Value {
        let mut reg = self.registration();
        let holder = self.ctx.coordinator.holder().await;
        let paused = self.ctx.coordinator.paused().await;
        let config = &self.ctx.config;
        let obj = reg.as_object_mut().expect("object");
        obj.insert("cluster".into(), json!(config.cluster.id));
        obj.insert(
            "schedule".into(),
            json!({"cron": self.schedule.expression(), "timezone": config.schedule.timezone,
                   "enabled": config.schedule.enabled}),
        );
        obj.insert("standalone".into(), json!(self.ctx.coordinator.is_standalone()));
        let lock = match holder {
            Ok(Some(h)) => json!({"holder": h.member, "operation": h.operation, "since": h.started_at,
                                  "age_seconds": (chrono::Utc::now() - h.started_at).num_milliseconds() as f64 / 1000.0,
                                  "held_here": h.member == self.member() && self.current_operation().is_some()}),
            Ok(None) => json!({"holder": null}),
            Err(e) => json!({"error": e.to_string()}),
        };
        obj.insert("lock".into(), lock);
        obj.insert("paused".into(), json!(paused.ok().flatten()));
        obj.insert("etcd".into(), json!(self.etcd.lock().unwrap().clone().err()));
        // The last snapshot's sizes ("sizes: exact, measured 3 s ago ...") and findings.
        let observed = self.ctx.status.lock().unwrap().observed.clone();
        obj.insert("sizes".into(), json!(observed.as_ref().and_then(|o| o.sizing.as_ref()).map(|s| s.line())));
        obj.insert("observed".into(), json!(observed));
        reg
    }

    async fn cluster_status(&self) -> Result<serde_json::Value, RunError> {
        let c = &self.ctx.coordinator;
        Ok(json!({
            "cluster": self.ctx.config.cluster.id,
            "lock_holder": c.holder().await?,
            "paused": c.paused().await?,
            "evacuations": c.evacuations().await?,
            "last_run": c.last_run().await?,
            "sidecars": c.sidecars().await?,
        }))
    }

    async fn plan(&self, force: bool) -> Result<Answer, RunError> {
        self.ctx.simulate(force).await
    }

    async fn rebalance(&self, force: bool) -> Result<Answer, RunError> {
        self.start(Trigger::Manual { force, allow_big_keys: false })?.finish().await?.into_answer()
    }

    fn stop(&self) -> Option<&'static str> {
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
