//! Handing the master role of the member's node to one of its replicas before the node
//! stops: `CLUSTER FAILOVER` (the coordinated one: the master stops writes until the
//! replica has caught up, so nothing acknowledged is lost; never TAKEOVER) sent to the
//! replica that is in sync, then a bounded wait until the two have swapped roles.
//!
//! Owns: finding the node, refusing while one of its slots is in flight, ranking its
//! replicas, the failover and the wait. Does not own: the answer's shape
//! ([`crate::cluster::handoff`]) or what the command line and the API make of it.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use tracing::info;

use super::RedisCluster;
use super::capabilities::Capabilities;
use super::topology::NodeLine;
use crate::cluster::handoff::{Handoff, HandoffError};

/// How often the roles are read while the failover runs.
const POLL: Duration = Duration::from_millis(100);

/// After this, a manual failover the servers gave up (their limit is 5 s) is asked again.
const RETRY_AFTER: Duration = Duration::from_secs(6);

/// Why a replica in sync is not chosen yet (and the choice waits for it).
const PENDING: &str = "connected and in sync, not yet listed as a replica by the master's cluster view";

/// What a node says of its replication, from INFO replication.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Replication {
    /// `master` or `slave`.
    role: String,
    /// A replica's link to its master is up (its first sync is done).
    link_up: bool,
    /// A replica's replication offset: how much of its master's stream it holds.
    offset: u64,
    /// Seconds since the replica last heard from its master.
    last_io_seconds: u64,
    /// A master's replicas connected now (`ip:port`, from its `slaveN:` lines).
    followers: Vec<String>,
}

impl Replication {
    fn parse(info: &str) -> Replication {
        let field =
            |key: &str| info.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')).map(str::trim));
        let num = |key: &str| field(key).and_then(|v| v.parse().ok()).unwrap_or(0);
        Replication {
            role: field("role").unwrap_or_default().to_string(),
            link_up: field("master_link_status") == Some("up"),
            offset: num("slave_repl_offset"),
            last_io_seconds: num("master_last_io_seconds_ago"),
            followers: info.lines().filter_map(follower).collect(),
        }
    }
}

/// `slave0:ip=10.0.0.2,port=6379,state=online,offset=42,lag=0` -> `10.0.0.2:6379`.
fn follower(line: &str) -> Option<String> {
    let (key, fields) = line.trim().split_once(':')?;
    key.strip_prefix("slave")?.parse::<u32>().ok()?;
    let field = |name: &str| fields.split(',').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='));
    Some(format!("{}:{}", field("ip")?, field("port")?))
}

/// One replica of the master, as seen now.
struct Candidate {
    node: NodeLine,
    seen: Result<Replication, String>,
    /// The master's cluster view lists it as its replica. The master ignores a failover
    /// request from a node it does not (Redis: MFSTART from a non-replica), which is
    /// briefly the case right after a failover, until gossip has told it.
    listed: bool,
}

/// Lower is better: the most of the stream held, then the freshest link, then the node
/// id, so the choice is deterministic.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank<'a> {
    offset: Reverse<u64>,
    last_io_seconds: u64,
    id: &'a str,
}

impl Candidate {
    /// Why it cannot take over, if it cannot.
    fn unusable(&self) -> Option<String> {
        if self.node.is_failed() || !self.node.connected {
            return Some("flagged failing or disconnected".into());
        }
        match &self.seen {
            Err(e) => Some(format!("not answering: {e}")),
            Ok(r) if r.role != "slave" => Some(format!("role {}", r.role)),
            Ok(r) if !r.link_up => Some("replication link down (not in sync)".into()),
            Ok(_) if !self.listed => Some(PENDING.into()),
            Ok(_) => None,
        }
    }

    /// In sync, and only waiting for the master's cluster view to list it.
    fn pending(&self) -> bool {
        self.unusable().as_deref() == Some(PENDING)
    }

    fn rank(&self) -> Option<Rank<'_>> {
        let r = self.seen.as_ref().ok().filter(|_| self.unusable().is_none())?;
        Some(Rank { offset: Reverse(r.offset), last_io_seconds: r.last_io_seconds, id: &self.node.id })
    }
}

