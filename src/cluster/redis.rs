//! The Redis Cluster backend: masters are members, the 16384 hash slots are buckets.
//!
//! Owns: reading the topology (CLUSTER NODES), sizing slots in bytes (COUNTKEYSINSLOT x
//! the mean MEMORY USAGE of up to `slot-sample-keys` keys, pipelined), health (node flags,
//! `cluster_state`, used memory against `maxmemory`), the documented slot-migration
//! protocol, and closing slots a crash left open. Does not own: which slots move.
//!
//! A move: SETSLOT IMPORTING on the target, MIGRATING on the source, then
//! GETKEYSINSLOT + MIGRATE ... KEYS in batches bounded by keys and bytes, then SETSLOT NODE
//! on the target, the source, and the other masters. Once started, a move runs to its end
//! (or fails and says the slot is open), so a stop never leaves a half-moved slot behind.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use super::{Cluster, ClusterError, MoveStats, Pace};
use crate::model::{Bucket, ClusterSnapshot, Health, Member, OpenMigration, Replica};
use crate::plan::Move;

pub const SLOTS: usize = 16384;
/// Commands per pipeline round trip.
const PIPELINE: usize = 2048;

/// One line of CLUSTER NODES.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLine {
    pub id: String,
    /// `ip:port` as the cluster announces it.
    pub addr: String,
    pub flags: Vec<String>,
    pub master_id: Option<String>,
    pub config_epoch: u64,
    pub connected: bool,
    pub slots: Vec<(u16, u16)>,
    /// (slot, target node id): this node is migrating the slot away.
    pub migrating: Vec<(u16, String)>,
    /// (slot, source node id): this node is importing the slot.
    pub importing: Vec<(u16, String)>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }
    pub fn is_myself(&self) -> bool {
        self.flags.iter().any(|f| f == "myself")
    }
    pub fn is_failed(&self) -> bool {
        self.flags.iter().any(|f| f == "fail" || f == "fail?" || f == "noaddr" || f == "handshake")
    }
    pub fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }
}

/// Parses CLUSTER NODES output.
pub fn parse_nodes(text: &str) -> Result<Vec<NodeLine>, String> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(format!("CLUSTER NODES line has {} fields: {line:?}", f.len()));
        }
        // ip:port@cport[,hostname]
        let addr = f[1].split('@').next().unwrap_or("").to_string();
        let mut node = NodeLine {
            id: f[0].to_string(),
            addr,
            flags: f[2].split(',').map(str::to_string).collect(),
            master_id: (f[3] != "-").then(|| f[3].to_string()),
            config_epoch: f[6].parse().unwrap_or(0),
            connected: f[7] == "connected",
            slots: Vec::new(),
            migrating: Vec::new(),
            importing: Vec::new(),
        };
        for s in &f[8..] {
            if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                if let Some((slot, to)) = inner.split_once("->-") {
                    node.migrating.push((slot.parse().map_err(|_| format!("bad slot in {s}"))?, to.to_string()));
                } else if let Some((slot, from)) = inner.split_once("-<-") {
                    node.importing.push((slot.parse().map_err(|_| format!("bad slot in {s}"))?, from.to_string()));
                }
            } else if let Some((a, b)) = s.split_once('-') {
                let a = a.parse().map_err(|_| format!("bad slot range {s}"))?;
                let b = b.parse().map_err(|_| format!("bad slot range {s}"))?;
                node.slots.push((a, b));
            } else {
                let a = s.parse().map_err(|_| format!("bad slot {s}"))?;
                node.slots.push((a, a));
            }
        }
        out.push(node);
    }
    Ok(out)
}

/// The topology as the masters see themselves.
#[derive(Clone, Debug, Default)]
struct Topology {
    /// Masters in a stable order (by address).
    masters: Vec<NodeLine>,
    replicas: Vec<NodeLine>,
    /// Each master's own CLUSTER NODES "myself" line, when it answered.
    myself: HashMap<String, NodeLine>,
    /// Slot -> index into `masters`.
    owner: Vec<Option<usize>>,
}

