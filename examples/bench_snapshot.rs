//! Snapshot speed: a Redis Cluster (3 loaded masters + 1 empty, loopback; Valkey with
//! `--valkey`) with KEYS keys, then `autobalancer snapshot` timed 3 times.
//! Usage: bench_snapshot [--valkey] KEYS [AUTOBALANCER_BIN]

use std::process::Command;
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Engine};

#[tokio::main]
async fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    args.retain(|a| a != "--valkey");
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(1_000_000);
    let bin = args.get(2).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    let t0 = Instant::now();
    let bytes = c.load_skewed(keys, 5).await.unwrap();
    println!("loaded {keys} keys ({bytes} bytes of values) in {:.1} s", t0.elapsed().as_secs_f64());
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(&cfg, format!("[cluster]\nid = \"bench\"\nseeds = [{}]\n", seeds.join(","))).unwrap();
    for _ in 0..3 {
        let out = dir.path().join("s.json");
        let t = Instant::now();
        let st = Command::new(&bin)
            .args(["snapshot", "--config", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let s = autobalancer::model::ClusterSnapshot::read_file(&out).unwrap();
        println!(
            "snapshot of {} slots, {} members, {} bytes estimated: {:.2} s (process start to JSON written)",
            s.buckets.len(),
            s.members.len(),
            s.total_bytes(),
            t.elapsed().as_secs_f64()
        );
    }
}
