//! The move search behind `plan()`.
//!
//! Every member gets a band `[lo, hi]` = target ± tolerance. Bytes above `hi` must leave
//! ("must"), bytes below `lo` must arrive ("need"); the lower bound on any plan's transfer
//! is `max(sum must, sum need)`. The search:
//!
//! 1. empties members with target 0 (down, draining, weight 0): every copy, largest first,
//!    to the eligible receiver with the most room;
//! 2. while some member is above `hi`, moves from the most overloaded member the largest
//!    copy no bigger than what it must shed, to the receiver that needs most (else has
//!    most room), never pushing the receiver above `hi` nor the giver below `lo`;
//! 3. while some receiver is below `lo`, fills the neediest from the member with most
//!    bytes above its `lo`, in the same way;
//! 4. balances primaries by count among members that hold copies (no data moves).
//!
//! Each move in 2 and 3 strictly lowers the total band violation, so the search ends;
//! copies that fit nowhere leave their member marked stuck instead of looping. Ties break
//! on the lower member index and then the lower bucket index, so the plan is deterministic.

use std::collections::{BTreeSet, HashMap};

use super::{MemberLoad, MemberPlan, Move, MoveKind, Plan, PlanOptions, member_loads};
use crate::config::human_bytes;
use crate::model::{ClusterSnapshot, Health, MemberIdx};

/// Ineligible copies passed over in one member before trying another partner.
const SCAN_LIMIT: usize = 64;

struct Solver<'a> {
    snap: &'a ClusterSnapshot,
    copies: Vec<Vec<MemberIdx>>,
    load: Vec<i64>,
    target: Vec<i64>,
    lo: Vec<i64>,
    hi: Vec<i64>,
    weight: Vec<f64>,
    receiver: Vec<bool>,
    zone: Vec<Option<u32>>,
    /// Copies with bytes > 0 per member, by (bytes, bucket index).
    held: Vec<BTreeSet<(u64, u32)>>,
    moves: Vec<Option<Move>>,
    /// Urgent moves (off a member whose target is 0) go first.
    urgent: Vec<bool>,
    /// (bucket, holder) -> the move that brought that copy there.
    arrived_by: HashMap<(u32, MemberIdx), usize>,
    last_move_of_bucket: HashMap<u32, usize>,
}

