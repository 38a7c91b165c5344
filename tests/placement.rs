//! Placement against real clusters, Redis 7 and Valkey 9, hosts given by
//! `cluster-announce-hostname`: masters stacked on one host by failovers are spread by a
//! CLUSTER FAILOVER, a master that lost its replicas gets one from a master with two, a
//! replica beside its master is exchanged away; a cluster-aware client writes through
//! each and every acknowledged write is read back. A holder killed mid-failover leaves
//! nothing for the next one but to see the roles as they are. `simulate` shows the same
//! on a snapshot file.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd, on_each_engine};
use common::*;

/// Gives each node (by index in `c.nodes`) its host, and waits until every live node's
/// view shows every live node's hostname.
async fn set_hosts(c: &LocalCluster, hosts: &[(usize, String)]) {
    for (i, h) in hosts {
        let mut con = c.conn(&c.nodes[*i].addr()).await.unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-announce-hostname")
            .arg(h)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }
    let want: Vec<(String, String)> = hosts
        .iter()
        .filter(|(i, _)| c.nodes[*i].proc.is_some())
        .map(|(i, h)| (c.nodes[*i].addr(), h.clone()))
        .collect();
    wait_for_async(30, "every view shows the hostnames", || async {
        for a in c.live_addrs() {
            let view = nodes(c, &a).await;
            if !want.iter().all(|(addr, h)| view.iter().any(|n| n.addr == *addr && n.hostname.as_deref() == Some(h))) {
                return false;
            }
        }
        true
    })
    .await;
}

/// Hosts of the masters, as a seed's view has them: host -> masters there.
async fn masters_per_host(c: &LocalCluster) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for n in nodes(c, &c.live_addrs()[0]).await.iter().filter(|n| n.is_master() && !n.slots.is_empty()) {
        *out.entry(n.hostname.clone().unwrap_or_default()).or_default() += 1;
    }
    out
}

/// Replicas standing on their master's host, by a seed's view.
async fn beside(c: &LocalCluster) -> usize {
    let view = nodes(c, &c.live_addrs()[0]).await;
    view.iter()
        .filter(|r| !r.is_master() && !r.is_failed())
        .filter(|r| view.iter().any(|m| Some(&m.id) == r.master_id.as_ref() && m.hostname == r.hostname))
        .count()
}

fn config(c: &LocalCluster, dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, format!("{}{extra}\n", cluster_section(c, dir, None))).unwrap();
    p
}

fn rebalance(cfg: &std::path::Path) -> (i32, serde_json::Value, String) {
    let out =
        bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// A cluster-aware client writing until told to stop; hands back what was acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(Vec<(String, u64)>, redis::cluster_async::ClusterConnection)>,
}

impl Writer {
    async fn start(c: &LocalCluster) -> Writer {
        let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("redis://{a}")).collect();
        let mut con = redis::cluster::ClusterClient::new(seeds).unwrap().get_async_connection().await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut acked, mut i) = (Vec::new(), 0u64);
            while !s.load(Ordering::Relaxed) {
                let key = format!("w:{}", i % 5000);
                if redis::cmd("SET").arg(&key).arg(i).query_async::<()>(&mut con).await.is_ok() {
                    acked.push((key, i));
                }
                i += 1;
            }
            (acked, con)
        });
        Writer { stop, task }
    }

    /// Stops, then reads every acknowledged key back: its last acknowledged value.
    async fn check(self) {
        self.stop.store(true, Ordering::Relaxed);
        let (acked, mut con) = self.task.await.unwrap();
        assert!(acked.len() > 50, "the writer made too few writes: {}", acked.len());
        let mut last: BTreeMap<String, u64> = BTreeMap::new();
        for (k, i) in acked {
            last.insert(k, i);
        }
        for (k, i) in &last {
            let got: Option<u64> = redis::cmd("GET").arg(k).query_async(&mut con).await.unwrap();
            assert!(got.is_some_and(|g| g >= *i), "acknowledged write {k}={i} lost (read {got:?})");
        }
    }
}

