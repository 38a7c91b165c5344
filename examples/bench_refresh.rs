//! Sizes under writes: how many keys a scheduled run measures itself when each sidecar's
//! refresh is timed to end shortly before the run, against a snapshot taken 47 s after
//! the run, when the published sizes are most of an interval old.
//! Usage: bench_refresh KEYS WRITES_PER_SECOND ROUNDS [AUTOBALANCER_BIN]. Prints a
//! Markdown table.
//!
//! A Valkey 9 cluster (3 loaded masters + 1 empty, loopback) loaded with KEYS keys; a
//! sidecar beside each master with runs every minute at :00 that decide and move nothing
//! (`minimum-size` far above the data) and `sizing-refresh = "60s"`; a writer adding new
//! 100-byte keys at WRITES_PER_SECOND, spread over every slot. Per round: the lock
//! holder's decision at :00 (its log: keys measured now, seconds), then a snapshot by
//! this process at :47 through the library with the published sizes adopted, as a holder
//! takes one.

mod bench_common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer::cluster::Cluster;
use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd};
use bench_common::{backend, observer};

/// The decisions logged so far by the sidecar whose JSON log is `path`.
fn decisions(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("decision: ")))
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let rate: u64 = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(100);
    let rounds: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3);
    let bin = args.get(4).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    let c = ClusterSpec::new(Engine::Valkey, 3, 1).start().await.unwrap();
    c.load_skewed(keys, 42).await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let mut procs = Vec::new();
    let mut logs = Vec::new();
    for (i, m) in c.master_addrs().iter().enumerate() {
        let api = format!("127.0.0.1:{}", autobalancer_testkit::free_port());
        let text = format!(
            "[cluster]\nid = \"bench\"\nseeds = [{}]\nmember-id = \"{m}\"\nsizing-refresh = \"60s\"\n\
             [balance]\nminimum-size = \"1TiB\"\n[schedule]\ncron = \"0 * * * * *\"\n\
             [etcd]\nendpoints = [\"{}\"]\n[api]\nlisten = \"{api}\"\n",
            seeds.join(","),
            etcd.endpoint()
        );
        let cfg = dir.path().join(format!("s{i}.toml"));
        std::fs::write(&cfg, text).unwrap();
        let log = dir.path().join(format!("s{i}.log"));
        let child = Command::new(&bin)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .env("AUTOBALANCER_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        procs.push(autobalancer_testkit::Proc::new(child, format!("sidecar {i}")));
        logs.push(log);
    }
    // The writer: new keys, each SET on the master that owns its slot.
    let owners = c.slot_owners().await.unwrap();
    let mut cons = std::collections::HashMap::new();
    for a in c.master_addrs() {
        cons.insert(a.clone(), c.conn(&a).await.unwrap());
    }
    let mut any = c.conn(&c.master_addrs()[0]).await.unwrap();
    let writer = tokio::spawn(async move {
        let t0 = Instant::now();
        for n in 0u64.. {
            let k = format!("w:{n}");
            let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&k).query_async(&mut any).await.unwrap();
            let con = cons.get_mut(&owners[slot as usize]).unwrap();
            let _: () = redis::cmd("SET").arg(&k).arg(vec![b'v'; 100]).query_async(con).await.unwrap();
            tokio::time::sleep_until((t0 + Duration::from_secs_f64((n + 1) as f64 / rate as f64)).into()).await;
        }
    });
    let observer = observer(&etcd);
    println!("{keys} keys, {rate} new keys/s; runs every minute at :00, sizing-refresh 60s");
    println!();
    println!("| round | taken by | at | keys measured now | of keys | sizing (s) |");
    println!("|---|---|---|---|---|---|");
    let mut seen = 0;
    for round in 1..=rounds {
        let waited = Instant::now();
        let decision = loop {
            let all: Vec<serde_json::Value> = logs.iter().flat_map(|l| decisions(l)).collect();
            if all.len() > seen {
                seen = all.len();
                break all.into_iter().max_by_key(|d| d["timestamp"].as_str().unwrap_or("").to_string()).unwrap();
            }
            assert!(waited.elapsed() < Duration::from_secs(120), "no scheduled run");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let f = &decision["fields"];
        let at = &decision["timestamp"].as_str().unwrap()[11..19];
        println!(
            "| {round} | the lock holder's scheduled run | {at} | {} | {} | {:.3} |",
            f["keys_measured_now"],
            f["keys"],
            f["sizing_seconds"].as_f64().unwrap()
        );
        // 47 s into the minute: the sizes were published about 11 s before :00.
        let into = chrono::Utc::now().timestamp() % 60;
        tokio::time::sleep(Duration::from_secs((47 - into).max(0) as u64)).await;
        let rc = backend(&c);
        rc.adopt_sizes(observer.size_tables().await.unwrap());
        let snap = rc.snapshot().await.unwrap();
        let s = snap.observed.sizing.unwrap();
        println!(
            "| {round} | a snapshot with the published sizes | {} | {} | {} | {:.3} |",
            &chrono::Utc::now().to_rfc3339()[11..19],
            s.keys_measured_now,
            s.keys,
            s.duration_seconds
        );
    }
    writer.abort();
    drop(procs);
}