impl Topology {
    fn master_by_id(&self, id: &str) -> Option<&NodeLine> {
        self.masters.iter().find(|m| m.id == id)
    }
    fn master_by_addr(&self, addr: &str) -> Option<&NodeLine> {
        self.masters.iter().find(|m| m.addr == addr)
    }
}

pub struct RedisCluster {
    cluster_id: String,
    seeds: Vec<String>,
    redis_info: RedisConnectionInfo,
    username: Option<String>,
    password: Option<String>,
    sample_keys: u32,
    critical_percent: u32,
    batch_keys: u32,
    batch_bytes: u64,
    migrate_timeout: Duration,
    conns: Mutex<HashMap<String, MultiplexedConnection>>,
    /// The topology read by the last snapshot or repair; moves use its node ids.
    topo: Mutex<Option<std::sync::Arc<Topology>>>,
}

fn err(e: redis::RedisError) -> String {
    e.to_string()
}

impl RedisCluster {
    pub fn from_config(config: &crate::config::Config) -> Result<RedisCluster, ClusterError> {
        let c = &config.cluster;
        let password = match &c.password_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| ClusterError::Config(format!("cluster.password-file {}: {e}", p.display())))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => None,
        };
        let mut redis_info = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(u) = &c.username {
            redis_info = redis_info.set_username(u);
        }
        if let Some(p) = &password {
            redis_info = redis_info.set_password(p);
        }
        Ok(RedisCluster {
            cluster_id: c.id.clone(),
            seeds: c.seeds.clone(),
            redis_info,
            username: c.username.clone(),
            password,
            sample_keys: c.slot_sample_keys,
            critical_percent: config.balance.critical_memory_percent,
            batch_keys: config.execution.migrate_batch_keys,
            batch_bytes: config.execution.migrate_batch_bytes.0,
            migrate_timeout: config.execution.migrate_timeout.0,
            conns: Mutex::new(HashMap::new()),
            topo: Mutex::new(None),
        })
    }

    /// A connection to one node (cached; dropped on error so the next call reconnects).
    async fn conn(&self, addr: &str) -> Result<MultiplexedConnection, String> {
        if let Some(c) = self.conns.lock().await.get(addr) {
            return Ok(c.clone());
        }
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| format!("{addr} is not host:port"))?;
        let port: u16 = port.parse().map_err(|_| format!("{addr} is not host:port"))?;
        let info: ConnectionInfo = ConnectionAddr::Tcp(host.to_string(), port)
            .into_connection_info()
            .map_err(err)?
            .set_redis_settings(self.redis_info.clone());
        let client = Client::open(info).map_err(err)?;
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(self.migrate_timeout + Duration::from_secs(10)));
        let c = client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        self.conns.lock().await.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    async fn forget(&self, addr: &str) {
        self.conns.lock().await.remove(addr);
    }

    async fn query<T: redis::FromRedisValue>(&self, addr: &str, cmd: &redis::Cmd) -> Result<T, String> {
        let mut c = self.conn(addr).await?;
        match cmd.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(addr, e).await),
        }
    }

    async fn pipeline<T: redis::FromRedisValue>(&self, addr: &str, p: &redis::Pipeline) -> Result<Vec<T>, String> {
        let mut c = self.conn(addr).await?;
        match p.query_async(&mut c).await {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(addr, e).await),
        }
    }

    /// Drops the cached connection after a transport error (the next call reconnects);
    /// says which node failed.
    async fn failed(&self, addr: &str, e: redis::RedisError) -> String {
        if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
            self.forget(addr).await;
        }
        format!("{addr}: {e}")
    }

    async fn cluster_nodes(&self, addr: &str) -> Result<Vec<NodeLine>, String> {
        let text: String = self.query(addr, redis::cmd("CLUSTER").arg("NODES")).await?;
        parse_nodes(&text)
    }

    /// Reads the topology from the first seed that answers, then each master's own view.
    async fn topology(&self) -> Result<Topology, ClusterError> {
        let mut last = String::from("no seeds configured");
        let mut nodes = None;
        for seed in &self.seeds {
            match self.cluster_nodes(seed).await {
                Ok(n) => {
                    nodes = Some(n);
                    break;
                }
                Err(e) => last = e,
            }
        }
        let nodes = nodes.ok_or_else(|| ClusterError::Snapshot(format!("no seed answered CLUSTER NODES: {last}")))?;
        let mut masters: Vec<NodeLine> = nodes.iter().filter(|n| n.is_master()).cloned().collect();
        masters.sort_by(|a, b| a.addr.cmp(&b.addr));
        let replicas = nodes.iter().filter(|n| !n.is_master()).cloned().collect();
        let views = futures::future::join_all(masters.iter().map(|m| {
            let addr = m.addr.clone();
            async move { (addr.clone(), self.cluster_nodes(&addr).await) }
        }))
        .await;
        let mut myself = HashMap::new();
        for (addr, view) in views {
            match view {
                Ok(v) => {
                    if let Some(me) = v.into_iter().find(|n| n.is_myself()) {
                        myself.insert(addr, me);
                    }
                }
                Err(e) => debug!(node = %addr, cause = %e, "master did not answer CLUSTER NODES"),
            }
        }
        // Ownership: each master's claim about itself, the higher config epoch winning a
        // conflict; slots no master claims fall back to the seed's view.
        let mut owner: Vec<Option<usize>> = vec![None; SLOTS];
        let mut epoch: Vec<u64> = vec![0; SLOTS];
        for (i, m) in masters.iter().enumerate() {
            let me = myself.get(&m.addr).unwrap_or(m);
            for &(a, b) in &me.slots {
                for s in a..=b {
                    let s = s as usize;
                    if owner[s].is_none() || me.config_epoch > epoch[s] {
                        owner[s] = Some(i);
                        epoch[s] = me.config_epoch;
                    }
                }
            }
        }
        let topo = Topology { masters, replicas, myself, owner };
        *self.topo.lock().await = Some(std::sync::Arc::new(topo.clone()));
        Ok(topo)
    }

    /// The topology of the last snapshot, read afresh when there is none.
    async fn cached_topology(&self) -> Result<std::sync::Arc<Topology>, ClusterError> {
        if let Some(t) = self.topo.lock().await.clone() {
            return Ok(t);
        }
        Ok(std::sync::Arc::new(self.topology().await?))
    }

    /// Bytes of each slot `addr` owns: COUNTKEYSINSLOT, then MEMORY USAGE of up to
    /// `sample_keys` keys per non-empty slot.
    async fn slot_bytes(&self, addr: &str, slots: &[u16]) -> Result<Vec<(u16, u64)>, String> {
        let mut counts = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(PIPELINE) {
            let mut p = redis::pipe();
            for &s in chunk {
                p.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s);
            }
            let c: Vec<u64> = self.pipeline(addr, &p).await?;
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
            let keys: Vec<Vec<Vec<u8>>> = self.pipeline(addr, &p).await?;
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
            let u: Vec<Option<u64>> = self.pipeline(addr, &p).await?;
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

    /// Memory figures from INFO: (used_memory, maxmemory, cluster_state ok).
    async fn health_figures(&self, addr: &str) -> Result<(u64, u64, bool), String> {
        let mem: String = self.query(addr, redis::cmd("INFO").arg("memory")).await?;
        let info: String = self.query(addr, redis::cmd("CLUSTER").arg("INFO")).await?;
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
        };
        let used = field(&mem, "used_memory").and_then(|v| v.parse().ok()).unwrap_or(0);
        let max = field(&mem, "maxmemory").and_then(|v| v.parse().ok()).unwrap_or(0);
        let ok = field(&info, "cluster_state").as_deref() == Some("ok");
        Ok((used, max, ok))
    }

    fn node_id_of(&self, topo: &Topology, addr: &str) -> Result<String, ClusterError> {
        topo.master_by_addr(addr)
            .map(|m| m.id.clone())
            .ok_or_else(|| ClusterError::Snapshot(format!("{addr} is not a master of the cluster")))
    }

    async fn setslot(&self, addr: &str, slot: u16, args: &[&str]) -> Result<(), String> {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot);
        for a in args {
            c.arg(*a);
        }
        self.query::<()>(addr, &c).await
    }

    async fn count_keys(&self, addr: &str, slot: u16) -> Result<u64, String> {
        self.query(addr, redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await
    }

    fn migrate_cmd(&self, dst: &str, keys: &[Vec<u8>], replace: bool) -> redis::Cmd {
        let (host, port) = dst.rsplit_once(':').unwrap_or((dst, "6379"));
        let mut c = redis::cmd("MIGRATE");
        c.arg(host).arg(port).arg("").arg(0).arg(self.migrate_timeout.as_millis() as u64);
        if replace {
            c.arg("REPLACE");
        }
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => {
                c.arg("AUTH2").arg(u).arg(p);
            }
            (None, Some(p)) => {
                c.arg("AUTH").arg(p);
            }
            _ => {}
        }
        c.arg("KEYS");
        for k in keys {
            c.arg(k.as_slice());
        }
        c
    }

    /// Migrates `keys` from `src` to `dst`. On BUSYKEY, a key present on both sides is
    /// replaced only when both values are identical; otherwise the move stops naming it.
    async fn migrate_batch(
        &self,
        slot: u16,
        src: &str,
        dst: &str,
        keys: &[Vec<u8>],
        then: Option<redis::Cmd>,
    ) -> Result<Option<Vec<Vec<u8>>>, ClusterError> {
        let fail = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        let mut c = self.conn(src).await.map_err(fail)?;
        let res: Result<Option<Vec<Vec<u8>>>, redis::RedisError> = match &then {
            Some(list) => {
                let mut p = redis::pipe();
                p.add_command(self.migrate_cmd(dst, keys, false)).ignore().add_command(list.clone());
                p.query_async::<(Vec<Vec<u8>>,)>(&mut c).await.map(|(k,)| Some(k))
            }
            None => self.migrate_cmd(dst, keys, false).query_async::<redis::Value>(&mut c).await.map(|_| None),
        };
        let e = match res {
            Ok(next) => return Ok(next),
            Err(e) => e,
        };
        // MIGRATE relays the target's refusal inside its own error:
        // "ERR Target instance replied with error: BUSYKEY Target key name already exists."
        let busy = e.code() == Some("BUSYKEY") || e.to_string().contains("BUSYKEY");
        if !busy {
            if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                self.forget(src).await;
            }
            return Err(fail(format!("MIGRATE from {src} to {dst}: {e}")));
        }
        // Keys MIGRATE did move are gone from the source; look at the rest one by one.
        for k in keys {
            let mut p = redis::pipe();
            p.cmd("DUMP").arg(k.as_slice());
            let here: Vec<Option<Vec<u8>>> = self.pipeline(src, &p).await.map_err(fail)?;
            let Some(here) = here.into_iter().next().flatten() else {
                continue;
            };
            let mut p = redis::pipe();
            p.cmd("ASKING").ignore().cmd("DUMP").arg(k.as_slice());
            let there: Vec<Option<Vec<u8>>> = self.pipeline(dst, &p).await.map_err(fail)?;
            let there = there.into_iter().next().flatten();
            let replace = match there {
                None => false,
                Some(t) if t == here => true,
                Some(_) => {
                    return Err(fail(format!(
                        "key {:?} exists on both {src} and {dst} with different values; slot {slot} left open for inspection",
                        String::from_utf8_lossy(k)
                    )));
                }
            };
            self.query::<redis::Value>(src, &self.migrate_cmd(dst, std::slice::from_ref(k), replace))
                .await
                .map_err(|e| fail(format!("MIGRATE of {:?}: {e}", String::from_utf8_lossy(k))))?;
        }
        Ok(None)
    }

    /// Moves every key of `slot` from `src` to `dst`, in batches by keys and bytes.
    /// `estimate` is the slot's size from the snapshot (0 = unknown): a slot well under
    /// `migrate-batch-bytes` skips sizing its keys. The last MIGRATE of each listing is
    /// pipelined with the next listing, so an emptied slot costs no extra round trip.
    async fn drain_slot<P: Pace>(
        &self,
        slot: u16,
        src: &str,
        dst: &str,
        pace: &P,
        estimate: u64,
    ) -> Result<MoveStats, ClusterError> {
        let fail = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        let list = || {
            let mut c = redis::cmd("CLUSTER");
            c.arg("GETKEYSINSLOT").arg(slot).arg(self.batch_keys);
            c
        };
        let mut stats = MoveStats::default();
        let mut keys: Vec<Vec<u8>> = self.query(src, &list()).await.map_err(fail)?;
        let mut first = true;
        while !keys.is_empty() {
            let small = first
                && estimate > 0
                && estimate.saturating_mul(2) <= self.batch_bytes
                && keys.len() < self.batch_keys as usize;
            first = false;
            let sizes: Vec<u64> = if small {
                vec![estimate / keys.len() as u64; keys.len()]
            } else {
                let mut p = redis::pipe();
                for k in &keys {
                    p.cmd("MEMORY").arg("USAGE").arg(k.as_slice());
                }
                let s: Vec<Option<u64>> = self.pipeline(src, &p).await.map_err(fail)?;
                s.into_iter().map(|x| x.unwrap_or(0)).collect()
            };
            let mut start = 0;
            let mut next = None;
            while start < keys.len() {
                let mut end = start;
                let mut bytes = 0u64;
                while end < keys.len() && (end == start || bytes + sizes[end] <= self.batch_bytes) {
                    bytes += sizes[end];
                    end += 1;
                }
                pace.take(bytes).await;
                let last = end == keys.len();
                next = self.migrate_batch(slot, src, dst, &keys[start..end], last.then(list)).await?;
                stats.keys += (end - start) as u64;
                stats.bytes += bytes;
                start = end;
            }
            keys = match next {
                Some(k) => k,
                None => self.query(src, &list()).await.map_err(fail)?,
            };
        }
        Ok(stats)
    }

    /// Assigns `slot` to `dst_id`: on the target first, then the source, then the others.
    async fn assign(&self, topo: &Topology, slot: u16, src: &str, dst: &str, dst_id: &str) -> Result<(), ClusterError> {
        let fail = |message: String| ClusterError::Move { bucket: slot as u64, message, open: true };
        self.setslot(dst, slot, &["NODE", dst_id]).await.map_err(fail)?;
        if let Err(e) = self.setslot(src, slot, &["NODE", dst_id]).await {
            warn!(slot, node = %src, cause = %e, "source did not take the new owner; gossip will carry it");
        }
        let others = topo.masters.iter().filter(|m| m.addr != src && m.addr != dst && !m.is_failed());
        let results = futures::future::join_all(
            others.map(|m| async move { (m.addr.as_str(), self.setslot(&m.addr, slot, &["NODE", dst_id]).await) }),
        )
        .await;
        for (addr, r) in results {
            if let Err(e) = r {
                debug!(slot, node = %addr, cause = %e, "SETSLOT NODE on another master failed; gossip will carry it");
            }
        }
        Ok(())
    }

    /// Moves `slot` from `src` to `dst`. `resume` continues a move a crash interrupted,
    /// where either side may be past its first step; a fresh move requires both steps,
    /// so a stale plan (the source no longer owns the slot) fails before any key moves.
    async fn finish<P: Pace>(
        &self,
        topo: &Topology,
        slot: u16,
        src: &str,
        dst: &str,
        pace: &P,
        resume: bool,
        estimate: u64,
    ) -> Result<MoveStats, ClusterError> {
        let src_id = self.node_id_of(topo, src)?;
        let dst_id = self.node_id_of(topo, dst)?;
        let early = |message: String| ClusterError::Move { bucket: slot as u64, message, open: false };
        if let Err(e) = self.setslot(dst, slot, &["IMPORTING", &src_id]).await {
            if !resume {
                return Err(early(format!("IMPORTING on {dst}: {e}")));
            }
            debug!(slot, cause = %e, "IMPORTING not set");
        }
        if let Err(e) = self.setslot(src, slot, &["MIGRATING", &dst_id]).await {
            if !resume {
                // Undo the first step: nothing has moved yet.
                let _ = self.setslot(dst, slot, &["STABLE"]).await;
                return Err(early(format!("MIGRATING on {src}: {e}")));
            }
            debug!(slot, cause = %e, "MIGRATING not set");
        }
        // drain_slot returns only once GETKEYSINSLOT on the source answers empty.
        let stats = self.drain_slot(slot, src, dst, pace, estimate).await?;
        self.assign(topo, slot, src, dst, &dst_id).await?;
        Ok(stats)
    }
}