/// Node indexes: masters in order, then each master's replicas.
fn shards(c: &LocalCluster) -> Vec<(usize, Vec<usize>)> {
    c.masters.iter().map(|&m| (m, (0..c.nodes.len()).filter(|&r| c.nodes[r].replica_of == Some(m)).collect())).collect()
}

fn action(v: &serde_json::Value, i: usize) -> &serde_json::Value {
    &v["placement"]["actions"][i]
}

async fn failovers_that_stack_masters_on_one_host_are_spread(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).replicas(1).start().await.unwrap();
    c.load_skewed(3_000, 1).await.unwrap();
    let s = shards(&c);
    // Two masters on host a; host c holds only replicas.
    let hosts = [(s[0].0, "a"), (s[1].0, "a"), (s[2].0, "b"), (s[0].1[0], "b"), (s[1].1[0], "c"), (s[2].1[0], "c")];
    set_hosts(&c, &hosts.map(|(i, h)| (i, h.to_string()))).await;
    assert_eq!(masters_per_host(&c).await, BTreeMap::from([("a".into(), 2), ("b".into(), 1)]));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&c, dir.path(), "");
    let owners = c.slot_owners().await.unwrap();

    let w = Writer::start(&c).await;
    let (code, v, stderr) = tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap();
    w.check().await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["placement"]["violations"]["spread"], 2, "{:#}", v["placement"]);
    assert_eq!(action(&v, 0)["rule"], "spread");
    assert_eq!(action(&v, 0)["kind"], "failover");
    assert_eq!(action(&v, 0)["address"], c.nodes[s[1].1[0]].addr());
    assert_eq!(action(&v, 0)["result"]["outcome"], "done", "{:#}", v["placement"]);
    assert_eq!(masters_per_host(&c).await, BTreeMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]));
    // No slot moved: each slot is where it was, or with the replica that took its
    // master's role.
    let (old, new) = (c.nodes[s[1].0].addr(), c.nodes[s[1].1[0]].addr());
    for (slot, (before, after)) in owners.iter().zip(c.slot_owners().await.unwrap()).enumerate() {
        assert!(*before == after || (*before == old && after == new), "slot {slot}: {before} -> {after}");
    }
    assert!(c.open_slots().await.unwrap().is_empty());

    // The next run finds nothing to change (once every view has the new roles).
    let demoted = c.nodes[s[1].0].id.clone();
    let promoted = c.nodes[s[1].1[0]].id.clone();
    wait_for_async(30, "every view has the swapped roles", || follows_everywhere(&c, &demoted, &promoted)).await;
    let cfg = dir.path().join("config.toml");
    let (code, v, stderr) = tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["placement"]["violations"], serde_json::json!({}), "{:#}", v["placement"]);
    assert_eq!(v["placement"]["actions"], serde_json::json!([]));
}

async fn a_master_that_lost_its_replicas_gets_one_from_a_master_with_two(engine: Engine) {
    let mut c = ClusterSpec::new(engine, 3, 0).replicas(2).start().await.unwrap();
    c.load_skewed(3_000, 2).await.unwrap();
    let s = shards(&c);
    let hosts: Vec<(usize, String)> = (0..c.nodes.len()).map(|i| (i, format!("h{i}"))).collect();
    set_hosts(&c, &hosts).await;
    for &r in &s[2].1 {
        let addr = c.nodes[r].addr();
        c.kill(&addr);
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&c, dir.path(), "[topology]\nreplicas-per-master = 1");
    let w = Writer::start(&c).await;
    // In process, as the daemon runs it: the answer, and the role change counted.
    let ctx = common::context_for(&cfg);
    let f = ctx.run_once(common::MANUAL, &tokio_util::sync::CancellationToken::new()).await;
    w.check().await;
    let v = serde_json::to_value(&f.answer).unwrap();
    assert_eq!(f.outcome.exit_code(), 0, "{v:#}");
    let role_changes = |o: &str| ctx.metrics.placement.role_changes_total.with_label_values(&[o]).get();
    assert_eq!((role_changes("done"), role_changes("failed")), (1, 0), "{:#}", v["placement"]);
    assert_eq!(v["placement"]["violations"]["redundancy"], 1, "{:#}", v["placement"]);
    let a = action(&v, 0);
    assert_eq!((a["rule"].as_str(), a["kind"].as_str()), (Some("redundancy"), Some("replicate")), "{a:#}");
    assert_eq!(a["to_master"], c.nodes[s[2].0].id, "{a:#}");
    assert_eq!(a["result"]["outcome"], "done", "{a:#}");
    assert!(a["bytes"].as_u64().unwrap() > 0, "a full sync is counted in bytes: {a:#}");
    // The master serves one replica now, in sync.
    let mut con = c.conn(&c.nodes[s[2].0].addr()).await.unwrap();
    let info: String = redis::cmd("INFO").arg("replication").query_async(&mut con).await.unwrap();
    assert!(info.contains("connected_slaves:1") && info.contains("state=online"), "{info}");
}

