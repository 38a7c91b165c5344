//! A key found on both sides of a slot with different values.
//!
//! Only a node that lost its MIGRATING flag makes one: a source failed over mid-move
//! (the promoted replica serves the whole slot, so a client's write creates the key
//! there again while the target holds the value written before), or a stray holder
//! whose slot someone wrote to at its owner. In each case clients reach the owner's
//! copy, never the other: the holder of the other is importing or does not own the slot,
//! and no source sends ASK for a key it holds. So the owner's value is the one the
//! cluster has been answering with, and it stays under the key's name. The other is
//! never dropped: it is renamed in place, on the node holding it, to
//! `autobalancer:aside:{tag}:<unix ms>:<key>`, in the same slot (the tag hashes there),
//! and moves with the slot's other keys. The move or repair then goes on: a conflict
//! no longer leaves a slot open that every later run fails on.
//!
//! Owns: the name and the rename. Does not own: which side loses (the caller's).

use chrono::Utc;
use tracing::warn;

use super::nodes::Nodes;
use crate::cluster::SetAside;

/// What names a kept-aside copy: everything before the tag.
const PREFIX: &str = "autobalancer:aside:";

/// The name a copy of `key` in `slot` is kept under, set aside at `ms` (unix ms).
pub(super) fn aside_name(slot: u16, key: &[u8], ms: i64) -> Vec<u8> {
    let mut name = format!("{PREFIX}{{{}}}:{ms}:", super::topology::tag_in(slot)).into_bytes();
    name.extend_from_slice(key);
    name
}

/// The key an aside name is a copy of; None for a name that is not one. For checkers and
/// operators reading the copies back.
pub fn copy_of(name: &[u8]) -> Option<&[u8]> {
    let rest = name.strip_prefix(PREFIX.as_bytes())?.strip_prefix(b"{")?;
    let rest = &rest[rest.iter().position(|&b| b == b'}')? + 1..];
    let rest = rest.strip_prefix(b":")?;
    Some(&rest[rest.iter().position(|&b| b == b':')? + 1..])
}

impl Nodes {
    /// Renames `key` on `node`, which imports `slot` (every caller's losing side does),
    /// to its aside name: DUMP, RESTORE with its time to live, DEL, each after ASKING. No
    /// client reaches the key there meanwhile (see the module header). Returns what was
    /// done, or None when the key was gone.
    pub(super) async fn set_aside(&self, slot: u16, node: &str, key: &[u8]) -> Result<Option<SetAside>, String> {
        let mut read = redis::pipe();
        for cmd in ["DUMP", "PTTL"] {
            read.cmd("ASKING").ignore().cmd(cmd).arg(key);
        }
        let (dump, ttl): (Option<Vec<u8>>, i64) = self.conns.pipeline_as(node, &read).await?;
        let Some(dump) = dump.filter(|_| ttl != -2) else { return Ok(None) };
        let aside = aside_name(slot, key, Utc::now().timestamp_millis());
        let mut write = redis::pipe();
        write.cmd("ASKING").ignore().cmd("RESTORE").arg(&aside).arg(ttl.max(0)).arg(dump).ignore();
        write.cmd("ASKING").ignore().cmd("DEL").arg(key).ignore();
        self.conns.pipeline_as::<()>(node, &write).await.map_err(|e| {
            format!(
                "setting aside {:?} on {node} as {:?}: {e}",
                String::from_utf8_lossy(key),
                String::from_utf8_lossy(&aside)
            )
        })?;
        let done = SetAside {
            bucket: slot as u64,
            key: String::from_utf8_lossy(key).into_owned(),
            aside: String::from_utf8_lossy(&aside).into_owned(),
            node: node.to_string(),
        };
        warn!(slot, key = %done.key, node = %node, aside = %done.aside, "a key differed on both sides of its slot: the owner's value kept, the other set aside");
        Ok(Some(done))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_aside_name_lands_in_the_keys_slot_and_names_the_key() {
        for slot in [0u16, 1, 3564, 12182, 16383] {
            let name = super::aside_name(slot, b"nem:{x}422", 1_700_000_000_000);
            let s = String::from_utf8(name).unwrap();
            assert!(s.starts_with(super::PREFIX) && s.ends_with(":1700000000000:nem:{x}422"), "{s}");
            // The cluster hashes the first {...}: the tag, not the key's own.
            let tag = &s[s.find('{').unwrap() + 1..s.find('}').unwrap()];
            assert_eq!(crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384, slot, "{s}");
            assert_eq!(super::copy_of(s.as_bytes()), Some(&b"nem:{x}422"[..]), "{s}");
        }
        assert_eq!(super::copy_of(b"nem:{x}422"), None);
        assert_eq!(super::copy_of(b"autobalancer:aside:{1}"), None);
    }
}