impl Cluster for RedisCluster {
    async fn snapshot(&self) -> Result<ClusterSnapshot, ClusterError> {
        let topo = self.topology().await?;
        let mut members = Vec::with_capacity(topo.masters.len());
        let mut slot_sizes: Vec<u64> = vec![0; SLOTS];
        let jobs = futures::future::join_all(topo.masters.iter().enumerate().map(|(i, m)| {
            let owned: Vec<u16> = (0..SLOTS as u16).filter(|&s| topo.owner[s as usize] == Some(i)).collect();
            let addr = m.addr.clone();
            let failed = m.is_failed();
            async move {
                if failed {
                    return (Err("flagged fail".to_string()), Err(String::new()));
                }
                let h = self.health_figures(&addr).await;
                let b = self.slot_bytes(&addr, &owned).await;
                (h, b)
            }
        }))
        .await;
        let mut open = Vec::new();
        for (m, (health, bytes)) in topo.masters.iter().zip(jobs) {
            let mut member = Member::new(&m.addr);
            match (&health, &bytes) {
                (Ok((used, max, ok)), Ok(sizes)) => {
                    member.capacity_bytes = (*max > 0).then_some(*max);
                    let critical =
                        *max > 0 && used.saturating_mul(100) > max.saturating_mul(self.critical_percent as u64);
                    if critical || !ok {
                        member.health = Health::Critical;
                        if !ok {
                            warn!(member = %m.addr, "node reports cluster_state other than ok");
                        }
                    }
                    for &(s, b) in sizes {
                        slot_sizes[s as usize] = b;
                    }
                }
                _ => {
                    let cause = health.as_ref().err().or(bytes.as_ref().err()).cloned().unwrap_or_default();
                    warn!(member = %m.addr, cause = %cause, "master is down or unreachable");
                    member.health = Health::Down;
                }
            }
            if let Some(me) = topo.myself.get(&m.addr) {
                for (slot, to) in &me.migrating {
                    open.push(OpenMigration {
                        bucket: *slot as u64,
                        from: Some(m.addr.clone()),
                        to: topo.master_by_id(to).map(|t| t.addr.clone()),
                    });
                }
                for (slot, from) in &me.importing {
                    open.push(OpenMigration {
                        bucket: *slot as u64,
                        from: topo.master_by_id(from).map(|t| t.addr.clone()),
                        to: Some(m.addr.clone()),
                    });
                }
            }
            members.push(member);
        }
        open.sort_by_key(|o| o.bucket);
        open.dedup_by(|a, b| a.bucket == b.bucket);
        let buckets = (0..SLOTS)
            .filter_map(|s| {
                topo.owner[s].map(|o| Bucket {
                    id: s as u64,
                    group: None,
                    bytes: slot_sizes[s],
                    copies: vec![o as u32],
                })
            })
            .collect();
        let replicas = topo
            .replicas
            .iter()
            .map(|r| Replica {
                id: r.addr.clone(),
                master: r.master_id.as_ref().and_then(|id| topo.master_by_id(id)).map(|m| m.addr.clone()),
                healthy: !r.is_failed(),
            })
            .collect();
        Ok(ClusterSnapshot {
            cluster_id: self.cluster_id.clone(),
            taken_at: Utc::now(),
            members,
            buckets,
            open_migrations: open,
            replicas,
        })
    }

