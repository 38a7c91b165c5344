//! The solver behind `plan()`: a struct holding the layout as it changes, and one method
//! per phase.
//!
//! Every member gets a band `[lo, hi]` = target ± tolerance. Bytes above `hi` must leave
//! ("must"), bytes below `lo` must arrive ("need"); the lower bound on any plan's transfer
//! is `max(sum must, sum need)`. The phases:
//!
//! 1. empties members with target 0 (down, draining, weight 0): every copy, largest first,
//!    to the eligible receiver with the most room;
//! 2. while some member is above `hi`, moves from the most overloaded member the largest
//!    copy no bigger than what it must shed, to the receiver it gave to last while that
//!    one is below its target, else the one that needs most (else has most room), never
//!    pushing the receiver above `hi` nor the giver below `lo`;
//! 3. while some receiver is below `lo`, fills the neediest from the member it took from
//!    last while that one is above its target, else the one with most bytes above its
//!    `lo`, in the same way;
//! 4. swaps, for a member still outside its band because no single copy fits: one large
//!    copy out and smaller ones back (or in and out, below its band), both members ending
//!    within their bands, within 1.10 x the lower bound in all;
//! 5. balances primaries by count among members that hold copies (no data moves);
//! 6. orders the moves, most valuable first, and explains the result.
//!
//! Each move in 2 and 3 strictly lowers the total band violation, so the search ends;
//! copies that fit nowhere leave their member marked stuck instead of looping. Ties break
//! on the lower member index and then the lower bucket index, so the plan is deterministic.
//! Phases 1 to 3 live in `search.rs`, phase 4 in `swap.rs`, phase 5 in `primaries.rs`.

use std::collections::{BTreeSet, HashMap};

use super::{MemberLoad, MemberPlan, Move, Plan, PlanOptions, member_loads};
use crate::config::human_bytes;
use crate::model::{ClusterSnapshot, Health, MemberIdx};

/// The layout under search: targets and bands fixed at the start, copies and loads as the
/// moves found so far leave them.
#[derive(Clone)]
pub(super) struct Solver<'a> {
    pub(super) snap: &'a ClusterSnapshot,
    pub(super) opts: &'a PlanOptions,
    /// Loads of the snapshot, before any move.
    before: Vec<MemberLoad>,
    pub(super) total: u64,
    pub(super) lower_bound: u64,
    /// What the targets follow: configured weights, capacity or equal shares.
    weight_basis: &'static str,
    pub(super) copies: Vec<Vec<MemberIdx>>,
    pub(super) load: Vec<i64>,
    pub(super) target: Vec<i64>,
    pub(super) lo: Vec<i64>,
    pub(super) hi: Vec<i64>,
    pub(super) weight: Vec<f64>,
    pub(super) receiver: Vec<bool>,
    pub(super) zone: Vec<Option<u32>>,
    /// Copies with bytes > 0 per member, by (bytes, bucket index).
    pub(super) held: Vec<BTreeSet<(u64, u32)>>,
    pub(super) moves: Vec<Option<Move>>,
    /// Urgent moves (off a member whose target is 0) go first.
    pub(super) urgent: Vec<bool>,
    /// (bucket, holder) -> the move that brought that copy there.
    pub(super) arrived_by: HashMap<(u32, MemberIdx), usize>,
    pub(super) last_move_of_bucket: HashMap<u32, usize>,
    /// Members left outside their band because no copy fits anywhere else.
    pub(super) stuck: Vec<bool>,
    /// Bytes each member may still receive before critical memory (None: no limit).
    pub(super) free: Vec<Option<i64>>,
    /// Bytes phase 1 could not place for want of room.
    pub(super) unplaced: u64,
    /// Large copies phase 4 moves before the copy moves run again: (bucket, from, to).
    pub(super) forced: Vec<(usize, MemberIdx, MemberIdx)>,
    pub(super) explanation: Vec<String>,
    /// The member each member last gave a copy to, so a giver keeps to one receiver.
    pub(super) last_to: Vec<Option<usize>>,
    /// The member each member last took a copy from, so a taker keeps to one giver.
    pub(super) last_from: Vec<Option<usize>>,
}

/// Plans `snap`: the phases in order. The caller checks the result.
pub(super) fn solve(snap: &ClusterSnapshot, opts: &PlanOptions) -> Plan {
    let mut s = Solver::new(snap, opts);
    s.explain_targets();
    s.explain_room();
    s.empty_members();
    s.balance_bytes();
    s.swap_outliers();
    let primary_moves = s.balance_primaries();
    s.into_plan(primary_moves)
}