/// The replica to promote, or why there is none.
fn choose<'a>(master: &NodeLine, candidates: &'a [Candidate]) -> Result<&'a Candidate, HandoffError> {
    if let Some(best) = candidates.iter().filter_map(|c| Some((c.rank()?, c))).min_by(|a, b| a.0.cmp(&b.0)) {
        return Ok(best.1);
    }
    let detail = if candidates.is_empty() {
        "no replicas".to_string()
    } else {
        let why: Vec<String> =
            candidates.iter().map(|c| format!("{}: {}", c.node.addr, c.unusable().unwrap_or_default())).collect();
        why.join("; ")
    };
    Err(HandoffError::NoReplica { master: master.addr.clone(), detail })
}

impl RedisCluster {
    /// Hands the master role of `member`'s node to its best in-sync replica and waits, at
    /// most `within`, until the replica is master and the node its replica. Beside a
    /// replica there is nothing to do.
    pub async fn handoff(&self, member: &str, within: Duration) -> Result<Handoff, HandoffError> {
        let started = Instant::now();
        let (me, view) = self.own_view(member).await?;
        if !me.is_master() {
            let master = me.master_id.as_deref().and_then(|id| view.iter().find(|n| n.id == id));
            let master = master.map(|m| m.addr.clone());
            let message = format!(
                "{} is a replica (of {}): nothing to hand off",
                me.addr,
                master.as_deref().unwrap_or("an unknown master")
            );
            return Ok(Handoff {
                action: "none",
                member: member.to_string(),
                node: me.addr,
                master,
                duration_seconds: started.elapsed().as_secs_f64(),
                message,
            });
        }
        self.refuse_open_slots(&me).await?;
        let deadline = tokio::time::Instant::now() + within;
        let replica = self.choose_replica(&me, view, deadline).await?;
        self.fail_over(&me.addr, &replica, deadline, within).await?;
        let took = started.elapsed().as_secs_f64();
        Ok(Handoff {
            action: "promoted",
            member: member.to_string(),
            message: format!(
                "{replica} took over from {node} (CLUSTER FAILOVER) in {took:.1}s; {node} is its replica now",
                node = me.addr
            ),
            node: me.addr,
            master: Some(replica),
            duration_seconds: took,
        })
    }

    /// The member's node as it sees itself, and its whole view of the cluster. The member
    /// is asked directly when it is an address; otherwise it is found by id or hostname
    /// in a seed's view. Its own view is the truth about its role (a seed may lag behind
    /// a failover).
    async fn own_view(&self, member: &str) -> Result<(NodeLine, Vec<NodeLine>), HandoffError> {
        match self.nodes.node_named(member).await.map_err(HandoffError::Backend)? {
            Some(found) => Ok(found),
            None => Err(HandoffError::UnknownMember(member.to_string())),
        }
    }

    /// Refuses while a slot of the master is open: MIGRATING or IMPORTING (the legacy
    /// mover), or in an atomic migration job (Valkey 9). A failover mid-move leaves the
    /// move for repair to settle; waiting for it to end is the better way.
    pub(super) async fn refuse_open_slots(&self, me: &NodeLine) -> Result<(), HandoffError> {
        let mut open: Vec<u16> = me.migrating.iter().chain(&me.importing).map(|(s, _)| *s).collect();
        let info = self.nodes.node_info(&me.addr).await.map_err(HandoffError::Backend)?;
        if Capabilities::of([&info]).atomic_migration {
            let jobs = self.nodes.slot_migrations(&me.addr).await.map_err(HandoffError::Backend)?;
            let running = jobs.into_iter().filter(|j| !j.has_ended());
            open.extend(running.flat_map(|j| j.slot_ranges).flat_map(|(a, b)| a..=b));
        }
        open.sort_unstable();
        open.dedup();
        if open.is_empty() { Ok(()) } else { Err(HandoffError::OpenSlots { master: me.addr.clone(), slots: open }) }
    }

