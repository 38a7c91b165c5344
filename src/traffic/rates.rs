//! Per-slot rates from the cumulative counters of `CLUSTER SLOT-STATS`: CPU microseconds,
//! network bytes in and out per second, as a decayed average over `traffic.window`.
//!
//! A series belongs to one (slot, owner): a slot that changed owner starts a new one (the
//! new owner's counters start from its own zero). A counter that went down (a restart, a
//! `CONFIG RESETSTAT`, a wrap) restarts the series from that reading. A rate is trusted
//! after `traffic.min-samples` intervals.
//!
//! Owns: the series and their arithmetic. Does not own: reading the counters or where the
//! table is kept.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One reading of a slot's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub cpu_usec: u64,
    pub net_in: u64,
    pub net_out: u64,
    /// Keys in the slot now (a gauge, not a counter).
    #[serde(default)]
    pub keys: u64,
}

/// Per second.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rates {
    pub cpu_usec: f64,
    pub net_in: f64,
    pub net_out: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Series {
    pub owner: String,
    pub last: Counters,
    /// Unix seconds of the last reading.
    pub at: f64,
    pub rates: Rates,
    /// Intervals averaged so far.
    pub samples: u32,
    /// Unix seconds of the series' first reading (on this owner).
    #[serde(default)]
    pub since: f64,
    /// The series began because the slot arrived on its owner (a move), not because
    /// sampling began.
    #[serde(default)]
    pub moved: bool,
}

/// The rates of the slots one node (or the whole cluster) owns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateTable {
    pub slots: BTreeMap<u16, Series>,
    /// Unix seconds of each owner's first reading: a slot that appears later arrived.
    #[serde(default)]
    pub first_reading: BTreeMap<String, f64>,
}

impl RateTable {
    /// Adds a reading taken at `at` (Unix seconds) of the slots `owner` owns. Slots of
    /// `owner` absent from the reading are no longer its own and are dropped.
    pub fn observe(&mut self, owner: &str, reading: &BTreeMap<u16, Counters>, at: f64, window_seconds: f64) {
        self.slots.retain(|slot, s| s.owner != owner || reading.contains_key(slot));
        let seen_before = *self.first_reading.entry(owner.to_string()).or_insert(at) < at;
        for (&slot, &c) in reading {
            let fresh = |moved| Series {
                owner: owner.to_string(),
                last: c,
                at,
                rates: Rates::default(),
                samples: 0,
                since: at,
                moved,
            };
            let s = self.slots.entry(slot).or_insert_with(|| fresh(seen_before));
            let dt = at - s.at;
            let went_down = c.cpu_usec < s.last.cpu_usec || c.net_in < s.last.net_in || c.net_out < s.last.net_out;
            if s.owner != owner || went_down {
                *s = fresh(s.owner != owner);
                continue;
            }
            s.last.keys = c.keys;
            if dt <= 0.0 {
                continue;
            }
            let now = Rates {
                cpu_usec: (c.cpu_usec - s.last.cpu_usec) as f64 / dt,
                net_in: (c.net_in - s.last.net_in) as f64 / dt,
                net_out: (c.net_out - s.last.net_out) as f64 / dt,
            };
            // An exponentially decayed average: a reading `window` old weighs 1/e.
            let a = if s.samples == 0 { 1.0 } else { 1.0 - (-dt / window_seconds.max(1.0)).exp() };
            let blend = |old: f64, new: f64| old + a * (new - old);
            s.rates = Rates {
                cpu_usec: blend(s.rates.cpu_usec, now.cpu_usec),
                net_in: blend(s.rates.net_in, now.net_in),
                net_out: blend(s.rates.net_out, now.net_out),
            };
            s.last = c;
            s.at = at;
            s.samples += 1;
        }
    }

    /// Merges another node's table in (the holder gathers every sidecar's).
    pub fn merge(&mut self, other: RateTable) {
        self.slots.extend(other.slots);
        self.first_reading.extend(other.first_reading);
    }

    /// Forgets the slots `owner` owned (it no longer reports: a replica now, or off).
    pub fn forget(&mut self, owner: &str) {
        self.slots.retain(|_, s| s.owner != owner);
        self.first_reading.remove(owner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(cpu: u64) -> BTreeMap<u16, Counters> {
        BTreeMap::from([(7, Counters { cpu_usec: cpu, net_in: cpu * 2, net_out: cpu * 3, keys: 1 })])
    }

    #[test]
    fn a_rate_is_the_counters_difference_over_time_decayed_over_the_window() {
        let mut t = RateTable::default();
        t.observe("a", &reading(1000), 0.0, 3600.0);
        assert_eq!(t.slots[&7].samples, 0, "one reading is no rate yet");
        t.observe("a", &reading(2000), 10.0, 3600.0);
        let s = &t.slots[&7];
        assert_eq!((s.samples, s.rates.cpu_usec, s.rates.net_in, s.rates.net_out), (1, 100.0, 200.0, 300.0));
        // The rate doubles for one interval: the average moves by 1 - e^(-10/3600) of it.
        t.observe("a", &reading(4000), 20.0, 3600.0);
        let r = t.slots[&7].rates.cpu_usec;
        let a = 1.0 - (-10.0f64 / 3600.0).exp();
        assert!((r - (100.0 + a * 100.0)).abs() < 1e-9, "{r}");
        // With a window as short as the interval, the new rate counts for most.
        let mut short = t.clone();
        short.observe("a", &reading(7000), 30.0, 10.0);
        assert!(short.slots[&7].rates.cpu_usec > 200.0, "{:?}", short.slots[&7]);
    }

    #[test]
    fn a_new_owner_or_a_counter_that_went_down_starts_a_new_series() {
        let mut t = RateTable::default();
        t.observe("a", &reading(1000), 0.0, 60.0);
        t.observe("a", &reading(2000), 10.0, 60.0);
        assert_eq!(t.slots[&7].samples, 1);
        assert!(!t.slots[&7].moved, "sampling began with the slot on a");
        // The slot moved to b: b's counters start from its own zero.
        t.observe("b", &reading(50), 20.0, 60.0);
        assert_eq!((t.slots[&7].owner.as_str(), t.slots[&7].samples, t.slots[&7].moved), ("b", 0, true));
        // a no longer reports it: a's reading without slot 7 leaves b's series alone.
        t.observe("a", &BTreeMap::new(), 20.0, 60.0);
        assert_eq!(t.slots[&7].owner, "b");
        // b restarts (counters reset): a new series, no negative rate.
        t.observe("b", &reading(60), 30.0, 60.0);
        assert_eq!(t.slots[&7].samples, 1);
        t.observe("b", &reading(5), 40.0, 60.0);
        assert_eq!((t.slots[&7].samples, t.slots[&7].last.cpu_usec, t.slots[&7].moved), (0, 5, false));
        // b gives the slot up: its next reading drops the series.
        t.observe("b", &BTreeMap::new(), 50.0, 60.0);
        assert!(t.slots.is_empty());
        // A slot that appears on a master already sampled arrived there.
        t.observe("b", &reading(9), 60.0, 60.0);
        assert!(t.slots[&7].moved);
        let mut fresh = RateTable::default();
        fresh.observe("c", &reading(9), 60.0, 60.0);
        assert!(!fresh.slots[&7].moved, "a master's first reading is where sampling began");
        fresh.forget("c");
        assert!(fresh.slots.is_empty() && fresh.first_reading.is_empty());
    }
}
