//! The second dimension: CPU per master, from the rates `CLUSTER SLOT-STATS` measures.
//! Bytes stay the hard one (every member within its byte band, as the byte plan left
//! it); after the byte plan, slots move off a master whose CPU rate is above its band
//! while a move narrows the CPU gap between source and target and keeps both within
//! their byte bands (CockroachDB's rule: the overloaded dimension improves at both ends,
//! no other dimension leaves its band). A slot whose CPU alone is above every master's
//! band is hot: moving it only moves the problem, so it is named and left. A slot moved
//! for traffic within `traffic.window` is not moved for traffic again.
//!
//! Owns: the CPU targets, bands, lower bound, the moves and their lines. Does not own:
//! the rates (how they are measured) or the decision.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Move, MoveKind, Plan, apply_moves, member_loads};
use crate::model::ClusterSnapshot;

/// What the planner is told of traffic.
#[derive(Clone, Debug, Default)]
pub struct TrafficInput {
    /// CPU microseconds per second of each bucket, by index in the snapshot.
    pub cpu: Vec<f64>,
    /// Network bytes per second in and out of each bucket (shown, not balanced).
    pub net_in: Vec<f64>,
    pub net_out: Vec<f64>,
    /// Keys of each bucket, for naming hot ones.
    pub keys: Vec<u64>,
    /// `traffic.tolerance-percent`: the CPU band around each master's share.
    pub tolerance_percent: u32,
    /// `traffic.threshold-percent`: the busiest master this far above its share is off
    /// balance for traffic.
    pub threshold_percent: u32,
    /// Buckets moved for traffic within the window: not moved for it again.
    pub recent: BTreeSet<u64>,
    /// Buckets whose rate is not trusted yet (too few readings on their present owner):
    /// while any is, the plan shows the figures and moves nothing for traffic.
    pub untrusted: usize,
}

/// A slot too hot to fix by moving it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HotSlot {
    pub bucket: u64,
    pub member: String,
    pub cpu_usec_per_second: f64,
    pub keys: u64,
}

/// Per member, CPU microseconds per second.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberCpu {
    pub id: String,
    pub before: f64,
    pub target: f64,
    pub after: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrafficPlan {
    pub members: Vec<MemberCpu>,
    /// CPU that must leave masters above their band, at least (µs/s).
    pub lower_bound_cpu_usec: f64,
    /// Moves added for traffic (after the byte plan's).
    pub moves: usize,
    /// Bytes those moves carry (in the plan's transfer; the decision's threshold is on
    /// the rest).
    pub transfer_bytes: u64,
    /// Every rate trusted: traffic moves were considered.
    pub settled: bool,
    /// Buckets whose rate is not trusted yet.
    pub untrusted: usize,
    pub hot: Vec<HotSlot>,
    /// The busiest master is above its share by more than `threshold-percent`.
    pub off_balance: bool,
    /// And the plan brings it under.
    pub brings_under: bool,
}

