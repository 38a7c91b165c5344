//! Replicas and the slots repair settles: a master demoted by failover that kept a flag
//! its new master cleared while it was away is brought in line by repair.

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
