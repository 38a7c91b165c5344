//! The data in a local cluster: a skewed, hash-tagged data set written straight to each
//! slot's owner, and what is there afterwards (every key's DUMP, keys per master).

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;

use super::LocalCluster;
use crate::Result;

/// A deterministic generator (a 64-bit LCG): the same seed gives the same data set.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Lcg {
        Lcg(seed.wrapping_mul(6364136223846793005).wrapping_add(1))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// `keys` key names: a fifth are tenant keys (`{tenantN}:kI`, all of a tenant in one
/// slot) with a heavy-tailed choice of tenant, the rest spread by hash.
fn key_names(keys: usize, rng: &mut Lcg) -> Vec<String> {
    let tenants = (keys / 40).max(10);
    (0..keys)
        .map(|i| {
            if rng.next().is_multiple_of(5) {
                let u = (rng.next() % 10_000) as f64 / 10_000.0 + 0.0001;
                let t = ((tenants as f64) * u.powf(3.0)) as usize;
                format!("{{tenant{t}}}:k{i}")
            } else {
                format!("user:{i}:{}", rng.next() % 1000)
            }
        })
        .collect()
}

impl LocalCluster {
    /// Loads `keys` keys: tenants with hash tags, sizes heavy-tailed, and values larger on
    /// the first master's slots: the masters start unequal in bytes although equal in
    /// slots. Returns the bytes of values written.
    pub async fn load_skewed(&self, keys: usize, seed: u64) -> Result<u64> {
        let mut rng = Lcg::new(seed);
        let names = key_names(keys, &mut rng);
        let first = self.master_addrs()[0].clone();
        let slots = self.key_slots(&first, &names).await?;
        let owner = self.slot_owners().await?;
        let mut per: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        let mut total = 0u64;
        for (k, s) in names.into_iter().zip(slots) {
            let base = 64 + (rng.next() % 256) as usize;
            let size = if owner[s as usize] == first { base * 3 } else { base };
            let v: Vec<u8> = (0..size).map(|j| b'a' + ((j + s as usize) % 26) as u8).collect();
            total += v.len() as u64;
            per.entry(owner[s as usize].clone()).or_default().push((k, v));
        }
        for (addr, kvs) in per {
            self.write(&addr, &kvs).await?;
        }
        Ok(total)
    }

    /// The hash slot of each name, asked of the server at `addr`.
    pub(super) async fn key_slots(&self, addr: &str, names: &[String]) -> Result<Vec<u16>> {
        let mut con = self.conn(addr).await?;
        let mut slots = Vec::with_capacity(names.len());
        for chunk in names.chunks(2000) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
            }
            let s: Vec<u16> = p.query_async(&mut con).await.map_err(|e| format!("{addr}: {e}"))?;
            slots.extend(s);
        }
        Ok(slots)
    }

    /// SETs pipelined to one master, which must own every key's slot.
    pub(super) async fn write(&self, addr: &str, kvs: &[(String, Vec<u8>)]) -> Result<()> {
        let mut con = self.conn(addr).await?;
        for chunk in kvs.chunks(1000) {
            let mut p = redis::pipe();
            for (k, v) in chunk {
                p.cmd("SET").arg(k).arg(v.as_slice()).ignore();
            }
            p.query_async::<()>(&mut con).await.map_err(|e| format!("{addr}: {e}"))?;
        }
        // The writes reach every replica before a test fails one over.
        let info = self.text(addr, &["INFO", "replication"]).await?;
        let replicas: u64 = info
            .lines()
            .find_map(|l| l.strip_prefix("connected_slaves:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        if replicas > 0 {
            let acked: u64 = redis::cmd("WAIT")
                .arg(replicas)
                .arg(30_000)
                .query_async(&mut con)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            if acked < replicas {
                return Err(format!("{addr}: {acked} of {replicas} replicas took the writes within 30 s"));
            }
        }
        Ok(())
    }

    /// The live nodes whose role is master now (a failover promotes a replica).
    pub async fn current_masters(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for a in self.live_addrs() {
            let mut con = self.patient_conn(&a).await?;
            let role: Vec<redis::Value> =
                redis::cmd("ROLE").query_async(&mut con).await.map_err(|e| format!("{a}: {e}"))?;
            if matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master") {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Every key on every live master with its DUMP payload, over patient connections; a
    /// key found on two masters is an error.
    pub async fn digest(&self) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for a in self.current_masters().await? {
            let mut con = self.patient_conn(&a).await?;
            for (k, v) in dump_all(&a, &mut con).await? {
                if out.insert(k.clone(), v).is_some() {
                    return Err(format!("key {:?} found on two masters", String::from_utf8_lossy(&k)));
                }
            }
        }
        Ok(out)
    }

    /// Keys per master address (masters that do not answer are left out).
    pub async fn key_counts(&self) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for a in self.master_addrs() {
            if let Ok(mut con) = self.conn(&a).await {
                let n: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.map_err(|e| format!("{a}: {e}"))?;
                out.insert(a, n);
            }
        }
        Ok(out)
    }
}

