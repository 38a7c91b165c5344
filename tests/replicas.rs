//! Replicas and moves: a master demoted by failover that kept a flag its new master
//! cleared while it was away is brought in line by repair; a move into a shard whose
//! replica does not take it stops the run; the sidecar beside a master resets the link of
//! a replica that acknowledges nothing.

mod common;

use std::time::Duration;

use autobalancer::cluster::redis::RedisCluster;
use autobalancer::cluster::{Cluster, RepairOptions};
use autobalancer::model::MoveIntent;
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, on_each_engine};
use common::{cluster_section, nodes, wait_for_async};

async fn setslot(c: &LocalCluster, addr: &str, slot: u16, args: &[&str]) {
    let mut con = c.conn(addr).await.unwrap();
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT").arg(slot).arg(args);
    cmd.query_async::<()>(&mut con).await.unwrap();
}

/// The slot flags `addr` shows for itself, and whether it is a master.
async fn own_view(c: &LocalCluster, addr: &str) -> (bool, Vec<u16>) {
    let all = nodes(c, addr).await;
    let me = all.iter().find(|n| n.is_myself()).unwrap();
    (me.is_master(), me.migrating.iter().chain(&me.importing).map(|(s, _)| *s).collect())
}

/// A slot is migrating when its source freezes and its replica takes over; the slot is
/// made stable on the new master and the target while the old master is away, so Valkey
/// replicates the STABLE to nobody. The old master rejoins as a replica: on Valkey it
/// keeps its MIGRATING flag (a demoted master of the same shard keeps its slot states),
/// on Redis it drops every flag. Repair of the recorded move leaves no node with the slot
/// open, and every key where it was.
async fn a_demoted_master_left_with_a_flag_follows_after_repair(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).replicas(1).start().await.unwrap();
    c.load_skewed(2_000, 4).await.unwrap();
    let before = c.digest().await.unwrap();
    let m = c.master_addrs();
    let (src, dst) = (m[0].clone(), m[1].clone());
    let slot = c.slot_owners().await.unwrap().iter().position(|o| *o == src).unwrap() as u16;
    let (src_id, dst_id) = (c.id_of(&src).unwrap().to_string(), c.id_of(&dst).unwrap().to_string());
    let replica = nodes(&c, &src).await.into_iter().find(|n| n.master_id.as_deref() == Some(&src_id)).unwrap().addr;
    setslot(&c, &dst, slot, &["IMPORTING", &src_id]).await;
    setslot(&c, &src, slot, &["MIGRATING", &dst_id]).await;
    if engine == Engine::Valkey {
        wait_for_async(20, "the replica to take the MIGRATING flag", || async {
            own_view(&c, &replica).await.1.contains(&slot)
        })
        .await;
    }
    common::signal_node(&c, &src, "-STOP");
    let mut con = c.conn(&replica).await.unwrap();
    redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER").query_async::<()>(&mut con).await.unwrap();
    wait_for_async(20, "the replica to be master", || async { own_view(&c, &replica).await.0 }).await;
    setslot(&c, &replica, slot, &["STABLE"]).await;
    setslot(&c, &dst, slot, &["STABLE"]).await;
    common::signal_node(&c, &src, "-CONT");
    wait_for_async(30, "the old master to rejoin as a replica", || async { !own_view(&c, &src).await.0 }).await;
    let stale = own_view(&c, &src).await.1.contains(&slot);
    assert_eq!(stale, engine == Engine::Valkey, "Valkey keeps the demoted master's flag, Redis drops it");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, cluster_section(&c, dir.path(), None)).unwrap();
    let rc = RedisCluster::from_config(&autobalancer::config::Config::load(&cfg).unwrap()).unwrap();
    let intent = MoveIntent {
        bucket: slot as u64,
        from: src_id,
        to: dst_id,
        holder: "a run that failed over".into(),
        started_at: chrono::Utc::now(),
    };
    let r = rc.repair(&RepairOptions { intents: vec![intent], ..Default::default() }, &common::Held::new().await).await;
    let r = r.unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(r.intents_done, vec![slot as u64], "{r:?}");
    assert_eq!(c.open_slots().await.unwrap(), Vec::<String>::new(), "{r:?}");
    c.wait_ok(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.digest().await.unwrap(), before);
}

on_each_engine!(a_demoted_master_left_with_a_flag_follows_after_repair);

/// `cluster-node-timeout` raised to 120 s on every node: a node frozen for a test is not
/// marked failed meanwhile.
async fn no_failure_detection(c: &LocalCluster) {
    for addr in c.live_addrs() {
        let mut con = c.conn(&addr).await.unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-node-timeout")
            .arg(120_000)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }
}