    /// The master's replicas, each asked about its link: those its cluster view lists, and
    /// those its replication says are connected (right after a failover the view learns
    /// of the old master, a replica now, only through gossip).
    async fn candidates(&self, me: &NodeLine, view: &[NodeLine]) -> Vec<Candidate> {
        let following = self.replication(&me.addr).await.map(|r| r.followers).unwrap_or_default();
        let replicas = view.iter().filter_map(|n| {
            let listed = n.master_id.as_deref() == Some(me.id.as_str()) && !n.is_master();
            (!n.is_myself() && (listed || following.contains(&n.addr))).then_some((n, listed))
        });
        futures::future::join_all(replicas.map(|(n, listed)| async move {
            Candidate { node: n.clone(), seen: self.replication(&n.addr).await, listed }
        }))
        .await
    }

    /// The replica to promote. While the only replicas in sync are not yet listed by the
    /// master's view, the view is read again until `deadline`.
    async fn choose_replica(
        &self,
        me: &NodeLine,
        mut view: Vec<NodeLine>,
        deadline: tokio::time::Instant,
    ) -> Result<String, HandoffError> {
        loop {
            let candidates = self.candidates(me, &view).await;
            match choose(me, &candidates) {
                Ok(c) => return Ok(c.node.addr.clone()),
                Err(e) if !candidates.iter().any(Candidate::pending) => return Err(e),
                Err(e) if tokio::time::Instant::now() + POLL >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(POLL).await,
            }
            view = self.nodes.cluster_nodes(&me.addr).await.map_err(HandoffError::Backend)?;
        }
    }

    async fn replication(&self, addr: &str) -> Result<Replication, String> {
        let text: String = self.nodes.conns.query(addr, redis::cmd("INFO").arg("replication")).await?;
        Ok(Replication::parse(&text))
    }

