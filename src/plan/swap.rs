//! Phase 4 of the solver: swaps. A member the copy moves left outside its band because
//! none of its copies fits (a few large tenant slots, each bigger than what it may shed)
//! gives one large copy anyway, or a member below its band takes one, and the copy moves
//! run again to settle the difference in small copies (smaller ones back, or the taker's
//! excess on to others). A swap is kept only if the member ends within its band, the
//! total band violation falls, and the plan's transfer stays within [`SWAP_BUDGET`] of
//! the lower bound.
//!
//! Owns: which large copies are tried. Does not own: the copy moves (`search.rs`).

use std::cmp::Reverse;

use super::solver::Solver;
use crate::model::MemberIdx;

/// The transfer swaps may bring the plan to, as a multiple of the lower bound.
pub(super) const SWAP_BUDGET: f64 = 1.10;
/// Large copies tried per member outside its band, largest first.
const COPIES: usize = 4;
/// Partners tried per large copy.
const PARTNERS: usize = 2;
/// Searches run again per plan at most: each costs a copy search of the whole layout, so
/// fewer on a large one ([`TRIAL_BUCKETS`] buckets searched in all).
const TRIALS: usize = 24;
const TRIAL_BUCKETS: usize = 4_000_000;

impl Solver<'_> {
    /// Swaps until every member is within its band, or no swap helps those outside.
    pub(super) fn swap_outliers(&mut self) {
        let n = self.n();
        let budget = (self.lower_bound as f64 * SWAP_BUDGET).floor() as i64;
        let mut tried = vec![false; n];
        let cap = TRIALS.min(TRIAL_BUCKETS / self.copies.len().max(1)).max(1);
        let (mut swaps, mut trials) = (0usize, TRIALS - cap);
        while swaps < 4 * n && trials < TRIALS {
            let outside =
                (0..n).filter(|&i| !tried[i] && self.off_band(i) > 0).max_by_key(|&i| (self.off_band(i), Reverse(i)));
            let Some(x) = outside else { break };
            match self.best_swap(x, budget, &mut trials) {
                Some(better) => {
                    *self = better;
                    swaps += 1;
                }
                None => tried[x] = true,
            }
        }
        if swaps > 0 {
            self.note(format!(
                "swaps: {swaps} large copies moved anyway and settled in small ones, to bring members within their band"
            ));
        }
    }

    /// Bytes `i` is outside its band by (0 within).
    pub(super) fn off_band(&self, i: usize) -> i64 {
        (self.load[i] - self.hi[i]).max(self.lo[i] - self.load[i]).max(0)
    }

    fn violation(&self) -> i64 {
        (0..self.n()).map(|i| self.off_band(i)).sum()
    }

    fn transfer(&self) -> i64 {
        self.moves.iter().flatten().map(|m| m.bytes as i64).sum()
    }

    /// The search from the snapshot again, with `forced` moved first (after phase 1).
    fn again(&self, forced: Vec<(usize, MemberIdx, MemberIdx)>) -> Self {
        let mut s = Solver::new(self.snap, self.opts);
        s.explanation = self.explanation.clone();
        s.empty_members();
        for &(b, f, t) in &forced {
            if s.copies[b].contains(&f) && s.may_move(b, f, t) {
                s.apply_move(b, f, t);
            }
        }
        s.forced = forced;
        s.balance_bytes();
        s
    }

    /// The layout after the first swap that brings `x` within its band: a large copy of
    /// `x` to a receiver (over its band), or a large copy onto `x` from a member with
    /// bytes to spare (below it), moved first, then the copy moves again.
    fn best_swap(&self, x: usize, budget: i64, trials: &mut usize) -> Option<Self> {
        let over = self.load[x] > self.hi[x];
        let violation = self.violation();
        let mut others: Vec<usize> = (0..self.n()).filter(|&y| y != x).collect();
        let candidates: Vec<(usize, usize, usize)> = if over {
            others.retain(|&y| self.receiver[y]);
            others.sort_by_key(|&y| (Reverse(self.hi[y] - self.load[y]), y));
            let big = self.held[x].iter().rev().take(COPIES).map(|&(_, b)| b as usize);
            big.flat_map(|b| others.iter().take(PARTNERS).map(move |&y| (b, x, y))).collect()
        } else {
            others.sort_by_key(|&y| (Reverse(self.load[y] - self.lo[y]), y));
            let mut c = Vec::new();
            for &y in others.iter().take(PARTNERS) {
                let fits = self.held[y].range(..=((self.hi[x] - self.load[x]).max(0) as u64, u32::MAX));
                c.extend(fits.rev().take(COPIES).map(|&(_, b)| (b as usize, y, x)));
            }
            c
        };
        for (b, from, to) in candidates {
            let (f, t) = (from as MemberIdx, to as MemberIdx);
            // Only a copy still where the snapshot has it: the search runs again from there.
            if !self.may_move(b, f, t) || !self.snap.buckets[b].copies.contains(&f) {
                continue;
            }
            if *trials >= TRIALS {
                return None;
            }
            *trials += 1;
            let mut forced = self.forced.clone();
            forced.push((b, f, t));
            let trial = self.again(forced);
            if trial.off_band(x) == 0 && trial.violation() < violation && trial.transfer() <= budget {
                return Some(trial);
            }
        }
        None
    }
}
