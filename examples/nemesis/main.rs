//! The nemesis run: etcd, a cluster of MASTERS masters with a replica each, a sidecar
//! beside every node with a cron of a few seconds, and a client writing and reading for
//! `--duration`, while a seeded stream of faults hits the fleet: sidecars killed (the
//! holder preferred) and restarted, the holder frozen past its lease, failovers and
//! takeovers, a node frozen past `cluster-node-timeout`, etcd killed and restarted, an
//! empty master joining, evacuations started and stopped, skewed writes. Faults overlap.
//! At the end, once the fleet has settled, the checker reads back every acknowledged
//! write and checks the cluster and the fleet; one summary line; exit 1 on a violation.
//!
//! Usage: nemesis [--engine redis|valkey] [--duration 10m] [--seed N] [--masters 4]
//!        [--bin target/release/autobalancer]

mod check;
mod client;
mod episodes;
mod faults;
mod fleet;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd};
use rand::{Rng, SeedableRng};

use faults::{Heal, Kind, Ledger};
use fleet::Sidecar;

struct Args {
    engine: Engine,
    duration: Duration,
    seed: u64,
    masters: usize,
    bin: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        engine: Engine::Redis,
        duration: Duration::from_secs(600),
        seed: rand::random::<u32>() as u64,
        masters: 4,
        bin: PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
            .join("release/autobalancer"),
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    for pair in v.chunks(2) {
        let k = pair[0].as_str();
        let val = pair.get(1).map(String::as_str).unwrap_or_else(|| panic!("{k} needs a value"));
        match k {
            "--engine" => a.engine = if val == "valkey" { Engine::Valkey } else { Engine::Redis },
            "--duration" => a.duration = humantime::parse_duration(val).expect("--duration: e.g. 90s, 10m"),
            "--seed" => a.seed = val.parse().expect("--seed: a number"),
            "--masters" => a.masters = val.parse().expect("--masters: a number"),
            "--bin" => a.bin = PathBuf::from(val),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// The world the nemesis acts on.
struct World {
    c: autobalancer_testkit::LocalCluster,
    etcd: LocalEtcd,
    etcd_up: bool,
    sidecars: Vec<Sidecar>,
    frozen_node: Option<String>,
    evacuating: Option<usize>,
    joined: usize,
    dir: PathBuf,
    bin: PathBuf,
    /// What the nemesis did and when (seconds from the start), to set beside stale reads.
    events: Vec<(f64, String)>,
    start: Instant,
}

impl World {
    fn log(&mut self, what: String) {
        self.events.push((self.start.elapsed().as_secs_f64(), what));
    }
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "nemesis: engine {} seed {} duration {:?} masters {} (replay: --seed {})",
        a.engine.name(),
        a.seed,
        a.duration,
        a.masters,
        a.seed
    );
    let tmp = tempfile::Builder::new().prefix("nemesis-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let etcd = LocalEtcd::start().unwrap();
    // In the run's directory, so the servers' logs stay with the sidecars' (NEMESIS_KEEP).
    let c = ClusterSpec::new(a.engine, a.masters, 0).replicas(1).start_in(&dir.join("cluster")).await.unwrap();
    c.load_skewed(20_000, a.seed).await.unwrap();
    let nodes: Vec<String> = c.live_addrs();
    let sidecars: Vec<Sidecar> = nodes.iter().map(|n| Sidecar::start(&dir, &a.bin, &c, &etcd, n)).collect();
    for s in &sidecars {
        assert!(s.wait_healthy(Duration::from_secs(30)), "sidecar beside {} did not start", s.node);
    }
    let mut w = World {
        c,
        etcd,
        etcd_up: true,
        sidecars,
        frozen_node: None,
        evacuating: None,
        joined: 0,
        dir,
        bin: a.bin.clone(),
        events: Vec::new(),
        start: Instant::now(),
    };
    let client = client::Client::start(w.c.cluster_conn().await.unwrap(), a.seed, w.start);
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut ledger = Ledger::default();
    let mut two_holders = Vec::new();
    let (start, mut next) = (w.start, Instant::now() + Duration::from_secs(3));
    while start.elapsed() < a.duration {
        for h in ledger.take_due(false) {
            heal(&mut w, h, &client, &mut ledger).await;
        }
        if Instant::now() >= next {
            let k = Kind::draw(&mut rng);
            let applied = apply(&mut w, k, &mut rng, &mut ledger, &client).await;
            ledger.count(k, applied);
            next = Instant::now() + Duration::from_secs_f64(rng.gen_range(2.0..6.0));
        }
        let holders: Vec<&str> = w
            .sidecars
            .iter()
            .filter(|s| s.metric("autobalancer_lock_held ").is_some_and(|v| v > 0.0))
            .map(|s| s.node.as_str())
            .collect();
        if holders.len() > 1 {
            two_holders.push(format!("{:.1}s: {holders:?}", start.elapsed().as_secs_f64()));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Everything healed; a heal that could not be done yet (an evacuation stop while etcd
    // was down) is tried again, a few rounds at most.
    for _ in 0..5 {
        let due = ledger.take_due(true);
        if due.is_empty() {
            break;
        }
        for h in due {
            heal(&mut w, h, &client, &mut ledger).await;
        }
    }
    for i in 0..w.sidecars.len() {
        if w.sidecars[i].rebind_if_port_taken() {
            let s = &w.sidecars[i];
            let line =
                format!("the sidecar beside {} found its API port taken on restart: started on {}", s.node, s.api);
            println!("nemesis: {line}");
            w.log(line);
        }
    }
    let record = std::mem::take(&mut *client.stop().await.lock().unwrap());
    let report = check::settle_and_check(&w, &record, &two_holders).await;
    let faults: Vec<String> = ledger.done.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let skipped: Vec<String> = ledger.skipped.iter().map(|(k, n)| format!("{k}={n}")).collect();
    println!(
        "nemesis: engine={} seed={} duration={:?} faults[{}] skipped[{}] {}",
        a.engine.name(),
        a.seed,
        a.duration,
        faults.join(","),
        skipped.join(","),
        report.line
    );
    for v in &report.violations {
        println!("violation: {v}");
    }
    episodes::print(&record.stale, &w.events);
    let failed = !report.violations.is_empty();
    if failed || std::env::var_os("NEMESIS_KEEP").is_some() {
        println!("sidecar logs kept in {}", w.dir.display());
        let _ = tmp.keep();
    }
    if failed {
        // NEMESIS_HOLD=SECONDS keeps the cluster and the fleet up to look at.
        if let Some(secs) = std::env::var("NEMESIS_HOLD").ok().and_then(|v| v.parse().ok()) {
            println!("holding for {secs} s: nodes {:?}", w.c.live_addrs());
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
        // `exit` runs no destructor: the fleet and the cluster are stopped first, or the
        // sidecars the nemesis restarted outlive the run.
        drop(w);
        std::process::exit(1);
    }
}

/// The sidecar holding the lock, else any that is up.
fn target(w: &World, rng: &mut rand::rngs::StdRng) -> Option<usize> {
    let up: Vec<usize> = (0..w.sidecars.len()).filter(|&i| w.sidecars[i].alive() && !w.sidecars[i].frozen).collect();
    up.iter()
        .copied()
        .find(|&i| w.sidecars[i].holds())
        .or_else(|| (!up.is_empty()).then(|| up[rng.gen_range(0..up.len())]))
}

/// Applies one fault; false when nothing could take it now (counted as skipped).
async fn apply(w: &mut World, k: Kind, rng: &mut rand::rngs::StdRng, l: &mut Ledger, client: &client::Client) -> bool {
    match k {
        Kind::KillSidecar => {
            let Some(i) = target(w, rng) else { return false };
            w.sidecars[i].kill9();
            w.log(format!("kill -9 the sidecar beside {}", w.sidecars[i].node));
            l.later(rng, 1.0, 5.0, Heal::RestartSidecar(i));
        }
        Kind::FreezeHolder => {
            let Some(i) = target(w, rng) else { return false };
            w.sidecars[i].freeze(true);
            w.log(format!("freeze the sidecar beside {}", w.sidecars[i].node));
            // Past the 3 s lease.
            l.later(rng, 4.0, 8.0, Heal::ThawSidecar(i));
        }
        Kind::Failover | Kind::Takeover => {
            // Only a replica in sync with its master: TAKEOVER of one mid-resync (a thawed
            // master demoted a moment ago) makes it master of whatever it holds then, an
            // empty data set at worst, which is the server's documented behaviour, not a
            // fault of the fleet's.
            let mut replicas = Vec::new();
            for r in check::replicas(&w.c).await {
                if check::in_sync(&w.c, &r).await {
                    replicas.push(r);
                }
            }
            if replicas.is_empty() {
                return false;
            }
            let r = &replicas[rng.gen_range(0..replicas.len())];
            let mut cmd = redis::cmd("CLUSTER");
            cmd.arg("FAILOVER");
            if k == Kind::Takeover {
                cmd.arg("TAKEOVER");
            }
            let Ok(mut con) = w.c.conn(r).await else { return false };
            if cmd.query_async::<()>(&mut con).await.is_err() {
                return false;
            }
            w.log(format!("{} to {r}", k.name()));
        }
        Kind::FreezeNode => {
            if w.frozen_node.is_some() {
                return false;
            }
            let live = w.c.live_addrs();
            let n = live[rng.gen_range(0..live.len())].clone();
            node_signal(w, &n, "-STOP");
            w.log(format!("freeze node {n}"));
            w.frozen_node = Some(n.clone());
            // Past the 3 s cluster-node-timeout: its replica takes over.
            l.later(rng, 3.5, 7.0, Heal::ThawNode(n));
        }
        Kind::KillEtcd => {
            if !w.etcd_up {
                return false;
            }
            w.etcd.stop();
            w.etcd_up = false;
            w.log("kill -9 etcd".into());
            l.later(rng, 2.0, 6.0, Heal::StartEtcd);
        }
        Kind::JoinMaster => {
            if w.joined >= 2 || w.frozen_node.is_some() {
                return false;
            }
            let Ok(_) = w.c.add_master_at(autobalancer_testkit::free_port()).await else { return false };
            let addr = w.c.nodes.last().unwrap().addr();
            let s = Sidecar::start(&w.dir, &w.bin, &w.c, &w.etcd, &addr);
            w.sidecars.push(s);
            w.joined += 1;
            w.log(format!("master {addr} joins"));
        }
        Kind::Evacuate => {
            // Any sidecar that is up beside a master owning slots, not only the holder (beside
            // a replica the sidecar rightly answers 409 unknown_member).
            let owners = w.c.slot_owners().await.unwrap_or_default();
            let up: Vec<usize> = (0..w.sidecars.len())
                .filter(|&i| w.sidecars[i].alive() && !w.sidecars[i].frozen && owners.contains(&w.sidecars[i].node))
                .collect();
            if w.evacuating.is_some() || up.is_empty() {
                return false;
            }
            let i = up[rng.gen_range(0..up.len())];
            if let Err(e) = evacuate(&w.sidecars[i], "start", &w.bin) {
                eprintln!("nemesis: {e}");
                return false;
            }
            w.evacuating = Some(i);
            w.log(format!("evacuate {}", w.sidecars[i].node));
            l.later(rng, 5.0, 15.0, Heal::StopEvacuation(i));
        }
        Kind::Skew => {
            client.skew.store(true, std::sync::atomic::Ordering::Relaxed);
            w.log("skew on".into());
            l.later(rng, 5.0, 15.0, Heal::SkewOff);
        }
    }
    true
}

async fn heal(w: &mut World, h: Heal, client: &client::Client, l: &mut Ledger) {
    match h {
        Heal::RestartSidecar(i) => {
            if !w.sidecars[i].alive() {
                w.sidecars[i].spawn();
                w.log(format!("restart the sidecar beside {}", w.sidecars[i].node));
            }
        }
        Heal::ThawSidecar(i) => {
            w.sidecars[i].freeze(false);
            w.log(format!("thaw the sidecar beside {}", w.sidecars[i].node));
        }
        Heal::ThawNode(n) => {
            node_signal(w, &n, "-CONT");
            w.log(format!("thaw node {n}"));
            w.frozen_node = None;
        }
        Heal::StartEtcd => {
            w.etcd.restart().unwrap();
            w.etcd_up = true;
            w.log("restart etcd".into());
        }
        Heal::StopEvacuation(i) => {
            // A sidecar down now stops it when the nemesis heals it: try until it answers.
            let mut last = Ok(());
            for _ in 0..40 {
                last = evacuate(&w.sidecars[i], "stop", &w.bin);
                if last.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            match last {
                Ok(()) => {
                    w.evacuating = None;
                    w.log(format!("stop evacuating {}", w.sidecars[i].node));
                }
                Err(e) => {
                    eprintln!("nemesis: {e} (tried for 10 s; again in 5 s)");
                    l.due.push((Instant::now() + Duration::from_secs(5), Heal::StopEvacuation(i)));
                }
            }
        }
        Heal::SkewOff => {
            client.skew.store(false, std::sync::atomic::Ordering::Relaxed);
            w.log("skew off".into());
        }
    }
}

fn node_signal(w: &World, addr: &str, sig: &str) {
    if let Some(n) = w.c.nodes.iter().find(|n| n.addr() == addr)
        && let Some(p) = &n.proc
    {
        fleet::signal(p.id(), sig);
    }
}

/// `autobalancer evacuate start|stop` beside `s`; why not, when it did not.
fn evacuate(s: &Sidecar, action: &str, bin: &std::path::Path) -> Result<(), String> {
    if !s.alive() || s.frozen {
        return Err(format!("the sidecar beside {} is down", s.node));
    }
    let out = std::process::Command::new(bin)
        .args(["evacuate", action, "--config", s.config.to_str().unwrap()])
        .env("STATE_DIRECTORY", s.config.parent().unwrap())
        .output();
    match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("evacuate {action} beside {}: {}", s.node, String::from_utf8_lossy(&o.stderr).trim())),
        Err(e) => Err(format!("evacuate {action}: {e}")),
    }
}