/// A move's target whose replica takes nothing (frozen here; on Valkey 9 an atomic
/// import can leave a replica on a link that delivers nothing it applies until
/// `repl-timeout`): a failover of the target would lose what moved into it, which the
/// source has already dropped. The run moves the slot, waits for the target's replica,
/// says which master's replicas did not acknowledge it, and stops (exit 1,
/// `replicas_behind`) instead of moving more. Once the replica is back, the next run
/// goes on; no key is lost and no slot is left open. Standalone, with the defaults (the
/// atomic mover on Valkey, the grouped legacy mover on Redis).
async fn a_move_into_a_shard_whose_replica_takes_nothing_stops_the_run(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 1).replicas(1).start().await.unwrap();
    c.load_skewed(4_000, 9).await.unwrap();
    let before = c.digest().await.unwrap();
    // The frozen replica is not marked failed meanwhile (a failed one is not waited for).
    no_failure_detection(&c).await;
    let owners = c.slot_owners().await.unwrap();
    let empty = c.master_addrs().into_iter().find(|m| !owners.contains(m)).expect("an empty master");
    let empty_id = c.id_of(&empty).unwrap().to_string();
    let replica = nodes(&c, &empty).await.into_iter().find(|n| n.master_id.as_deref() == Some(&empty_id)).unwrap().addr;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let text =
        format!("{}[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n", cluster_section(&c, dir.path(), None));
    std::fs::write(&cfg, text).unwrap();
    let rebalance = || {
        let out = common::bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
        (out.status.code().unwrap_or(-1), v, stderr)
    };

    common::signal_node(&c, &replica, "-STOP");
    let (code, v, stderr) = tokio::task::block_in_place(rebalance);
    common::signal_node(&c, &replica, "-CONT");
    assert_eq!((code, v["reason"].as_str()), (1, Some("replicas_behind")), "{stderr}\n{v:#}");
    let failures = v["failures"].to_string();
    assert!(failures.contains(&format!("replica(s) of {empty} acknowledged")), "{failures}");
    let moved = c.slot_owners().await.unwrap().iter().filter(|o| **o == empty).count();
    assert!(moved > 0, "the slot whose replicas were waited for moved: {v:#}");

    // The replica back, the next run goes on where this one stopped.
    c.wait_ok(Duration::from_secs(30)).await.unwrap();
    common::caught_up(&c, &empty, &replica).await;
    let (code, v, stderr) = tokio::task::block_in_place(rebalance);
    assert_eq!(code, 0, "{stderr}\n{v:#}");
    assert!(["rebalanced", "skipped"].contains(&v["outcome"].as_str().unwrap()), "{v:#}");
    c.wait_ok(Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.open_slots().await.unwrap(), Vec::<String>::new());
    if let Some(diff) = autobalancer_testkit::digest_diff(&before, &c.digest().await.unwrap()) {
        panic!("{diff}\n{stderr}");
    }
}

on_each_engine!(a_move_into_a_shard_whose_replica_takes_nothing_stops_the_run);

/// `field:value` of INFO `section` on `addr`, as a number (0 when absent).
async fn info_field(c: &LocalCluster, addr: &str, section: &str, field: &str) -> u64 {
    let mut con = c.conn(addr).await.unwrap();
    let info: String = redis::cmd("INFO").arg(section).query_async(&mut con).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:"))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// The resynchronisations `master` has served, partial and full.
async fn syncs(c: &LocalCluster, master: &str) -> u64 {
    info_field(c, master, "stats", "sync_partial_ok").await + info_field(c, master, "stats", "sync_full").await
}

/// The sidecar beside a master watches its replicas outside any run: one the master
/// lists online that has acknowledged nothing for seconds (frozen here; on Valkey 9 a
/// replica whose stream broke after an atomic import, with the holder that made the
/// move gone) has its link reset, so it resyncs before a failover could promote it
/// without the data (nemesis, Valkey seed 62: the only copy of imported keys lost).
async fn the_sidecar_beside_a_master_resets_a_stuck_replica(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).replicas(1).start().await.unwrap();
    c.load_skewed(1_000, 3).await.unwrap();
    // The frozen replica is not marked failed meanwhile.
    no_failure_detection(&c).await;
    let master = c.master_addrs()[0].clone();
    let master_id = c.id_of(&master).unwrap().to_string();
    let replica =
        nodes(&c, &master).await.into_iter().find(|n| n.master_id.as_deref() == Some(&master_id)).unwrap().addr;
    let dir = tempfile::tempdir().unwrap();
    // No run starts on its own while the watch is looked at.
    let cfg = format!("{}[schedule]\ncron = \"0 0 3 1 1 *\"\n", cluster_section(&c, dir.path(), Some(&master)));
    let sidecar = common::SidecarProc::start(dir.path(), "beside", &cfg);
    common::caught_up(&c, &master, &replica).await;
    let before = syncs(&c, &master).await;
    common::signal_node(&c, &replica, "-STOP");
    let said = std::time::Instant::now();
    while !sidecar.logs().contains("resetting its link") {
        if said.elapsed() > Duration::from_secs(30) {
            common::signal_node(&c, &replica, "-CONT");
            panic!("the sidecar did not reset the frozen replica's link\n{}", sidecar.logs());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::signal_node(&c, &replica, "-CONT");
    let logs = sidecar.logs();
    assert!(logs.contains(&replica), "the reset names the replica\n{logs}");
    // Thawed, the replica runs the reset it was sent and asks its master again.
    wait_for_async(30, "the replica to resync after its link was reset", || async {
        syncs(&c, &master).await > before
    })
    .await;
    common::caught_up(&c, &master, &replica).await;
}

on_each_engine!(the_sidecar_beside_a_master_resets_a_stuck_replica);