impl<'a> Solver<'a> {
    /// Targets, bands, receivers and the index of held copies, before any move.
    pub(super) fn new(snap: &'a ClusterSnapshot, opts: &'a PlanOptions) -> Solver<'a> {
        let n = snap.members.len();
        let before = member_loads(snap);
        let total: u64 = before.iter().map(|l| l.bytes).sum();
        let tol = opts.tolerance_percent as f64 / 100.0;
        let (weight, weight_basis) = weights(snap, opts);
        let wsum: f64 = weight.iter().sum();
        let target: Vec<i64> =
            weight.iter().map(|w| if wsum > 0.0 { (total as f64 * w / wsum).round() as i64 } else { 0 }).collect();
        let lo: Vec<i64> = target.iter().map(|&t| (t as f64 * (1.0 - tol)).floor() as i64).collect();
        let hi: Vec<i64> = target.iter().map(|&t| (t as f64 * (1.0 + tol)).ceil() as i64).collect();
        let allowed = |i: usize| opts.receivers.as_ref().is_none_or(|r| r.contains(&snap.members[i].id));
        let receiver: Vec<bool> =
            (0..n).map(|i| weight[i] > 0.0 && snap.members[i].health == Health::Healthy && allowed(i)).collect();
        let load: Vec<i64> = before.iter().map(|l| l.bytes as i64).collect();
        let sum_over: i64 = (0..n).map(|i| (load[i] - hi[i]).max(0)).sum();
        let sum_under: i64 = (0..n).map(|i| (lo[i] - load[i]).max(0)).sum();
        Solver {
            snap,
            opts,
            before,
            total,
            lower_bound: sum_over.max(sum_under) as u64,
            weight_basis,
            copies: snap.buckets.iter().map(|b| b.copies.clone()).collect(),
            load,
            target,
            lo,
            hi,
            weight,
            receiver,
            zone: zone_ids(snap),
            held: held_copies(snap),
            moves: Vec::new(),
            urgent: Vec::new(),
            arrived_by: HashMap::new(),
            last_move_of_bucket: HashMap::new(),
            stuck: vec![false; n],
            free: room(snap, opts.critical_memory_percent),
            unplaced: 0,
            forced: Vec::new(),
            explanation: Vec::new(),
            last_to: vec![None; n],
            last_from: vec![None; n],
        }
    }

    /// Adds a line to the plan's explanation.
    pub(super) fn note(&mut self, line: String) {
        self.explanation.push(line);
    }

    /// Says what room each member with a limit has, and which members have none.
    fn explain_room(&mut self) {
        let crit = self.opts.critical_memory_percent;
        let limited = self.free.iter().filter(|f| f.is_some()).count();
        if crit == 0 {
            return;
        }
        let largest = human_bytes(self.snap.observed.largest_key_bytes);
        for (i, m) in self.snap.members.iter().enumerate() {
            let (Some(free), Some(max)) = (self.free[i], m.capacity_bytes) else { continue };
            if !self.receiver[i] {
                continue;
            }
            self.explanation.push(format!(
                "room: {} may receive {} (used {} of maxmemory {}, critical at {crit}%, {largest} in flight)",
                m.label(),
                human_bytes(free.max(0) as u64),
                human_bytes(used_memory(self.snap, i)),
                human_bytes(max)
            ));
        }
        let unlimited = self.n() - limited;
        if unlimited > 0 {
            self.explanation.push(format!("room: {unlimited} member(s) without maxmemory receive without a limit"));
        }
    }

    pub(super) fn n(&self) -> usize {
        self.load.len()
    }

    /// Explains the targets: their basis, and every member that will not receive.
    fn explain_targets(&mut self) {
        let snap = self.snap;
        self.explanation.push(format!(
            "{} members, {} in {} buckets; targets by {}, tolerance ±{}%",
            snap.members.len(),
            human_bytes(self.total),
            snap.buckets.len(),
            self.weight_basis,
            self.opts.tolerance_percent
        ));
        for (i, m) in snap.members.iter().enumerate() {
            let why = if m.health == Health::Down {
                Some("is down: target 0, receives nothing")
            } else if m.draining {
                Some("is draining: target 0, to be emptied")
            } else if self.weight[i] == 0.0 {
                Some("has weight 0: target 0, to be emptied")
            } else if m.health == Health::Critical {
                Some("is critical: keeps its target but receives nothing")
            } else {
                None
            };
            if let Some(why) = why {
                self.explanation.push(format!("{} {why}", m.label()));
            }
        }
    }

    /// Phase 5: the copy moves most valuable first (urgent, then bigger), every move of one
    /// bucket kept in the order found (a later one may depend on an earlier one).
    fn ordered_copy_moves(&mut self) -> Vec<Move> {
        let moves = std::mem::take(&mut self.moves);
        let urgent = std::mem::take(&mut self.urgent);
        let mut copy_moves: Vec<(usize, Move, bool)> =
            moves.into_iter().zip(urgent).enumerate().filter_map(|(seq, (m, u))| m.map(|m| (seq, m, u))).collect();
        let mut bucket_urgent: HashMap<u32, bool> = HashMap::new();
        for (_, m, u) in &copy_moves {
            *bucket_urgent.entry(m.bucket_index).or_default() |= *u;
        }
        copy_moves.sort_by(|(sa, a, _), (sb, b, _)| {
            let ua = bucket_urgent[&a.bucket_index];
            let ub = bucket_urgent[&b.bucket_index];
            ub.cmp(&ua).then(b.bytes.cmp(&a.bytes)).then(a.bucket_index.cmp(&b.bucket_index)).then(sa.cmp(sb))
        });
        copy_moves.into_iter().map(|(_, m, _)| m).collect()
    }

    /// Per-member loads of the layout the moves leave.
    fn after_loads(&self) -> Vec<MemberLoad> {
        let mut after = vec![MemberLoad::default(); self.n()];
        for (bi, cs) in self.copies.iter().enumerate() {
            for (pos, &m) in cs.iter().enumerate() {
                let l = &mut after[m as usize];
                l.bytes += self.snap.buckets[bi].bytes;
                l.buckets += 1;
                l.primaries += (pos == 0) as u64;
            }
        }
        after
    }

    /// The plan: moves in order, each member's target and loads, figures, explanation.
    fn into_plan(mut self, primary_moves: Vec<Move>) -> Plan {
        let mut moves = self.ordered_copy_moves();
        let transfer: u64 = moves.iter().map(|m| m.bytes).sum();
        let n_copy = moves.len();
        moves.extend(primary_moves);
        let after = self.after_loads();
        let members: Vec<MemberPlan> = self
            .snap
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| MemberPlan {
                id: m.id.clone(),
                address: if m.address == m.id { String::new() } else { m.address.clone() },
                target_bytes: self.target[i].max(0) as u64,
                before: self.before[i],
                after: after[i],
                receives: self.receiver[i],
            })
            .collect();
        self.explain_result(&members, transfer, n_copy, moves.len() - n_copy);
        Plan {
            moves,
            members,
            transfer_bytes: transfer,
            total_bytes: self.total,
            lower_bound_bytes: self.lower_bound,
            tolerance_percent: self.opts.tolerance_percent,
            unplaced_bytes: self.unplaced,
            critical_memory_percent: self.opts.critical_memory_percent,
            explanation: self.explanation,
            traffic: None,
        }
    }

    /// Explains the result: transfer against the lower bound, members within their band,
    /// and why each member outside it stays there.
    fn explain_result(&mut self, members: &[MemberPlan], transfer: u64, n_copy: usize, n_primary: usize) {
        let (n, lower_bound, tolerance) = (self.n(), self.lower_bound, self.opts.tolerance_percent);
        let ratio = if lower_bound > 0 {
            format!(" ({:.2} x the lower bound)", transfer as f64 / lower_bound as f64)
        } else {
            String::new()
        };
        self.explanation.push(format!(
            "lower bound {}; plan moves {} in {n_copy} copy moves{ratio} and {n_primary} primary moves",
            human_bytes(lower_bound),
            human_bytes(transfer),
        ));
        let outside = |i: usize| {
            let a = members[i].after.bytes as i64;
            a > self.hi[i] || a < self.lo[i]
        };
        let within = (0..n).filter(|&i| !outside(i)).count();
        let mut lines = vec![format!("after the plan {within} of {n} members are within ±{tolerance}% of target")];
        if self.unplaced > 0 {
            lines.push(format!(
                "{} could not be placed: no receiver has room for it below critical memory (no_room)",
                human_bytes(self.unplaced)
            ));
        }
        for i in (0..n).filter(|&i| outside(i)) {
            let bytes = members[i].after.bytes;
            let dev = members[i]
                .deviation_percent(bytes)
                .map(|d| format!("{d:+.1}% from target"))
                .unwrap_or_else(|| format!("{} left on a member with target 0", human_bytes(bytes)));
            let reason = if self.stuck[i] {
                "no copy fits anywhere else (bucket sizes, copies, zones or room)"
            } else {
                "bucket sizes do not allow closer"
            };
            lines.push(format!("{} stays {dev}: {reason}", self.snap.members[i].label()));
        }
        self.explanation.extend(lines);
    }
}