/// Adds traffic moves to `plan` (a byte plan of `snap`), and the traffic figures.
pub fn balance(snap: &ClusterSnapshot, plan: &mut Plan, t: &TrafficInput) {
    let mut after = snap.clone();
    if apply_moves(&mut after, &plan.moves).is_err() || t.cpu.len() != snap.buckets.len() {
        return;
    }
    let before = per_member(snap, &t.cpu);
    let mut st = State::new(snap, after, plan, t);
    let n = st.cpu.len();
    let mut out = TrafficPlan { settled: t.untrusted == 0, untrusted: t.untrusted, ..TrafficPlan::default() };
    let widest = st.hi.iter().copied().fold(0.0, f64::max);
    for (i, b) in st.after.buckets.iter().enumerate() {
        if t.cpu[i] > widest && widest > 0.0 {
            let member = snap.members[b.copies[0] as usize].label();
            out.hot.push(HotSlot { bucket: b.id, member, cpu_usec_per_second: t.cpu[i], keys: t.keys[i] });
        }
    }
    st.frozen.extend(out.hot.iter().map(|h| h.bucket));
    out.lower_bound_cpu_usec = st.cpu.iter().zip(&st.hi).map(|(c, h)| (c - h).max(0.0)).sum();
    out.off_balance = st.over() * 100.0 > t.threshold_percent as f64;
    // Each step moves a slot that no later step moves again: the loop ends.
    for _ in 0..if out.settled { st.after.buckets.len() } else { 0 } {
        // The master furthest outside its band that some step can bring nearer: slots
        // off one above it, onto one below it from any busier master.
        let mut outside: Vec<usize> = (0..n).filter(|&m| st.outside(m, st.cpu[m]) > 0.0).collect();
        outside.sort_by(|&a, &b| st.outside(b, st.cpu[b]).total_cmp(&st.outside(a, st.cpu[a])));
        let all: Vec<usize> = (0..n).collect();
        let step = outside
            .into_iter()
            .find_map(|m| if st.cpu[m] > st.hi[m] { st.best_step(&[m], &all) } else { st.best_step(&all, &[m]) });
        let Some((_, src, i, dst, back)) = step else {
            break;
        };
        for (j, from, to) in std::iter::once((i, src, dst)).chain(back.map(|j| (j, dst, src))) {
            out.transfer_bytes += st.shift(plan, j, from, to);
            out.moves += 1;
        }
    }
    for (m, l) in plan.members.iter_mut().zip(member_loads(&st.after)) {
        m.after = l;
    }
    out.brings_under = st.over() * 100.0 <= t.threshold_percent as f64;
    out.members = (0..n)
        .map(|i| MemberCpu { id: snap.members[i].id.clone(), before: before[i], target: st.share[i], after: st.cpu[i] })
        .collect();
    explain(plan, &out, &st.share, t.tolerance_percent as f64 / 100.0);
    plan.traffic = Some(out);
}

/// Per member, the sum of a per-bucket figure over the buckets it owns in `s`.
pub fn per_member(s: &ClusterSnapshot, per_bucket: &[f64]) -> Vec<f64> {
    let mut c = vec![0.0; s.members.len()];
    for (b, v) in s.buckets.iter().zip(per_bucket) {
        if let Some(&p) = b.copies.first() {
            c[p as usize] += v;
        }
    }
    c
}

/// A step's rank (change of the CPU outside the two bands, receiver's CPU after, bucket
/// id), the source, the slot, its receiver and the slot traded back.
type Step = ((f64, f64, u64), usize, usize, usize, Option<usize>);

/// Hottest slots of a source tried in trades.
const TRADE_SLOTS: usize = 32;

/// The layout as traffic moves change it.
struct State<'a> {
    t: &'a TrafficInput,
    after: ClusterSnapshot,
    cpu: Vec<f64>,
    share: Vec<f64>,
    /// Top and bottom of each member's CPU band.
    hi: Vec<f64>,
    lo: Vec<f64>,
    bytes: Vec<f64>,
    /// Each member's byte band.
    band: Vec<(f64, f64)>,
    receives: Vec<bool>,
    room: Vec<Option<i64>>,
    arrived: Vec<i64>,
    /// Buckets no traffic move touches: moved by the byte plan, pinned, hot, recent.
    frozen: BTreeSet<u64>,
}

