//! The cluster model (`Member`, `Bucket`, `ClusterSnapshot`); its JSON form in [`json`],
//! and what a backend read with a snapshot for its own moves in [`view`].
//!
//! Owns: the types of the public snapshot format (`version: 1`). Does not own: how a
//! backend fills them.
//!
//! Inside the process a bucket names its copies by member index (`MemberIdx`), not by id,
//! so that a million buckets cost a few bytes each.

mod json;
mod view;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use json::SnapshotError;
pub use view::BackendView;

pub type MemberIdx = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Healthy,
    /// Above the critical memory threshold: keeps its data, receives nothing.
    Critical,
    /// Failed or unreachable.
    Down,
}

/// A member is named by its stable id (Redis: the node id, which stays with the node's
/// data across an IP change); `address` and `hostname` are where it is now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    #[serde(default)]
    pub address: String,
    /// The announced hostname (Redis: `cluster-announce-hostname`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub capacity_bytes: Option<u64>,
    #[serde(default)]
    pub health: Health,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub zone: Option<String>,
}

impl Member {
    pub fn new(id: &str) -> Member {
        Member {
            id: id.to_string(),
            address: id.to_string(),
            hostname: None,
            capacity_bytes: None,
            health: Health::Healthy,
            draining: false,
            zone: None,
        }
    }

    /// How messages name it: the id, with the address when that says more.
    pub fn label(&self) -> String {
        member_label(&self.id, &self.address)
    }

    /// The host it stands on: its announced hostname, else the IP of its address.
    pub fn host(&self) -> &str {
        host_of(&self.address, self.hostname.as_deref())
    }

    /// Whether `name` names this member: its id, its address, or `hostname:port`.
    pub fn is_named(&self, name: &str) -> bool {
        names(&self.id, &self.address, self.hostname.as_deref(), name)
    }
}

/// A member as messages and tables name it: its id, and its address when that says more.
pub fn member_label(id: &str, address: &str) -> String {
    if address.is_empty() || address == id { id.to_string() } else { format!("{id} ({address})") }
}

/// Whether `name` names the member or node with this id, address (`ip:port`) and
/// announced hostname: the id, the address, or `hostname:port` (the address's port).
pub fn names(id: &str, address: &str, hostname: Option<&str>, name: &str) -> bool {
    if id == name || address == name {
        return true;
    }
    let port = address.rsplit_once(':').map(|(_, p)| p);
    matches!((hostname, port, name.rsplit_once(':')), (Some(h), Some(p), Some((nh, np))) if h == nh && p == np)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub id: u64,
    pub group: Option<Arc<str>>,
    pub bytes: u64,
    /// Members holding a copy; the first is the primary.
    pub copies: Vec<MemberIdx>,
}

/// A bucket found half-moved (Redis: a slot MIGRATING or IMPORTING).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenMigration {
    pub bucket: u64,
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
}

/// A move recorded before it starts (`moves/<bucket>` in etcd), removed when it commits or
/// rolls back. Repair reads it: an open bucket with an intent is this fleet's to settle;
/// one without is someone else's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveIntent {
    pub bucket: u64,
    /// Member ids (Redis: node ids) the move goes from and to.
    pub from: String,
    pub to: String,
    /// The member whose sidecar held the lock.
    pub holder: String,
    pub started_at: DateTime<Utc>,
}

/// A node that follows a member (Redis: a replica): it holds no buckets of its own, and
/// placement counts it, re-points it and promotes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub id: String,
    /// Where it is now (Redis: ip:port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub address: String,
    /// The announced hostname (Redis: `cluster-announce-hostname`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(default)]
    pub master: Option<String>,
    #[serde(default = "yes")]
    pub healthy: bool,
    /// Its link to its master is up and it is at most `topology.max-lag-bytes` behind: it
    /// may take the master role without losing an acknowledged write.
    #[serde(default = "yes")]
    pub in_sync: bool,
}

impl Replica {
    /// The host it stands on: its announced hostname, else the IP of its address.
    pub fn host(&self) -> &str {
        host_of(&self.address, self.hostname.as_deref())
    }
}

/// A node's host: its announced hostname when it has one, else the IP (or name) of its
/// `ip:port` address, else the address itself.
pub fn host_of<'a>(address: &'a str, hostname: Option<&'a str>) -> &'a str {
    match hostname.filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => address.rsplit_once(':').map_or(address, |(ip, _)| ip),
    }
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterSnapshot {
    pub cluster_id: String,
    pub taken_at: DateTime<Utc>,
    pub members: Vec<Member>,
    pub buckets: Vec<Bucket>,
    pub open_migrations: Vec<OpenMigration>,
    pub replicas: Vec<Replica>,
    /// What the backend measured beside the layout.
    pub observed: Observed,
    /// What the backend that took it read for its own moves (not data: never written).
    pub view: BackendView,
}