    async fn repair(&self) -> Result<Vec<String>, ClusterError> {
        let topo = self.topology().await?;
        // slot -> (source addr, target addr), from either side's flags.
        let mut open: std::collections::BTreeMap<u16, (Option<String>, Option<String>)> = Default::default();
        for m in &topo.masters {
            let Some(me) = topo.myself.get(&m.addr) else {
                continue;
            };
            for (slot, to) in &me.migrating {
                let e = open.entry(*slot).or_default();
                e.0 = Some(m.addr.clone());
                if e.1.is_none() {
                    e.1 = topo.master_by_id(to).map(|t| t.addr.clone());
                }
            }
            for (slot, from) in &me.importing {
                let e = open.entry(*slot).or_default();
                e.1 = Some(m.addr.clone());
                if e.0.is_none() {
                    e.0 = topo.master_by_id(from).map(|t| t.addr.clone());
                }
            }
        }
        let mut lines = Vec::new();
        for (slot, (src, dst)) in open {
            let rep = |message: String| ClusterError::Repair { bucket: slot as u64, message };
            let (Some(src), Some(dst)) = (src, dst) else {
                return Err(rep("open slot names a node that is not a known master".into()));
            };
            let src_keys = self.count_keys(&src, slot).await.map_err(rep)?;
            let dst_keys = self.count_keys(&dst, slot).await.map_err(rep)?;
            let dst_owns = topo.myself.get(&dst).is_some_and(|me| me.owns(slot));
            if dst_keys > 0 || dst_owns {
                // Keys already sit on the target (or it took ownership): finish, so no key
                // is stranded on a node that does not own its slot.
                let stats =
                    self.finish(&topo, slot, &src, &dst, &NoPace, true, 0).await.map_err(|e| rep(e.to_string()))?;
                let line = format!(
                    "slot {slot}: finished the move {src} -> {dst} ({src_keys} keys were left on the source, {} moved now)",
                    stats.keys
                );
                info!(slot, from = %src, to = %dst, "{line}");
                lines.push(line);
            } else {
                // Nothing reached the target: return the slot to its owner.
                let _ = self.setslot(&dst, slot, &["STABLE"]).await;
                self.setslot(&src, slot, &["STABLE"]).await.map_err(rep)?;
                let line = format!("slot {slot}: rolled back to {src} ({src_keys} keys, none had moved to {dst})");
                info!(slot, owner = %src, "{line}");
                lines.push(line);
            }
        }
        Ok(lines)
    }

