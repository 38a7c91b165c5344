//! The local demo: etcd, a Redis Cluster (or with `--valkey` a Valkey Cluster) of 3
//! loaded masters and 1 empty one with a skewed data set, and a sidecar beside each
//! master, all on loopback. The sidecars wake
//! on their (nightly-style) schedule a few seconds from now; one wins the lock and
//! rebalances by bytes. Shows the decision and the per-member before/after, checks that
//! every key survived, then stops everything, or with `--keep` leaves it running.
//!
//! Usage: demo [--keep] [--valkey] [--keys N] [--bin PATH] [--dir PATH]
//! (`--dir`: where the servers and sidecars keep their files; default `target/demo`)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer::config::human_bytes;
use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd, free_port};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn http(url: &str) -> Option<String> {
    ureq::get(url).timeout(Duration::from_secs(5)).call().ok()?.into_string().ok()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let keep = args.iter().any(|a| a == "--keep");
    let keys: usize = arg(&args, "--keys").map(|k| k.parse().expect("--keys N")).unwrap_or(60_000);
    let bin = arg(&args, "--bin").unwrap_or_else(|| "target/release/autobalancer".into());
    let engine = if args.iter().any(|a| a == "--valkey") { Engine::Valkey } else { Engine::Redis };
    let dir = std::env::current_dir().unwrap().join(arg(&args, "--dir").unwrap_or_else(|| "target/demo".into()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let kind = match engine {
        Engine::Redis => "Redis Cluster",
        Engine::Valkey => "Valkey Cluster",
    };
    println!("== starting etcd and a {kind} (3 loaded masters + 1 empty) on loopback");
    println!("   {}", engine.server_version().expect("server"));
    let etcd = LocalEtcd::start_in(&dir.join("etcd"), Vec::new(), "http").expect("etcd");
    let cluster = ClusterSpec::new(engine, 3, 1).start_in(&dir.join(engine.name())).await.expect("cluster");
    let total = cluster.load_skewed(keys, 7).await.expect("load");
    let before = cluster.digest().await.unwrap();
    println!(
        "   loaded {keys} keys ({} of values), hash-tagged tenants, skewed towards the first master",
        human_bytes(total)
    );

    // Wake in a few seconds, then at the same time every day: a nightly schedule.
    let at = chrono::Utc::now() + chrono::Duration::seconds(8);
    let cron = at.format("%S %M %H * * *").to_string();
    let masters = cluster.master_addrs();
    let seeds: Vec<String> = masters.iter().map(|a| format!("\"{a}\"")).collect();
    let mut sidecars = Vec::new();
    for (i, m) in masters.iter().enumerate() {
        let api = format!("127.0.0.1:{}", free_port());
        let cfg = dir.join(format!("sidecar-{i}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[cluster]\nid = \"demo\"\nseeds = [{}]\nmember-id = \"{m}\"\n\n[schedule]\ncron = \"{cron}\"\ntimezone = \"UTC\"\n\n[balance]\nsize-threshold-percent = 10\nminimum-size = \"1MiB\"\ntolerance-percent = 3\n\n[execution]\nmax-bytes-per-second = \"64MiB\"\nmax-concurrent-moves = 8\nmax-moves-per-member = 4\n\n[etcd]\nendpoints = [\"{}\"]\nlease-ttl = \"6s\"\n\n[api]\nlisten = \"{api}\"\n",
                seeds.join(", "),
                etcd.endpoint()
            ),
        )
        .unwrap();
        sidecars.push((m.clone(), api, cfg));
    }

    println!("\n== what the sidecars will find (autobalancer simulate --config sidecar-0.toml)");
    let out =
        Command::new(&bin).args(["simulate", "--config", sidecars[0].2.to_str().unwrap()]).output().expect("simulate");
    print!("{}", String::from_utf8_lossy(&out.stdout));

    println!(
        "\n== starting a sidecar beside each master; they wake at {} UTC (cron \"{cron}\")",
        at.format("%H:%M:%S")
    );
    let mut children = Vec::new();
    for (i, (m, api, cfg)) in sidecars.iter().enumerate() {
        let log = std::fs::File::create(dir.join(format!("sidecar-{i}.log"))).unwrap();
        let child = Command::new(&bin)
            .args(["run", "--config", cfg.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("autobalancer run");
        println!("   sidecar-{i} beside {m}: http://{api}/status");
        children.push(child);
    }

    // Wait for the run: one sidecar rebalances, the others find the lock held.
    let deadline = Instant::now() + Duration::from_secs(180);
    let winner = loop {
        let mut found = None;
        for (i, (_, api, _)) in sidecars.iter().enumerate() {
            if let Some(m) = http(&format!("http://{api}/metrics"))
                && metric(&m, "autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0
            {
                found = Some(i);
            }
        }
        if let Some(i) = found {
            break i;
        }
        if Instant::now() > deadline {
            eprintln!("no rebalance within 3 minutes; logs in {}", dir.display());
            std::process::exit(1);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status: serde_json::Value =
        serde_json::from_str(&http(&format!("http://{}/status", sidecars[winner].1)).unwrap()).unwrap();
    println!("\n== sidecar-{winner} won the lock and rebalanced; the others skipped:");
    for (i, (_, api, _)) in sidecars.iter().enumerate() {
        if i == winner {
            continue;
        }
        let s: serde_json::Value =
            serde_json::from_str(&http(&format!("http://{api}/status")).unwrap_or_default()).unwrap_or_default();
        println!("   sidecar-{i}: {}", s["last_decision"]["message"].as_str().unwrap_or("(no decision yet)"));
    }
    println!("\n   decision: {}", status["last_decision"]["message"].as_str().unwrap_or("?"));
    println!(
        "\n   {:<20} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
        "member", "previous", "requested", "accepted", "current", "bytes before", "bytes after"
    );
    for r in status["last_report"].as_array().cloned().unwrap_or_default() {
        println!(
            "   {:<20} {:>10} {:>10} {:>10} {:>10} {:>14} {:>14}",
            r["id"].as_str().unwrap_or(""),
            r["previous_buckets"].as_u64().unwrap_or(0),
            r["requested_unload"].as_u64().unwrap_or(0),
            r["accepted_unload"].as_u64().unwrap_or(0),
            r["current_buckets"].as_u64().unwrap_or(0),
            human_bytes(r["previous_bytes"].as_u64().unwrap_or(0)),
            human_bytes(r["current_bytes"].as_u64().unwrap_or(0))
        );
    }
    println!("\n== after the run (autobalancer simulate --config sidecar-0.toml)");
    let out =
        Command::new(&bin).args(["simulate", "--config", sidecars[0].2.to_str().unwrap()]).output().expect("simulate");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    let after = cluster.digest().await.unwrap();
    let intact = after == before && cluster.open_slots().await.unwrap().is_empty();
    println!("\n== every key and value intact: {} ({} keys compared)", if intact { "yes" } else { "NO" }, after.len());

    if keep {
        let mut pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
        pids.extend(cluster.nodes.iter().filter_map(|n| n.proc.as_ref().map(|p| p.child.id().to_string())));
        pids.extend(etcd.proc.as_ref().map(|p| p.child.id().to_string()));
        let stop = dir.join("stop.sh");
        std::fs::write(&stop, format!("#!/bin/sh\nkill {}\n", pids.join(" "))).unwrap();
        println!("\n== left running (--keep):");
        for (i, (_, api, _)) in sidecars.iter().enumerate() {
            println!("   sidecar-{i}: http://{api}/status   http://{api}/metrics");
        }
        println!("   etcd: {}   {engine} seeds: {}", etcd.endpoint(), masters.join(" "));
        println!("   stop everything with: sh {}", stop.display());
        std::mem::forget(children);
        std::mem::forget(cluster);
        std::mem::forget(etcd);
        return;
    }
    println!("\n== stopping the sidecars (SIGTERM), the {kind} and etcd");
    for c in &mut children {
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
    }
    for c in &mut children {
        let _ = c.wait();
    }
    drop(cluster);
    drop(etcd);
    if !intact {
        std::process::exit(1);
    }
}