/// How bucket sizes were taken, and what the backend found beside the layout. Empty for
/// a snapshot file that carries none of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct Observed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sizing: Option<SizingSummary>,
    /// Buckets not to move automatically (a key above `execution.max-key-bytes`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<Pinned>,
    /// Per member, in the order of `members`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberFacts>,
    /// The data store's engine and version ("redis 7.0.15", "valkey 9.1.2").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// The largest key measured, in bytes: what a move may hold in flight on its target
    /// at once (MIGRATE carries a serialised copy), counted against the target's room.
    #[serde(skip_serializing_if = "is_zero")]
    pub largest_key_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The state of the sizes a snapshot carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SizingSummary {
    /// "exact" (sum of MEMORY USAGE of every key) or "sampled".
    pub mode: String,
    /// Keys in the measured buckets.
    pub keys: u64,
    /// Keys measured during this snapshot (the rest came from the cache).
    pub keys_measured_now: u64,
    /// Seconds since the oldest size was measured.
    pub oldest_seconds: f64,
    /// How long this snapshot's measuring took.
    pub duration_seconds: f64,
    /// Sampled mode: the 95% bound on the error of the total, in bytes (0 when exact).
    pub error_bytes: u64,
}

impl SizingSummary {
    /// One line for explanations: "sizes: exact, measured 3 s ago at the oldest, 1.02M
    /// keys (12.3k measured now)".
    pub fn line(&self) -> String {
        let count = |n: u64| match n {
            k if k >= 1_000_000 => format!("{:.2}M", k as f64 / 1e6),
            k if k >= 10_000 => format!("{:.1}k", k as f64 / 1e3),
            k => k.to_string(),
        };
        let mut line = format!(
            "sizes: {}, measured {:.0} s ago at the oldest, {} keys ({} measured now)",
            self.mode,
            self.oldest_seconds,
            count(self.keys),
            count(self.keys_measured_now)
        );
        if self.error_bytes > 0 {
            line.push_str(&format!(", error within {} bytes (95%)", self.error_bytes));
        }
        line
    }
}

/// A bucket that stays where it is, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Pinned {
    pub bucket: u64,
    /// Its largest key, in bytes.
    pub largest_key_bytes: u64,
    pub reason: String,
}

/// What a member's server says of itself beside the buckets it holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct MemberFacts {
    /// The server's own memory figure (Redis: `used_memory`).
    pub used_memory_bytes: u64,
    /// Keys held outside the buckets the member owns (left by a failover mid-move).
    pub stray_keys: u64,
    /// Keys above `execution.max-key-bytes`.
    pub big_keys: u64,
}

impl ClusterSnapshot {
    pub fn member_index(&self, id: &str) -> Option<MemberIdx> {
        self.members.iter().position(|m| m.id == id).map(|i| i as MemberIdx)
    }

    /// The member `name` names: by id first, then by address or `hostname:port`.
    pub fn member_named(&self, name: &str) -> Option<MemberIdx> {
        self.member_index(name).or_else(|| self.members.iter().position(|m| m.is_named(name)).map(|i| i as MemberIdx))
    }

    pub fn total_bytes(&self) -> u64 {
        self.buckets.iter().map(|b| b.bytes * b.copies.len() as u64).sum()
    }
}

#[cfg(test)]
pub mod fixtures {
    //! Shared builders for tests across modules.
    use super::*;

    pub fn make_members(n: usize) -> Vec<Member> {
        (0..n).map(|i| Member::new(&format!("m{}", i + 1))).collect()
    }

