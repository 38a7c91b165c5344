//! Reading `CLUSTER SLOT-STATS` (Valkey 8+): the key count of every slot a node owns, in
//! one call instead of one COUNTKEYSINSLOT per slot, and, where the node has
//! `cluster-slot-stats-enabled yes`, its cumulative `cpu-usec`, `network-bytes-in` and
//! `network-bytes-out` (traffic).
//!
//! Owns: the request and a reader that accepts the RESP2 and RESP3 shapes of the reply.
//! Does not own: when it is used ([`super::sizing`] decides from the node's version,
//! [`super::traffic`] from its configuration).

use std::collections::HashMap;

use redis::Value;

/// `CLUSTER SLOT-STATS SLOTSRANGE 0 16383`: the node answers for the slots it owns.
pub(super) fn request() -> redis::Cmd {
    let mut c = redis::cmd("CLUSTER");
    c.arg("SLOT-STATS").arg("SLOTSRANGE").arg(0).arg(super::SLOTS - 1);
    c
}

/// Slot -> key count from a SLOT-STATS reply: `[[slot, {"key-count": n, ...}], ...]`,
/// the inner statistics a flat array of pairs (RESP2) or a map (RESP3). Anything else is
/// an error, so the caller falls back to counting slot by slot.
pub(super) fn parse(reply: &Value) -> Result<HashMap<u16, u64>, String> {
    parse_with(reply, &[])?.into_iter().map(|(slot, v)| Ok((slot, v[0]))).collect()
}

/// Slot -> (key count, cpu-usec, network-bytes-in, network-bytes-out); an error names the
/// first slot that lacks one (slot statistics off).
pub(super) fn parse_traffic(reply: &Value) -> Result<HashMap<u16, [u64; 4]>, String> {
    parse_with(reply, &["cpu-usec", "network-bytes-in", "network-bytes-out"])?
        .into_iter()
        .map(|(slot, v)| Ok((slot, [v[0], v[1], v[2], v[3]])))
        .collect()
}

/// Slot -> key-count then each of `fields`, as the reply gives them.
fn parse_with(reply: &Value, fields: &[&str]) -> Result<HashMap<u16, Vec<u64>>, String> {
    let Value::Array(entries) = reply else {
        return Err(format!("SLOT-STATS reply is not an array: {reply:?}"));
    };
    let mut out = HashMap::with_capacity(entries.len());
    for e in entries {
        let (slot, stats) = match e {
            Value::Array(pair) if pair.len() == 2 => (&pair[0], &pair[1]),
            Value::Map(pair) if pair.len() == 1 => (&pair[0].0, &pair[0].1),
            other => return Err(format!("SLOT-STATS entry is not [slot, stats]: {other:?}")),
        };
        let slot = int(slot)
            .and_then(|s| u16::try_from(s).ok())
            .filter(|&s| (s as usize) < super::SLOTS)
            .ok_or_else(|| format!("SLOT-STATS slot is not a slot number: {slot:?}"))?;
        let pairs: Vec<(&Value, &Value)> = match stats {
            Value::Array(flat) if flat.len() % 2 == 0 => flat.chunks(2).map(|p| (&p[0], &p[1])).collect(),
            Value::Map(m) => m.iter().map(|(k, v)| (k, v)).collect(),
            other => return Err(format!("SLOT-STATS statistics of slot {slot} unreadable: {other:?}")),
        };
        let values = std::iter::once("key-count")
            .chain(fields.iter().copied())
            .map(|f| {
                pairs
                    .iter()
                    .find(|(k, _)| text(k).as_deref() == Some(f))
                    .and_then(|(_, v)| int(v))
                    .and_then(|n| u64::try_from(n).ok())
                    .ok_or_else(|| format!("SLOT-STATS has no {f} for slot {slot}"))
            })
            .collect::<Result<Vec<u64>, String>>()?;
        out.insert(slot, values);
    }
    Ok(out)
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_resp2_and_resp3_replies() {
        let resp2 = Value::Array(vec![
            Value::Array(vec![Value::Int(0), Value::Array(vec![bulk("key-count"), Value::Int(3)])]),
            Value::Array(vec![
                Value::Int(16383),
                Value::Array(vec![bulk("cpu-usec"), Value::Int(9), bulk("key-count"), Value::Int(0)]),
            ]),
        ]);
        assert_eq!(parse(&resp2).unwrap(), HashMap::from([(0, 3), (16383, 0)]));
        let full = Value::Array(vec![Value::Array(vec![
            Value::Int(5),
            Value::Map(
                [("key-count", 2), ("cpu-usec", 40), ("network-bytes-in", 53), ("network-bytes-out", 9)]
                    .into_iter()
                    .map(|(k, v)| (bulk(k), Value::Int(v)))
                    .collect(),
            ),
        ])]);
        assert_eq!(parse_traffic(&full).unwrap(), HashMap::from([(5, [2, 40, 53, 9])]));
        let err = parse_traffic(&resp2).unwrap_err();
        assert!(err.contains("no cpu-usec for slot 0"), "{err}");
        let resp3 = Value::Array(vec![Value::Array(vec![
            Value::Int(7),
            Value::Map(vec![(Value::SimpleString("key-count".into()), Value::Int(12))]),
        ])]);
        assert_eq!(parse(&resp3).unwrap(), HashMap::from([(7, 12)]));
        assert!(parse(&Value::Array(vec![])).unwrap().is_empty());
    }

    #[test]
    fn anything_unexpected_is_an_error() {
        let no_count = Value::Array(vec![Value::Array(vec![Value::Int(1), Value::Array(vec![])])]);
        assert!(parse(&no_count).is_err());
        let bad_slot = Value::Array(vec![Value::Array(vec![
            Value::Int(16384),
            Value::Array(vec![bulk("key-count"), Value::Int(1)]),
        ])]);
        assert!(parse(&bad_slot).is_err());
        assert!(parse(&Value::Okay).is_err());
        let negative = Value::Array(vec![Value::Array(vec![
            Value::Int(1),
            Value::Array(vec![bulk("key-count"), Value::Int(-1)]),
        ])]);
        assert!(parse(&negative).is_err());
    }
}
