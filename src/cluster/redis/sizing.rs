//! Slot sizes in bytes.
//!
//! Owns: measuring the slots a master holds. Does not own: which slots move.

use std::collections::HashMap;

use super::{PIPELINE, RedisCluster};

impl RedisCluster {
    /// `sample_keys` keys per non-empty slot.
    pub(super) async fn slot_bytes(&self, addr: &str, slots: &[u16]) -> Result<Vec<(u16, u64)>, String> {
        let mut counts = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(PIPELINE) {
            let mut p = redis::pipe();
            for &s in chunk {
                p.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s);
            }
            let c: Vec<u64> = self.conns.pipeline(addr, &p).await?;
            counts.extend(chunk.iter().copied().zip(c));
        }
        let nonempty: Vec<(u16, u64)> = counts.iter().copied().filter(|&(_, c)| c > 0).collect();
        let per = self.sample_keys.max(1) as usize;
        let mut sampled: Vec<(u16, u64, Vec<Vec<u8>>)> = Vec::with_capacity(nonempty.len());
        for chunk in nonempty.chunks((PIPELINE / per).max(1) * 4) {
            let mut p = redis::pipe();
            for &(s, c) in chunk {
                p.cmd("CLUSTER").arg("GETKEYSINSLOT").arg(s).arg(c.min(per as u64));
            }
            let keys: Vec<Vec<Vec<u8>>> = self.conns.pipeline(addr, &p).await?;
            sampled.extend(chunk.iter().zip(keys).map(|(&(s, c), k)| (s, c, k)));
        }
        let mut bytes: HashMap<u16, u64> = HashMap::with_capacity(sampled.len());
        let flat: Vec<(u16, u64, &Vec<u8>)> =
            sampled.iter().flat_map(|(s, c, ks)| ks.iter().map(move |k| (*s, *c, k))).collect();
        let mut usage: HashMap<u16, (u64, u64)> = HashMap::new();
        for chunk in flat.chunks(PIPELINE) {
            let mut p = redis::pipe();
            for (_, _, k) in chunk {
                p.cmd("MEMORY").arg("USAGE").arg(k.as_slice());
            }
            let u: Vec<Option<u64>> = self.conns.pipeline(addr, &p).await?;
            for ((s, _, _), u) in chunk.iter().zip(u) {
                if let Some(u) = u {
                    let e = usage.entry(*s).or_default();
                    e.0 += u;
                    e.1 += 1;
                }
            }
        }
        for (s, c, _) in &sampled {
            let b = match usage.get(s) {
                Some(&(sum, n)) if n > 0 => {
                    if *c <= n {
                        sum
                    } else {
                        ((sum as f64 / n as f64) * *c as f64).round() as u64
                    }
                }
                _ => 0,
            };
            bytes.insert(*s, b);
        }
        Ok(counts.into_iter().map(|(s, _)| (s, bytes.get(&s).copied().unwrap_or(0))).collect())
    }
}
