//! The answer of `simulate` and `rebalance`: the decision, the figures the formula used,
//! the moves and per-member loads; after a real run, the per-member report.
//!
//! Owns: the JSON shape (public interface) and the human table. Does not own: the figures.

use std::fmt::Write as _;

use serde::Serialize;

use crate::config::human_bytes as hb;
use crate::decide::{Decision, Thresholds};
use crate::model::{ClusterSnapshot, member_label};
use crate::plan::{MemberPlan, Move, MoveKind, Plan};

#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MoveOut {
    pub kind: MoveKind,
    pub bucket: u64,
    pub from: String,
    pub to: String,
    pub bytes: u64,
}

/// Per member after a real run, in buckets and bytes (Cisco ESC's rebalance answer).
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct MemberReport {
    pub id: String,
    /// Where the member is now, when that is not its id (Redis: ip:port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    pub previous_buckets: u64,
    pub requested_unload: u64,
    pub accepted_unload: u64,
    pub current_buckets: u64,
    pub previous_bytes: u64,
    pub requested_unload_bytes: u64,
    pub accepted_unload_bytes: u64,
    pub current_bytes: u64,
}

impl MemberReport {
    /// Per member: buckets before, asked to unload, actually unloaded, held now (and bytes).
    pub fn of_run(plan: &Plan, done: &[&Move]) -> Vec<MemberReport> {
        let mut r: Vec<MemberReport> = plan
            .members
            .iter()
            .map(|m| MemberReport {
                id: m.id.clone(),
                address: m.address.clone(),
                previous_buckets: m.before.buckets,
                previous_bytes: m.before.bytes,
                current_buckets: m.before.buckets,
                current_bytes: m.before.bytes,
                ..Default::default()
            })
            .collect();
        for mv in plan.copy_moves() {
            let f = &mut r[mv.from as usize];
            f.requested_unload += 1;
            f.requested_unload_bytes += mv.bytes;
        }
        for mv in done.iter().filter(|m| m.kind == crate::plan::MoveKind::Copy) {
            let f = &mut r[mv.from as usize];
            f.accepted_unload += 1;
            f.accepted_unload_bytes += mv.bytes;
            f.current_buckets -= 1;
            f.current_bytes -= mv.bytes;
            let t = &mut r[mv.to as usize];
            t.current_buckets += 1;
            t.current_bytes += mv.bytes;
        }
        r
    }
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Answer {
    /// How the run ended (`rebalanced`, `skipped`, `failed`, `stopped`); absent from a
    /// dry run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The outcome's reason: a skip reason, a failure reason (`snapshot_failed`,
    /// `plan_failed`, `repair_failed`, `move_failed`, `mover_unsupported`) or a stop
    /// reason (`cancelled`, `deadline`, `lock_lost`, `budget`, `no_room`, `replicas_behind`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub decision: Decision,
    pub transfer_bytes: u64,
    pub total_bytes: u64,
    pub transfer_percent: f64,
    pub lower_bound_bytes: u64,
    pub size_threshold_percent: u32,
    pub minimum_size_bytes: u64,
    pub moves: Vec<MoveOut>,
    pub members: Vec<MemberPlan>,
    pub explanation: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Vec<MemberReport>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Moves the legacy mover made because an atomic job failed (retried once first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_by_legacy_fallback: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// How this run settled the moves that failed before it ended (handed back to the
    /// owner, rolled back or finished): one line per slot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub settled: Vec<String>,
    /// The mover this run chose, and why ("atomic: every master runs valkey 9.1.2").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover: Option<String>,
    /// Where masters and replicas stand, what placement rule is broken, and the role
    /// changes wanted (with how each went, once a run tried it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<crate::plan::placement::Placement>,
    /// CPU per master before, target and after, hot slots, whether the rates are trusted;
    /// absent where traffic is off (the explanation says why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<crate::plan::traffic::TrafficPlan>,
}

impl Answer {
    pub fn new(snapshot: &ClusterSnapshot, plan: &Plan, decision: Decision, t: &Thresholds) -> Answer {
        let id = |m: u32| snapshot.members[m as usize].id.clone();
        Answer {
            outcome: None,
            reason: None,
            decision,
            transfer_bytes: plan.transfer_bytes,
            total_bytes: plan.total_bytes,
            transfer_percent: (plan.transfer_percent() * 100.0).round() / 100.0,
            lower_bound_bytes: plan.lower_bound_bytes,
            size_threshold_percent: t.size_threshold_percent,
            minimum_size_bytes: t.minimum_size,
            moves: plan
                .moves
                .iter()
                .map(|m| MoveOut { kind: m.kind, bucket: m.bucket, from: id(m.from), to: id(m.to), bytes: m.bytes })
                .collect(),
            members: plan.members.clone(),
            explanation: plan.explanation.clone(),
            report: None,
            moved_bytes: None,
            duration_seconds: None,
            stopped: None,
            moved_by_legacy_fallback: None,
            failures: Vec::new(),
            settled: Vec::new(),
            mover: None,
            placement: None,
            traffic: plan.traffic.clone(),
        }
    }

    /// An outcome decided before any plan existed (lock, pause, snapshot failure).
    pub fn skipped(decision: Decision, t: &Thresholds) -> Answer {
        Answer {
            outcome: None,
            reason: None,
            decision,
            transfer_bytes: 0,
            total_bytes: 0,
            transfer_percent: 0.0,
            lower_bound_bytes: 0,
            size_threshold_percent: t.size_threshold_percent,
            minimum_size_bytes: t.minimum_size,
            moves: Vec::new(),
            members: Vec::new(),
            explanation: Vec::new(),
            report: None,
            moved_bytes: None,
            duration_seconds: None,
            stopped: None,
            moved_by_legacy_fallback: None,
            failures: Vec::new(),
            settled: Vec::new(),
            mover: None,
            placement: None,
            traffic: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("outcome serializes")
    }

    /// What a run that moved did, per member, and how it ended.
    fn run_table(&self, out: &mut String, w: usize) {
        let Some(report) = &self.report else { return };
        let _ = writeln!(
            out,
            "\n{:<w$} {:>10} {:>10} {:>10} {:>10} {:>14}",
            "member", "previous", "requested", "accepted", "current", "current bytes"
        );
        for r in report {
            let _ = writeln!(
                out,
                "{:<w$} {:>10} {:>10} {:>10} {:>10} {:>14}",
                member_label(&r.id, &r.address),
                r.previous_buckets,
                r.requested_unload,
                r.accepted_unload,
                r.current_buckets,
                hb(r.current_bytes)
            );
        }
        if let (Some(b), Some(d)) = (self.moved_bytes, self.duration_seconds) {
            let _ = writeln!(out, "moved {} in {:.1}s", hb(b), d);
        }
        if let Some(s) = &self.stopped {
            let _ = writeln!(out, "stopped early: {s}");
        }
        for l in &self.settled {
            let _ = writeln!(out, "settled: {l}");
        }
        for f in &self.failures {
            let _ = writeln!(out, "failed: {f}");
        }
    }

    /// CPU per master before, target and after, where traffic is measured.
    fn cpu_table(&self, out: &mut String, w: usize) {
        let Some(t) = &self.traffic else { return };
        let _ = writeln!(out, "\n{:<w$} {:>12} {:>12} {:>12}", "CPU µs/s", "before", "target", "after");
        for m in &t.members {
            let member = self.members.iter().find(|x| x.id == m.id);
            let label = member.map_or(m.id.clone(), |x| member_label(&x.id, &x.address));
            let _ = writeln!(out, "{label:<w$} {:>12.0} {:>12.0} {:>12.0}", m.before, m.target, m.after);
        }
    }

    /// One row per member, the figures against the thresholds, the decision in a sentence.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let w = self.members.iter().map(|m| member_label(&m.id, &m.address).len()).max().unwrap_or(0).max(24);
        let _ = writeln!(
            out,
            "{:<w$} {:>12} {:>12} {:>12} {:>8} {:>15} {:>15}",
            "member", "before", "target", "after", "dev", "buckets", "primaries"
        );
        for m in &self.members {
            let dev = m.deviation_percent(m.after.bytes).map(|d| format!("{d:+.1}%")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "{:<w$} {:>12} {:>12} {:>12} {:>8} {:>15} {:>15}",
                member_label(&m.id, &m.address),
                hb(m.before.bytes),
                hb(m.target_bytes),
                hb(m.after.bytes),
                dev,
                format!("{} -> {}", m.before.buckets, m.after.buckets),
                format!("{} -> {}", m.before.primaries, m.after.primaries),
            );
        }
        self.cpu_table(&mut out, w);
        let copies = self.moves.iter().filter(|m| m.kind == MoveKind::Copy).count();
        let _ = writeln!(
            out,
            "\ntransfer {} of {} = {:.2}% (threshold {}%, minimum {}); lower bound {}; {} copy moves, {} primary moves",
            hb(self.transfer_bytes),
            hb(self.total_bytes),
            self.transfer_percent,
            self.size_threshold_percent,
            hb(self.minimum_size_bytes),
            hb(self.lower_bound_bytes),
            copies,
            self.moves.len() - copies
        );
        for line in &self.explanation {
            let _ = writeln!(out, "  {line}");
        }
        self.run_table(&mut out, w);
        if let Some(p) = &self.placement {
            placement_table(&mut out, p);
        }
        let what = match (self.decision.reason, self.outcome.as_deref()) {
            (_, Some("failed")) => format!("failed ({})", self.reason.as_deref().unwrap_or("-")),
            (None, _) => "decision: rebalance".to_string(),
            (Some(r), _) => format!("decision: skip ({r})"),
        };
        let _ = writeln!(out, "\n{what}: {}", self.decision.message);
        out
    }
}

/// Hosts and zones with their masters, replicas and bytes on masters; broken rules; the
/// role changes with their outcome.
fn placement_table(out: &mut String, p: &crate::plan::placement::Placement) {
    let _ = writeln!(out, "\n{:<24} {:>8} {:>9} {:>16}", "host / zone", "masters", "replicas", "bytes on masters");
    for (kind, stands) in [("host", &p.hosts), ("zone", &p.zones)] {
        for st in stands.iter() {
            let name = format!("{kind} {}", st.name);
            let _ = writeln!(out, "{name:<24} {:>8} {:>9} {:>16}", st.masters.len(), st.replicas, hb(st.master_bytes));
        }
    }
    let broken: Vec<String> = p.violations.iter().map(|(r, n)| format!("{} {n}", r.as_str())).collect();
    let _ = writeln!(
        out,
        "placement: {} replicas per master; broken: {}",
        p.replicas_per_master,
        if broken.is_empty() { "none".into() } else { broken.join(", ") }
    );
    for a in &p.actions {
        let outcome = a.result.as_ref().map_or("planned".to_string(), |r| format!("{}: {}", r.outcome, r.message));
        let _ = writeln!(out, "  {}: {:?} ({}) -> {outcome}", a.rule.as_str(), a.change, a.why);
    }
    for l in &p.explanation {
        let _ = writeln!(out, "  {l}");
    }
}