/// Every key name on the node behind `con`, by SCAN.
async fn scan_keys(addr: &str, con: &mut MultiplexedConnection) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(2000)
            .query_async(con)
            .await
            .map_err(|e| format!("{addr}: {e}"))?;
        out.extend(keys);
        if next == 0 {
            return Ok(out);
        }
        cursor = next;
    }
}

/// Every key of one node with its DUMP payload (a key gone in between is left out).
async fn dump_all(addr: &str, con: &mut MultiplexedConnection) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    for keys in scan_keys(addr, con).await?.chunks(2000) {
        let mut p = redis::pipe();
        for k in keys {
            p.cmd("DUMP").arg(k.as_slice());
        }
        let vals: Vec<Option<Vec<u8>>> = p.query_async(con).await.map_err(|e| format!("{addr}: {e}"))?;
        out.extend(keys.iter().cloned().zip(vals).filter_map(|(k, v)| Some((k, v?))));
    }
    Ok(out)
}

impl LocalCluster {
    /// Every key name on one node; READONLY first, so a replica answers too.
    pub async fn keys_on(&self, addr: &str) -> Result<Vec<Vec<u8>>> {
        let mut con = self.patient_conn(addr).await?;
        redis::cmd("READONLY").query_async::<()>(&mut con).await.map_err(|e| format!("{addr}: {e}"))?;
        scan_keys(addr, &mut con).await
    }

    /// Every key on one node with its DUMP payload; READONLY first, so a replica answers.
    pub async fn dump_node(&self, addr: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut con = self.patient_conn(addr).await?;
        redis::cmd("READONLY").query_async::<()>(&mut con).await.map_err(|e| format!("{addr}: {e}"))?;
        Ok(dump_all(addr, &mut con).await?.into_iter().collect())
    }

    /// An operator's migration left half-done: the first slot of `from` holding at least
    /// two keys is set IMPORTING on `to` and MIGRATING on `from`, and one of its keys is
    /// MIGRATEd. Returns the slot.
    pub async fn half_move_by_hand(&self, from: &str, to: &str) -> Result<u16> {
        let owners = self.slot_owners().await?;
        let mut cf = self.conn(from).await?;
        let mut ct = self.conn(to).await?;
        let fail = |e: redis::RedisError| format!("{from} -> {to}: {e}");
        let mut slot = None;
        for s in (0..16384u16).filter(|&s| owners[s as usize] == from) {
            let n: u64 =
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s).query_async(&mut cf).await.map_err(fail)?;
            if n >= 2 {
                slot = Some(s);
                break;
            }
        }
        let slot = slot.ok_or_else(|| format!("{from} owns no slot with two keys"))?;
        let id = |a: &str| self.id_of(a).unwrap_or_default().to_string();
        let setslot =
            |state: &str, node: String| redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(node).clone();
        setslot("IMPORTING", id(from)).query_async::<()>(&mut ct).await.map_err(fail)?;
        setslot("MIGRATING", id(to)).query_async::<()>(&mut cf).await.map_err(fail)?;
        let keys: Vec<Vec<u8>> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1).query_async(&mut cf).await.map_err(fail)?;
        let (host, port) = to.rsplit_once(':').ok_or_else(|| format!("{to}: not host:port"))?;
        let mut migrate = redis::cmd("MIGRATE");
        migrate.arg(host).arg(port).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys[0]);
        migrate.query_async::<()>(&mut cf).await.map_err(fail)?;
        Ok(slot)
    }
}

/// What differs between two digests, in a few lines: keys missing, keys added, keys
/// whose payload changed (the first few of each named). `None` when they are equal.
pub fn digest_diff(before: &BTreeMap<Vec<u8>, Vec<u8>>, after: &BTreeMap<Vec<u8>, Vec<u8>>) -> Option<String> {
    let name = |k: &Vec<u8>| String::from_utf8_lossy(k).into_owned();
    let missing: Vec<String> = before.keys().filter(|k| !after.contains_key(*k)).map(name).collect();
    let added: Vec<String> = after.keys().filter(|k| !before.contains_key(*k)).map(name).collect();
    let changed: Vec<String> =
        before.iter().filter(|(k, v)| after.get(*k).is_some_and(|w| w != *v)).map(|(k, _)| name(k)).collect();
    if missing.is_empty() && added.is_empty() && changed.is_empty() {
        return None;
    }
    let few = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
    Some(format!(
        "{} key(s) missing [{}], {} added [{}], {} changed [{}]",
        missing.len(),
        few(&missing),
        added.len(),
        few(&added),
        changed.len(),
        few(&changed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_names_with_tenants() {
        let a = key_names(1000, &mut Lcg::new(7));
        assert_eq!(a, key_names(1000, &mut Lcg::new(7)));
        assert_ne!(a, key_names(1000, &mut Lcg::new(8)));
        let tenant = a.iter().filter(|k| k.starts_with("{tenant")).count();
        assert!((100..300).contains(&tenant), "{tenant}");
    }
}
