//! The planner: from a snapshot, an ordered list of bucket moves that brings every member
//! near its target, with before/after loads, the transfer size and the lower bound.
//!
//! Owns: targets (capacity shares), the move search, the order of moves (most valuable
//! first), the self-check of its output and the human explanation. Pure and synchronous:
//! no clock, no I/O, no async; the same input gives the same plan.
//! Layout: `solver` the layout as it changes, one method per phase: `search` (phases 1
//! to 3, copy moves), `swap` and `primaries` (phase 4); `traffic` the second dimension
//! (CPU per master); `placement` where masters and replicas stand (role changes, no
//! slot moves); `tests` the property tests against the exhaustive oracle.
//! Does not own: whether to act on the plan (`decide`) or how a move is done (`execute`).

pub mod placement;
mod primaries;
mod search;
mod solver;
mod swap;
pub mod traffic;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{ClusterSnapshot, Health, MemberIdx};

#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    /// How close to target the planner aims, in percent of the target.
    pub tolerance_percent: u32,
    /// Relative weights by member id, replacing capacities; members not named weigh 1.
    /// A weight of 0 drains the member.
    pub weights: BTreeMap<String, f64>,
    /// When set, only these members may receive copies (an evacuation's `--migrate-to`);
    /// the others keep their targets.
    pub receivers: Option<Vec<String>>,
    /// No member with a capacity is planned past this percent of it (its used memory plus
    /// what arrives plus the largest key in flight); 0: room is not counted.
    pub critical_memory_percent: u32,
    /// Per-bucket CPU rates, where the servers measure them: the second dimension.
    pub traffic: Option<traffic::TrafficInput>,
}