pub(super) fn solve(snap: &ClusterSnapshot, opts: &PlanOptions) -> Plan {
    let n = snap.members.len();
    let before = member_loads(snap);
    let total: u64 = before.iter().map(|l| l.bytes).sum();
    let tol = opts.tolerance_percent as f64 / 100.0;

    // Weights: configured ones replace capacities; otherwise capacities when every member
    // that can hold data declares one; otherwise equal shares.
    let eligible = |i: usize| {
        let m = &snap.members[i];
        m.health != Health::Down && !m.draining
    };
    let all_have_capacity =
        (0..n).filter(|&i| eligible(i)).all(|i| snap.members[i].capacity_bytes.is_some_and(|c| c > 0));
    let mut weight_basis = "equal shares";
    let weight: Vec<f64> = (0..n)
        .map(|i| {
            if !eligible(i) {
                return 0.0;
            }
            let m = &snap.members[i];
            if !opts.weights.is_empty() {
                weight_basis = "configured weights";
                *opts.weights.get(&m.id).unwrap_or(&1.0)
            } else if all_have_capacity {
                weight_basis = "capacity";
                m.capacity_bytes.unwrap_or(0) as f64
            } else {
                1.0
            }
        })
        .collect();
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
    let lower_bound = sum_over.max(sum_under) as u64;

    let mut zone_names: Vec<&str> = snap.members.iter().filter_map(|m| m.zone.as_deref()).collect();
    zone_names.sort_unstable();
    zone_names.dedup();
    let zone =
        snap.members.iter().map(|m| m.zone.as_deref().map(|z| zone_names.binary_search(&z).unwrap() as u32)).collect();

    let mut held = vec![BTreeSet::new(); n];
    for (bi, b) in snap.buckets.iter().enumerate() {
        if b.bytes > 0 {
            for &m in &b.copies {
                held[m as usize].insert((b.bytes, bi as u32));
            }
        }
    }

    let mut s = Solver {
        snap,
        copies: snap.buckets.iter().map(|b| b.copies.clone()).collect(),
        load,
        target,
        lo,
        hi,
        weight,
        receiver,
        zone,
        held,
        moves: Vec::new(),
        urgent: Vec::new(),
        arrived_by: HashMap::new(),
        last_move_of_bucket: HashMap::new(),
    };
    let mut explanation = vec![format!(
        "{} members, {} in {} buckets; targets by {weight_basis}, tolerance ±{}%",
        n,
        human_bytes(total),
        snap.buckets.len(),
        opts.tolerance_percent
    )];
    for (i, m) in snap.members.iter().enumerate() {
        let why = if m.health == Health::Down {
            Some("is down: target 0, receives nothing")
        } else if m.draining {
            Some("is draining: target 0, to be emptied")
        } else if s.weight[i] == 0.0 {
            Some("has weight 0: target 0, to be emptied")
        } else if m.health == Health::Critical {
            Some("is critical: keeps its target but receives nothing")
        } else {
            None
        };
        if let Some(why) = why {
            explanation.push(format!("{} {why}", m.id));
        }
    }
    let unplaced = s.empty_members();
    let stuck = s.balance_bytes(total);
    let primary_moves = s.balance_primaries();

    // Most valuable first: urgent moves, then bigger, with all moves of one bucket kept in
    // the order they were found (a later one may depend on an earlier one).
    let mut copy_moves: Vec<(usize, Move, bool)> =
        s.moves.into_iter().zip(s.urgent).enumerate().filter_map(|(seq, (m, u))| m.map(|m| (seq, m, u))).collect();
    let mut bucket_urgent: HashMap<u32, bool> = HashMap::new();
    for (_, m, u) in &copy_moves {
        *bucket_urgent.entry(m.bucket_index).or_default() |= *u;
    }
    copy_moves.sort_by(|(sa, a, _), (sb, b, _)| {
        let ua = bucket_urgent[&a.bucket_index];
        let ub = bucket_urgent[&b.bucket_index];
        ub.cmp(&ua).then(b.bytes.cmp(&a.bytes)).then(a.bucket_index.cmp(&b.bucket_index)).then(sa.cmp(sb))
    });
    let mut moves: Vec<Move> = copy_moves.into_iter().map(|(_, m, _)| m).collect();
    let transfer: u64 = moves.iter().map(|m| m.bytes).sum();
    let n_copy = moves.len();
    moves.extend(primary_moves);

    // After-loads from the final layout.
    let mut after = vec![MemberLoad::default(); n];
    for (bi, cs) in s.copies.iter().enumerate() {
        for (pos, &m) in cs.iter().enumerate() {
            let l = &mut after[m as usize];
            l.bytes += snap.buckets[bi].bytes;
            l.buckets += 1;
            l.primaries += (pos == 0) as u64;
        }
    }
    let members: Vec<MemberPlan> = snap
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| MemberPlan {
            id: m.id.clone(),
            target_bytes: s.target[i].max(0) as u64,
            before: before[i],
            after: after[i],
            receives: s.receiver[i],
        })
        .collect();

    let ratio = if lower_bound > 0 {
        format!(" ({:.2} x the lower bound)", transfer as f64 / lower_bound as f64)
    } else {
        String::new()
    };
    explanation.push(format!(
        "lower bound {}; plan moves {} in {} copy moves{ratio} and {} primary moves",
        human_bytes(lower_bound),
        human_bytes(transfer),
        n_copy,
        moves.len() - n_copy
    ));
    let within = (0..n)
        .filter(|&i| {
            let a = after[i].bytes as i64;
            a >= s.lo[i] && a <= s.hi[i]
        })
        .count();
    explanation
        .push(format!("after the plan {within} of {n} members are within ±{}% of target", opts.tolerance_percent));
    for i in 0..n {
        let a = after[i].bytes as i64;
        if a > s.hi[i] || a < s.lo[i] {
            let dev = members[i]
                .deviation_percent(after[i].bytes)
                .map(|d| format!("{d:+.1}% from target"))
                .unwrap_or_else(|| format!("{} left on a member with target 0", human_bytes(after[i].bytes)));
            let reason = if stuck.contains(&i) || unplaced.contains(&i) {
                "no copy fits anywhere else (bucket sizes, copies or zones)"
            } else {
                "bucket sizes do not allow closer"
            };
            explanation.push(format!("{} stays {dev}: {reason}", snap.members[i].id));
        }
    }

    Plan {
        moves,
        members,
        transfer_bytes: transfer,
        total_bytes: total,
        lower_bound_bytes: lower_bound,
        tolerance_percent: opts.tolerance_percent,
        explanation,
    }
}