/// Weights: configured ones replace capacities; otherwise capacities when every member
/// that can hold data declares one; otherwise equal shares. Down and draining members
/// weigh 0. Returns the weights and what they follow.
fn weights(snap: &ClusterSnapshot, opts: &PlanOptions) -> (Vec<f64>, &'static str) {
    let eligible = |i: usize| {
        let m = &snap.members[i];
        m.health != Health::Down && !m.draining
    };
    let n = snap.members.len();
    let all_have_capacity =
        (0..n).filter(|&i| eligible(i)).all(|i| snap.members[i].capacity_bytes.is_some_and(|c| c > 0));
    let mut basis = "equal shares";
    let weight = (0..n)
        .map(|i| {
            if !eligible(i) {
                return 0.0;
            }
            let m = &snap.members[i];
            if !opts.weights.is_empty() {
                basis = "configured weights";
                weight_of(m, &opts.weights)
            } else if all_have_capacity {
                basis = "capacity";
                m.capacity_bytes.unwrap_or(0) as f64
            } else {
                1.0
            }
        })
        .collect();
    (weight, basis)
}

/// A member's configured weight: keyed by its id, or else by its address or
/// `hostname:port` (which follow the address, not the member); 1 when not named.
fn weight_of(m: &crate::model::Member, weights: &std::collections::BTreeMap<String, f64>) -> f64 {
    weights.get(&m.id).or_else(|| weights.iter().find(|(k, _)| m.is_named(k)).map(|(_, w)| w)).copied().unwrap_or(1.0)
}

