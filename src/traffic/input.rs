//! From the rates the sidecars keep to what the planner is told: each bucket's CPU rate
//! on its present owner, whether every rate is trusted yet, and which buckets moved too
//! recently to move for traffic again.
//!
//! Owns: [`Settings`] and [`input`]. Does not own: the rates' arithmetic ([`super::rates`])
//! or the planner's use of them ([`crate::plan::traffic`]).

use std::collections::BTreeSet;

use super::TrafficTable;
use crate::config::TrafficConfig;
use crate::model::ClusterSnapshot;
use crate::plan::traffic::TrafficInput;

/// The `[traffic]` figures the input needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Settings {
    pub tolerance_percent: u32,
    pub threshold_percent: u32,
    pub min_samples: u32,
    pub window_seconds: f64,
}

impl Settings {
    pub fn from_config(c: &TrafficConfig) -> Settings {
        Settings {
            tolerance_percent: c.tolerance_percent,
            threshold_percent: c.threshold_percent,
            min_samples: c.min_samples,
            window_seconds: c.window.0.as_secs_f64(),
        }
    }
}

/// The planner's traffic input for `snap` at `now` (Unix seconds), or why traffic is off
/// (a master whose server measures none; no reading of any master yet).
pub fn input(snap: &ClusterSnapshot, table: &TrafficTable, s: &Settings, now: f64) -> Result<TrafficInput, String> {
    if let Some((m, why)) = snap.members.iter().find_map(|m| table.off.get(&m.id).map(|w| (m, w))) {
        return Err(format!("{why} (member {})", m.label()));
    }
    if !snap.members.iter().any(|m| table.rates.first_reading.contains_key(&m.id)) {
        return Err("no master's slot statistics have been read yet".to_string());
    }
    let n = snap.buckets.len();
    let mut out = TrafficInput {
        cpu: vec![0.0; n],
        net_in: vec![0.0; n],
        net_out: vec![0.0; n],
        keys: vec![0; n],
        tolerance_percent: s.tolerance_percent,
        threshold_percent: s.threshold_percent,
        recent: BTreeSet::new(),
        untrusted: 0,
    };
    for (i, b) in snap.buckets.iter().enumerate() {
        let owner = b.copies.first().map(|&p| snap.members[p as usize].id.as_str());
        let series = u16::try_from(b.id).ok().and_then(|slot| table.rates.slots.get(&slot));
        let Some(series) = series.filter(|x| Some(x.owner.as_str()) == owner) else {
            out.untrusted += 1;
            continue;
        };
        if series.samples < s.min_samples {
            out.untrusted += 1;
        }
        out.cpu[i] = series.rates.cpu_usec;
        out.net_in[i] = series.rates.net_in;
        out.net_out[i] = series.rates.net_out;
        out.keys[i] = series.last.keys;
        if series.moved && now - series.since < s.window_seconds {
            out.recent.insert(b.id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::fixtures::*;
    use crate::traffic::Sample;
    use crate::traffic::rates::Counters;

    fn settings() -> Settings {
        Settings { tolerance_percent: 20, threshold_percent: 50, min_samples: 2, window_seconds: 100.0 }
    }

    fn reading(member: &str, slots: &[(u16, u64)]) -> Sample {
        let c = slots
            .iter()
            .map(|&(s, cpu)| (s, Counters { cpu_usec: cpu, net_in: 0, net_out: 0, keys: 3 }))
            .collect::<BTreeMap<_, _>>();
        Sample { member: member.to_string(), counters: Ok(c) }
    }

    #[test]
    fn rates_are_trusted_after_min_samples_on_the_present_owner() {
        // Buckets 0 and 1 on m1, 2 on m2 (the fixtures number buckets from 0).
        let snap = make_snapshot(make_members(2), &[(10, vec![0]), (10, vec![0]), (10, vec![1])]);
        let (m1, m2) = (snap.members[0].id.clone(), snap.members[1].id.clone());
        let mut t = TrafficTable::default();
        assert!(input(&snap, &t, &settings(), 0.0).is_err(), "nothing read yet");
        for (k, at) in [(0u64, 0.0), (1, 10.0)] {
            t.observe(&[reading(&m1, &[(0, 100 * k), (1, 0)]), reading(&m2, &[(2, 50 * k)])], at, 100.0);
        }
        let one = input(&snap, &t, &settings(), 10.0).unwrap();
        assert_eq!((one.untrusted, one.cpu.clone()), (3, vec![10.0, 0.0, 5.0]), "one interval is not enough");
        t.observe(&[reading(&m1, &[(0, 200), (1, 0)]), reading(&m2, &[(2, 100)])], 20.0, 100.0);
        let two = input(&snap, &t, &settings(), 20.0).unwrap();
        assert_eq!((two.untrusted, two.keys.clone()), (0, vec![3, 3, 3]));
        assert!(two.recent.is_empty(), "sampling began with every slot where it is");
        // Slot 1 moves to m2: its series there is young and marks it recent.
        t.observe(&[reading(&m1, &[(0, 300)]), reading(&m2, &[(1, 0), (2, 150)])], 30.0, 100.0);
        let mut moved = snap.clone();
        moved.buckets[1].copies = vec![1];
        let after = input(&moved, &t, &settings(), 30.0).unwrap();
        assert_eq!((after.untrusted, after.recent.iter().copied().collect::<Vec<_>>()), (1, vec![1]));
        assert!(input(&moved, &t, &settings(), 200.0).unwrap().recent.is_empty(), "a window later");
        // The snapshot says slot 1 is still on m1: m2's series is no rate of it.
        assert_eq!(input(&snap, &t, &settings(), 30.0).unwrap().untrusted, 1);
    }

    #[test]
    fn one_master_without_slot_statistics_turns_traffic_off_and_says_why() {
        let snap = make_snapshot(make_members(2), &[(10, vec![0]), (10, vec![1])]);
        let mut t = TrafficTable::default();
        let off = Sample {
            member: snap.members[1].id.clone(),
            counters: Err("127.0.0.1:7003 has cluster-slot-stats-enabled no".into()),
        };
        t.observe(&[reading(&snap.members[0].id, &[(0, 1)]), off], 0.0, 100.0);
        let why = input(&snap, &t, &settings(), 0.0).unwrap_err();
        assert!(why.starts_with("127.0.0.1:7003 has cluster-slot-stats-enabled no"), "{why}");
    }
}
