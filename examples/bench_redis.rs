//! Head-to-head on the same skewed data set: `redis-cli --cluster rebalance
//! --cluster-use-empty-masters` against `autobalancer rebalance --once`.
//! Usage: bench_redis [--valkey] KEYS [AUTOBALANCER_BIN]. Prints a Markdown table.
//!
//! Each tool gets a fresh cluster (3 loaded masters + 1 empty, loopback; Redis 7, or
//! Valkey 9 with `--valkey`) loaded with the
//! same keys. Bytes per master are measured exactly (MEMORY USAGE of every key), slots
//! and bytes moved from the owners before and after, and every key and value is
//! compared before and after.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use autobalancer::cluster::Cluster;
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster};

struct Row {
    tool: &'static str,
    wall: f64,
    slots_moved: usize,
    bytes_moved: u64,
    masters_mb: Vec<f64>,
    max_dev: f64,
    intact: bool,
}

async fn exact_bytes(c: &LocalCluster) -> (Vec<String>, Vec<u64>) {
    let mut cfg = autobalancer::config::Config::default();
    cfg.cluster.id = "bench".into();
    cfg.cluster.seeds = c.master_addrs();
    cfg.cluster.slot_sample_keys = 10_000;
    let rc = autobalancer::cluster::redis::RedisCluster::from_config(&cfg).unwrap();
    let s = rc.snapshot().await.unwrap();
    let mut owner = vec![String::new(); 16384];
    let mut bytes = vec![0u64; 16384];
    for b in &s.buckets {
        owner[b.id as usize] = s.members[b.copies[0] as usize].address.clone();
        bytes[b.id as usize] = b.bytes;
    }
    (owner, bytes)
}

async fn run(engine: Engine, tool: &'static str, keys: usize, bin: &str) -> Row {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(keys, 42).await.unwrap();
    let digest = c.digest().await.unwrap();
    let (owner0, bytes0) = exact_bytes(&c).await;
    let seed = c.master_addrs()[0].clone();
    let t0 = Instant::now();
    let status = match tool {
        "redis-cli" => Command::new("redis-cli")
            .args(["--cluster", "rebalance", &seed, "--cluster-use-empty-masters"])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap(),
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let cfg = dir.path().join("c.toml");
            let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
            std::fs::write(
                &cfg,
                format!(
                    "[cluster]\nid = \"bench\"\nseeds = [{}]\n{}[balance]\nminimum-size = 0\ntolerance-percent = 2\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 32\nmax-moves-per-member = 16\n",
                    seeds.join(","),
                    // BENCH_SIZING=sampled: the sizing of earlier rounds, for comparing like with like.
                    std::env::var("BENCH_SIZING").map(|m| format!("sizing = \"{m}\"\n")).unwrap_or_default()
                ),
            )
            .unwrap();
            Command::new(bin)
                .args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--force"])
                .stderr(if std::env::var("BENCH_LOG").is_ok() {
                    std::process::Stdio::inherit()
                } else {
                    std::process::Stdio::null()
                })
                .stdout(std::process::Stdio::null())
                .status()
                .unwrap()
        }
    };
    let wall = t0.elapsed().as_secs_f64();
    assert!(status.success(), "{tool} failed");
    c.wait_ok(std::time::Duration::from_secs(30)).await.unwrap();
    let (owner1, bytes1) = exact_bytes(&c).await;
    let moved: Vec<usize> = (0..16384).filter(|&s| owner0[s] != owner1[s]).collect();
    let mut per: BTreeMap<String, u64> = c.master_addrs().into_iter().map(|a| (a, 0)).collect();
    for s in 0..16384 {
        *per.entry(owner1[s].clone()).or_default() += bytes1[s];
    }
    let total: u64 = per.values().sum();
    let mean = total as f64 / per.len() as f64;
    let max_dev = per.values().map(|&b| (b as f64 - mean).abs() / mean).fold(0.0, f64::max);
    Row {
        tool,
        wall,
        slots_moved: moved.len(),
        bytes_moved: moved.iter().map(|&s| bytes0[s]).sum(),
        masters_mb: per.values().map(|&b| b as f64 / 1e6).collect(),
        max_dev,
        intact: c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty(),
    }
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let bin = args.get(2).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    println!(
        "| tool | wall time (s) | slots moved | bytes moved (MB) | masters after (MB) | max byte deviation | every key intact |"
    );
    println!("|---|---|---|---|---|---|---|");
    for tool in ["redis-cli", "autobalancer"] {
        let r = run(engine, tool, keys, &bin).await;
        let mb: Vec<String> = r.masters_mb.iter().map(|m| format!("{m:.1}")).collect();
        println!(
            "| {} | {:.2} | {} | {:.1} | {} | {:.1}% | {} |",
            r.tool,
            r.wall,
            r.slots_moved,
            r.bytes_moved as f64 / 1e6,
            mb.join(", "),
            100.0 * r.max_dev,
            if r.intact { "yes" } else { "NO" }
        );
    }
}