impl<'a> State<'a> {
    fn new(snap: &ClusterSnapshot, after: ClusterSnapshot, plan: &Plan, t: &'a TrafficInput) -> State<'a> {
        let cpu = per_member(&after, &t.cpu);
        let total: f64 = cpu.iter().sum();
        let target_total: u64 = plan.members.iter().map(|m| m.target_bytes).sum();
        let share: Vec<f64> = plan
            .members
            .iter()
            .map(|m| if target_total == 0 { 0.0 } else { total * m.target_bytes as f64 / target_total as f64 })
            .collect();
        let tol = t.tolerance_percent as f64 / 100.0;
        let btol = plan.tolerance_percent as f64 / 100.0;
        let mut arrived = vec![0i64; cpu.len()];
        for mv in plan.copy_moves() {
            arrived[mv.to as usize] += mv.bytes as i64;
        }
        let mut frozen: BTreeSet<u64> = plan.moves.iter().map(|m| m.bucket).collect();
        frozen.extend(snap.observed.pinned.iter().map(|p| p.bucket));
        frozen.extend(t.recent.iter().copied());
        State {
            t,
            hi: share.iter().map(|s| s * (1.0 + tol)).collect(),
            lo: share.iter().map(|s| s * (1.0 - tol)).collect(),
            bytes: member_loads(&after).iter().map(|l| l.bytes as f64).collect(),
            band: plan
                .members
                .iter()
                .map(|m| (m.target_bytes as f64 * (1.0 - btol), m.target_bytes as f64 * (1.0 + btol)))
                .collect(),
            receives: plan.members.iter().map(|m| m.receives).collect(),
            room: super::solver::room(snap, plan.critical_memory_percent),
            arrived,
            frozen,
            after,
            cpu,
            share,
        }
    }

    /// How far the busiest master is above its share, as a fraction of it.
    fn over(&self) -> f64 {
        self.cpu.iter().zip(&self.share).map(|(c, s)| if *s > 0.0 { c / s - 1.0 } else { 0.0 }).fold(0.0, f64::max)
    }

    fn movable(&self, i: usize, on: usize) -> bool {
        let b = &self.after.buckets[i];
        b.copies.len() == 1 && b.copies[0] as usize == on && !self.frozen.contains(&b.id)
    }

    /// A slot out of one of `srcs` into one of `dsts` (and, where bytes need it, a
    /// cooler one back): the CPU gap between the two narrows, both stay within their byte
    /// bands; the step that brings the two furthest into their bands first, then the
    /// coolest receiver after it, then the lowest bucket id. A trade is looked for only where no one-way move
    /// fits, among the hottest slots of each source and the coolest of each receiver
    /// (bounded work per step on 16384 slots).
    fn best_step(&self, srcs: &[usize], dsts: &[usize]) -> Option<Step> {
        let t = self.t;
        let on = |m: usize| (0..self.after.buckets.len()).filter(move |&i| self.movable(i, m));
        let mut best = None;
        for &src in srcs {
            for i in on(src).filter(|&i| t.cpu[i] > 0.0) {
                for &dst in dsts {
                    self.consider(&mut best, src, i, dst, None);
                }
            }
        }
        if best.is_some() {
            return best;
        }
        for &src in srcs {
            let mut out: Vec<usize> = on(src).filter(|&i| t.cpu[i] > 0.0).collect();
            out.sort_by(|&a, &b| t.cpu[b].total_cmp(&t.cpu[a]));
            out.truncate(TRADE_SLOTS);
            for &dst in dsts.iter().filter(|&&d| d != src) {
                let mut cool: Vec<usize> = on(dst).collect();
                cool.sort_by(|&a, &b| t.cpu[a].total_cmp(&t.cpu[b]));
                cool.truncate(4 * TRADE_SLOTS);
                for &i in &out {
                    for &j in cool.iter().filter(|&&j| t.cpu[j] < t.cpu[i]) {
                        self.consider(&mut best, src, i, dst, Some(j));
                    }
                }
            }
        }
        best
    }

    /// How far `cpu` lies outside member `m`'s CPU band.
    fn outside(&self, m: usize, cpu: f64) -> f64 {
        (cpu - self.hi[m]).max(0.0) + (self.lo[m] - cpu).max(0.0)
    }

    /// Keeps in `best` the step of slot `i` from `src` to `dst` (and `r` back) if it is
    /// allowed and better.
    fn consider(&self, best: &mut Option<Step>, src: usize, i: usize, dst: usize, r: Option<usize>) {
        let t = self.t;
        let (c, bs) = (t.cpu[i], self.after.buckets[i].bytes as f64);
        if dst == src || !self.receives[dst] || self.cpu[dst] + c >= self.cpu[src] {
            return;
        }
        let ((slo, shi), (dlo, dhi)) = (self.band[src], self.band[dst]);
        let (rc, rb) = r.map_or((0.0, 0.0), |j| (t.cpu[j], self.after.buckets[j].bytes as f64));
        let (ns, nd) = (self.bytes[src] - bs + rb, self.bytes[dst] + bs - rb);
        let (cs, cd) = (self.cpu[src] - c + rc, self.cpu[dst] + c - rc);
        let gap = (cs - cd).abs();
        // What the step changes in how far the two lie outside their bands.
        // Rounded to a thousandth of a µs/s: float noise must not break a tie.
        let excess = ((self.outside(src, cs) + self.outside(dst, cd)
            - self.outside(src, self.cpu[src])
            - self.outside(dst, self.cpu[dst]))
            * 1000.0)
            .round();
        let narrows = gap < self.cpu[src] - self.cpu[dst];
        let in_bands = ns >= slo && ns <= shi && nd >= dlo && nd <= dhi;
        let fits = self.room[dst].is_none_or(|x| self.arrived[dst] + (bs - rb).max(0.0) as i64 <= x);
        // Ties go to the coolest receiver: arrivals spread rather than pile on one.
        let key = (excess, cd, self.after.buckets[i].id);
        let better = |(e, c, k): &(f64, f64, u64)| excess.total_cmp(e).then(cd.total_cmp(c)).then(key.2.cmp(k)).is_lt();
        if narrows && in_bands && fits && best.as_ref().is_none_or(|(b, ..)| better(b)) {
            *best = Some((key, src, i, dst, r));
        }
    }

    /// Moves bucket `j` from `from` to `to`, in the layout and the plan; its bytes.
    fn shift(&mut self, plan: &mut Plan, j: usize, from: usize, to: usize) -> u64 {
        let b = &mut self.after.buckets[j];
        let mv = Move {
            kind: MoveKind::Copy,
            bucket: b.id,
            bucket_index: j as u32,
            from: from as u32,
            to: to as u32,
            bytes: b.bytes,
        };
        plan.moves.push(mv);
        plan.transfer_bytes += b.bytes;
        b.copies[0] = to as u32;
        let c = self.t.cpu[j];
        self.cpu[from] -= c;
        self.cpu[to] += c;
        self.bytes[from] -= b.bytes as f64;
        self.bytes[to] += b.bytes as f64;
        self.arrived[to] += b.bytes as i64;
        self.frozen.insert(b.id);
        b.bytes
    }
}

fn explain(plan: &mut Plan, t: &TrafficPlan, share: &[f64], tol: f64) {
    let max_min = |f: fn(&MemberCpu) -> f64| {
        let v: Vec<f64> = t.members.iter().map(f).collect();
        (v.iter().copied().fold(0.0, f64::max), v.iter().copied().fold(f64::INFINITY, f64::min))
    };
    let (b_max, b_min) = max_min(|m| m.before);
    let (a_max, a_min) = max_min(|m| m.after);
    plan.explanation.push(format!(
        "traffic: CPU per master {b_min:.0}-{b_max:.0} µs/s before, {a_min:.0}-{a_max:.0} after; share {:.0} µs/s ±{:.0}%; at least {:.0} µs/s must move; {} move(s) for traffic",
        share.iter().sum::<f64>() / share.len().max(1) as f64,
        tol * 100.0,
        t.lower_bound_cpu_usec,
        t.moves
    ));
    for h in &t.hot {
        plan.explanation.push(format!(
            "traffic: slot {} on {} is hot ({:.0} µs/s, {} keys): above any master's CPU band, so moving it moves the problem; left where it is",
            h.bucket, h.member, h.cpu_usec_per_second, h.keys
        ));
    }
    if !t.settled {
        plan.explanation.push(format!(
            "traffic: unsettled: the rates of {} slot(s) are not trusted yet (too few readings on their present owner): nothing moves for traffic",
            t.untrusted
        ));
        return;
    }
    for (m, s) in t.members.iter().zip(share) {
        let (side, edge) = if m.after > s * (1.0 + tol) { ("above", 1.0 + tol) } else { ("below", 1.0 - tol) };
        if m.after > s * (1.0 + tol) || m.after < s * (1.0 - tol) {
            plan.explanation.push(format!(
                "traffic: {} stays at {:.0} µs/s, {side} its band ({:.0}): no slot move narrows the gap within the byte bands",
                m.id,
                m.after,
                s * edge
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fixtures::*;
    use crate::plan::{PlanOptions, plan};

    /// Buckets `(bytes, owner, cpu)`.
    fn case(members: usize, buckets: &[(u64, u32, f64)]) -> (ClusterSnapshot, TrafficInput) {
        let spec: Vec<(u64, Vec<u32>)> = buckets.iter().map(|(b, o, _)| (*b, vec![*o])).collect();
        let snap = make_snapshot(make_members(members), &spec);
        let t = TrafficInput {
            cpu: buckets.iter().map(|b| b.2).collect(),
            keys: vec![10; buckets.len()],
            tolerance_percent: 20,
            threshold_percent: 50,
            ..TrafficInput::default()
        };
        (snap, t)
    }

    fn planned(snap: &ClusterSnapshot, t: &TrafficInput) -> Plan {
        plan(snap, &PlanOptions { tolerance_percent: 10, traffic: Some(t.clone()), ..Default::default() }).unwrap()
    }

    #[test]
    fn hot_slots_move_off_the_busy_master_within_the_byte_bands() {
        // Bytes even (5 x 100 per member); three of m1's slots carry most of the CPU.
        let mut b = Vec::new();
        for m in 0..3u32 {
            for k in 0..5 {
                b.push((100, m, if m == 0 && k < 3 { 300.0 } else { 10.0 }));
            }
        }
        let (snap, t) = case(3, &b);
        let p = planned(&snap, &t);
        let tp = p.traffic.clone().unwrap();
        assert!(tp.off_balance, "{tp:?}");
        assert!(tp.moves > 0 && tp.brings_under, "{tp:?} {:?}", p.explanation);
        for m in &tp.members {
            assert!(m.after <= m.target * 1.2 + 1e-9, "{m:?} above its CPU band");
        }
        for m in &p.members {
            let dev = m.deviation_percent(m.after.bytes).unwrap().abs();
            assert!(dev <= 10.0 + 1e-9, "{} leaves its byte band: {dev}%", m.id);
        }
        assert!(p.explanation.iter().any(|l| l.starts_with("traffic: CPU per master")), "{:?}", p.explanation);
        // The next plan, from the layout after, moves nothing for traffic.
        let mut after = snap.clone();
        crate::plan::apply_moves(&mut after, &p.moves).unwrap();
        let again = planned(&after, &t);
        assert_eq!(again.traffic.unwrap().moves, 0, "no thrash");
    }

    #[test]
    fn a_single_hot_slot_is_named_and_left() {
        let (snap, t) =
            case(3, &[(100, 0, 5000.0), (100, 0, 1.0), (100, 1, 1.0), (100, 1, 1.0), (100, 2, 1.0), (100, 2, 1.0)]);
        let p = planned(&snap, &t);
        let tp = p.traffic.unwrap();
        assert_eq!(tp.hot.len(), 1);
        assert_eq!(tp.hot[0].bucket, 0);
        assert!(p.moves.iter().all(|m| m.bucket != 0), "the hot slot never moves");
        assert!(p.explanation.iter().any(|l| l.contains("is hot")), "{:?}", p.explanation);
    }

    #[test]
    fn a_slot_moved_for_traffic_lately_is_not_moved_again() {
        let (snap, mut t) =
            case(2, &[(100, 0, 100.0), (100, 0, 100.0), (100, 0, 1.0), (100, 1, 1.0), (100, 1, 1.0), (100, 1, 1.0)]);
        t.recent = [0, 1].into();
        let p = planned(&snap, &t);
        assert!(p.moves.iter().all(|m| m.bucket != 0 && m.bucket != 1), "{:?}", p.moves);
    }

    /// One master carrying every hot slot of six, bytes tight (±5%, equal slots): the
    /// arrivals spread over the five others (ties go to the coolest receiver) and every
    /// master ends within its band, above the floor as well as under the ceiling.
    #[test]
    fn hot_slots_spread_over_every_receiver_within_the_band_both_ways() {
        let mut b = Vec::new();
        for m in 0..6u32 {
            for k in 0..100 {
                b.push((1000, m, if m == 0 && k < 48 { 500.0 + k as f64 * 3.0 } else { 0.0 }));
            }
        }
        let (snap, t) = case(6, &b);
        let p = plan(&snap, &PlanOptions { tolerance_percent: 5, traffic: Some(t), ..Default::default() }).unwrap();
        let tp = p.traffic.clone().unwrap();
        for m in &tp.members {
            assert!(m.after <= m.target * 1.2 + 1e-9 && m.after >= m.target * 0.8 - 1e-9, "{m:?}: {:?}", p.explanation);
        }
        crate::plan::check(&snap, &p).unwrap();
    }

    /// Whether some sequence of steps the rule allows (a slot off a master above its CPU
    /// band, or one out and a cooler one back; the CPU gap of the two narrows; both stay
    /// in their byte bands; each slot moves once; `frozen` never) ends with every master
    /// within its CPU band: the exhaustive search the greedy is held to.
    fn reachable(
        own: &mut Vec<usize>,
        moved: u32,
        b: &[(u64, u32, f64)],
        hi: &[f64],
        band: &[(f64, f64)],
        seen: &mut BTreeSet<(Vec<usize>, u32)>,
    ) -> bool {
        let n = hi.len();
        let (mut bytes, mut cpu) = (vec![0.0; n], vec![0.0; n]);
        for (i, &m) in own.iter().enumerate() {
            bytes[m] += b[i].0 as f64;
            cpu[m] += b[i].2;
        }
        if (0..n).all(|m| cpu[m] <= hi[m] + 1e-9) {
            return true;
        }
        if !seen.insert((own.clone(), moved)) {
            return false;
        }
        let free = |i: usize| moved & (1 << i) == 0;
        let mut steps = Vec::new();
        for src in (0..n).filter(|&m| cpu[m] > hi[m] + 1e-9) {
            for i in (0..b.len()).filter(|&i| own[i] == src && free(i) && b[i].2 > 0.0) {
                for dst in (0..n).filter(|&d| d != src && cpu[d] + b[i].2 < cpu[src]) {
                    let backs = (0..b.len()).filter(|&j| own[j] == dst && free(j) && b[j].2 < b[i].2).map(Some);
                    for r in std::iter::once(None).chain(backs) {
                        let (rc, rb) = r.map_or((0.0, 0.0), |j| (b[j].2, b[j].0 as f64));
                        let (cs, cd) = (cpu[src] - b[i].2 + rc, cpu[dst] + b[i].2 - rc);
                        let (ns, nd) = (bytes[src] - b[i].0 as f64 + rb, bytes[dst] + b[i].0 as f64 - rb);
                        let in_bands = ns >= band[src].0 && ns <= band[src].1 && nd >= band[dst].0 && nd <= band[dst].1;
                        if (cs - cd).abs() < cpu[src] - cpu[dst] && in_bands {
                            steps.push((i, src, dst, r));
                        }
                    }
                }
            }
        }
        for (i, src, dst, r) in steps {
            own[i] = dst;
            r.into_iter().for_each(|j| own[j] = src);
            let found = reachable(own, moved | 1 << i | r.map_or(0, |j| 1 << j), b, hi, band, seen);
            own[i] = src;
            r.into_iter().for_each(|j| own[j] = dst);
            if found {
                return true;
            }
        }
        false
    }

    /// Against an exhaustive oracle on small cases: where some assignment of the slots
    /// keeps every member within its byte band and its CPU band (feasible), and where a
    /// sequence of steps the rule allows reaches one from the byte plan's layout
    /// (reachable), the plan ends within the CPU band. Where it does not, the
    /// explanation names the member left above.
    #[test]
    fn the_plan_ends_within_the_cpu_band_where_an_oracle_finds_a_layout() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (mut feasible, mut reachable_cases, mut reached, mut reached_of_reachable) = (0, 0, 0, 0);
        for _ in 0..300 {
            let n = 3;
            let k = rng.gen_range(4..=7);
            let b: Vec<(u64, u32, f64)> = (0..k)
                .map(|_| (rng.gen_range(1..=3) * 100, rng.gen_range(0..n as u32), rng.gen_range(1..=20) as f64 * 10.0))
                .collect();
            let (snap, t) = case(n, &b);
            let p = planned(&snap, &t);
            let tp = p.traffic.clone().unwrap();
            let targets: Vec<f64> = p.members.iter().map(|m| m.target_bytes as f64).collect();
            // Every assignment of the k slots to the n members.
            let mut ok = false;
            for code in 0..(n as u32).pow(k as u32) {
                let (mut bytes, mut cpu, mut c) = (vec![0.0; n], vec![0.0; n], code);
                for (bb, _, cc) in &b {
                    let m = (c % n as u32) as usize;
                    c /= n as u32;
                    bytes[m] += *bb as f64;
                    cpu[m] += cc;
                }
                let within = (0..n).all(|m| {
                    (bytes[m] - targets[m]).abs() <= targets[m] * 0.10 + 1e-9
                        && cpu[m] <= tp.members[m].target * 1.2 + 1e-9
                });
                ok |= within;
            }
            let ended = tp.members.iter().all(|m| m.after <= m.target * 1.2 + 1e-9);
            // From the byte plan's layout, its moved slots and the hot ones frozen.
            let bytes_only = plan(&snap, &PlanOptions { tolerance_percent: 10, ..Default::default() }).unwrap();
            let mut own: Vec<usize> = b.iter().map(|x| x.1 as usize).collect();
            let mut moved = 0u32;
            for mv in &bytes_only.moves {
                own[mv.bucket_index as usize] = mv.to as usize;
                moved |= 1 << mv.bucket_index;
            }
            for h in &tp.hot {
                moved |= 1 << h.bucket;
            }
            let hi: Vec<f64> = tp.members.iter().map(|m| m.target * 1.2).collect();
            let band: Vec<(f64, f64)> = targets.iter().map(|t| (t * 0.9, t * 1.1)).collect();
            let can = reachable(&mut own, moved, &b, &hi, &band, &mut BTreeSet::new());
            if ok {
                feasible += 1;
                reached += ended as u32;
            }
            if can {
                reachable_cases += 1;
                reached_of_reachable += ended as u32;
            }
            if !ended {
                assert!(
                    p.explanation.iter().any(|l| l.contains("stays at") || l.contains("is hot")),
                    "{:?}",
                    p.explanation
                );
            }
        }
        eprintln!(
            "traffic oracle: {reached} of {feasible} feasible cases end within the CPU band; {reached_of_reachable} of {reachable_cases} reachable by allowed steps"
        );
        assert!(feasible > 20 && reachable_cases > 20, "too few cases to say anything: {feasible}, {reachable_cases}");
        // Where the rule's steps can reach the band the greedy all but always does
        // (measured 58 of 59); feasible layouts the rule cannot reach (a step that widens
        // a gap first) are the rest of the feasible ones. Stated in BENCHMARKS.md.
        assert!(
            reached_of_reachable as f64 >= 0.95 * reachable_cases as f64,
            "reached the CPU band in {reached_of_reachable} of {reachable_cases} reachable cases"
        );
        assert!(
            reached as f64 >= 0.45 * feasible as f64,
            "reached the CPU band in {reached} of {feasible} feasible cases"
        );
    }
}
