//! Scale-out at cluster sizes production has: LOADED masters holding the data, EMPTY new
//! ones, and one cold `autobalancer rebalance --once` with the default settings against
//! `redis-cli --cluster rebalance --cluster-use-empty-masters`, each on a fresh cluster
//! loaded with the same keys. Prints one Markdown row per tool: wall time, slots moved,
//! milliseconds per slot moved, bytes moved, the largest deviation from the mean by exact
//! bytes, and whether every key and value is intact.
//! Usage: bench_scale_out [--valkey] LOADED EMPTY KEYS [AUTOBALANCER_BIN]

mod bench_common;

use std::process::Command;
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Engine};
use bench_common::{Row, exact_bytes, row};

async fn run(engine: Engine, (loaded, empty): (usize, usize), tool: &str, keys: usize, bin: &str) -> Row {
    let c = ClusterSpec::new(engine, loaded, empty).start().await.unwrap();
    c.load_skewed(keys, 42).await.unwrap();
    let digest = c.digest().await.unwrap();
    let before = exact_bytes(&c).await;
    let seed = c.master_addrs()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = match tool {
        "redis-cli" => {
            let mut cmd = Command::new("redis-cli");
            cmd.args(["--cluster", "rebalance", &seed, "--cluster-use-empty-masters"]);
            cmd
        }
        _ => {
            let cfg = dir.path().join("c.toml");
            let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
            // The defaults, but for the cluster's seeds and no minimum size (the data is
            // smaller than the default 100 MiB).
            let text =
                format!("[cluster]\nid = \"bench\"\nseeds = [{}]\n[balance]\nminimum-size = 0\n", seeds.join(","));
            std::fs::write(&cfg, text).unwrap();
            let mut cmd = Command::new(bin);
            cmd.args(["rebalance", "--config", cfg.to_str().unwrap(), "--once"]).env("STATE_DIRECTORY", dir.path());
            cmd
        }
    };
    let quiet = std::env::var("BENCH_LOG").is_err();
    let t0 = Instant::now();
    let status = cmd
        .stdout(std::process::Stdio::null())
        .stderr(if quiet { std::process::Stdio::null() } else { std::process::Stdio::inherit() })
        .status()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert!(status.success(), "{tool} failed");
    c.wait_ok(std::time::Duration::from_secs(60)).await.unwrap();
    let intact = c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty();
    row(&c, &before, wall, intact).await
}

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let num = |i: usize| -> usize { args.get(i).and_then(|s| s.parse().ok()).expect("LOADED EMPTY KEYS") };
    let shape = (num(1), num(2));
    let keys = num(3);
    let bin = args.get(4).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    for tool in ["redis-cli", "autobalancer"] {
        let r = run(engine, shape, tool, keys, &bin).await;
        let per_slot = if r.slots_moved > 0 { 1000.0 * r.wall / r.slots_moved as f64 } else { 0.0 };
        println!(
            "| {} -> {} | {tool} | {:.2} | {} | {:.2} | {:.1} | {:.1}% | {} |",
            shape.0,
            shape.0 + shape.1,
            r.wall,
            r.slots_moved,
            per_slot,
            r.bytes_moved as f64 / 1e6,
            100.0 * r.max_dev,
            if r.intact { "yes" } else { "NO" }
        );
    }
}
