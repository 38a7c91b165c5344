//! The cluster model (`Member`, `Bucket`, `ClusterSnapshot`) and its JSON form.
//!
//! Owns: the public snapshot format (`version: 1`), reading it with errors that name the
//! bucket or member at fault, and writing it back. Does not own: how a backend fills it.
//!
//! Inside the process a bucket names its copies by member index (`MemberIdx`), not by id,
//! so that a million buckets cost a few bytes each.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

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

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read snapshot {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("snapshot is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("snapshot: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotIn<'a> {
    version: Option<u32>,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    taken_at: Option<DateTime<Utc>>,
    members: Vec<Member>,
    #[serde(borrow)]
    buckets: Vec<BucketIn<'a>>,
    #[serde(default)]
    open_migrations: Vec<OpenMigration>,
    #[serde(default)]
    replicas: Vec<Replica>,
    #[serde(default)]
    observed: Observed,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketIn<'a> {
    id: Option<u64>,
    #[serde(default, borrow)]
    group: Option<Cow<'a, str>>,
    bytes: Option<serde_json::Number>,
    #[serde(borrow, default)]
    copies: Option<Vec<Cow<'a, str>>>,
}

#[derive(Serialize)]
struct SnapshotOut<'a> {
    version: u32,
    cluster_id: &'a str,
    taken_at: DateTime<Utc>,
    members: &'a [Member],
    buckets: Vec<BucketOut<'a>>,
    open_migrations: &'a [OpenMigration],
    #[serde(skip_serializing_if = "<[Replica]>::is_empty")]
    replicas: &'a [Replica],
    #[serde(skip_serializing_if = "is_default")]
    observed: &'a Observed,
}

fn is_default(o: &&Observed) -> bool {
    **o == Observed::default()
}

#[derive(Serialize)]
struct BucketOut<'a> {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    bytes: u64,
    copies: Vec<&'a str>,
}

impl ClusterSnapshot {
    pub fn read_file(path: &std::path::Path) -> Result<ClusterSnapshot, SnapshotError> {
        let bytes =
            std::fs::read(path).map_err(|source| SnapshotError::Read { path: path.display().to_string(), source })?;
        ClusterSnapshot::from_json(&bytes)
    }

    /// Parses and checks the JSON form: every copy on a known member, no two copies of a
    /// bucket on one member, sizes present and not negative, ids unique.
    pub fn from_json(bytes: &[u8]) -> Result<ClusterSnapshot, SnapshotError> {
        let raw: SnapshotIn = serde_json::from_slice(bytes)?;
        let bad = |m: String| Err(SnapshotError::Invalid(m));
        match raw.version {
            Some(1) => {}
            Some(v) => return bad(format!("version {v} is not supported (expected 1)")),
            None => return bad("version is missing (expected 1)".into()),
        }
        let mut index: HashMap<&str, MemberIdx> = HashMap::with_capacity(raw.members.len());
        for (i, m) in raw.members.iter().enumerate() {
            if m.id.is_empty() {
                return bad(format!("members[{i}] has an empty id"));
            }
            if index.insert(m.id.as_str(), i as MemberIdx).is_some() {
                return bad(format!("member {:?} is listed twice", m.id));
            }
        }
        let mut groups: HashMap<String, Arc<str>> = HashMap::new();
        let mut seen_ids: HashSet<u64> = HashSet::with_capacity(raw.buckets.len());
        let mut buckets = Vec::with_capacity(raw.buckets.len());
        for (i, b) in raw.buckets.iter().enumerate() {
            let Some(id) = b.id else {
                return bad(format!("buckets[{i}] has no id"));
            };
            if !seen_ids.insert(id) {
                return bad(format!("bucket {id} is listed twice"));
            }
            let bytes = match &b.bytes {
                None => return bad(format!("bucket {id}: bytes is missing")),
                Some(n) => match n.as_u64() {
                    Some(v) => v,
                    None => {
                        return bad(format!("bucket {id}: bytes must be a whole number >= 0, got {n}"));
                    }
                },
            };
            let Some(names) = &b.copies else {
                return bad(format!("bucket {id}: copies is missing"));
            };
            if names.is_empty() {
                return bad(format!("bucket {id} has no copies"));
            }
            let mut copies = Vec::with_capacity(names.len());
            for name in names {
                let Some(&m) = index.get(name.as_ref()) else {
                    return bad(format!("bucket {id}: copy on unknown member {name:?}"));
                };
                if copies.contains(&m) {
                    return bad(format!("bucket {id}: two copies on member {name:?}"));
                }
                copies.push(m);
            }
            let group =
                b.group.as_ref().map(|g| groups.entry(g.to_string()).or_insert_with(|| Arc::from(g.as_ref())).clone());
            buckets.push(Bucket { id, group, bytes, copies });
        }
        Ok(ClusterSnapshot {
            cluster_id: raw.cluster_id.unwrap_or_default(),
            taken_at: raw.taken_at.unwrap_or_else(Utc::now),
            members: raw.members,
            buckets,
            open_migrations: raw.open_migrations,
            replicas: raw.replicas,
            observed: raw.observed,
        })
    }

    pub fn to_json(&self) -> String {
        let out = SnapshotOut {
            version: 1,
            cluster_id: &self.cluster_id,
            taken_at: self.taken_at,
            members: &self.members,
            buckets: self
                .buckets
                .iter()
                .map(|b| BucketOut {
                    id: b.id,
                    group: b.group.as_deref(),
                    bytes: b.bytes,
                    copies: b.copies.iter().map(|&m| self.members[m as usize].id.as_str()).collect(),
                })
                .collect(),
            open_migrations: &self.open_migrations,
            replicas: &self.replicas,
            observed: &self.observed,
        };
        serde_json::to_string(&out).expect("snapshot serializes")
    }

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
