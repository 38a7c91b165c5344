//! Reading traffic: each master's cumulative per-slot counters from `CLUSTER SLOT-STATS`
//! where its server measures them (Valkey 8+ with `cluster-slot-stats-enabled yes`;
//! Redis 8.2 has the same reply and is read the same way, untested here), or one line
//! saying why it measures none.
//!
//! Owns: the capability check per master and the reading. Does not own: rates (that is
//! [`crate::traffic`], fed by these readings) or the plan.

use std::collections::BTreeMap;

use tracing::warn;

use super::nodes::Nodes;
use super::slot_stats;
use crate::cluster::ClusterError;
use crate::traffic::Sample;
use crate::traffic::rates::Counters;

impl Nodes {
    /// One reading of the masters' counters: every master's, or only `member`'s (a
    /// sidecar samples its own). A master that does not answer is left out of this
    /// reading (its series waits for the next); one that measures no traffic says why.
    pub async fn read_traffic(&self, member: Option<&str>) -> Result<Vec<Sample>, ClusterError> {
        let topo = self.topology().await?;
        let masters: Vec<_> =
            topo.masters.iter().filter(|m| !m.is_failed() && member.is_none_or(|id| m.id == id)).collect();
        let reads = futures::future::join_all(masters.iter().map(|m| self.read_master_traffic(&m.addr))).await;
        let mut out = Vec::new();
        for (m, r) in masters.into_iter().zip(reads) {
            match r {
                Ok(counters) => out.push(Sample { member: m.id.clone(), counters }),
                Err(e) => {
                    warn!(node = %m.addr, cause = %e, "cannot read slot statistics: this reading leaves the master out")
                }
            }
        }
        Ok(out)
    }

    /// `Ok(Err(why))`: the server measures no traffic. `Err`: it did not answer.
    async fn read_master_traffic(&self, addr: &str) -> Result<Result<BTreeMap<u16, Counters>, String>, String> {
        let get = redis::cmd("CONFIG").arg("GET").arg("cluster-slot-stats-enabled").to_owned();
        let conf: std::collections::HashMap<String, String> = self.conns.query(addr, &get).await?;
        match conf.get("cluster-slot-stats-enabled").map(|v| v.to_ascii_lowercase()) {
            None => {
                let info: String = self.conns.query(addr, redis::cmd("INFO").arg("server")).await?;
                let n = super::NodeInfo::parse(&info, "");
                let (a, b, c) = n.version;
                return Ok(Err(format!("{addr} runs {} {a}.{b}.{c}, which has no per-slot statistics", n.engine)));
            }
            Some(v) if v != "yes" => return Ok(Err(format!("{addr} has cluster-slot-stats-enabled {v}"))),
            Some(_) => {}
        }
        let reply: redis::Value = self.conns.query(addr, &slot_stats::request()).await?;
        let stats = slot_stats::parse_traffic(&reply).map_err(|e| format!("{addr}: {e}"))?;
        Ok(Ok(stats
            .into_iter()
            .map(|(slot, [keys, cpu_usec, net_in, net_out])| (slot, Counters { cpu_usec, net_in, net_out, keys }))
            .collect()))
    }
}
