//! The local demo: etcd, a Redis Cluster (or with `--valkey` a Valkey Cluster) of 3
//! loaded masters and 1 empty one with a skewed data set, and a sidecar beside each
//! master, all on loopback. The sidecars wake on their (nightly-style) schedule a few
//! seconds from now; one wins the lock and rebalances by bytes. Shows the decision and
//! the per-member before/after, checks that every key survived, then stops everything,
//! or with `--keep` leaves it running.
//!
//! Usage: demo [--keep] [--valkey] [--keys N] [--bin PATH] [--dir PATH]
//! (`--dir`: where the servers and sidecars keep their files; default `target/demo`)

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer::config::human_bytes;
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd, free_port};

struct Args {
    keep: bool,
    keys: usize,
    bin: String,
    dir: PathBuf,
    engine: Engine,
}

impl Args {
    fn parse() -> Args {
        let args: Vec<String> = std::env::args().collect();
        let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned());
        Args {
            keep: args.iter().any(|a| a == "--keep"),
            keys: value("--keys").map(|k| k.parse().expect("--keys N")).unwrap_or(60_000),
            bin: value("--bin").unwrap_or_else(|| "target/release/autobalancer".into()),
            dir: std::env::current_dir().unwrap().join(value("--dir").unwrap_or_else(|| "target/demo".into())),
            engine: if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis },
        }
    }
}

/// One sidecar beside one master: its member id, API address and config file.
struct Sidecar {
    member: String,
    api: String,
    config: PathBuf,
}

fn http(url: &str) -> Option<String> {
    ureq::get(url).timeout(Duration::from_secs(5)).call().ok()?.into_string().ok()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

fn status(api: &str) -> serde_json::Value {
    serde_json::from_str(&http(&format!("http://{api}/status")).unwrap_or_default()).unwrap_or_default()
}

fn cluster_kind(engine: Engine) -> &'static str {
    match engine {
        Engine::Redis => "Redis Cluster",
        Engine::Valkey => "Valkey Cluster",
    }
}

/// A config per master, waking at `cron` (a few seconds from now, then daily).
fn write_configs(dir: &Path, masters: &[String], etcd: &str, cron: &str) -> Vec<Sidecar> {
    let seeds: Vec<String> = masters.iter().map(|a| format!("\"{a}\"")).collect();
    let mut sidecars = Vec::new();
    for (i, m) in masters.iter().enumerate() {
        let api = format!("127.0.0.1:{}", free_port());
        let config = dir.join(format!("sidecar-{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[cluster]\nid = \"demo\"\nseeds = [{}]\nmember-id = \"{m}\"\n\n[schedule]\ncron = \"{cron}\"\ntimezone = \"UTC\"\n\n[balance]\nsize-threshold-percent = 10\nminimum-size = \"1MiB\"\ntolerance-percent = 3\n\n[execution]\nmax-bytes-per-second = \"64MiB\"\nmax-concurrent-moves = 8\nmax-moves-per-member = 4\n\n[etcd]\nendpoints = [\"{etcd}\"]\nlease-ttl = \"6s\"\n\n[api]\nlisten = \"{api}\"\n",
                seeds.join(", "),
            ),
        )
        .unwrap();
        sidecars.push(Sidecar { member: m.clone(), api, config });
    }
    sidecars
}

fn simulate(bin: &str, config: &Path) {
    let out = Command::new(bin).args(["simulate", "--config", config.to_str().unwrap()]).output().expect("simulate");
    print!("{}", String::from_utf8_lossy(&out.stdout));
}

fn start_sidecars(bin: &str, dir: &Path, sidecars: &[Sidecar]) -> Vec<Child> {
    let mut children = Vec::new();
    for (i, s) in sidecars.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("sidecar-{i}.log"))).unwrap();
        let child = Command::new(bin)
            .args(["run", "--config", s.config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("autobalancer run");
        println!("   sidecar-{i} beside {}: http://{}/status", s.member, s.api);
        children.push(child);
    }
    children
}

