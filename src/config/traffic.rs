//! `[traffic]`: traffic as load, where the servers measure it per slot (`CLUSTER
//! SLOT-STATS` with `cluster-slot-stats-enabled yes`): how often each sidecar reads its
//! master's counters, over how long rates are averaged, when they are trusted, and the
//! CPU band the planner keeps masters in.
//!
//! Owns: the section's keys, defaults and checks. Does not own: the rates or the plan.

use std::time::Duration;

use serde::Deserialize;

use super::Dur;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct TrafficConfig {
    /// Off: bytes only, as `--no-traffic` asks for one run.
    pub enabled: bool,
    /// How often a sidecar reads its master's SLOT-STATS counters.
    pub sample_every: Dur,
    /// Rates are a decayed average over this long (a reading this old weighs 1/e), so
    /// "above its share for the window" is the average above it; a slot moved is not
    /// moved for traffic again within it.
    pub window: Dur,
    /// Readings a slot's rate needs (on its present owner) before it is trusted.
    pub min_samples: u32,
    /// Every master's CPU rate within this percent of its share.
    pub tolerance_percent: u32,
    /// The busiest master this far above its share is off balance for traffic.
    pub threshold_percent: u32,
    /// What the planner balances beside bytes: `cpu`.
    pub dimensions: Vec<String>,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            enabled: true,
            sample_every: Dur(Duration::from_secs(60)),
            window: Dur(Duration::from_secs(3600)),
            min_samples: 5,
            tolerance_percent: 20,
            threshold_percent: 50,
            dimensions: vec!["cpu".to_string()],
        }
    }
}

impl TrafficConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.sample_every.0.is_zero() {
            errs.push("traffic.sample-every must be above 0".to_string());
        }
        if self.window.0 < self.sample_every.0 {
            errs.push(format!(
                "traffic.window ({}s) must be at least traffic.sample-every ({}s)",
                self.window.0.as_secs(),
                self.sample_every.0.as_secs()
            ));
        }
        if !(1..=1000).contains(&self.min_samples) {
            errs.push(format!("traffic.min-samples must be 1..=1000, got {}", self.min_samples));
        }
        if !(1..=1000).contains(&self.tolerance_percent) {
            errs.push(format!("traffic.tolerance-percent must be 1..=1000, got {}", self.tolerance_percent));
        }
        if self.threshold_percent < self.tolerance_percent {
            errs.push(format!(
                "traffic.threshold-percent ({}) must be at least traffic.tolerance-percent ({})",
                self.threshold_percent, self.tolerance_percent
            ));
        }
        for d in &self.dimensions {
            if d != "cpu" {
                errs.push(format!(
                    "traffic.dimensions: {d:?} is not balanced (network bytes are measured and shown); the one dimension is \"cpu\""
                ));
            }
        }
    }
}
