//! Traffic as load: per-slot rates from `CLUSTER SLOT-STATS` counters ([`rates`]), kept
//! by each sidecar for its master (standalone: for every master) as a [`TrafficTable`],
//! published in etcd as `traffic/<member>`, and turned into the planner's second
//! dimension ([`input`]).
//!
//! Owns: the tables, what a reading adds to them, and whether the rates are trusted.
//! Does not own: reading the counters from the servers (the backend), or the plan.

mod input;
pub mod rates;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use input::{Settings, input};
use rates::{Counters, RateTable};

/// One master's counters as one reading found them.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The member (node id).
    pub member: String,
    /// Its counters per slot it owns, or why its server measures no traffic (one line:
    /// "127.0.0.1:7003 has cluster-slot-stats-enabled no").
    pub counters: Result<BTreeMap<u16, Counters>, String>,
}

/// What a sidecar knows of traffic: the rates of the masters it samples, and which of
/// them measure none and why.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrafficTable {
    /// Member -> why its server measures no traffic.
    pub off: BTreeMap<String, String>,
    pub rates: RateTable,
}

impl TrafficTable {
    /// Adds one reading taken at `at` (Unix seconds).
    pub fn observe(&mut self, samples: &[Sample], at: f64, window_seconds: f64) {
        for s in samples {
            match &s.counters {
                Ok(c) => {
                    self.off.remove(&s.member);
                    self.rates.observe(&s.member, c, at, window_seconds);
                }
                Err(why) => {
                    self.rates.forget(&s.member);
                    self.off.insert(s.member.clone(), why.clone());
                }
            }
        }
    }

    /// Forgets a member this sidecar no longer samples (its node is a replica now).
    pub fn forget(&mut self, member: &str) {
        self.rates.forget(member);
        self.off.remove(member);
    }

    /// Another sidecar's table merged in (the holder gathers every sidecar's).
    pub fn merge(&mut self, other: TrafficTable) {
        self.off.extend(other.off);
        self.rates.merge(other.rates);
    }

    pub fn is_empty(&self) -> bool {
        self.off.is_empty() && self.rates.slots.is_empty() && self.rates.first_reading.is_empty()
    }
}