async fn a_replica_beside_its_master_is_exchanged_away(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).replicas(1).start().await.unwrap();
    c.load_skewed(3_000, 3).await.unwrap();
    let s = shards(&c);
    let hosts = [(s[0].0, "a"), (s[0].1[0], "a"), (s[1].0, "b"), (s[1].1[0], "c"), (s[2].0, "c"), (s[2].1[0], "b")];
    set_hosts(&c, &hosts.map(|(i, h)| (i, h.to_string()))).await;
    assert_eq!(beside(&c).await, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&c, dir.path(), "");
    let w = Writer::start(&c).await;
    let (code, v, stderr) = tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap();
    w.check().await;
    assert_eq!(code, 0, "{stderr}");
    let actions = v["placement"]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{:#}", v["placement"]);
    assert!(
        actions.iter().all(|a| a["rule"] == "apart" && a["kind"] == "replicate" && a["result"]["outcome"] == "done")
    );
    wait_for_async(30, "the views agree on the new replicas", || async { beside(&c).await == 0 }).await;
    assert_eq!(masters_per_host(&c).await.values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);
}

/// With etcd: the holder killed right after it sent CLUSTER FAILOVER. The server ends
/// the failover by itself; the next holder (once the lease is gone) reads the roles as
/// they are and finds masters spread, or spreads them.
async fn a_holder_killed_mid_failover_leaves_the_next_one_a_clean_start(engine: Engine) {
    let etcd = LocalEtcd::start().unwrap();
    let c = ClusterSpec::new(engine, 3, 0).replicas(1).start().await.unwrap();
    c.load_skewed(2_000, 4).await.unwrap();
    let s = shards(&c);
    let hosts = [(s[0].0, "a"), (s[1].0, "a"), (s[2].0, "b"), (s[0].1[0], "b"), (s[1].1[0], "c"), (s[2].1[0], "c")];
    set_hosts(&c, &hosts.map(|(i, h)| (i, h.to_string()))).await;
    let dir = tempfile::tempdir().unwrap();
    let etcd_section = format!("[etcd]\nendpoints = [\"{}\"]\nlease-ttl = \"2s\"", etcd.endpoint());
    let cfg = config(&c, dir.path(), &etcd_section);
    let w = Writer::start(&c).await;
    let mut child = bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once"])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it right after it sent CLUSTER FAILOVER: read its log until then.
    let stderr = child.stderr.take();
    let seen = std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr.unwrap())).map_while(Result::ok) {
            seen += &line;
            seen.push('\n');
            if line.contains("placement: CLUSTER FAILOVER") {
                return (true, seen);
            }
        }
        (false, seen)
    })
    .join();
    child.kill().unwrap();
    child.wait().unwrap();
    let (sent, seen) = seen.unwrap();
    assert!(sent, "the run ended before its failover:\n{seen}");
    c.wait_ok(Duration::from_secs(30)).await.unwrap();
    let last = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    wait_for_async(60, "a run after the killed holder's lease expired", || {
        let (cfg, last) = (cfg.clone(), last.clone());
        async move {
            let (_, v, _) = tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap();
            let ran = v["reason"] != "lock_held_elsewhere";
            *last.lock().unwrap() = v;
            ran
        }
    })
    .await;
    let last = last.lock().unwrap().clone();
    let p = &last["placement"];
    // The intent the killed holder recorded is reported by the next one.
    assert!(p["explanation"].to_string().contains("was cut short"), "{p:#}");
    let done = p["actions"].as_array().unwrap().iter().all(|a| a["result"]["outcome"] == "done");
    assert!(p["violations"].get("spread").is_none() || done, "{p:#}");
    wait_for_async(30, "masters spread one per host", || async {
        masters_per_host(&c).await.values().all(|&n| n == 1)
    })
    .await;
    w.check().await;
    assert!(c.open_slots().await.unwrap().is_empty());
}

