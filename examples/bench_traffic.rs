//! Traffic: MASTERS Valkey masters with slot statistics on, KEYS keys spread evenly by
//! bytes, and a client driving INCRs at HOT keys on distinct slots of the first master
//! (bytes balanced, CPU not). Two ways on a fresh cluster each: `redis-cli --cluster
//! rebalance` (it counts slots and sees no traffic) and `autobalancer rebalance --once`
//! (rates settled over `min-samples` readings first). Prints one Markdown row per way:
//! the CPU spread across masters (max/min of CPU µs/s, as each master's SLOT-STATS
//! report over 5 s) before and after, the byte spread (max/min of exact bytes per
//! master), slots moved, wall time, every acknowledged INCR kept.
//! Usage: bench_traffic MASTERS KEYS HOT [AUTOBALANCER_BIN].

#[path = "bench_common/mod.rs"]
mod bench_common;

use std::process::{Command, Stdio};
use std::time::Instant;

use autobalancer_testkit::{ClusterSpec, Driver, Engine, LocalCluster};
use redis::AsyncCommands;

fn spread(v: impl Iterator<Item = f64>) -> String {
    let v: Vec<f64> = v.collect();
    let (max, min) = (v.iter().copied().fold(0.0, f64::max), v.iter().copied().fold(f64::INFINITY, f64::min));
    if min <= 0.0 { format!("{max:.0}/0 (inf)") } else { format!("{:.2}", max / min) }
}

async fn bytes_spread(c: &LocalCluster) -> (String, bench_common::Slots) {
    let s = bench_common::exact_bytes(c).await;
    let r = bench_common::row(c, &s, 0.0, true).await;
    (spread(r.masters_mb.iter().copied()), s)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let masters: usize = args.get(1).and_then(|s| s.parse().ok()).expect("MASTERS KEYS HOT");
    let keys: usize = args.get(2).and_then(|s| s.parse().ok()).expect("MASTERS KEYS HOT");
    let hot_n: usize = args.get(3).and_then(|s| s.parse().ok()).expect("MASTERS KEYS HOT");
    let bin = args.get(4).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    for way in ["redis-cli", "autobalancer"] {
        let c = ClusterSpec::new(Engine::Valkey, masters, 0).start().await.unwrap();
        c.slot_stats_on().await.unwrap();
        c.load_even(keys).await.unwrap();
        let hot = c.names_on(&c.master_addrs()[0], hot_n, "hot").await.unwrap();
        let mut con = c.cluster_conn().await.unwrap();
        let driver = Driver::start(con.clone(), &hot);
        let cpu_before = c.cpu_per_master(5.0).await.unwrap();
        let (bytes_before, slots_before) = bytes_spread(&c).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = bench_common::write_config(
            dir.path(),
            &c,
            "[traffic]\nsample-every = \"2s\"\nwindow = \"10m\"\nmin-samples = 3\n",
        );
        let t0 = Instant::now();
        let out = match way {
            "redis-cli" => Command::new("redis-cli")
                .args(["--cluster", "rebalance", &c.master_addrs()[0], "--cluster-use-empty-masters"])
                .stderr(Stdio::null())
                .output(),
            _ => Command::new(&bin)
                .args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
                .env("STATE_DIRECTORY", dir.path())
                .stderr(Stdio::null())
                .output(),
        }
        .unwrap();
        assert!(out.status.success(), "{way} failed: {}", String::from_utf8_lossy(&out.stdout));
        // What the way said it did, in a few words.
        let said = match serde_json::from_slice::<serde_json::Value>(&out.stdout) {
            Ok(v) => v["decision"]["cause"].as_str().or(v["decision"]["reason"].as_str()).unwrap_or("-").to_string(),
            // redis-cli's last line, its colour codes dropped.
            Err(_) => {
                let text = String::from_utf8_lossy(&out.stdout).to_string();
                let plain: String = text.split('\x1b').map(|p| p.split_once('m').map_or(p, |(_, r)| r)).collect();
                plain.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("-").to_string()
            }
        };
        if std::env::var_os("BENCH_LOG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        let wall = t0.elapsed().as_secs_f64();
        let cpu_after = c.cpu_per_master(5.0).await.unwrap();
        let r = bench_common::row(&c, &slots_before, wall, true).await;
        let (acked, errors) = driver.stop().await;
        let mut kept = true;
        for (k, n) in &acked {
            let v: i64 = con.get(k).await.unwrap();
            kept &= v >= *n && v <= n + errors as i64;
        }
        println!(
            "| {way} | {masters} | {hot_n} | {said} | {} | {} | {bytes_before} | {} | {} | {wall:.1} | {} |",
            spread(cpu_before.values().copied()),
            spread(cpu_after.values().copied()),
            spread(r.masters_mb.iter().copied()),
            r.slots_moved,
            if kept { "yes" } else { "NO" }
        );
    }
}
