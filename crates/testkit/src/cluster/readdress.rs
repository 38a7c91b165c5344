//! A node that comes back at another address with its id and data (a pod with a new IP),
//! and a new node at an address another node had (a reused IP).

use super::start::spawn_node;
use super::{LocalCluster, Node};
use crate::Result;
use crate::ports::free_port;

impl LocalCluster {
    /// The node at `addr` comes back at another address: it saves its data, stops, and
    /// starts again on a new port from the same directory (its nodes.conf keeps its id).
    /// Returns the new address once every live node lists the id there and the cluster
    /// is ok. No replicas: the node keeps the master role it had.
    pub async fn readdress(&mut self, addr: &str) -> Result<String> {
        let i = self.nodes.iter().position(|n| n.addr() == addr).ok_or_else(|| format!("no node at {addr}"))?;
        self.ok(addr, &["SAVE"]).await?;
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill();
        }
        let port = free_port();
        let n = &self.nodes[i];
        let binary = self.engine.server_binary()?;
        let proc = spawn_node(&binary, port, &n.dir, self.password.as_deref(), self.tls.as_ref(), self.engine)?;
        self.nodes[i].proc = Some(proc);
        self.nodes[i].port = port;
        let new = self.nodes[i].addr();
        let id = self.nodes[i].id.clone();
        if self.my_id(&new).await? != id {
            return Err(format!("{new} came back with another id"));
        }
        self.create_user_on(&new).await?;
        // Gossip carries the new address: the node pings the others from its nodes.conf.
        let at = format!(" {new}@");
        self.wait_views("every node to list the node at its new address", |text| {
            text.lines().any(|l| l.starts_with(&id) && l.contains(&at) && !l.contains("fail"))
        })
        .await?;
        self.wait_ok(std::time::Duration::from_secs(30)).await?;
        Ok(new)
    }

    /// A new master with no slots at `port` (an address another node may have had),
    /// met into the cluster. Returns its id.
    pub async fn add_master_at(&mut self, port: u16) -> Result<String> {
        let dir = self.dir.join(format!("node-{port}-new"));
        let binary = self.engine.server_binary()?;
        let proc = spawn_node(&binary, port, &dir, self.password.as_deref(), self.tls.as_ref(), self.engine)?;
        let node = Node { port, proc: Some(proc), id: String::new(), replica_of: None, dir };
        let addr = node.addr();
        self.nodes.push(node);
        let id = self.my_id(&addr).await?;
        self.nodes.last_mut().expect("pushed").id = id.clone();
        self.masters.push(self.nodes.len() - 1);
        let first = self.live_addrs().into_iter().find(|a| *a != addr).ok_or("no other live node")?;
        let (host, first_port) = first.rsplit_once(':').expect("ip:port");
        self.ok(&addr, &["CLUSTER", "MEET", host, first_port]).await?;
        self.create_user_on(&addr).await?;
        let known = self.live_addrs().len();
        self.wait_known(known).await?;
        self.wait_ok(std::time::Duration::from_secs(30)).await?;
        Ok(id)
    }
}
