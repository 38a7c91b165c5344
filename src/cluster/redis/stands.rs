//! Where the replicas stand, for placement: each one's host and zone, and whether it is
//! in sync with its master (link up, at most `topology.max-lag-bytes` behind), read
//! from its own INFO in parallel with the masters'.
//!
//! Owns: reading a replica's INFO server and replication, and what "in sync" means.
//! Does not own: the rules ([`crate::plan::placement`]) or role changes ([`super::roles`]).

use std::collections::HashMap;

use super::RedisCluster;
use super::topology::{NodeInfo, NodeLine, Topology};
use crate::model::Replica;

/// What a replica says of itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct ReplicaInfo {
    /// `master` or `slave`: its own word, which a seed's view may lag behind.
    pub role: String,
    /// The master it follows, `host:port`, by its own word.
    pub master: Option<String>,
    pub link_up: bool,
    pub offset: u64,
    pub zone: Option<String>,
}

impl ReplicaInfo {
    pub fn parse(info: &str) -> ReplicaInfo {
        let field =
            |key: &str| info.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(str::trim));
        let master = match (field("master_host"), field("master_port")) {
            (Some(h), Some(p)) => Some(format!("{h}:{p}")),
            _ => None,
        };
        ReplicaInfo {
            role: field("role").unwrap_or_default().to_string(),
            master,
            link_up: field("master_link_status") == Some("up"),
            offset: field("slave_repl_offset").and_then(|v| v.parse().ok()).unwrap_or(0),
            zone: field("availability_zone").filter(|z| !z.is_empty()).map(str::to_string),
        }
    }
}

/// In sync: its link is up and it is at most `max_lag` bytes behind `master_offset`.
pub(super) fn in_sync(r: &ReplicaInfo, master_offset: Option<u64>, max_lag: u64) -> bool {
    r.link_up && master_offset.is_some_and(|m| m.saturating_sub(r.offset) <= max_lag)
}

impl RedisCluster {
    /// The replicas of the topology, each asked for its link and zone; `masters` holds
    /// the INFO of the masters that answered, by node id. A replica's own word on whom it
    /// follows wins over the seed's view (which lags behind a failover); a node the seed
    /// lists as a replica that says it is a master is left out.
    pub(super) async fn replicas(&self, topo: &Topology, masters: &HashMap<&str, &NodeInfo>) -> Vec<Replica> {
        let read = topo.replicas.iter().map(|r| async move {
            if r.is_failed() {
                return None;
            }
            let text: Result<String, String> =
                self.nodes.conns.query(&r.addr, redis::cmd("INFO").arg("server").arg("replication")).await;
            text.ok().map(|t| ReplicaInfo::parse(&t))
        });
        let seen = futures::future::join_all(read).await;
        topo.replicas
            .iter()
            .zip(seen)
            .filter(|(_, s)| s.as_ref().is_none_or(|s| s.role != "master"))
            .map(|(r, seen)| self.replica(topo, r, seen, masters))
            .collect()
    }

    fn replica(
        &self,
        topo: &Topology,
        r: &NodeLine,
        seen: Option<ReplicaInfo>,
        masters: &HashMap<&str, &NodeInfo>,
    ) -> Replica {
        let own =
            seen.as_ref().and_then(|s| s.master.as_deref()).and_then(|a| topo.master_by_addr(a)).map(|m| m.id.clone());
        let master = own.or_else(|| r.master_id.clone());
        let master_offset = master.as_deref().and_then(|m| masters.get(m)).map(|i| i.repl_offset);
        Replica {
            id: r.id.clone(),
            address: r.addr.clone(),
            hostname: r.hostname.clone(),
            zone: seen.as_ref().and_then(|s| s.zone.clone()),
            master,
            healthy: !r.is_failed() && seen.is_some(),
            in_sync: seen.as_ref().is_some_and(|s| in_sync(s, master_offset, self.max_lag_bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replica_is_in_sync_with_its_link_up_and_little_behind() {
        let r = ReplicaInfo::parse(
            "# Server\r\navailability_zone:eu-1a\r\n# Replication\r\nrole:slave\r\nmaster_link_status:up\r\nslave_repl_offset:1000\r\n",
        );
        let want =
            ReplicaInfo { role: "slave".into(), master: None, link_up: true, offset: 1000, zone: Some("eu-1a".into()) };
        assert_eq!(r, want);
        let r2 = ReplicaInfo::parse("role:slave\nmaster_host:10.0.0.1\nmaster_port:7000\n");
        assert_eq!(r2.master.as_deref(), Some("10.0.0.1:7000"));
        assert!(in_sync(&r, Some(1500), 500));
        assert!(!in_sync(&r, Some(1501), 500), "further behind than the limit");
        assert!(!in_sync(&r, None, 500), "its master did not answer: not known to be in sync");
        let down = ReplicaInfo::parse("master_link_status:down\nslave_repl_offset:1000\navailability_zone:\n");
        assert_eq!(down.zone, None, "an empty zone is none");
        assert!(!in_sync(&down, Some(1000), 500));
    }
}