/// Failback: after a failover stacks two masters on one host, the former master gets
/// its role back only once it has been quiet for `failback-after`; a node that flaps is
/// left alone.
async fn failback_waits_for_a_quiet_period_and_a_flapping_node_is_left_alone(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).replicas(1).start().await.unwrap();
    c.load_skewed(2_000, 5).await.unwrap();
    let s = shards(&c);
    let hosts = [(s[0].0, "a"), (s[1].0, "b"), (s[2].0, "c"), (s[0].1[0], "b"), (s[1].1[0], "c"), (s[2].1[0], "a")];
    set_hosts(&c, &hosts.map(|(i, h)| (i, h.to_string()))).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(&c, dir.path(), "[topology]\nfailback-after = \"10s\"");
    let w = Writer::start(&c).await;
    let run = |cfg: &std::path::Path| {
        let cfg = cfg.to_path_buf();
        async move { tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap() }
    };
    let (code, v, e) = run(&cfg).await;
    assert_eq!(code, 0, "{e}");
    assert_eq!(v["placement"]["actions"], serde_json::json!([]), "{:#}", v["placement"]);

    // m1's node fails over to its replica on host c: c holds two masters, b none.
    let addr_id = |i: usize| (c.nodes[i].addr(), c.nodes[i].id.clone());
    let (m1, r1) = (addr_id(s[1].0), addr_id(s[1].1[0]));
    failover(&c, &r1.0, &m1.1).await;
    let (_, v, _) = run(&cfg).await;
    let p = &v["placement"];
    assert_eq!(p["violations"]["spread"], 2, "{p:#}");
    assert_eq!(p["actions"], serde_json::json!([]), "{p:#}");
    assert!(p["explanation"].to_string().contains("waits until it is quiet"), "{p:#}");

    // Once quiet for 10 s, the former master gets its role back; until then every run
    // says it waits.
    let started = std::time::Instant::now();
    let v = loop {
        // What a run answers is decided when it starts: the bound is on when the last run
        // that still waited began, so a run the machine stalls does not count its stall.
        let began = started.elapsed();
        let (code, v, e) = run(&cfg).await;
        assert_eq!(code, 0, "{e}");
        if !v["placement"]["actions"].as_array().unwrap().is_empty() {
            break v;
        }
        // Shown when the test fails: what each run left of the roles.
        let kept: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("t.json")).unwrap_or_default()).unwrap_or_default();
        eprintln!("{:.1} s: {} | {}", started.elapsed().as_secs_f64(), kept["roles"], v["placement"]["explanation"]);
        assert!(v["placement"]["explanation"].to_string().contains("waits until it is quiet"), "{:#}", v["placement"]);
        assert!(
            began < Duration::from_secs(40),
            "a run begun {began:?} after the failover still waits: {:#}\nrole history: {}",
            v["placement"],
            std::fs::read_to_string(dir.path().join("t.json")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(started.elapsed() >= Duration::from_secs(5), "failback came before the quiet period");
    let a = action(&v, 0);
    assert_eq!(
        (a["kind"].as_str(), a["node"].as_str()),
        (Some("failover"), Some(m1.1.as_str())),
        "{:#}",
        v["placement"]
    );
    assert_eq!(a["result"]["outcome"], "done", "{a:#}");
    assert!(a["why"].as_str().unwrap().contains("failback"), "{a:#}");
    assert_eq!(masters_per_host(&c).await.values().copied().collect::<Vec<_>>(), vec![1, 1, 1]);

    // Straight back again: two role changes within 10 s. Left alone, even once quiet.
    failover(&c, &r1.0, &m1.1).await;
    for wait in [0, 11] {
        tokio::time::sleep(Duration::from_secs(wait)).await;
        let (_, v, _) = run(&cfg).await;
        let p = &v["placement"];
        assert_eq!(p["actions"], serde_json::json!([]), "{p:#}");
        assert!(p["explanation"].to_string().contains("flaps"), "{p:#}");
    }
    w.check().await;
}

/// Zones: Valkey's own `availability-zone` on Valkey, `[topology.zones]` by host on
/// Redis. Each shard stands within one zone; the run exchanges replicas so that each
/// spans both, and `simulate` shows the zones with their masters.
async fn a_shard_within_one_zone_is_split_across_zones(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).replicas(1).start().await.unwrap();
    c.load_skewed(2_000, 6).await.unwrap();
    let s = shards(&c);
    // Zone x: hosts a and b; zone y: c and d. Shard 0 on a+b, shard 1 on c+d.
    let hosts = [(s[0].0, "a"), (s[0].1[0], "b"), (s[1].0, "c"), (s[1].1[0], "d")];
    set_hosts(&c, &hosts.map(|(i, h)| (i, h.to_string()))).await;
    let zone = |h: &str| if h < "c" { "x" } else { "y" };
    let dir = tempfile::tempdir().unwrap();
    let extra = match engine {
        Engine::Valkey => {
            for (i, h) in hosts {
                let mut con = c.conn(&c.nodes[i].addr()).await.unwrap();
                redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("availability-zone")
                    .arg(zone(h))
                    .query_async::<()>(&mut con)
                    .await
                    .unwrap();
            }
            String::new()
        }
        Engine::Redis => {
            let lines: Vec<String> = hosts.iter().map(|(_, h)| format!("{h} = \"{}\"", zone(h))).collect();
            format!("[topology.zones]\n{}", lines.join("\n"))
        }
    };
    let cfg = config(&c, dir.path(), &extra);
    let out = bin().args(["simulate", "--config", cfg.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let zones: Vec<(&str, usize)> = v["placement"]["zones"]
        .as_array()
        .unwrap()
        .iter()
        .map(|z| (z["name"].as_str().unwrap(), z["masters"].as_array().unwrap().len()))
        .collect();
    assert_eq!(zones, vec![("x", 1), ("y", 1)], "{:#}", v["placement"]);
    assert_eq!(v["placement"]["violations"]["apart"], 2, "{:#}", v["placement"]);

    let w = Writer::start(&c).await;
    let (code, v, stderr) = tokio::task::spawn_blocking(move || rebalance(&cfg)).await.unwrap();
    w.check().await;
    assert_eq!(code, 0, "{stderr}");
    let actions = v["placement"]["actions"].as_array().unwrap();
    assert_eq!(actions.len(), 2, "{:#}", v["placement"]);
    assert!(actions.iter().all(|a| a["kind"] == "replicate" && a["result"]["outcome"] == "done"), "{actions:#?}");
    // Each shard now has a node in each zone.
    wait_for_async(30, "each shard spans both zones", || async {
        let view = nodes(&c, &c.live_addrs()[0]).await;
        let zone_of = |id: &str| view.iter().find(|n| n.id == id).and_then(|n| n.hostname.as_deref()).map(zone);
        view.iter().filter(|r| !r.is_master()).all(|r| {
            let master = r.master_id.as_deref().and_then(zone_of);
            master.is_some() && master != zone_of(&r.id)
        })
    })
    .await;
}

/// Every live node's view has the node `id` as a replica of the node `master` (ids).
async fn follows_everywhere(c: &LocalCluster, id: &str, master: &str) -> bool {
    for a in c.live_addrs() {
        if !nodes(c, &a).await.iter().any(|n| n.id == id && n.master_id.as_deref() == Some(master)) {
            return false;
        }
    }
    true
}

/// CLUSTER FAILOVER on the replica at `replica`, once its link is up, and a wait until
/// every view has its master `demoted` (by id) as its replica. A server abandons a
/// manual failover after 5 s (its views may still lag behind the last one): asked again
/// every 6 s.
async fn failover(c: &LocalCluster, replica: &str, demoted: &str) {
    let mut con = c.conn(replica).await.unwrap();
    wait_for_async(30, "the replica's link is up", || {
        let mut con = con.clone();
        async move {
            let info: String = redis::cmd("INFO").arg("replication").query_async(&mut con).await.unwrap();
            info.contains("master_link_status:up")
        }
    })
    .await;
    let promoted = c.id_of(replica).unwrap().to_string();
    // Every view lists it as its master's replica first: a master ignores a failover
    // request from a node its view does not list as its own replica.
    wait_for_async(30, "every view lists the replica under its master", || follows_everywhere(c, &promoted, demoted))
        .await;
    for _ in 0..5 {
        redis::cmd("CLUSTER").arg("FAILOVER").query_async::<()>(&mut con).await.unwrap();
        let asked = std::time::Instant::now();
        while asked.elapsed() < Duration::from_secs(6) {
            if follows_everywhere(c, demoted, &promoted).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("{replica} did not take over from {demoted} within 30 s");
}

on_each_engine!(
    a_shard_within_one_zone_is_split_across_zones,
    failback_waits_for_a_quiet_period_and_a_flapping_node_is_left_alone,
    failovers_that_stack_masters_on_one_host_are_spread,
    a_master_that_lost_its_replicas_gets_one_from_a_master_with_two,
    a_replica_beside_its_master_is_exchanged_away,
    a_holder_killed_mid_failover_leaves_the_next_one_a_clean_start,
);

/// `simulate` on a snapshot file with hosts and zones: the placement it shows.
#[test]
fn simulate_shows_placement_from_a_snapshot_file() {
    let dir = tempfile::tempdir().unwrap();
    let member = |id: &str, host: &str, zone: &str| serde_json::json!({"id": id, "address": format!("{id}:6379"), "hostname": host, "zone": zone});
    let replica = |id: &str, host: &str, zone: &str, master: &str| serde_json::json!({"id": id, "address": format!("{id}:6379"), "hostname": host, "zone": zone, "master": master});
    let snap = serde_json::json!({
        "version": 1, "cluster_id": "t",
        "members": [member("m1", "a", "x"), member("m2", "a", "x"), member("m3", "b", "y")],
        "buckets": [{"id": 0, "bytes": 100, "copies": ["m1"]}, {"id": 1, "bytes": 100, "copies": ["m2"]}, {"id": 2, "bytes": 100, "copies": ["m3"]}],
        "replicas": [replica("r1", "b", "y", "m1"), replica("r2", "c", "z", "m2"), replica("r3", "c", "z", "m3")],
    });
    std::fs::write(dir.path().join("snap.json"), snap.to_string()).unwrap();
    let cfg = dir.path().join("config.toml");
    let text = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\n",
        dir.path().join("snap.json").display()
    );
    std::fs::write(&cfg, text).unwrap();
    let out = bin().args(["simulate", "--config", cfg.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let p = &v["placement"];
    let hosts: Vec<(&str, usize)> = p["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap(), h["masters"].as_array().unwrap().len()))
        .collect();
    assert_eq!(hosts, vec![("a", 2), ("b", 1), ("c", 0)], "{p:#}");
    assert_eq!(p["zones"].as_array().unwrap().len(), 3, "{p:#}");
    assert_eq!(p["actions"][0]["kind"], "failover", "{p:#}");
    assert_eq!(p["actions"][0]["node"], "r2", "{p:#}");
    // The table says the same.
    let out = bin().args(["simulate", "--config", cfg.to_str().unwrap()]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("host a") && table.contains("zone z") && table.contains("broken: spread"), "{table}");
}