/// Waits for the run: one sidecar rebalances, the others find the lock held.
async fn wait_for_winner(sidecars: &[Sidecar], dir: &Path) -> usize {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let rebalanced = |s: &Sidecar| {
            http(&format!("http://{}/metrics", s.api))
                .is_some_and(|m| metric(&m, "autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0)
        };
        if let Some(i) = sidecars.iter().position(rebalanced) {
            return i;
        }
        if Instant::now() > deadline {
            eprintln!("no rebalance within 3 minutes; logs in {}", dir.display());
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The winner's decision and per-member report, and what the others decided.
fn print_outcome(sidecars: &[Sidecar], winner: usize) {
    let won = status(&sidecars[winner].api);
    println!("\n== sidecar-{winner} won the lock and rebalanced; the others skipped:");
    for (i, s) in sidecars.iter().enumerate().filter(|(i, _)| *i != winner) {
        let st = status(&s.api);
        println!("   sidecar-{i}: {}", st["last_decision"]["message"].as_str().unwrap_or("(no decision yet)"));
    }
    println!("\n   decision: {}", won["last_decision"]["message"].as_str().unwrap_or("?"));
    println!(
        "\n   {:<26} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "member (node id, address)", "previous", "requested", "accepted", "current", "bytes before", "bytes after"
    );
    for r in won["last_report"].as_array().cloned().unwrap_or_default() {
        println!(
            "   {:<26} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
            format!("{:.8} {}", r["id"].as_str().unwrap_or(""), r["address"].as_str().unwrap_or("")),
            r["previous_buckets"].as_u64().unwrap_or(0),
            r["requested_unload"].as_u64().unwrap_or(0),
            r["accepted_unload"].as_u64().unwrap_or(0),
            r["current_buckets"].as_u64().unwrap_or(0),
            human_bytes(r["previous_bytes"].as_u64().unwrap_or(0)),
            human_bytes(r["current_bytes"].as_u64().unwrap_or(0))
        );
    }
}

/// `--keep`: a stop script with every process id, then the servers outlive this process.
fn leave_running(dir: &Path, sidecars: &[Sidecar], children: Vec<Child>, cluster: LocalCluster, etcd: LocalEtcd) {
    let mut pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    pids.extend(cluster.nodes.iter().filter_map(|n| n.proc.as_ref().map(|p| p.id().to_string())));
    pids.extend(etcd.proc.as_ref().map(|p| p.id().to_string()));
    let stop = dir.join("stop.sh");
    std::fs::write(&stop, format!("#!/bin/sh\nkill {}\n", pids.join(" "))).unwrap();
    println!("\n== left running (--keep):");
    for (i, s) in sidecars.iter().enumerate() {
        println!("   sidecar-{i}: http://{0}/status   http://{0}/metrics", s.api);
    }
    println!("   etcd: {}   {} seeds: {}", etcd.endpoint(), cluster.engine(), cluster.master_addrs().join(" "));
    println!("   stop everything with: sh {}", stop.display());
    std::mem::forget(children);
    std::mem::forget(cluster);
    std::mem::forget(etcd);
}

fn stop_sidecars(children: &mut [Child]) {
    for c in children.iter() {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in children.iter_mut() {
        let _ = c.wait();
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = &args.dir;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();

    let kind = cluster_kind(args.engine);
    println!("== starting etcd and a {kind} (3 loaded masters + 1 empty) on loopback");
    println!("   {}", args.engine.server_version().expect("server"));
    let etcd = LocalEtcd::start_in(&dir.join("etcd"), Vec::new(), "http").expect("etcd");
    let cluster = ClusterSpec::new(args.engine, 3, 1).start_in(&dir.join(args.engine.name())).await.expect("cluster");
    let total = cluster.load_skewed(args.keys, 7).await.expect("load");
    let before = cluster.digest().await.unwrap();
    println!(
        "   loaded {} keys ({} of values), hash-tagged tenants, skewed towards the first master",
        args.keys,
        human_bytes(total)
    );

    // Wake in a few seconds, then at the same time every day: a nightly schedule.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let cron = at.format("%S %M %H * * *").to_string();
    let sidecars = write_configs(dir, &cluster.master_addrs(), &etcd.endpoint(), &cron);
    println!("\n== what the sidecars will find (autobalancer simulate --config sidecar-0.toml)");
    simulate(&args.bin, &sidecars[0].config);
    println!(
        "\n== starting a sidecar beside each master; they wake at {} UTC (cron \"{cron}\")",
        at.format("%H:%M:%S")
    );
    let mut children = start_sidecars(&args.bin, dir, &sidecars);
    let winner = wait_for_winner(&sidecars, dir).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    print_outcome(&sidecars, winner);
    println!("\n== after the run (autobalancer simulate --config sidecar-0.toml)");
    simulate(&args.bin, &sidecars[0].config);
    let after = cluster.digest().await.unwrap();
    let intact = after == before && cluster.open_slots().await.unwrap().is_empty();
    println!("\n== every key and value intact: {} ({} keys compared)", if intact { "yes" } else { "NO" }, after.len());

    if args.keep {
        leave_running(dir, &sidecars, children, cluster, etcd);
        return;
    }
    println!("\n== stopping the sidecars (SIGTERM), the {kind} and etcd");
    stop_sidecars(&mut children);
    drop(cluster);
    drop(etcd);
    if !intact {
        std::process::exit(1);
    }
}
