//! `handoff` against real clusters, Redis 7 and Valkey 9: beside a master its in-sync
//! replica takes over and every key stays; beside a replica there is nothing to do; a
//! master without a replica, or with a slot in flight, is refused with the way out; the
//! API's `POST /handoff` does the same behind the token.

mod common;

use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, digest_diff, on_each_engine};
use common::*;

const TOKEN: &str = "handoff-token";

/// A config beside `member`, written to `dir/name.toml`; returns its path.
fn config(c: &LocalCluster, dir: &std::path::Path, name: &str, member: &str) -> String {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, cluster_section(c, dir, Some(member))).unwrap();
    path.to_str().unwrap().to_string()
}

/// A sidecar beside `member` whose API needs the token.
fn sidecar(c: &LocalCluster, dir: &std::path::Path, member: &str) -> SidecarProc {
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).unwrap();
    let token = format!("token-file = \"{}\"", dir.join("token").display());
    let cfg = format!("{}[schedule]\ncron = \"0 0 3 * * *\"\n", cluster_section(c, dir, Some(member)));
    SidecarProc::start_with(dir, "s", &cfg, &token)
}

async fn masters_now(c: &LocalCluster) -> Vec<String> {
    let mut m = c.current_masters().await.unwrap();
    m.sort();
    m
}

async fn setslot(c: &LocalCluster, addr: &str, args: &[&str]) {
    let mut con = c.conn(addr).await.unwrap();
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SETSLOT");
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async::<()>(&mut con).await.unwrap();
}

/// Waits until the replica at `addr` has its link to its master up (its resync is done).
async fn wait_in_sync(c: &LocalCluster, addr: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let mut con = c.conn(addr).await.unwrap();
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut con).await.unwrap();
        if info.contains("role:slave") && info.contains("master_link_status:up") {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{addr} did not sync within 30 s: {info}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until every live node's view has `addr` as a replica of the node `master_id`
/// (gossip after a failover), so a failover right after it finds the cluster agreeing.
async fn wait_views_agree(c: &LocalCluster, addr: &str, master_id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    'poll: loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the nodes did not agree within 30 s that {addr} follows {master_id}"
        );
        for a in c.live_addrs() {
            let mut con = c.conn(&a).await.unwrap();
            let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await.unwrap();
            let agrees = nodes.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() > 3 && f[1].starts_with(&format!("{addr}@")) && f[2].contains("slave") && f[3] == master_id
            });
            if !agrees {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue 'poll;
            }
        }
        return;
    }
}

async fn assert_nothing_lost(c: &LocalCluster, before: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>) {
    let after = c.digest().await.unwrap();
    assert_eq!(after.len(), before.len());
    if let Some(diff) = digest_diff(before, &after) {
        panic!("keys changed across the handoff: {diff}");
    }
}

async fn handoff_beside_a_master_promotes_its_replica_and_loses_nothing(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).replicas(1).start().await.unwrap();
    c.load_skewed(3_000, 41).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let master = c.master_addrs()[0].clone();
    let replica = c.nodes.iter().find(|n| n.replica_of == Some(0)).unwrap().addr();
    let beside_master = config(&c, dir.path(), "m", &master);
    let beside_replica = config(&c, dir.path(), "r", &replica);
    let roles = masters_now(&c).await;
    assert!(roles.contains(&master) && !roles.contains(&replica), "{roles:?}");

    // Beside a replica: nothing to do, and nothing changes.
    let (code, out, err) = cli(&["handoff", "--config", &beside_replica]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("{replica} is a replica (of {master})")), "{out}");
    assert_eq!(masters_now(&c).await, roles);

    // A slot of the master in flight: refused, naming the slot; nothing changes.
    let other = c.id_of(&c.master_addrs()[1]).unwrap().to_string();
    setslot(&c, &master, &["7", "MIGRATING", &other]).await;
    let (code, out, err) = cli(&["handoff", "--config", &beside_master, "--format", "json"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert_eq!(json(&out)["error"]["code"], "open_slot", "{out}");
    assert!(err.contains(&format!("{master} has slot 7 open")), "{err}");
    assert_eq!(masters_now(&c).await, roles);
    setslot(&c, &master, &["7", "STABLE"]).await;

    // Beside the master: its replica takes over, the master follows it, every key stays.
    let (code, out, err) = cli(&["handoff", "--config", &beside_master, "--format", "json"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let h = json(&out);
    assert_eq!(h["action"], "promoted", "{h:#}");
    assert_eq!((h["node"].as_str(), h["master"].as_str()), (Some(master.as_str()), Some(replica.as_str())), "{h:#}");
    let now = masters_now(&c).await;
    assert!(now.contains(&replica) && !now.contains(&master), "{now:?}");
    assert_eq!(now.len(), 3, "{now:?}");
    assert_nothing_lost(&c, &before).await;

    // Again beside the old master, a replica now: nothing to do.
    let (code, out, err) = cli(&["handoff", "--config", &beside_master]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("{master} is a replica (of {replica})")), "{out}");

    // The API of a sidecar beside the new master: the token is needed, then it hands back
    // (once the old master, its replica now, has caught up).
    let s = sidecar(&c, dir.path(), &replica);
    wait_in_sync(&c, &master).await;
    wait_views_agree(&c, &master, c.id_of(&replica).unwrap()).await;
    let (code, body) = call("POST", &s.url("/handoff"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (401, serde_json::json!("unauthorized")), "{body}");
    assert_eq!(masters_now(&c).await, now);
    let (code, body) = call("POST", &s.url("/handoff"), Some(TOKEN), None).unwrap();
    assert_eq!(code, 200, "{body}\n{}", s.logs());
    assert_eq!(json(&body)["master"], master.as_str(), "{body}");
    assert_eq!(masters_now(&c).await, roles);
    assert_nothing_lost(&c, &before).await;
}

async fn handoff_beside_a_master_without_replicas_fails_and_says_evacuate(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let master = c.master_addrs()[0].clone();
    let cfg = config(&c, dir.path(), "m", &master);
    let roles = masters_now(&c).await;

    let (code, out, err) = cli(&["handoff", "--config", &cfg]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(err.contains(&format!("{master} is a master with no usable replica (no replicas)")), "{err}");
    assert!(err.contains("evacuate start --wait"), "{err}");
    let (code, out, _) = cli(&["handoff", "--config", &cfg, "--format", "json"]);
    assert_eq!((code, json(&out)["error"]["code"].clone()), (1, serde_json::json!("no_replica")), "{out}");

    // The API: 401 without the token; with it, the same refusal as a 409.
    let s = sidecar(&c, dir.path(), &master);
    let (code, body) = call("POST", &s.url("/handoff"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (401, serde_json::json!("unauthorized")), "{body}");
    let (code, body) = call("POST", &s.url("/handoff"), Some(TOKEN), None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (409, serde_json::json!("no_replica")), "{body}");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains(&master), "{body}");
    assert_eq!(masters_now(&c).await, roles);
}

#[test]
fn handoff_on_a_snapshot_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("f.toml");
    let snap = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json");
    std::fs::write(&cfg, format!("[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{snap}\"\n")).unwrap();
    let (code, _, err) = cli(&["handoff", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cluster.backend = \"redis\""), "{err}");
}

on_each_engine!(
    handoff_beside_a_master_promotes_its_replica_and_loses_nothing,
    handoff_beside_a_master_without_replicas_fails_and_says_evacuate,
);
