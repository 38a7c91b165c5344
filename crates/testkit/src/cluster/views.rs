//! What the nodes say about the cluster: CLUSTER NODES parsed just enough for the kit,
//! waiting until every live node agrees, slot owners and open (migrating or importing)
//! slots. Kept apart from the library's own parser on purpose: the kit checks the
//! library, so it does not borrow its reading of the cluster.

use std::time::{Duration, Instant};

use super::LocalCluster;
use crate::Result;

/// One line of CLUSTER NODES: the fields the kit needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLine {
    pub id: String,
    /// `ip:port`, without the bus port or hostname.
    pub addr: String,
    pub flags: Vec<String>,
    /// Slot ranges owned, inclusive.
    pub slots: Vec<(u16, u16)>,
    /// Open slots as printed: `[5->-<id>]` or `[5-<-<id>]`.
    pub open: Vec<String>,
}

impl NodeLine {
    pub fn is_master(&self) -> bool {
        self.flags.iter().any(|f| f == "master")
    }
}

/// Parses CLUSTER NODES (Redis 7 and Valkey 9 print the same format).
pub fn parse_nodes(text: &str) -> Result<Vec<NodeLine>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<NodeLine> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() < 8 {
        return Err(format!("CLUSTER NODES line has {} fields: {line:?}", f.len()));
    }
    let mut node = NodeLine {
        id: f[0].to_string(),
        // ip:port@cport[,hostname]
        addr: f[1].split('@').next().unwrap_or("").to_string(),
        flags: f[2].split(',').map(str::to_string).collect(),
        slots: Vec::new(),
        open: Vec::new(),
    };
    for s in &f[8..] {
        if s.starts_with('[') {
            node.open.push(s.to_string());
            continue;
        }
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let slot = |x: &str| x.parse::<u16>().map_err(|_| format!("bad slot range {s} in {line:?}"));
        node.slots.push((slot(a)?, slot(b)?));
    }
    Ok(node)
}

const SETTLE: Duration = Duration::from_secs(30);

impl LocalCluster {
    /// Waits until every live node sees exactly `masters` masters (replicas settled).
    pub(super) async fn wait_roles(&self, masters: usize) -> Result<()> {
        self.wait_views("replica roles to settle", |text| {
            parse_nodes(text).is_ok_and(|n| n.iter().filter(|x| x.is_master()).count() == masters)
        })
        .await
    }

    /// Waits until every replica's link to its master is up (its first sync is done).
    pub(super) async fn wait_synced(&self) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        for n in self.nodes.iter().filter(|n| n.replica_of.is_some() && n.proc.is_some()) {
            while !self.text(&n.addr(), &["INFO", "replication"]).await?.contains("master_link_status:up") {
                if Instant::now() > deadline {
                    return Err(format!("timed out after {SETTLE:?} waiting for {} to sync", n.addr()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    /// Waits until every live node knows `n` nodes, none of them in handshake.
    pub(super) async fn wait_known(&self, n: usize) -> Result<()> {
        self.wait_views("every node to meet every other", |text| {
            text.lines().filter(|l| !l.contains("handshake") && !l.trim().is_empty()).count() >= n
        })
        .await
    }

    /// Polls every live node's CLUSTER NODES until `settled` holds for all.
    pub(super) async fn wait_views(&self, what: &str, settled: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut all = true;
            for a in self.live_addrs() {
                all &= settled(&self.text(&a, &["CLUSTER", "NODES"]).await?);
            }
            if all {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("timed out after {SETTLE:?} waiting for {what}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every live node says `cluster_state:ok` with all slots assigned.
    pub async fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let not_ok = match self.not_ok().await {
                Ok(None) => return Ok(()),
                Ok(Some(why)) => why,
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(format!("cluster not ok within {within:?}: {not_ok}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn all_ok(&self) -> Result<bool> {
        Ok(self.not_ok().await?.is_none())
    }

    /// The first live node that does not call the cluster ok with every slot assigned,
    /// and what it says instead.
    async fn not_ok(&self) -> Result<Option<String>> {
        for a in self.live_addrs() {
            let info = self.text(&a, &["CLUSTER", "INFO"]).await?;
            if !info.contains("cluster_state:ok") || !info.contains("cluster_slots_assigned:16384") {
                let said: Vec<&str> = info
                    .lines()
                    .filter(|l| {
                        ["cluster_state", "cluster_slots_", "cluster_known", "cluster_current_epoch"]
                            .iter()
                            .any(|k| l.starts_with(k))
                    })
                    .map(str::trim)
                    .collect();
                let nodes = self.text(&a, &["CLUSTER", "NODES"]).await.unwrap_or_default();
                return Ok(Some(format!("{a} says {}\n{nodes}", said.join(" "))));
            }
        }
        Ok(None)
    }

    /// Slots any live node reports MIGRATING or IMPORTING, as `addr [slot->-id]`.
    pub async fn open_slots(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for a in self.live_addrs() {
            let nodes = parse_nodes(&self.text(&a, &["CLUSTER", "NODES"]).await?)?;
            for n in nodes.iter().filter(|n| n.flags.iter().any(|f| f == "myself")) {
                out.extend(n.open.iter().map(|o| format!("{a} {o}")));
            }
        }
        Ok(out)
    }

    /// Slot -> owner address, from the first live master's view.
    pub async fn slot_owners(&self) -> Result<Vec<String>> {
        let masters = self.master_addrs();
        let addr = self.live_addrs().into_iter().find(|a| masters.contains(a)).ok_or("no live master")?;
        let mut owner = vec![String::new(); 16384];
        for n in parse_nodes(&self.text(&addr, &["CLUSTER", "NODES"]).await?)?.iter().filter(|n| n.is_master()) {
            for &(a, b) in &n.slots {
                for s in a..=b {
                    owner[s as usize] = n.addr.clone();
                }
            }
        }
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_masters_replicas_ranges_and_open_slots() {
        let text = "\
07c3 127.0.0.1:30004@40004,host-a myself,master - 0 0 1 connected 0-5460 5461 [5462->-e7d1]\n\
e7d1 127.0.0.1:30002@40002 slave 07c3 0 1700000000000 2 connected\n\
9a1b 127.0.0.1:30003@40003 master - 0 1700000000000 3 connected [7-<-07c3]\n";
        let n = parse_nodes(text).unwrap();
        assert_eq!(n.len(), 3);
        assert_eq!(n[0].addr, "127.0.0.1:30004");
        assert_eq!(n[0].slots, vec![(0, 5460), (5461, 5461)]);
        assert_eq!(n[0].open, vec!["[5462->-e7d1]"]);
        assert!(n[0].is_master() && !n[1].is_master() && n[2].is_master());
        assert_eq!(n[2].open, vec!["[7-<-07c3]"]);
        assert!(parse_nodes("too few fields").is_err());
    }
}