/// Bytes each member may receive before it passes `critical_percent` of its capacity:
/// its used memory (the server's figure where observed, else the bytes it holds) plus the
/// largest key in flight. None where no capacity is known or `critical_percent` is 0.
pub(super) fn room(snap: &ClusterSnapshot, critical_percent: u32) -> Vec<Option<i64>> {
    (0..snap.members.len())
        .map(|i| {
            let max = snap.members[i].capacity_bytes.filter(|&c| c > 0 && critical_percent > 0)?;
            let line = (max as u128 * critical_percent as u128 / 100) as i64;
            Some(line - used_memory(snap, i) as i64 - snap.observed.largest_key_bytes as i64)
        })
        .collect()
}

/// A member's used memory: the server's figure where observed, else the bytes it holds.
fn used_memory(snap: &ClusterSnapshot, i: usize) -> u64 {
    match snap.observed.members.get(i) {
        Some(f) if f.used_memory_bytes > 0 => f.used_memory_bytes,
        _ => snap.buckets.iter().filter(|b| b.copies.contains(&(i as MemberIdx))).map(|b| b.bytes).sum(),
    }
}

/// Each member's zone as a small number (zones sorted by name), `None` without a zone.
fn zone_ids(snap: &ClusterSnapshot) -> Vec<Option<u32>> {
    let mut names: Vec<&str> = snap.members.iter().filter_map(|m| m.zone.as_deref()).collect();
    names.sort_unstable();
    names.dedup();
    snap.members.iter().map(|m| m.zone.as_deref().map(|z| names.binary_search(&z).unwrap() as u32)).collect()
}

/// Per member, its copies with bytes > 0 by (bytes, bucket index): the search picks sizes
/// from these. Pinned buckets are not among them, so they never move.
fn held_copies(snap: &ClusterSnapshot) -> Vec<BTreeSet<(u64, u32)>> {
    let pinned: std::collections::HashSet<u64> = snap.observed.pinned.iter().map(|p| p.bucket).collect();
    let mut held = vec![BTreeSet::new(); snap.members.len()];
    for (bi, b) in snap.buckets.iter().enumerate() {
        if b.bytes > 0 && !pinned.contains(&b.id) {
            for &m in &b.copies {
                held[m as usize].insert((b.bytes, bi as u32));
            }
        }
    }
    held
}
