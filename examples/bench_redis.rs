//! Head-to-head on the same skewed data set: `redis-cli --cluster rebalance
//! --cluster-use-empty-masters` against `autobalancer rebalance --once`.
//! Usage: bench_redis [--valkey] KEYS [AUTOBALANCER_BIN]. Prints a Markdown table.
//!
//! Each tool gets a fresh cluster (3 loaded masters + 1 empty, loopback; Redis 7, or
//! Valkey 9 with `--valkey`) loaded with the
//! same keys. Bytes per master are measured exactly (MEMORY USAGE of every key), slots
//! and bytes moved from the owners before and after, and every key and value is
//! compared before and after.

mod bench_common;

use std::process::Command;
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Engine};
use bench_common::{Row, exact_bytes, print_header, print_row, row};

async fn run(engine: Engine, tool: &str, keys: usize, bin: &str) -> Row {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(keys, 42).await.unwrap();
    let digest = c.digest().await.unwrap();
    let before = exact_bytes(&c).await;
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
            let cfg = bench_common::write_config(
                dir.path(),
                &c,
                &format!(
                    "{}[balance]\nminimum-size = 0\ntolerance-percent = 2\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 32\nmax-moves-per-member = 16\n",
                    // BENCH_SIZING=sampled: the sizing of earlier rounds, for comparing like with like.
                    std::env::var("BENCH_SIZING").map(|m| format!("sizing = \"{m}\"\n")).unwrap_or_default()
                ),
            );
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
    let intact = c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty();
    row(&c, &before, wall, intact).await
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let bin = args.get(2).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    print_header("tool");
    for tool in ["redis-cli", "autobalancer"] {
        print_row(tool, &run(engine, tool, keys, &bin).await);
    }
}
