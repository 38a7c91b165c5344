//! Valkey 9, one data set, several ways to rebalance it: `redis-cli --cluster rebalance
//! --cluster-use-empty-masters`, `autobalancer rebalance --once` with its defaults (the
//! executor groups the plan's moves into MIGRATESLOTS jobs) and with the legacy mover,
//! and the floor: the same slots moved by MIGRATESLOTS jobs issued by hand.
//! Usage: bench_valkey KEYS [AUTOBALANCER_BIN]. Prints a Markdown table.
//!
//! The sidecars' way is the fleet as deployed: a sidecar beside each master, the lock, the
//! intents and the sizes each sidecar measured of its master in etcd, a run asked for by
//! `PUT /rebalance?force=true` once every sidecar has published its sizes (each measures
//! its master as it starts); timed from the request to the answer.
//!
//! Each way gets a fresh cluster (3 loaded masters + 1 empty, loopback) loaded with the
//! same keys. Bytes per master are measured exactly before and after, and every key and
//! value is compared before and after.

mod bench_common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer::cluster::Cluster;
use autobalancer::cluster::redis::RedisCluster;
use autobalancer::model::ClusterSnapshot;
use autobalancer::plan::{Move, PlanOptions, plan};
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd};
use bench_common::{Row, backend, exact_bytes, observer, print_header, print_row, row};

const WAYS: [&str; 6] = [
    "redis-cli",
    "autobalancer, defaults (atomic)",
    "autobalancer, defaults, lock and intents in etcd",
    "autobalancer sidecars, defaults, PUT /rebalance",
    "autobalancer, legacy mover",
    "floor: MIGRATESLOTS by hand",
];

/// A snapshot and its plan (tolerance 2%), the moves grouped by (source, target).
async fn planned(rc: &RedisCluster) -> (ClusterSnapshot, Vec<Vec<Move>>) {
    let snap = rc.snapshot().await.unwrap();
    let p = plan(&snap, &PlanOptions { tolerance_percent: 2, ..PlanOptions::default() }).unwrap();
    let mut groups: Vec<Vec<Move>> = Vec::new();
    for mv in p.copy_moves() {
        match groups.iter_mut().find(|g| (g[0].from, g[0].to) == (mv.from, mv.to)) {
            Some(g) => g.push(mv.clone()),
            None => groups.push(vec![mv.clone()]),
        }
    }
    (snap, groups)
}

