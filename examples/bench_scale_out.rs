//! Scale-out at cluster sizes production has: LOADED masters holding the data, EMPTY new
//! ones, and one cold `autobalancer rebalance --once` with the default settings against
//! `redis-cli --cluster rebalance --cluster-use-empty-masters`, each on a fresh cluster
//! loaded with the same keys. Prints one Markdown row per tool: wall time, slots moved,
//! milliseconds per slot moved, bytes moved, the largest deviation from the mean by exact
//! bytes, and whether every key and value is intact.
//! Usage: bench_scale_out [--valkey] LOADED EMPTY KEYS [AUTOBALANCER_BIN]; BENCH_TOOLS picks the
//! tools (`redis-cli,autobalancer`), BENCH_EXTRA appends TOML to autobalancer's config, BENCH_REPLICAS gives
//! every master that many replicas.

mod bench_common;

use std::process::Command;
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Engine};
use bench_common::{Row, exact_bytes, row};

/// The row, and the seconds the moves took (autobalancer's own figure; redis-cli: none).
async fn run(
    engine: Engine,
    (loaded, empty): (usize, usize),
    tool: &str,
    keys: usize,
    bin: &str,
) -> (Row, Option<f64>) {
    // BENCH_REPLICAS: replicas per master (0 by default), for what the wait on the
    // target's replicas costs a move.
    let replicas = std::env::var("BENCH_REPLICAS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let c = ClusterSpec::new(engine, loaded, empty).replicas(replicas).start().await.unwrap();
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
            // BENCH_EXTRA: TOML appended, to try one setting against the defaults.
            let extra = std::env::var("BENCH_EXTRA").unwrap_or_default().replace("\\n", "\n");
            let text = format!(
                "[cluster]\nid = \"bench\"\nseeds = [{}]\n[balance]\nminimum-size = 0\n{extra}\n",
                seeds.join(",")
            );
            std::fs::write(&cfg, text).unwrap();
            let mut cmd = Command::new(bin);
            cmd.args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"]);
            cmd.env("STATE_DIRECTORY", dir.path());
            cmd
        }
    };
    let quiet = std::env::var("BENCH_LOG").is_err();
    let t0 = Instant::now();
    let out = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(if quiet { std::process::Stdio::null() } else { std::process::Stdio::inherit() })
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert!(out.status.success(), "{tool} failed");
    let moving =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|v| v["duration_seconds"].as_f64());
    c.wait_ok(std::time::Duration::from_secs(60)).await.unwrap();
    let intact = c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty();
    (row(&c, &before, wall, intact).await, moving)
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
    // BENCH_TOOLS: which of the two to run (both by default).
    let tools = std::env::var("BENCH_TOOLS").unwrap_or_else(|_| "redis-cli,autobalancer".into());
    for tool in tools.split(',') {
        let (r, moving) = run(engine, shape, tool, keys, &bin).await;
        let per_slot = |s: f64| if r.slots_moved > 0 { 1000.0 * s / r.slots_moved as f64 } else { 0.0 };
        let moving = moving.map_or("-".to_string(), |m| format!("{m:.2} ({:.2})", per_slot(m)));
        println!(
            "| {} -> {} | {tool} | {:.2} | {moving} | {} | {:.2} | {:.1} | {:.1}% | {} |",
            shape.0,
            shape.0 + shape.1,
            r.wall,
            r.slots_moved,
            per_slot(r.wall),
            r.bytes_moved as f64 / 1e6,
            100.0 * r.max_dev,
            if r.intact { "yes" } else { "NO" }
        );
    }
}
