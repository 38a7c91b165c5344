//! Phase 4 of the solver: the primary role balanced by count among members that hold
//! copies. No data moves; a bucket with one copy has no primary to hand over.

use super::solver::Solver;
use super::{Move, MoveKind};
use crate::model::MemberIdx;

impl Solver<'_> {
    /// Phase 4: primaries by count, in proportion to weight among receivers. Swaps the
    /// primary role to a secondary when that narrows the gap between the two members.
    pub(super) fn balance_primaries(&mut self) -> Vec<Move> {
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