    async fn move_bucket<P: Pace>(&self, s: &ClusterSnapshot, mv: &Move, pace: &P) -> Result<MoveStats, ClusterError> {
        let slot = u16::try_from(mv.bucket)
            .ok()
            .filter(|&x| (x as usize) < SLOTS)
            .ok_or_else(|| ClusterError::Move { bucket: mv.bucket, message: "not a hash slot".into(), open: false })?;
        let src = s.members[mv.from as usize].address.clone();
        let dst = s.members[mv.to as usize].address.clone();
        // Node ids come from the snapshot's topology; ownership is checked by Redis
        // itself (MIGRATING fails on a node that no longer owns the slot).
        let topo = self.cached_topology().await?;
        let started = Instant::now();
        let stats = self.finish(&topo, slot, &src, &dst, pace, false, mv.bytes).await?;
        debug!(slot, from = %src, to = %dst, keys = stats.keys, bytes = stats.bytes, ms = started.elapsed().as_millis() as u64, "slot moved");
        Ok(stats)
    }
}

/// No pacing (repairs finish as fast as they can: an open slot is the worse state).
pub struct NoPace;

impl Pace for NoPace {
    async fn take(&self, _bytes: u64) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cluster_nodes() {
        let text = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host-a slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460 [5461-<-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [93->-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f] 7000
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@31005 master,fail? - 0 1426238316232 5 disconnected
";
        let n = parse_nodes(text).unwrap();
        assert_eq!(n.len(), 5);
        assert_eq!(n[0].addr, "127.0.0.1:30004");
        assert!(!n[0].is_master());
        assert_eq!(n[0].master_id.as_deref(), Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca"));
        let me = &n[3];
        assert!(me.is_myself() && me.is_master());
        assert_eq!(me.slots, vec![(0, 5460), (7000, 7000)]);
        assert_eq!(me.importing, vec![(5461, "67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1".to_string())]);
        assert_eq!(me.migrating, vec![(93, "292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f".to_string())]);
        assert!(me.owns(7000) && me.owns(0) && !me.owns(5461));
        assert!(n[4].is_failed() && !n[4].connected);
        assert!(parse_nodes("abc 1.2.3.4:5").is_err());
    }
}
