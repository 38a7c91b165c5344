//! Placement at scale: MASTERS masters with a replica each, every master on host a and
//! the replicas spread over hosts b and c (what a series of failovers back to one rack
//! leaves). `autobalancer rebalance --once` runs until no spread violation is left, with
//! the default `max-role-changes-per-run` (2) and with all changes in one run. Prints one
//! Markdown row per setting: runs, role changes, wall time, seconds per failover, slots
//! moved, bytes moved, masters per host after, every key intact.
//! Usage: bench_placement [--valkey] MASTERS KEYS [AUTOBALANCER_BIN].

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster};

async fn set_hosts(c: &LocalCluster) {
    for (i, n) in c.nodes.iter().enumerate() {
        let host = match n.replica_of {
            None => "a".to_string(),
            Some(_) => if i % 2 == 0 { "b" } else { "c" }.to_string(),
        };
        let mut con = c.conn(&n.addr()).await.unwrap();
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-announce-hostname")
            .arg(host)
            .query_async::<()>(&mut con)
            .await
            .unwrap();
    }
    // Gossip carries the hostnames: wait until a seed's view has them all.
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while Instant::now() < deadline {
        let view: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c.conn(&c.master_addrs()[0]).await.unwrap())
            .await
            .unwrap();
        if view.lines().all(|l| l.split_whitespace().nth(1).is_some_and(|a| a.contains(','))) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("hostnames did not spread within 60 s");
}

async fn masters_per_host(c: &LocalCluster) -> BTreeMap<String, usize> {
    let view: String =
        redis::cmd("CLUSTER").arg("NODES").query_async(&mut c.conn(&c.live_addrs()[0]).await.unwrap()).await.unwrap();
    let mut out = BTreeMap::new();
    for l in view.lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f[2].contains("master") && f.len() > 8 {
            let host = f[1].split_once(',').map_or("", |(_, h)| h).to_string();
            *out.entry(host).or_default() += 1;
        }
    }
    out
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let masters: usize = args.get(1).and_then(|s| s.parse().ok()).expect("MASTERS KEYS");
    let keys: usize = args.get(2).and_then(|s| s.parse().ok()).expect("MASTERS KEYS");
    let bin = args.get(3).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    for per_run in [2, 64] {
        let c = ClusterSpec::new(engine, masters, 0).replicas(1).start().await.unwrap();
        c.load_skewed(keys, 7).await.unwrap();
        set_hosts(&c).await;
        let digest = c.digest().await.unwrap();
        let owners = c.slot_owners().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("c.toml");
        let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "[cluster]\nid = \"bench\"\nseeds = [{}]\n[topology]\nmax-role-changes-per-run = {per_run}\nfailback-after = \"1s\"\n",
            seeds.join(",")
        );
        std::fs::write(&cfg, text).unwrap();
        let (mut runs, mut changes, mut failover_s, mut moved) = (0, 0, 0.0, 0u64);
        let t0 = Instant::now();
        loop {
            let out = Command::new(&bin)
                .args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
                .env("STATE_DIRECTORY", dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            runs += 1;
            moved += v["moved_bytes"].as_u64().unwrap_or(0);
            let done: Vec<&serde_json::Value> = v["placement"]["actions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|a| a["result"]["outcome"] == "done")
                .collect();
            changes += done.len();
            failover_s += done.iter().filter_map(|a| a["result"]["seconds"].as_f64()).sum::<f64>();
            if v["placement"]["violations"].get("spread").is_none() || runs > 4 * masters {
                break;
            }
            if done.is_empty() {
                // Roles settling after the last run's failovers (views catching up).
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        let wall = t0.elapsed().as_secs_f64();
        c.wait_ok(std::time::Duration::from_secs(60)).await.unwrap();
        let after = c.slot_owners().await.unwrap();
        let slots_moved = owners.iter().zip(&after).filter(|(a, b)| a != b).count();
        let intact = c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty();
        let hosts = masters_per_host(&c).await;
        println!(
            "| {masters} | {per_run} | {runs} | {changes} | {wall:.1} | {:.2} | {slots_moved} slots changed owner node (shards: 0 slots moved) | {moved} | {hosts:?} | {} |",
            if changes > 0 { failover_s / changes as f64 } else { 0.0 },
            if intact { "yes" } else { "NO" }
        );
    }
}
