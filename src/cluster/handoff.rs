//! Handoff: before the node beside this sidecar stops (a rolling restart), its master
//! role goes to an in-sync replica, so the restart moves no bucket. The answer and the
//! ways it can fail, shared by the command line and the API.
//!
//! Owns: [`Handoff`], [`HandoffError`] and the bound on the wait. Does not own: how a
//! backend hands off (Redis: [`super::redis`]).

use std::time::Duration;

use serde::Serialize;

/// How long a handoff may wait, from the first look at the replicas until the promoted
/// one is master and the old master its replica.
pub const HANDOFF_WITHIN: Duration = Duration::from_secs(15);

/// What a handoff did.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Handoff {
    /// `promoted`: a replica took the member's role; `none`: nothing to hand off (the
    /// member is a replica already).
    #[schema(value_type = String)]
    pub action: &'static str,
    /// The member as configured (`cluster.member-id`).
    pub member: String,
    /// The member's node, `ip:port`.
    pub node: String,
    /// The master serving the node's slots now: the promoted replica, or the master the
    /// replica follows (None when it follows no known master).
    pub master: Option<String>,
    pub duration_seconds: f64,
    /// One sentence for people.
    pub message: String,
}

/// Why a handoff did not happen. Nothing is changed in any of these cases, except a
/// failover that was asked for and did not finish in time (`TimedOut`).
#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error("member {0} is not a node of the cluster (cluster.member-id names a node by id, ip:port or hostname:port)")]
    UnknownMember(String),
    #[error(
        "{master} is a master with no usable replica ({detail}): nothing can take over its slots; evacuate it \
         before it stops (autobalancer evacuate start --wait)"
    )]
    NoReplica { master: String, detail: String },
    #[error(
        "{master} has {} open (migrating or importing): a move is in flight; let it end, or settle it with \
         autobalancer repair --slot N, then hand off",
        slot_list(.slots)
    )]
    OpenSlots { master: String, slots: Vec<u16> },
    #[error(
        "CLUSTER FAILOVER sent to {replica}, but within {}s it did not become master in place of {master} \
         (replica says role {replica_role}, master says role {master_role})",
        .within.as_secs()
    )]
    TimedOut { master: String, replica: String, within: Duration, replica_role: String, master_role: String },
    #[error("{0}")]
    Backend(String),
    #[error("handoff needs cluster.backend = \"redis\": a snapshot file has no replicas to promote")]
    Unsupported,
}

impl HandoffError {
    /// A stable code for the API and JSON output.
    pub fn code(&self) -> &'static str {
        match self {
            HandoffError::UnknownMember(_) => "unknown_member",
            HandoffError::NoReplica { .. } => "no_replica",
            HandoffError::OpenSlots { .. } => "open_slot",
            HandoffError::TimedOut { .. } => "handoff_timed_out",
            HandoffError::Backend(_) => "backend_unavailable",
            HandoffError::Unsupported => "unsupported",
        }
    }
}

/// "slot 7", or "slots 7, 9, 12 and 3 more".
fn slot_list(slots: &[u16]) -> String {
    let shown: Vec<String> = slots.iter().take(5).map(u16::to_string).collect();
    let more = slots.len().saturating_sub(5);
    match (slots.len(), more) {
        (1, _) => format!("slot {}", shown[0]),
        (_, 0) => format!("slots {}", shown.join(", ")),
        _ => format!("slots {} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_nodes_and_the_way_out() {
        let e = HandoffError::OpenSlots { master: "10.0.0.1:6379".into(), slots: vec![7] };
        assert_eq!(e.code(), "open_slot");
        assert!(e.to_string().starts_with("10.0.0.1:6379 has slot 7 open"), "{e}");
        let many = HandoffError::OpenSlots { master: "m".into(), slots: (1..=8).collect() };
        assert!(many.to_string().contains("slots 1, 2, 3, 4, 5 and 3 more"), "{many}");
        let none = HandoffError::NoReplica { master: "10.0.0.1:6379".into(), detail: "no replicas".into() };
        assert!(none.to_string().contains("evacuate") && none.to_string().contains("10.0.0.1:6379"), "{none}");
        let late = HandoffError::TimedOut {
            master: "a:1".into(),
            replica: "b:2".into(),
            within: HANDOFF_WITHIN,
            replica_role: "slave".into(),
            master_role: "master".into(),
        };
        assert!(
            late.to_string().contains("b:2") && late.to_string().contains("a:1") && late.to_string().contains("15s")
        );
    }
}