    /// `layout[i]` = (bytes, copies as member indexes).
    pub fn make_snapshot(members: Vec<Member>, layout: &[(u64, Vec<MemberIdx>)]) -> ClusterSnapshot {
        ClusterSnapshot {
            cluster_id: "test".into(),
            taken_at: Utc::now(),
            members,
            buckets: layout
                .iter()
                .enumerate()
                .map(|(i, (bytes, copies))| Bucket { id: i as u64, group: None, bytes: *bytes, copies: copies.clone() })
                .collect(),
            open_migrations: vec![],
            replicas: vec![],
            observed: Observed::default(),
            view: BackendView::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        ClusterSnapshot::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    const MEMBERS: &str = r#""members":[{"id":"m1","address":"a:1"},{"id":"m2","address":"a:2"}]"#;

    #[test]
    fn the_sizes_line_says_how_much_was_measured_now() {
        let s = SizingSummary {
            mode: "exact".into(),
            keys: 1_020_000,
            keys_measured_now: 12_345,
            oldest_seconds: 3.2,
            ..SizingSummary::default()
        };
        assert_eq!(s.line(), "sizes: exact, measured 3 s ago at the oldest, 1.02M keys (12.3k measured now)");
        let s = SizingSummary { mode: "sampled".into(), keys: 900, keys_measured_now: 64, error_bytes: 512, ..s };
        assert_eq!(
            s.line(),
            "sizes: sampled, measured 3 s ago at the oldest, 900 keys (64 measured now), error within 512 bytes (95%)"
        );
    }

    #[test]
    fn a_member_is_named_by_id_address_or_hostname_and_port() {
        let mut a = Member::new("07c37dfeb235213a872192d90877d0cd55635b91");
        a.address = "10.0.0.1:6379".into();
        a.hostname = Some("redis-0.redis".into());
        let mut b = Member::new("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca");
        b.address = "10.0.0.2:6379".into();
        let s = fixtures::make_snapshot(vec![a, b], &[]);
        for name in ["07c37dfeb235213a872192d90877d0cd55635b91", "10.0.0.1:6379", "redis-0.redis:6379"] {
            assert_eq!(s.member_named(name), Some(0), "{name}");
        }
        assert_eq!(s.member_named("10.0.0.2:6379"), Some(1));
        // Another port, an unknown host, a bare hostname: nobody.
        for name in ["redis-0.redis:6380", "redis-9.redis:6379", "redis-0.redis", "10.0.0.3:6379"] {
            assert_eq!(s.member_named(name), None, "{name}");
        }
        // member_index takes the id only.
        assert_eq!(s.member_index("10.0.0.1:6379"), None);
    }

    #[test]
    fn reads_the_design_example() {
        let json = r#"{ "version": 1, "cluster_id": "orders",
          "members": [ { "id": "m1", "address": "10.0.0.1:7001", "capacity_bytes": 8589934592,
                         "health": "healthy", "draining": false, "zone": "a" },
                       { "id": "m2", "address": "10.0.0.2:7001", "health": "critical", "zone": "b" } ],
          "buckets": [ { "id": 0, "group": "orders", "bytes": 123456, "copies": ["m1", "m2"] } ] }"#;
        let s = ClusterSnapshot::from_json(json.as_bytes()).unwrap();
        assert_eq!(s.cluster_id, "orders");
        assert_eq!(s.members[1].health, Health::Critical);
        assert_eq!(s.buckets[0].copies, vec![0, 1]);
        assert_eq!(s.total_bytes(), 246912);
        let again = ClusterSnapshot::from_json(s.to_json().as_bytes()).unwrap();
        assert_eq!(again.buckets, s.buckets);
        assert_eq!(again.members, s.members);
    }

    #[test]
    fn malformed_snapshots_name_the_culprit() {
        assert!(err("{").contains("not valid JSON"));
        assert!(
            err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":7,"bytes":1,"copies":["m9"]}}]}}"#))
                .contains("bucket 7: copy on unknown member \"m9\"")
        );
        assert!(
            err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":7,"bytes":1,"copies":["m1","m1"]}}]}}"#))
                .contains("bucket 7: two copies on member \"m1\"")
        );
        assert!(
            err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":7,"bytes":-5,"copies":["m1"]}}]}}"#))
                .contains("bucket 7: bytes must be a whole number >= 0, got -5")
        );
        assert!(
            err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":7,"copies":["m1"]}}]}}"#))
                .contains("bucket 7: bytes is missing")
        );
        assert!(
            err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":7,"bytes":1,"copies":[]}}]}}"#))
                .contains("bucket 7 has no copies")
        );
        assert!(err(&format!(r#"{{"version":2,{MEMBERS},"buckets":[]}}"#)).contains("version 2"));
        assert!(
            err(r#"{"version":1,"members":[{"id":"m1"},{"id":"m1"}],"buckets":[]}"#).contains("\"m1\" is listed twice")
        );
        assert!(err(&format!(r#"{{"version":1,{MEMBERS},"buckets":[{{"id":1,"bytes":1,"copies":["m1"]}},{{"id":1,"bytes":1,"copies":["m2"]}}]}}"#))
            .contains("bucket 1 is listed twice"));
    }
}
