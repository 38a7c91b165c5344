//! Traffic on a local Valkey cluster: per-slot statistics switched on, an even data set,
//! key names that land on a given master, a client driving INCRs at chosen keys (what it
//! was acknowledged is what must survive), and each master's CPU as its own SLOT-STATS
//! report it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

use super::LocalCluster;
use crate::Result;

impl LocalCluster {
    /// `CONFIG SET cluster-slot-stats-enabled yes` on every master (Valkey 8+).
    pub async fn slot_stats_on(&self) -> Result<()> {
        for a in self.master_addrs() {
            self.ok(&a, &["CONFIG", "SET", "cluster-slot-stats-enabled", "yes"]).await?;
        }
        Ok(())
    }

    /// A cluster client (redirects followed), as the default user; no TLS.
    pub async fn cluster_conn(&self) -> Result<ClusterConnection> {
        let urls: Vec<String> = self
            .master_addrs()
            .iter()
            .map(|a| match &self.password {
                Some(pw) => format!("redis://:{pw}@{a}"),
                None => format!("redis://{a}"),
            })
            .collect();
        let client = redis::cluster::ClusterClient::new(urls).map_err(|e| e.to_string())?;
        client.get_async_connection().await.map_err(|e| e.to_string())
    }

    /// `n` keys `even:I` of 200 bytes, spread by hash: bytes even across the masters.
    pub async fn load_even(&self, n: usize) -> Result<BTreeMap<String, Vec<u8>>> {
        let names: Vec<String> = (0..n).map(|i| format!("even:{i}")).collect();
        let slots = self.key_slots(&self.master_addrs()[0], &names).await?;
        let owner = self.slot_owners().await?;
        let mut per: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        let mut all = BTreeMap::new();
        for (i, (k, s)) in names.into_iter().zip(slots).enumerate() {
            let v = vec![b'a' + (i % 26) as u8; 200];
            per.entry(owner[s as usize].clone()).or_default().push((k.clone(), v.clone()));
            all.insert(k, v);
        }
        for (addr, kvs) in per {
            self.write(&addr, &kvs).await?;
        }
        Ok(all)
    }

    /// `n` key names `PREFIX:I` on distinct slots, each owned by `addr`.
    pub async fn names_on(&self, addr: &str, n: usize, prefix: &str) -> Result<Vec<String>> {
        let owner = self.slot_owners().await?;
        let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
        let mut start = 0;
        while out.len() < n {
            let batch: Vec<String> = (start..start + 1000).map(|i| format!("{prefix}:{i}")).collect();
            start += 1000;
            for (k, s) in batch.iter().zip(self.key_slots(addr, &batch).await?) {
                if out.len() < n && owner[s as usize] == addr && seen.insert(s) {
                    out.push(k.clone());
                }
            }
        }
        Ok(out)
    }

    /// The hash slot of `key`, as the server computes it.
    pub async fn slot_of(&self, key: &str) -> Result<u16> {
        Ok(self.key_slots(&self.master_addrs()[0], &[key.to_string()]).await?[0])
    }

    /// Each slot-owning master's CPU µs/s over `secs`, from its own SLOT-STATS.
    pub async fn cpu_per_master(&self, secs: f64) -> Result<BTreeMap<String, f64>> {
        let masters: BTreeSet<String> = self.slot_owners().await?.into_iter().collect();
        let mut first = BTreeMap::new();
        for m in &masters {
            first.insert(m.clone(), self.cpu_usec(m).await?);
        }
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
        let mut out = BTreeMap::new();
        for m in &masters {
            out.insert(m.clone(), self.cpu_usec(m).await?.saturating_sub(first[m]) as f64 / secs);
        }
        Ok(out)
    }

    /// The sum of `cpu-usec` over the slots `addr` owns; a few tries on a busy machine.
    async fn cpu_usec(&self, addr: &str) -> Result<u64> {
        let mut con = self.conn(addr).await?;
        let cmd = redis::cmd("CLUSTER").arg("SLOT-STATS").arg("SLOTSRANGE").arg(0).arg(16383).to_owned();
        let mut last = String::new();
        for _ in 0..5 {
            match cmd.query_async::<Vec<(u16, BTreeMap<String, u64>)>>(&mut con).await {
                Ok(v) => return Ok(v.iter().map(|(_, s)| s.get("cpu-usec").copied().unwrap_or(0)).sum()),
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("{addr}: CLUSTER SLOT-STATS: {last}"))
    }
}

/// A client INCRing each of its keys in a loop of its own until stopped.
pub struct Driver {
    stop: Arc<AtomicBool>,
    acked: Vec<(String, Arc<AtomicI64>)>,
    errors: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Driver {
    /// `keys` may repeat a key: each entry is one loop.
    pub fn start(con: ClusterConnection, keys: &[String]) -> Driver {
        let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
        let mut acked = Vec::new();
        let mut tasks = Vec::new();
        for k in keys {
            let n = Arc::new(AtomicI64::new(0));
            acked.push((k.clone(), n.clone()));
            let (mut con, stop, errors, k) = (con.clone(), stop.clone(), errors.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match con.incr::<_, _, i64>(&k, 1).await {
                        Ok(_) => n.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed) as i64,
                    };
                }
            }));
        }
        Driver { stop, acked, errors, tasks }
    }

    /// Stops the loops: per key the INCRs acknowledged, and the errors seen (an INCR
    /// that failed may still have been applied).
    pub async fn stop(self) -> (BTreeMap<String, i64>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let mut out = BTreeMap::new();
        for (k, n) in self.acked {
            *out.entry(k).or_default() += n.load(Ordering::Relaxed);
        }
        (out, self.errors.load(Ordering::Relaxed))
    }
}

/// The hash slot of `key`, computed here: CRC16 (XMODEM) of its hash tag (the text
/// between the first `{` and the next `}`, when not empty), else of the whole key.
pub fn key_slot(key: &str) -> u16 {
    let tag = key
        .find('{')
        .and_then(|o| key[o + 1..].find('}').filter(|&c| c > 0).map(|c| &key[o + 1..o + 1 + c]))
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % 16384
}

#[cfg(test)]
mod tests {
    use super::key_slot;

    #[test]
    fn key_slot_follows_the_hash_tag_rule() {
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("a{b}c{d}"), key_slot("b"));
        // An empty tag, or none closed, hashes the whole key.
        assert_eq!(key_slot("{}foo"), crc16::State::<crc16::XMODEM>::calculate(b"{}foo") % 16384);
        assert_eq!(key_slot("{foo"), crc16::State::<crc16::XMODEM>::calculate(b"{foo") % 16384);
    }
}
