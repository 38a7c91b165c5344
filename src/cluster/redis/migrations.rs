//! Reading `CLUSTER GETSLOTMIGRATIONS`: the atomic migration jobs a node exports
//! (source) or imports (target and its replicas), running or recently ended.
//!
//! Owns: [`SlotMigration`], the reply reader, slot ranges. Does not own: starting or
//! following jobs ([`super::atomic`]).

use super::SLOTS;
use super::nodes::Nodes;

/// One entry of `CLUSTER GETSLOTMIGRATIONS`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlotMigration {
    pub name: String,
    /// EXPORT on the source; IMPORT on the target and its replicas.
    pub operation: String,
    /// Inclusive, sorted and merged.
    pub slot_ranges: Vec<(u16, u16)>,
    pub source_node: String,
    pub target_node: String,
    pub state: String,
    pub message: String,
}

impl SlotMigration {
    pub fn has_ended(&self) -> bool {
        matches!(self.state.as_str(), "success" | "failed" | "cancelled")
    }
}

impl Nodes {
    /// `CLUSTER GETSLOTMIGRATIONS` on `addr`: jobs in flight and recently ended.
    pub async fn slot_migrations(&self, addr: &str) -> Result<Vec<SlotMigration>, String> {
        let reply: redis::Value = self.conns.query(addr, redis::cmd("CLUSTER").arg("GETSLOTMIGRATIONS")).await?;
        parse_migrations(&reply)
    }
}

/// Sorted slots merged into inclusive ranges.
pub(super) fn merge(slots: &[u16]) -> Vec<(u16, u16)> {
    let mut sorted = slots.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for s in sorted {
        match out.last_mut() {
            Some((_, b)) if *b + 1 == s => *b = s,
            _ => out.push((s, s)),
        }
    }
    out
}

/// A GETSLOTMIGRATIONS reply: an array of entries, each a flat array of field-value pairs
/// (RESP2) or a map (RESP3).
pub(super) fn parse_migrations(reply: &redis::Value) -> Result<Vec<SlotMigration>, String> {
    use redis::Value;
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    };
    let Value::Array(entries) = reply else {
        return Err(format!("GETSLOTMIGRATIONS reply is not an array: {reply:?}"));
    };
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let pairs: Vec<(&Value, &Value)> = match e {
            Value::Array(flat) if flat.len() % 2 == 0 => flat.chunks(2).map(|p| (&p[0], &p[1])).collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            other => return Err(format!("GETSLOTMIGRATIONS entry unreadable: {other:?}")),
        };
        let mut job = SlotMigration::default();
        for (k, v) in pairs {
            let (Some(k), Some(v)) = (text(k), text(v)) else { continue };
            match k.as_str() {
                "name" => job.name = v,
                "operation" => job.operation = v,
                "slot_ranges" => job.slot_ranges = parse_ranges(&v)?,
                "source_node" => job.source_node = v,
                "target_node" => job.target_node = v,
                "state" => job.state = v,
                "message" => job.message = v,
                _ => {}
            }
        }
        if job.name.is_empty() || job.state.is_empty() {
            return Err(format!("GETSLOTMIGRATIONS entry without name or state: {e:?}"));
        }
        out.push(job);
    }
    Ok(out)
}

/// "0-99 200-299" (a lone slot may be printed as "7"), sorted and merged.
fn parse_ranges(text: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut slots = Vec::new();
    for r in text.split_whitespace() {
        let (a, b) = r.split_once('-').unwrap_or((r, r));
        let (a, b): (u16, u16) = match (a.parse(), b.parse()) {
            (Ok(a), Ok(b)) if a <= b && (b as usize) < SLOTS => (a, b),
            _ => return Err(format!("bad slot range {r:?} in {text:?}")),
        };
        slots.extend(a..=b);
    }
    Ok(merge(&slots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_jobs_as_valkey_9_prints_them() {
        let fields = [
            ("name", bulk("12bba6345860d7ea4e586ed7f62b5e58c988a9fc")),
            ("operation", bulk("EXPORT")),
            ("slot_ranges", bulk("200-299 0-99 100-199")),
            ("target_node", bulk("a683")),
            ("source_node", bulk("d88b")),
            ("create_time", Value::Int(1795461328)),
            ("state", bulk("failed")),
            ("message", bulk("Failed to AUTH to target node")),
            ("cow_size", Value::Int(0)),
        ];
        let flat = Value::Array(fields.iter().flat_map(|(k, v)| [bulk(k), v.clone()]).collect());
        let map = Value::Map(fields.iter().map(|(k, v)| (Value::SimpleString(k.to_string()), v.clone())).collect());
        for entry in [flat, map] {
            let jobs = parse_migrations(&Value::Array(vec![entry])).unwrap();
            let j = &jobs[0];
            assert_eq!(j.slot_ranges, vec![(0, 299)]);
            assert_eq!((j.operation.as_str(), j.target_node.as_str()), ("EXPORT", "a683"));
            assert!(j.has_ended() && j.message.starts_with("Failed to AUTH"));
        }
        assert!(parse_migrations(&Value::Array(vec![])).unwrap().is_empty());
        assert!(parse_migrations(&Value::Okay).is_err());
        let nameless = Value::Array(vec![Value::Array(vec![bulk("state"), bulk("success")])]);
        assert!(parse_migrations(&nameless).is_err());
        let bad = Value::Array(vec![Value::Array(vec![bulk("name"), bulk("x"), bulk("slot_ranges"), bulk("9-3")])]);
        assert!(parse_migrations(&bad).is_err());
    }

    #[test]
    fn merges_slots_into_ranges() {
        assert_eq!(merge(&[5, 3, 4, 9, 10, 0, 4]), vec![(0, 0), (3, 5), (9, 10)]);
        assert_eq!(merge(&[16383]), vec![(16383, 16383)]);
        assert!(merge(&[]).is_empty());
        assert_eq!(parse_ranges("7 8-9").unwrap(), vec![(7, 9)]);
        assert!(parse_ranges("0-16384").is_err());
    }
}
