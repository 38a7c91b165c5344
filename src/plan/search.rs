//! The move search of the solver, phases 1 to 3: empty the members whose target is 0, then
//! shed bytes above every band and fill every band from below, one copy at a time.
//!
//! Owns: which copy goes where, and the bookkeeping that folds a copy moved twice into one
//! move. Does not own: targets and bands (`solver.rs`), primaries (`primaries.rs`).

use super::solver::Solver;
use super::{Move, MoveKind};
use crate::model::MemberIdx;

/// Ineligible copies passed over in one member before trying another partner.
const SCAN_LIMIT: usize = 64;

impl Solver<'_> {
    /// Whether the copy of bucket `b` on `from` may go to `to`.
    fn eligible(&self, b: usize, from: MemberIdx, to: MemberIdx) -> bool {
        let cs = &self.copies[b];
        if from == to || !self.receiver[to as usize] || cs.contains(&to) {
            return false;
        }
        if self.free[to as usize].is_some_and(|free| (self.snap.buckets[b].bytes as i64) > free) {
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

    /// Whether the copy of bucket `b` on `from` may go to `to` (for the other phases).
    pub(super) fn may_move(&self, b: usize, from: MemberIdx, to: MemberIdx) -> bool {
        self.eligible(b, from, to)
    }

    /// Moves the copy of bucket `b` from `from` to `to` (not urgent), for the other phases.
    pub(super) fn apply_move(&mut self, b: usize, from: MemberIdx, to: MemberIdx) {
        self.apply(b, from, to, false);
    }

    /// Moves the copy of bucket `b` from `from` to `to`, recording (or folding) the move.
    fn apply(&mut self, b: usize, from: MemberIdx, to: MemberIdx, urgent: bool) {
        let bytes = self.snap.buckets[b].bytes;
        let pos = self.copies[b].iter().position(|&m| m == from).expect("copy present");
        self.copies[b][pos] = to;
        self.load[from as usize] -= bytes as i64;
        self.load[to as usize] += bytes as i64;
        self.last_to[from as usize] = Some(to as usize);
        self.last_from[to as usize] = Some(from as usize);
        if let Some(free) = self.free[to as usize].as_mut() {
            *free -= bytes as i64;
        }
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

    /// Phase 1: members with target 0 give away every copy; a member left holding copies
    /// that fit nowhere is marked stuck.
    pub(super) fn empty_members(&mut self) {
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
                        self.stuck[e] = true;
                        if self.blocked_by_room(b, e as MemberIdx) {
                            self.unplaced += self.snap.buckets[b].bytes;
                        }
                    }
                }
            }
        }
    }

    /// Whether the copy of `b` on `from` would have a receiver but for room.
    fn blocked_by_room(&self, b: usize, from: MemberIdx) -> bool {
        (0..self.n()).any(|d| {
            let to = d as MemberIdx;
            d != from as usize
                && self.receiver[d]
                && !self.copies[b].contains(&to)
                && self.free[d].is_some_and(|free| self.snap.buckets[b].bytes as i64 > free)
        })
    }

    /// Phases 2 and 3: sheds bytes above every band, then fills every band from below;
    /// members that can neither give nor take what they must are marked stuck.
    pub(super) fn balance_bytes(&mut self) {
        let total = self.total;
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
        for i in (0..n).filter(|&i| stuck_src[i] || stuck_dst[i]) {
            self.stuck[i] = true;
        }
    }

    /// Bytes `d` may still take before it passes its band's top.
    fn room(&self, d: usize) -> i64 {
        self.hi[d] - self.load[d]
    }

    /// Bytes `s` may still give before it falls below its band's floor.
    fn slack(&self, s: usize) -> i64 {
        self.load[s] - self.lo[s].max(0)
    }

    /// Moves one copy off `s`, which must shed `must` bytes: to the receiver it gave to
    /// last while that one is still below its target, else to the receiver that needs
    /// most, else has most room; others in that order when nothing fits.
    ///
    /// Keeping a giver on one receiver keeps the (source, target) pairs few: each pair is
    /// one group for the movers (one job, one commit), and a scale-out that spread every
    /// source over every new member paid a commit per pair on every master.
    fn give(&mut self, s: usize, must: i64) -> bool {
        if let Some(d) = self.last_to[s]
            && self.receiver[d]
            && self.load[d] < self.target[d]
            && self.try_pair(s, d, must)
        {
            return true;
        }
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

    /// Moves one copy onto `d`, which needs `need` bytes: from the member it took from last
    /// while that one is above its target, else from the member with most bytes above its
    /// band's floor, others in that order when nothing fits.
    fn fill(&mut self, d: usize, need: i64) -> bool {
        if let Some(s) = self.last_from[d]
            && self.load[s] > self.target[s]
            && self.try_pair(s, d, need)
        {
            return true;
        }
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
}