impl Solver<'_> {
    fn n(&self) -> usize {
        self.load.len()
    }

    /// Whether the copy of bucket `b` on `from` may go to `to`.
    fn eligible(&self, b: usize, from: MemberIdx, to: MemberIdx) -> bool {
        let cs = &self.copies[b];
        if from == to || !self.receiver[to as usize] || cs.contains(&to) {
            return false;
        }
        if cs.len() < 2 {
            return true;
        }
        // Zone spread may not shrink.
        let zones_of = |it: &mut dyn Iterator<Item = MemberIdx>| {
            let mut z: Vec<u32> = it.filter_map(|m| self.zone[m as usize]).collect();
            z.sort_unstable();
            z.dedup();
            z.len()
        };
        let before = zones_of(&mut cs.iter().copied());
        let after = zones_of(&mut cs.iter().map(|&m| if m == from { to } else { m }));
        after >= before
    }

    fn apply(&mut self, b: usize, from: MemberIdx, to: MemberIdx, urgent: bool) {
        let bytes = self.snap.buckets[b].bytes;
        let pos = self.copies[b].iter().position(|&m| m == from).expect("copy present");
        self.copies[b][pos] = to;
        self.load[from as usize] -= bytes as i64;
        self.load[to as usize] += bytes as i64;
        if bytes > 0 {
            self.held[from as usize].remove(&(bytes, b as u32));
            self.held[to as usize].insert((bytes, b as u32));
        }
        let bi = b as u32;
        // A copy moved twice becomes one move, when nothing else touched the bucket between.
        if let Some(prev) = self.arrived_by.remove(&(bi, from))
            && self.last_move_of_bucket.get(&bi) == Some(&prev)
        {
            let orig = self.moves[prev].as_ref().unwrap().from;
            if orig == to {
                self.moves[prev] = None;
                self.last_move_of_bucket.remove(&bi);
            } else {
                self.moves[prev].as_mut().unwrap().to = to;
                self.urgent[prev] |= urgent;
                self.arrived_by.insert((bi, to), prev);
            }
            return;
        }
        let idx = self.moves.len();
        self.moves.push(Some(Move {
            kind: MoveKind::Copy,
            bucket: self.snap.buckets[b].id,
            bucket_index: bi,
            from,
            to,
            bytes,
        }));
        self.urgent.push(urgent);
        self.arrived_by.insert((bi, to), idx);
        self.last_move_of_bucket.insert(bi, idx);
    }

    /// Phase 1: members with target 0 give away every copy. Returns members left holding
    /// copies that fit nowhere.
    fn empty_members(&mut self) -> Vec<usize> {
        let mut unplaced = Vec::new();
        for e in 0..self.n() {
            if self.target[e] > 0 || self.receiver[e] {
                continue;
            }
            let mut mine: Vec<usize> =
                (0..self.copies.len()).filter(|&b| self.copies[b].contains(&(e as MemberIdx))).collect();
            mine.sort_by_key(|&b| (std::cmp::Reverse(self.snap.buckets[b].bytes), b));
            for b in mine {
                let best = (0..self.n())
                    .filter(|&d| self.eligible(b, e as MemberIdx, d as MemberIdx))
                    .max_by_key(|&d| (self.hi[d] - self.load[d], std::cmp::Reverse(d)));
                match best {
                    Some(d) => self.apply(b, e as MemberIdx, d as MemberIdx, true),
                    None => {
                        if !unplaced.contains(&e) {
                            unplaced.push(e);
                        }
                    }
                }
            }
        }
        unplaced
    }

    /// Phases 2 and 3. Returns members found stuck.
    fn balance_bytes(&mut self, total: u64) -> Vec<usize> {
        let n = self.n();
        let mut stuck_src = vec![false; n];
        let mut stuck_dst = vec![false; n];
        // A safety net far above any real plan's length.
        let max_moves = 4 * self.copies.iter().map(|c| c.len()).sum::<usize>() + 1000;
        while self.moves.len() < max_moves && total > 0 {
            let over = (0..n)
                .filter(|&i| !stuck_src[i] && self.load[i] > self.hi[i])
                .max_by_key(|&i| (self.load[i] - self.hi[i], std::cmp::Reverse(i)));
            if let Some(s) = over {
                let must = self.load[s] - self.hi[s];
                if !self.give(s, must) {
                    stuck_src[s] = true;
                }
                continue;
            }
            let under = (0..n)
                .filter(|&i| self.receiver[i] && !stuck_dst[i] && self.load[i] < self.lo[i])
                .max_by_key(|&i| (self.lo[i] - self.load[i], std::cmp::Reverse(i)));
            if let Some(d) = under {
                let need = self.lo[d] - self.load[d];
                if !self.fill(d, need) {
                    stuck_dst[d] = true;
                }
                continue;
            }
            break;
        }
        (0..n).filter(|&i| stuck_src[i] || stuck_dst[i]).collect()
    }

    fn room(&self, d: usize) -> i64 {
        self.hi[d] - self.load[d]
    }

    fn slack(&self, s: usize) -> i64 {
        self.load[s] - self.lo[s].max(0)
    }

    /// Moves one copy off `s`, which must shed `must` bytes: to the receiver that needs
    /// most, else has most room; others in that order when nothing fits.
    fn give(&mut self, s: usize, must: i64) -> bool {
        let mut cands: Vec<usize> = (0..self.n()).filter(|&d| d != s && self.receiver[d] && self.room(d) > 0).collect();
        let key = |this: &Self, d: usize| ((this.lo[d] - this.load[d]).max(0), this.room(d), std::cmp::Reverse(d));
        let Some(best) = cands.iter().copied().max_by_key(|&d| key(self, d)) else {
            return false;
        };
        if self.try_pair(s, best, must) {
            return true;
        }
        cands.retain(|&d| d != best);
        cands.sort_by_key(|&d| std::cmp::Reverse(key(self, d)));
        cands.into_iter().any(|d| self.try_pair(s, d, must))
    }

    /// Moves one copy onto `d`, which needs `need` bytes: from the member with most bytes
    /// above its band's floor, others in that order when nothing fits.
    fn fill(&mut self, d: usize, need: i64) -> bool {
        let mut cands: Vec<usize> = (0..self.n()).filter(|&s| s != d && self.slack(s) > 0).collect();
        let key = |this: &Self, s: usize| (this.slack(s), std::cmp::Reverse(s));
        let Some(best) = cands.iter().copied().max_by_key(|&s| key(self, s)) else {
            return false;
        };
        if self.try_pair(best, d, need) {
            return true;
        }
        cands.retain(|&s| s != best);
        cands.sort_by_key(|&s| std::cmp::Reverse(key(self, s)));
        cands.into_iter().any(|s| self.try_pair(s, d, need))
    }

    /// Moves from `s` to `d` the largest eligible copy of at most `want` bytes, else the
    /// smallest above it; never past `d`'s `hi` nor below `s`'s `lo`.
    fn try_pair(&mut self, s: usize, d: usize, want: i64) -> bool {
        let limit = self.room(d).min(self.slack(s));
        if limit <= 0 {
            return false;
        }
        let want = want.min(limit) as u64;
        let limit = limit as u64;
        let (sm, dm) = (s as MemberIdx, d as MemberIdx);
        let pick = self.held[s]
            .range(..=(want, u32::MAX))
            .rev()
            .take(SCAN_LIMIT)
            .find(|&&(_, b)| self.eligible(b as usize, sm, dm))
            .or_else(|| {
                if want >= limit {
                    return None;
                }
                self.held[s]
                    .range((want + 1, 0)..=(limit, u32::MAX))
                    .take(SCAN_LIMIT)
                    .find(|&&(_, b)| self.eligible(b as usize, sm, dm))
            })
            .copied();
        match pick {
            Some((_, b)) => {
                let urgent = self.target[s] == 0;
                self.apply(b as usize, sm, dm, urgent);
                true
            }
            None => false,
        }
    }

    /// Phase 4: primaries by count, in proportion to weight among receivers. Swaps the
    /// primary role to a secondary when that narrows the gap between the two members.
    fn balance_primaries(&mut self) -> Vec<Move> {
        let n = self.n();
        let multi: Vec<usize> = (0..self.copies.len()).filter(|&b| self.copies[b].len() > 1).collect();
        if multi.is_empty() {
            return Vec::new();
        }
        let wsum: f64 = (0..n).filter(|&i| self.receiver[i]).map(|i| self.weight[i]).sum();
        if wsum <= 0.0 {
            return Vec::new();
        }
        let tp: Vec<f64> =
            (0..n).map(|i| if self.receiver[i] { multi.len() as f64 * self.weight[i] / wsum } else { 0.0 }).collect();
        let mut prim = vec![0i64; n];
        let mut lists: Vec<Vec<usize>> = vec![Vec::new(); n];
        for &b in &multi {
            let p = self.copies[b][0] as usize;
            prim[p] += 1;
            lists[p].push(b);
        }
        let mut out = Vec::new();
        for _pass in 0..64 {
            let mut changed = false;
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| {
                let ea = prim[a] as f64 - tp[a];
                let eb = prim[b] as f64 - tp[b];
                eb.partial_cmp(&ea).unwrap().then(a.cmp(&b))
            });
            for s in order {
                let list = std::mem::take(&mut lists[s]);
                let mut keep = Vec::with_capacity(list.len());
                for b in list {
                    let es = prim[s] as f64 - tp[s];
                    let best = self.copies[b][1..]
                        .iter()
                        .map(|&m| m as usize)
                        .filter(|&d| self.receiver[d] && es - (prim[d] as f64 - tp[d]) > 1.0)
                        .min_by(|&a, &c| {
                            (prim[a] as f64 - tp[a]).partial_cmp(&(prim[c] as f64 - tp[c])).unwrap().then(a.cmp(&c))
                        });
                    match best {
                        Some(d) => {
                            let pos = self.copies[b].iter().position(|&m| m as usize == d).unwrap();
                            self.copies[b].swap(0, pos);
                            prim[s] -= 1;
                            prim[d] += 1;
                            lists[d].push(b);
                            out.push(Move {
                                kind: MoveKind::Primary,
                                bucket: self.snap.buckets[b].id,
                                bucket_index: b as u32,
                                from: s as MemberIdx,
                                to: d as MemberIdx,
                                bytes: 0,
                            });
                            changed = true;
                        }
                        None => keep.push(b),
                    }
                }
                lists[s].extend(keep);
            }
            if !changed {
                break;
            }
        }
        out
    }
}
