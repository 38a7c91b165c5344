//! The cluster's topology: CLUSTER NODES parsed, each master's view of itself, who owns
//! which slot, and the health figures of a master.
//!
//! Owns: `NodeLine`, `Topology`, parsing them. Does not own: reading them from the
//! nodes ([`super::nodes`]), sizes or moves.

use super::SLOTS;
use std::collections::HashMap;

/// The smallest number whose decimal form hashes to `slot`: as `{n}` in a key name, it
/// puts the key in that slot (CRC16 of the hash tag, as the cluster computes it).
pub(super) fn tag_in(slot: u16) -> u32 {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS];
        let mut left = SLOTS;
        for n in 0u32.. {
            let s = crc16::State::<crc16::XMODEM>::calculate(n.to_string().as_bytes()) as usize % SLOTS;
            if tags[s] == u32::MAX {
                tags[s] = n;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }
        tags
    });
    tags[slot as usize % SLOTS]
}

/// One line of CLUSTER NODES.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLine {
    pub id: String,
    /// `ip:port` as the cluster announces it.
    pub addr: String,
    /// The announced hostname (`cluster-announce-hostname`), if any.
    pub hostname: Option<String>,
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
    /// Whether `name` names this node: its id, `ip:port`, or `hostname:port`.
    pub fn is_named(&self, name: &str) -> bool {
        crate::model::names(&self.id, &self.addr, self.hostname.as_deref(), name)
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
        // Any further `,key=value` fields (newer servers) are not the hostname.
        let hostname = f[1].split(',').nth(1).filter(|h| !h.is_empty() && !h.contains('=')).map(str::to_string);
        let mut node = NodeLine {
            id: f[0].to_string(),
            addr,
            hostname,
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
pub(super) struct Topology {
    /// Masters in a stable order (by address).
    pub(super) masters: Vec<NodeLine>,
    pub(super) replicas: Vec<NodeLine>,
    /// Each master's own CLUSTER NODES "myself" line, when it answered.
    pub(super) myself: HashMap<String, NodeLine>,
    /// Slot -> index into `masters`.
    pub(super) owner: Vec<Option<usize>>,
}

impl Topology {
    pub(super) fn master_by_id(&self, id: &str) -> Option<&NodeLine> {
        self.masters.iter().find(|m| m.id == id)
    }
    pub(super) fn master_by_addr(&self, addr: &str) -> Option<&NodeLine> {
        self.masters.iter().find(|m| m.addr == addr)
    }
    /// The replicas of master `id` not marked failed: those a mover waits for.
    pub(super) fn replica_count(&self, id: &str) -> usize {
        self.replicas.iter().filter(|r| r.master_id.as_deref() == Some(id) && !r.is_failed()).count()
    }
}

/// A master's figures from INFO and CLUSTER INFO.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeInfo {
    /// "redis" or "valkey".
    pub engine: String,
    /// (major, minor, patch).
    pub version: (u32, u32, u32),
    pub used_memory: u64,
    pub maxmemory: u64,
    /// Keys in db0 (a cluster node has no other database).
    pub keys: u64,
    pub cluster_ok: bool,
    /// Valkey's `availability-zone` (INFO server `availability_zone`), if set.
    pub zone: Option<String>,
    /// The node's replication offset (a master's `master_repl_offset`).
    pub repl_offset: u64,
}

impl NodeInfo {
    pub fn parse(info: &str, cluster_info: &str) -> NodeInfo {
        let field = |text: &str, key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(|v| v.trim().to_string()))
        };
        let num = |key: &str| field(info, key).and_then(|v| v.parse().ok()).unwrap_or(0);
        let (engine, version) = match field(info, "valkey_version") {
            Some(v) => ("valkey", v),
            None => ("redis", field(info, "redis_version").unwrap_or_default()),
        };
        let mut parts = version.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        // db0:keys=12,expires=0,avg_ttl=0
        let keys = field(info, "db0")
            .and_then(|v| v.split(',').find_map(|kv| kv.strip_prefix("keys=").and_then(|n| n.parse().ok())))
            .unwrap_or(0);
        NodeInfo {
            engine: engine.to_string(),
            version,
            used_memory: num("used_memory"),
            maxmemory: num("maxmemory"),
            keys,
            cluster_ok: field(cluster_info, "cluster_state").as_deref() == Some("ok"),
            zone: field(info, "availability_zone").filter(|z| !z.is_empty()),
            repl_offset: num("master_repl_offset"),
        }
    }

    /// "valkey 9.1.2"
    pub fn engine_version(&self) -> String {
        let (a, b, c) = self.version;
        format!("{} {a}.{b}.{c}", self.engine)
    }
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
        assert_eq!(n[0].hostname.as_deref(), Some("host-a"));
        assert!(n[0].is_named("host-a:30004") && n[0].is_named("127.0.0.1:30004"));
        assert!(n[0].is_named("07c37dfeb235213a872192d90877d0cd55635b91") && !n[0].is_named("host-a"));
        assert_eq!(n[1].hostname, None);
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

    #[test]
    fn reads_engine_memory_and_keys_from_info() {
        let redis = "# Server\r\nredis_version:7.0.15\r\n# Memory\r\nused_memory:1048576\r\nmaxmemory:0\r\n# Keyspace\r\ndb0:keys=12,expires=1,avg_ttl=0\r\n";
        let n = NodeInfo::parse(redis, "cluster_state:ok\r\n");
        assert_eq!((n.engine.as_str(), n.version, n.used_memory, n.keys), ("redis", (7, 0, 15), 1048576, 12));
        assert!(n.cluster_ok);
        let valkey = "redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:9.1.2\r\nused_memory:5\r\n";
        let n = NodeInfo::parse(valkey, "cluster_state:fail\r\n");
        assert_eq!(n.engine_version(), "valkey 9.1.2");
        assert_eq!(n.keys, 0);
        assert!(!n.cluster_ok);
    }
}
