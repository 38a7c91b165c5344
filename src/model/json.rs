//! The snapshot's JSON form (`version: 1`): reading it with errors that name the bucket
//! or member at fault, and writing it back.
//!
//! Owns: `from_json`, `to_json`, `read_file` and [`SnapshotError`]. Does not own: the
//! types (`super`).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Bucket, ClusterSnapshot, Member, MemberIdx, Observed, OpenMigration, Replica};

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
            view: Default::default(),
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
}
