//! Traffic in a run: readings of the masters' slot counters into this sidecar's
//! [`TrafficTable`] (standalone: every master; with etcd: its own master, published as
//! `traffic/<member>`), the table a plan uses (with etcd: every sidecar's, gathered at
//! the snapshot), and the readings a `--once` run takes before it plans.
//!
//! Owns: when a reading is taken and what a plan is told. Does not own: the counters
//! (the backend) or the rates ([`crate::traffic`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Context;
use crate::model::ClusterSnapshot;
use crate::plan::traffic::TrafficInput;
use crate::traffic::{Settings, TrafficTable};

fn now() -> f64 {
    chrono::Utc::now().timestamp_millis() as f64 / 1000.0
}

impl Context {
    /// One reading into this sidecar's table: `all` masters, or the local one (a sidecar
    /// beside its master, publishing what it keeps). The masters read.
    pub async fn sample_traffic(&self, all: bool) -> Result<usize, String> {
        let member = (!all).then(|| self.coordinator.member().to_string());
        let samples = self.cluster.read_traffic(member.as_deref()).await.map_err(|e| e.to_string())?;
        let window = self.config.traffic.window.0.as_secs_f64();
        let table = {
            let mut t = self.traffic.lock().unwrap();
            if let Some(m) = &member
                && samples.is_empty()
            {
                // The local node is no master now: what it kept is no longer its own.
                t.forget(m);
            }
            t.observe(&samples, now(), window);
            t.clone()
        };
        if member.is_some() {
            self.coordinator.publish_traffic(&table).await.map_err(|e| format!("cannot publish traffic rates: {e}"))?;
        }
        Ok(samples.len())
    }

    /// The table plans use from now: this sidecar's, with every other sidecar's
    /// published rates merged in (with etcd).
    pub(super) async fn gather_traffic(&self) {
        if !self.config.traffic.enabled {
            return;
        }
        let mut view = self.traffic.lock().unwrap().clone();
        if !self.coordinator.is_standalone() {
            match self.coordinator.traffic_tables::<TrafficTable>().await {
                Ok(tables) => tables.into_iter().for_each(|t| view.merge(t)),
                Err(e) => {
                    warn!(cause = %e, "cannot read the traffic rates sidecars published; planning by what this one keeps")
                }
            }
        }
        *self.traffic_view.lock().unwrap() = view;
    }

    /// What the planner is told of traffic for `snap`: None with `traffic.enabled =
    /// false`, else the input or why traffic is off.
    pub(super) fn traffic_input(&self, snap: &ClusterSnapshot) -> Option<Result<TrafficInput, String>> {
        let c = &self.config.traffic;
        if !c.enabled {
            return None;
        }
        let view = self.traffic_view.lock().unwrap();
        Some(crate::traffic::input(snap, &view, &Settings::from_config(c), now()))
    }

    /// Where traffic stands, in a line for `/status`: off and why, or how many slots this
    /// sidecar (with etcd: the fleet, at the last snapshot) samples and trusts.
    pub fn traffic_line(&self) -> String {
        let c = &self.config.traffic;
        if !c.enabled {
            return "traffic: disabled (traffic.enabled = false): plans by bytes only".to_string();
        }
        let (own, view) = (self.traffic.lock().unwrap(), self.traffic_view.lock().unwrap());
        let t = if view.is_empty() { &*own } else { &*view };
        if let Some((member, why)) = t.off.iter().next() {
            return format!("traffic: off: {why} (member {member})");
        }
        if t.rates.first_reading.is_empty() {
            return "traffic: no reading yet".to_string();
        }
        let untrusted = t.rates.slots.values().filter(|s| s.samples < c.min_samples).count();
        format!(
            "traffic: {} slot(s) of {} master(s) sampled, {untrusted} not trusted yet (traffic.min-samples = {})",
            t.rates.slots.len(),
            t.rates.first_reading.len(),
            c.min_samples
        )
    }

    /// Before a `--once` run or a `simulate`: where the masters measure traffic and the
    /// rates the sidecars publish are not yet trusted, takes readings of every master
    /// `traffic.sample-every` apart until they are (`traffic.min-samples` intervals),
    /// saying each one. Stops at the first reading that finds traffic off, or when
    /// `cancel` fires.
    pub async fn settle_traffic(&self, cancel: &CancellationToken) {
        let c = &self.config.traffic;
        if !c.enabled {
            return;
        }
        let readings = c.min_samples + 1;
        for i in 1..=readings {
            if let Err(e) = self.sample_traffic(true).await {
                warn!(cause = %e, "traffic: cannot read slot statistics; planning by bytes");
                return;
            }
            let (off, untrusted) = {
                let t = self.traffic.lock().unwrap();
                (t.off.values().next().cloned(), t.rates.slots.values().filter(|s| s.samples < c.min_samples).count())
            };
            if let Some(why) = off {
                info!(why = %why, "traffic: off");
                return;
            }
            if untrusted == 0 || i == readings {
                return;
            }
            info!(
                reading = i,
                of = readings,
                untrusted_slots = untrusted,
                next_in_seconds = c.sample_every.0.as_secs(),
                "traffic: rates not trusted yet; reading again (--no-traffic plans by bytes only)"
            );
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(c.sample_every.0.max(Duration::from_millis(10))) => {}
            }
        }
    }
}