impl PlanOptions {
    pub fn from_config(b: &crate::config::BalanceConfig) -> PlanOptions {
        PlanOptions {
            tolerance_percent: b.tolerance_percent,
            weights: b.weights.clone(),
            receivers: None,
            critical_memory_percent: b.critical_memory_percent,
            traffic: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MoveKind {
    /// A copy changes member: its bytes travel.
    Copy,
    /// The primary role passes to a member already holding a copy: no data travels.
    Primary,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub kind: MoveKind,
    /// The bucket's id (a Redis slot number).
    pub bucket: u64,
    /// Position of the bucket in the snapshot.
    pub bucket_index: u32,
    pub from: MemberIdx,
    pub to: MemberIdx,
    /// Bytes that travel (0 for a primary move).
    pub bytes: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MemberLoad {
    pub bytes: u64,
    pub buckets: u64,
    pub primaries: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MemberPlan {
    pub id: String,
    /// Where the member is now, when that is not its id (Redis: ip:port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub target_bytes: u64,
    pub before: MemberLoad,
    pub after: MemberLoad,
    /// Whether the member may receive copies (healthy, not draining, weight > 0).
    #[serde(skip)]
    pub receives: bool,
}

impl MemberPlan {
    /// Signed distance of `load` from target, in percent of target (None when target is 0).
    pub fn deviation_percent(&self, load: u64) -> Option<f64> {
        (self.target_bytes > 0).then(|| 100.0 * (load as f64 - self.target_bytes as f64) / self.target_bytes as f64)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub members: Vec<MemberPlan>,
    pub transfer_bytes: u64,
    pub total_bytes: u64,
    pub lower_bound_bytes: u64,
    pub tolerance_percent: u32,
    /// Bytes left on members with target 0 (draining, down, weight 0) because no receiver
    /// has room for them.
    pub unplaced_bytes: u64,
    /// `PlanOptions::critical_memory_percent`, for the self-check.
    pub critical_memory_percent: u32,
    /// A few lines for people: what it did and why.
    pub explanation: Vec<String>,
    /// CPU per master before, target and after, where traffic is measured.
    pub traffic: Option<traffic::TrafficPlan>,
}

impl Plan {
    pub fn copy_moves(&self) -> impl Iterator<Item = &Move> {
        self.moves.iter().filter(|m| m.kind == MoveKind::Copy)
    }

    pub fn transfer_percent(&self) -> f64 {
        if self.total_bytes == 0 { 0.0 } else { 100.0 * self.transfer_bytes as f64 / self.total_bytes as f64 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The planner's own output broke an invariant: a bug, never acted on.
    #[error("planner self-check failed: {0}")]
    Check(String),
}

/// Plans a rebalance of `snapshot`. Deterministic; checks its own output.
///
/// What the snapshot observed shapes the plan: pinned buckets (a key above
/// `max-key-bytes`) never move, and sampled sizes widen the tolerance by their error
/// bound, so the plan does not move data to chase noise. Both are said in the
/// explanation, after the sizes' own line.
pub fn plan(snapshot: &ClusterSnapshot, opts: &PlanOptions) -> Result<Plan, PlanError> {
    let mut opts = opts.clone();
    let mut lines = Vec::new();
    if let Some(s) = &snapshot.observed.sizing {
        lines.push(s.line());
        let total = snapshot.total_bytes();
        if s.error_bytes > 0 && total > 0 {
            let margin = (100 * s.error_bytes).div_ceil(total) as u32;
            opts.tolerance_percent += margin;
            lines.push(format!("sampled sizes: tolerance widened by {margin}% for their error bound"));
        }
    }
    for p in &snapshot.observed.pinned {
        lines.push(format!(
            "bucket {} stays: {}, largest {}",
            p.bucket,
            p.reason,
            crate::config::human_bytes(p.largest_key_bytes)
        ));
    }
    let mut plan = solver::solve(snapshot, &opts);
    if let Some(t) = &opts.traffic {
        traffic::balance(snapshot, &mut plan, t);
    }
    plan.explanation.splice(0..0, lines);
    check(snapshot, &plan)?;
    Ok(plan)
}

/// Applies `moves` in order to the snapshot's layout, refusing any move that is not valid
/// at its point in the sequence.
pub fn apply_moves(snapshot: &mut ClusterSnapshot, moves: &[Move]) -> Result<(), String> {
    for (i, mv) in moves.iter().enumerate() {
        let b = snapshot
            .buckets
            .get_mut(mv.bucket_index as usize)
            .filter(|b| b.id == mv.bucket)
            .ok_or_else(|| format!("move {i}: bucket {} is not at index {}", mv.bucket, mv.bucket_index))?;
        match mv.kind {
            MoveKind::Copy => {
                let pos = b
                    .copies
                    .iter()
                    .position(|&m| m == mv.from)
                    .ok_or_else(|| format!("move {i}: bucket {} has no copy on member #{}", mv.bucket, mv.from))?;
                if b.copies.contains(&mv.to) {
                    return Err(format!("move {i}: bucket {} would have two copies on member #{}", mv.bucket, mv.to));
                }
                if mv.bytes != b.bytes {
                    return Err(format!("move {i}: bucket {} moves {} bytes, holds {}", mv.bucket, mv.bytes, b.bytes));
                }
                b.copies[pos] = mv.to;
            }
            MoveKind::Primary => {
                if b.copies.first() != Some(&mv.from) {
                    return Err(format!("move {i}: member #{} is not primary of bucket {}", mv.from, mv.bucket));
                }
                let pos = b.copies.iter().position(|&m| m == mv.to).ok_or_else(|| {
                    format!("move {i}: primary of bucket {} to #{} which holds no copy", mv.bucket, mv.to)
                })?;
                b.copies.swap(0, pos);
            }
        }
    }
    Ok(())
}

/// Per-member bytes, buckets and primaries of a layout.
pub fn member_loads(snapshot: &ClusterSnapshot) -> Vec<MemberLoad> {
    let mut loads = vec![MemberLoad::default(); snapshot.members.len()];
    for b in &snapshot.buckets {
        for (pos, &m) in b.copies.iter().enumerate() {
            let l = &mut loads[m as usize];
            l.bytes += b.bytes;
            l.buckets += 1;
            if pos == 0 {
                l.primaries += 1;
            }
        }
    }
    loads
}

fn distinct_zones(snapshot: &ClusterSnapshot, copies: &[MemberIdx]) -> usize {
    let mut zones: Vec<&str> = copies.iter().filter_map(|&m| snapshot.members[m as usize].zone.as_deref()).collect();
    zones.sort_unstable();
    zones.dedup();
    zones.len()
}

/// The planner's own check: moves replay cleanly, bytes and copies are conserved, no copy
/// lands on a member that may not receive, zone spread never shrinks, figures add up.
fn check(snapshot: &ClusterSnapshot, plan: &Plan) -> Result<(), PlanError> {
    let fail = |m: String| Err(PlanError::Check(m));
    for mv in &plan.moves {
        if snapshot.observed.pinned.iter().any(|p| p.bucket == mv.bucket) {
            return fail(format!("bucket {} is pinned and was moved", mv.bucket));
        }
        let to = &snapshot.members[mv.to as usize];
        if mv.kind == MoveKind::Copy && !plan.members[mv.to as usize].receives {
            return fail(format!("bucket {} moved onto {} which may not receive", mv.bucket, to.id));
        }
        if to.health == Health::Down || to.draining {
            return fail(format!("bucket {} given to {} which is down or draining", mv.bucket, to.id));
        }
    }
    let room = solver::room(snapshot, plan.critical_memory_percent);
    for (i, m) in plan.members.iter().enumerate() {
        let arrived: u64 = plan.copy_moves().filter(|mv| mv.to as usize == i).map(|mv| mv.bytes).sum();
        if let Some(free) = room[i]
            && arrived as i64 > free
        {
            return fail(format!("member {} receives {arrived} bytes with room for {free}", m.id));
        }
    }
    let mut after = snapshot.clone();
    apply_moves(&mut after, &plan.moves).map_err(PlanError::Check)?;
    for (b0, b1) in snapshot.buckets.iter().zip(&after.buckets) {
        if b0.copies.len() != b1.copies.len() {
            return fail(format!("bucket {} changed its number of copies", b0.id));
        }
        if b0.copies.len() > 1
            && b0.copies != b1.copies
            && distinct_zones(snapshot, &b1.copies) < distinct_zones(snapshot, &b0.copies)
        {
            return fail(format!("bucket {} lost zone spread", b0.id));
        }
    }
    if after.total_bytes() != snapshot.total_bytes() || plan.total_bytes != snapshot.total_bytes() {
        return fail("total bytes not conserved".into());
    }
    let loads = member_loads(&after);
    for (m, l) in plan.members.iter().zip(&loads) {
        if m.after != *l {
            return fail(format!("member {} after-load {:?} differs from replay {:?}", m.id, m.after, l));
        }
    }
    let transfer: u64 = plan.copy_moves().map(|m| m.bytes).sum();
    if transfer != plan.transfer_bytes {
        return fail(format!("transfer {} differs from the sum of copy moves {}", plan.transfer_bytes, transfer));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