/// The same plan's slots as MIGRATESLOTS jobs issued at once by hand, polled every 5 ms;
/// timed from the first command to the last job's success.
async fn floor(c: &LocalCluster) -> f64 {
    let (snap, groups) = planned(&backend(c)).await;
    eprintln!("floor: {} jobs", groups.len());
    let mut cons = BTreeMap::new();
    for a in c.master_addrs() {
        cons.insert(a.clone(), c.conn(&a).await.unwrap());
    }
    let t0 = Instant::now();
    let mut sources = Vec::new();
    for g in &groups {
        let src = snap.members[g[0].from as usize].address.clone();
        let dst = c.id_of(&snap.members[g[0].to as usize].address).unwrap().to_string();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("MIGRATESLOTS").arg("SLOTSRANGE");
        let mut slots: Vec<u64> = g.iter().map(|mv| mv.bucket).collect();
        slots.sort_unstable();
        let mut i = 0;
        while i < slots.len() {
            let mut j = i;
            while j + 1 < slots.len() && slots[j + 1] == slots[j] + 1 {
                j += 1;
            }
            cmd.arg(slots[i]).arg(slots[j]);
            i = j + 1;
        }
        cmd.arg("NODE").arg(dst);
        cmd.query_async::<()>(cons.get_mut(&src).unwrap()).await.unwrap();
        sources.push(src);
    }
    sources.sort();
    sources.dedup();
    let mut ended = std::collections::BTreeSet::new();
    loop {
        let mut done = true;
        for s in &sources {
            let jobs: Vec<Vec<String>> =
                redis::cmd("CLUSTER").arg("GETSLOTMIGRATIONS").query_async(cons.get_mut(s).unwrap()).await.unwrap();
            for j in jobs {
                let field = |name: &str| j.iter().position(|f| f == name).map(|i| j[i + 1].as_str()).unwrap_or("");
                let state = field("state");
                assert!(state != "failed" && state != "cancelled", "{j:?}");
                done &= state == "success";
                if state == "success" && bench_log() && ended.insert(field("name").to_string()) {
                    let ms = t0.elapsed().as_millis();
                    let ranges = field("slot_ranges").split_whitespace().count();
                    eprintln!("floor: job {} ({ranges} slot ranges) ended at {ms} ms", field("name"));
                }
            }
        }
        if done {
            return t0.elapsed().as_secs_f64();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// BENCH_LOG=1: the runs' logs go to stderr, beside the moments the bench acts.
fn bench_log() -> bool {
    std::env::var_os("BENCH_LOG").is_some()
}

/// With BENCH_LOG, when the bench did `what`, to read the runs' logs against.
fn log_moment(what: &str) {
    if bench_log() {
        eprintln!("{} {what}", chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
}

/// A fresh etcd, once it takes writes (it elects itself first: not part of a run's time).
fn etcd() -> LocalEtcd {
    let e = LocalEtcd::start().unwrap();
    let ready = Command::new("etcdctl")
        .args(["--endpoints", &e.endpoint(), "put", "bench-ready", "1"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .status();
    assert!(ready.unwrap().success(), "etcd did not take a write");
    e
}

/// The configuration every autobalancer way shares (its own `[cluster]` head first).
fn config(c: &LocalCluster, way: &str, etcd: Option<&LocalEtcd>, member: Option<&str>) -> String {
    let etcd_section = etcd.map(|e| format!("[etcd]\nendpoints = [\"{}\"]\n", e.endpoint())).unwrap_or_default();
    let member = member.map(|m| format!("member-id = \"{m}\"\n")).unwrap_or_default();
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let migration = if way.contains("legacy") { "legacy" } else { "auto" };
    format!(
        "[cluster]\nid = \"bench\"\nseeds = [{}]\n{member}[balance]\nminimum-size = 0\ntolerance-percent = 2\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 32\nmax-moves-per-member = 16\nmigration = \"{migration}\"\n{etcd_section}",
        seeds.join(",")
    )
}

/// The fleet: a sidecar beside each master; one run by `PUT /rebalance?force=true` once
/// every sidecar has published its master's sizes.
async fn sidecars(c: &LocalCluster, bin: &str) -> f64 {
    let etcd = etcd();
    let dir = tempfile::tempdir().unwrap();
    let log = bench_log();
    let mut procs = Vec::new();
    let mut apis = Vec::new();
    for (i, m) in c.master_addrs().iter().enumerate() {
        let api = format!("127.0.0.1:{}", autobalancer_testkit::free_port());
        let cfg = dir.path().join(format!("s{i}.toml"));
        let text =
            format!("{}[schedule]\nenabled = false\n[api]\nlisten = \"{api}\"\n", config(c, "", Some(&etcd), Some(m)));
        std::fs::write(&cfg, text).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .unwrap();
        procs.push(autobalancer_testkit::Proc::new(child, format!("sidecar {i}")));
        apis.push(api);
    }
    let observer = observer(&etcd);
    let waited = Instant::now();
    while observer.size_tables().await.map_or(0, |t| t.len()) < apis.len() {
        assert!(waited.elapsed() < Duration::from_secs(120), "the sidecars did not publish their sizes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("sidecars: sizes published {:.2} s after the start", waited.elapsed().as_secs_f64());
    log_moment("asked");
    let url = format!("http://{}/rebalance?force=true", apis[0]);
    let t0 = Instant::now();
    let status =
        tokio::task::spawn_blocking(move || ureq::put(&url).call().map(|r| r.status()).map_err(|e| e.to_string()))
            .await
            .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(status.unwrap_or_else(|e| panic!("PUT /rebalance: {e}")), 200);
    for mut p in procs {
        p.kill();
    }
    wall
}

fn cli(c: &LocalCluster, way: &str, bin: &str) -> f64 {
    // The "etcd" way: the lock and each move's intent in etcd, as a fleet of sidecars runs.
    let etcd = way.contains("etcd").then(etcd);
    let seed = c.master_addrs()[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config(c, way, etcd.as_ref(), None)).unwrap();
    let log = bench_log();
    log_moment("spawned");
    let t0 = Instant::now();
    let status = match way {
        "redis-cli" => Command::new("redis-cli")
            .args(["--cluster", "rebalance", &seed, "--cluster-use-empty-masters"])
            .stdout(Stdio::null())
            .status(),
        _ => Command::new(bin)
            .args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--force"])
            .stdout(Stdio::null())
            // BENCH_LOG=1 shows the run's log (where its time goes).
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .status(),
    };
    assert!(status.unwrap().success(), "{way} failed");
    t0.elapsed().as_secs_f64()
}

async fn run(way: &str, keys: usize, bin: &str) -> Row {
    let c = ClusterSpec::new(Engine::Valkey, 3, 1).start().await.unwrap();
    c.load_skewed(keys, 42).await.unwrap();
    let before = c.digest().await.unwrap();
    let slots = exact_bytes(&c).await;
    let wall = match way {
        "floor: MIGRATESLOTS by hand" => floor(&c).await,
        w if w.contains("sidecars") => sidecars(&c, bin).await,
        _ => cli(&c, way, bin),
    };
    c.wait_ok(Duration::from_secs(30)).await.unwrap();
    let intact = c.digest().await.unwrap() == before && c.open_slots().await.unwrap().is_empty();
    row(&c, &slots, wall, intact).await
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args.get(1).map(|s| s.parse().unwrap()).unwrap_or(200_000);
    let bin = args.get(2).cloned().unwrap_or_else(|| "target/release/autobalancer".into());
    println!("Valkey: {}", Engine::Valkey.server_version().unwrap());
    println!();
    print_header("way");
    // BENCH_WAYS="defaults,floor": only the ways whose names contain one of these words.
    let only: Vec<String> =
        std::env::var("BENCH_WAYS").map(|w| w.split(',').map(String::from).collect()).unwrap_or_default();
    for way in WAYS.into_iter().filter(|w| only.is_empty() || only.iter().any(|o| w.contains(o.as_str()))) {
        print_row(way, &run(way, keys, &bin).await);
    }
}
