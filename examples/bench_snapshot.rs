//! Sizing speed: a cluster (3 loaded masters + 1 empty, loopback; Valkey with
//! `--valkey`) with KEYS keys, then:
//! - a cold snapshot, exact sizing of every key, with the largest keys-per-second budget (10M, no limit in practice) and with
//!   the default budget (100000 keys/s per master);
//! - a warm snapshot (the same backend again: every slot served from its cache);
//! - a run's reading of the cluster, warm, averaged over 20 of each: a snapshot alone,
//!   repair alone (it finds nothing to settle), and repair then the snapshot after it;
//! - `redis-cli --memkeys` on the three loaded masters at once, for comparison.
//!
//! Usage: bench_snapshot [--valkey] KEYS

use std::process::Command;
use std::time::Instant;

use autobalancer::cluster::{AnyCluster, Cluster, RepairOptions};
use autobalancer::config::Config;
use autobalancer_testkit::{ClusterSpec, Engine};

async fn timed_snapshot(cluster: &AnyCluster, label: &str) {
    let t = Instant::now();
    let s = cluster.snapshot().await.unwrap();
    let sizing = s.observed.sizing.clone().unwrap_or_default();
    println!(
        "{label}: {:.2} s for {} slots, {} keys ({} measured now), {} bytes",
        t.elapsed().as_secs_f64(),
        s.buckets.len(),
        sizing.keys,
        sizing.keys_measured_now,
        s.total_bytes()
    );
}

fn config(dir: &std::path::Path, seeds: &[String], extra: &str) -> Config {
    let seeds: Vec<String> = seeds.iter().map(|a| format!("\"{a}\"")).collect();
    let p = dir.join("c.toml");
    std::fs::write(&p, format!("[cluster]\nid = \"bench\"\nseeds = [{}]\n{extra}\n", seeds.join(","))).unwrap();
    Config::load(&p).unwrap()
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    let t0 = Instant::now();
    let bytes = c.load_skewed(keys, 5).await.unwrap();
    println!("loaded {keys} keys ({bytes} bytes of values) on {engine:?} in {:.1} s", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let seeds = c.master_addrs();

    let unlimited = AnyCluster::from_config(&config(dir.path(), &seeds, "sizing-keys-per-second = 10000000")).unwrap();
    timed_snapshot(&unlimited, "cold, exact, no budget").await;
    timed_snapshot(&unlimited, "warm (cache)").await;
    timed_snapshot(&unlimited, "warm (cache), again").await;
    let n = 20;
    // Repair commits past a fence: an in-process lock, held, as a standalone run's.
    let coordinator = autobalancer::coord::Coordinator::new(None, "bench", "bench").unwrap();
    let autobalancer::coord::Acquire::Acquired(guard) = coordinator.try_lock("manual").await.unwrap() else {
        unreachable!("a fresh in-process lock is free")
    };
    let fence = autobalancer::coord::GuardFence { coordinator: &coordinator, guard: &guard };
    let t = Instant::now();
    for _ in 0..n {
        unlimited.snapshot().await.unwrap();
    }
    let alone = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        unlimited.repair(&RepairOptions::default(), &fence).await.unwrap();
    }
    let repair = t.elapsed().as_secs_f64() / n as f64;
    let t = Instant::now();
    for _ in 0..n {
        unlimited.repair(&RepairOptions::default(), &fence).await.unwrap();
        unlimited.snapshot().await.unwrap();
    }
    let both = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "warm, a run's reading: snapshot alone {:.1} ms, repair {:.1} ms, repair then snapshot {:.1} ms",
        alone * 1e3,
        repair * 1e3,
        both * 1e3
    );
    let budgeted = AnyCluster::from_config(&config(dir.path(), &seeds, "")).unwrap();
    timed_snapshot(&budgeted, "cold, exact, default budget 100000 keys/s per master").await;

    let t = Instant::now();
    let children: Vec<_> = seeds[..3]
        .iter()
        .map(|a| {
            let (h, p) = a.rsplit_once(':').unwrap();
            Command::new("redis-cli")
                .args(["-h", h, "-p", p, "--memkeys"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut ch in children {
        assert!(ch.wait().unwrap().success());
    }
    println!("redis-cli --memkeys on the 3 loaded masters at once: {:.2} s", t.elapsed().as_secs_f64());
}
