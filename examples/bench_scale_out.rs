//! Scale-out at cluster sizes production has: LOADED masters holding the data, EMPTY new
//! ones, and one cold `autobalancer rebalance --once` with the default settings against
//! `redis-cli --cluster rebalance --cluster-use-empty-masters`, each on a fresh cluster
//! loaded with the same keys. Prints one Markdown row per tool: wall time, slots moved,
//! milliseconds per slot moved, bytes moved, the largest deviation from the mean by exact
//! bytes, and whether every key and value is intact.
//! Usage: bench_scale_out [--valkey] LOADED EMPTY KEYS [AUTOBALANCER_BIN]; BENCH_TOOLS picks the
//! tools (`redis-cli,autobalancer`), BENCH_EXTRA appends TOML to autobalancer's config, BENCH_REPLICAS gives
//! every master that many replicas, BENCH_CLIENT=N runs N cluster-aware readers (redis-rs) through the
//! run and one second after it, and prints what they did and the MOVED and ASK replies the
//! masters sent meanwhile (INFO errorstats): the redirects a client pays for the moves.

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
    let readers = std::env::var("BENCH_CLIENT").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let names: Vec<Vec<u8>> = digest.keys().step_by(7).cloned().collect();
    let clients = Readers::start(&c, readers, names).await;
    let t0 = Instant::now();
    let out = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(if quiet { std::process::Stdio::null() } else { std::process::Stdio::inherit() })
        .output()
        .unwrap();
    let wall = t0.elapsed().as_secs_f64();
    clients.report(&c).await;
    assert!(out.status.success(), "{tool} failed");
    let moving =
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok().and_then(|v| v["duration_seconds"].as_f64());
    c.wait_ok(std::time::Duration::from_secs(60)).await.unwrap();
    let intact = c.digest().await.unwrap() == digest && c.open_slots().await.unwrap().is_empty();
    (row(&c, &before, wall, intact).await, moving)
}

/// Cluster-aware readers GETting keys that exist, in turn, until stopped: redis-rs
/// tasks, and with BENCH_PY (a Python with redis-py) as many redis-py processes.
struct Readers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, u64, String)>>,
    py: Vec<std::process::Child>,
}

/// A redis-py reader: GETs the keys named on stdin's first line (hex, comma-separated)
/// through a RedisCluster client until stdin closes, then prints `ops errors first-error`.
const PY_READER: &str = r#"
import sys, threading, redis.cluster
host, port = sys.argv[1].rsplit(":", 1)
names = [bytes.fromhex(h) for h in sys.stdin.readline().strip().split(",")]
c = redis.cluster.RedisCluster(host=host, port=int(port))
done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
ops = errors = 0
first = "-"
i = int(sys.argv[2]) * 7919
while not done.is_set():
    i = (i + 1) % len(names)
    try:
        c.get(names[i]); ops += 1
    except Exception as e:
        errors += 1
        if first == "-":
            first = repr(e).replace(" ", "_")[:160]
print(ops, errors, first, flush=True)
"#;

impl Readers {
    /// `n` readers over `names`, after the masters' error counters are reset.
    async fn start(c: &autobalancer_testkit::LocalCluster, n: usize, names: Vec<Vec<u8>>) -> Readers {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        if n > 0 {
            for a in c.current_masters().await.unwrap() {
                let mut con = c.conn(&a).await.unwrap();
                redis::cmd("CONFIG").arg("RESETSTAT").query_async::<()>(&mut con).await.unwrap();
            }
        }
        let names = std::sync::Arc::new(names);
        let mut tasks = Vec::new();
        for i in 0..n {
            let (mut con, stop, names) = (c.cluster_conn().await.unwrap(), stop.clone(), names.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ops, mut errors, mut first_error) = (0u64, 0u64, String::new());
                let mut k = i * 7919;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    k = (k + 1) % names.len();
                    match redis::cmd("GET").arg(&names[k]).query_async::<Option<Vec<u8>>>(&mut con).await {
                        Ok(_) => ops += 1,
                        Err(e) => {
                            errors += 1;
                            if first_error.is_empty() {
                                first_error = e.to_string();
                            }
                        }
                    }
                }
                (ops, errors, first_error)
            }));
        }
        let mut py = Vec::new();
        if let (Ok(python), true) = (std::env::var("BENCH_PY"), n > 0) {
            let hex: Vec<String> =
                names.iter().map(|k| k.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect();
            let line = hex.join(",") + "\n";
            for i in 0..n {
                let mut child = std::process::Command::new(&python)
                    .args(["-c", PY_READER, &c.master_addrs()[0], &i.to_string()])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("BENCH_PY runs");
                use std::io::Write;
                child.stdin.as_mut().unwrap().write_all(line.as_bytes()).unwrap();
                py.push(child);
            }
            // Each has connected and read its first key before the run starts.
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        Readers { stop, tasks, py }
    }

    /// One second more, then what the readers did and the redirects the masters sent.
    async fn report(self, c: &autobalancer_testkit::LocalCluster) {
        if self.tasks.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ops, mut errors, mut first) = (0, 0, String::new());
        for t in self.tasks {
            let (o, e, f) = t.await.unwrap();
            (ops, errors) = (ops + o, errors + e);
            if first.is_empty() {
                first = f;
            }
        }
        let (mut py_ops, mut py_errors, mut py_first) = (0u64, 0u64, String::from("-"));
        for mut child in self.py {
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace();
            let mut num = || it.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (py_ops, py_errors) = (py_ops + num(), py_errors + num());
            if let Some(f) = text.split_whitespace().nth(2).filter(|f| *f != "-" && py_first == "-") {
                py_first = f.to_string();
            }
        }
        if py_ops + py_errors > 0 {
            println!("redis-py readers: {py_ops} GETs, {py_errors} errors (first: {py_first})");
        }
        let (mut moved, mut ask) = (0u64, 0u64);
        for a in c.current_masters().await.unwrap() {
            let mut con = c.conn(&a).await.unwrap();
            let info: String = redis::cmd("INFO").arg("errorstats").query_async(&mut con).await.unwrap();
            let count = |name: &str| {
                info.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.trim_start_matches(":count=").trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            moved += count("errorstat_MOVED");
            ask += count("errorstat_ASK");
        }
        println!(
            "readers: {ops} GETs, {errors} errors{}; masters sent MOVED {moved}, ASK {ask}",
            if first.is_empty() { String::new() } else { format!(" (first: {first})") }
        );
    }
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