    /// Sends `CLUSTER FAILOVER` to the replica and waits until it says master and the old
    /// master says slave, until `deadline` (`within` after the replicas were first read).
    /// A server gives up a manual failover after 5 s (say, while the other masters' views
    /// still lag behind a failover just before): once past that, it is asked once more.
    pub(super) async fn fail_over(
        &self,
        master: &str,
        replica: &str,
        deadline: tokio::time::Instant,
        within: Duration,
    ) -> Result<(), HandoffError> {
        let mut asked = 0;
        let mut last_ask = tokio::time::Instant::now();
        let mut r = String::from("slave");
        loop {
            let gave_up = asked == 1 && r == "slave" && last_ask.elapsed() >= RETRY_AFTER;
            if asked == 0 || gave_up {
                info!(master = %master, replica = %replica, attempt = asked + 1, "handoff: CLUSTER FAILOVER");
                self.nodes.conns.query::<()>(replica, redis::cmd("CLUSTER").arg("FAILOVER")).await.map_err(|e| {
                    HandoffError::Backend(format!("CLUSTER FAILOVER on {replica} (replica of {master}): {e}"))
                })?;
                (asked, last_ask) = (asked + 1, tokio::time::Instant::now());
            }
            let m;
            (r, m) = tokio::join!(self.role_until(replica, deadline), self.role_until(master, deadline));
            if r == "master" && m == "slave" {
                return Ok(());
            }
            if tokio::time::Instant::now() + POLL >= deadline {
                return Err(HandoffError::TimedOut {
                    master: master.to_string(),
                    replica: replica.to_string(),
                    within,
                    replica_role: r,
                    master_role: m,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The node's role, or what kept it from answering before `deadline`.
    async fn role_until(&self, addr: &str, deadline: tokio::time::Instant) -> String {
        match tokio::time::timeout_at(deadline, self.replication(addr)).await {
            Ok(Ok(r)) => r.role,
            Ok(Err(e)) => format!("unknown ({e})"),
            Err(_) => "unknown (no answer in time)".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::redis::parse_nodes;

    const VIEW: &str = "\
aaaa 10.0.0.1:6379@16379 myself,master - 0 0 1 connected 0-5460
bbbb 10.0.0.2:6379@16379 slave aaaa 0 1 1 connected
cccc 10.0.0.3:6379@16379 slave aaaa 0 1 1 connected
dddd 10.0.0.4:6379@16379 slave,fail aaaa 0 1 1 disconnected
";

    fn replica(node: &NodeLine, info: Result<&str, &str>) -> Candidate {
        Candidate { node: node.clone(), seen: info.map(Replication::parse).map_err(str::to_string), listed: true }
    }

    #[test]
    fn reads_a_replicas_link_from_info() {
        let r = Replication::parse(
            "# Replication\r\nrole:slave\r\nmaster_host:10.0.0.1\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:2\r\nslave_repl_offset:4242\r\n",
        );
        let expected =
            Replication { role: "slave".into(), link_up: true, offset: 4242, last_io_seconds: 2, followers: vec![] };
        assert_eq!(r, expected);
        let m = Replication::parse(
            "role:master\r\nconnected_slaves:2\r\nslave0:ip=10.0.0.2,port=6379,state=online,offset=42,lag=0,type=replica\r\nslave1:ip=10.0.0.3,port=7000,state=wait_bgsave,offset=0,lag=0\r\nslave_read_only:1\r\n",
        );
        assert_eq!(
            (m.role.as_str(), m.followers.as_slice()),
            ("master", &["10.0.0.2:6379".to_string(), "10.0.0.3:7000".to_string()][..])
        );
    }

    #[test]
    fn the_replica_in_sync_with_the_most_data_is_chosen() {
        let v = parse_nodes(VIEW).unwrap();
        let up = |off: u64, io: u64| {
            format!("role:slave\nmaster_link_status:up\nslave_repl_offset:{off}\nmaster_last_io_seconds_ago:{io}\n")
        };
        let (a, b) = (up(100, 1), up(90, 0));
        let c =
            [replica(&v[1], Ok(a.as_str())), replica(&v[2], Ok(b.as_str())), replica(&v[3], Ok(up(500, 0).as_str()))];
        assert_eq!(choose(&v[0], &c).unwrap().node.addr, "10.0.0.2:6379");
        // Equal offsets: the fresher link, then the node id.
        let (a, b) = (up(100, 3), up(100, 1));
        let c = [replica(&v[1], Ok(a.as_str())), replica(&v[2], Ok(b.as_str()))];
        assert_eq!(choose(&v[0], &c).unwrap().node.addr, "10.0.0.3:6379");
        let same = up(100, 1);
        let c = [replica(&v[2], Ok(same.as_str())), replica(&v[1], Ok(same.as_str()))];
        assert_eq!(choose(&v[0], &c).unwrap().node.id, "bbbb");
    }

    #[test]
    fn no_usable_replica_says_why_for_each() {
        let v = parse_nodes(VIEW).unwrap();
        let down = "role:slave\nmaster_link_status:down\nslave_repl_offset:100\n";
        let c = [replica(&v[1], Ok(down)), replica(&v[2], Err("connection refused")), replica(&v[3], Ok(down))];
        let e = choose(&v[0], &c).err().unwrap().to_string();
        assert!(e.contains("10.0.0.2:6379: replication link down"), "{e}");
        assert!(e.contains("10.0.0.3:6379: not answering: connection refused"), "{e}");
        assert!(e.contains("10.0.0.4:6379: flagged failing"), "{e}");
        // In sync but not yet in the master's view: not chosen, and said so.
        let up = "role:slave\nmaster_link_status:up\nslave_repl_offset:100\n";
        let c = [Candidate { listed: false, ..replica(&v[1], Ok(up)) }];
        assert!(c[0].pending());
        let e = choose(&v[0], &c).err().unwrap().to_string();
        assert!(e.contains("10.0.0.2:6379: connected and in sync, not yet listed"), "{e}");
        let e = choose(&v[0], &[]).err().unwrap();
        assert!(matches!(&e, HandoffError::NoReplica { detail, .. } if detail == "no replicas"), "{e}");
    }
}
