//! Shared by the integration tests: sidecar processes with their own config, API
//! calls, reading their JSON logs, and the `[cluster]` section for a local cluster.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer_testkit::{LocalCluster, Login};

/// The binary, with a default state directory of its own (a standalone command keeps
/// its state there unless its config names a `cluster.state-file`).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_autobalancer"));
    let dir = tempfile::Builder::new().prefix("ab-state-").tempdir().unwrap().keep();
    c.env("STATE_DIRECTORY", dir);
    c
}

/// The binary for `args`: standalone, its default state file sits beside the config
/// `--config` names, so the commands of one test share it as one host's would.
pub fn bin_for(args: &[&str]) -> Command {
    let mut c = bin();
    if let Some(cfg) = args.iter().position(|a| *a == "--config").and_then(|i| args.get(i + 1)) {
        c.env("STATE_DIRECTORY", Path::new(cfg).parent().unwrap_or(Path::new(".")));
    }
    c.args(args);
    c
}

/// Runs the command line to its end: (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = bin_for(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// As `cli`, killed after `within`: a command that never returns fails its test instead
/// of stalling the suite (exit code -1 and "killed after" in stderr).
pub fn cli_within(args: &[&str], within: Duration) -> (i32, String, String) {
    let mut child = bin_for(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = Instant::now() + within;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            return (-1, String::from_utf8_lossy(&out.stdout).into(), format!("{err}\nkilled after {within:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// A running `autobalancer run`, killed on drop.
pub struct SidecarProc {
    pub child: Option<Child>,
    pub api: String,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl SidecarProc {
    /// Writes `config` (with `[api] listen` filled in) to `dir/name.toml` and starts it.
    pub fn start(dir: &Path, name: &str, config: &str) -> SidecarProc {
        Self::start_with(dir, name, config, "")
    }

    /// As `start`, with more lines for the `[api]` section.
    pub fn start_with(dir: &Path, name: &str, config: &str, api_extra: &str) -> SidecarProc {
        let mut p = Self::written(dir, name, config, api_extra);
        p.spawn();
        p
    }

    /// As `start`, without waiting for `/healthz` (a sidecar that cannot start serving).
    pub fn start_unready(dir: &Path, name: &str, config: &str) -> SidecarProc {
        let mut p = Self::written(dir, name, config, "");
        p.spawn_process();
        p
    }

    fn written(dir: &Path, name: &str, config: &str, api_extra: &str) -> SidecarProc {
        let port = autobalancer_testkit::free_port();
        let api = format!("127.0.0.1:{port}");
        let text = format!("{config}\n[api]\nlisten = \"{api}\"\n{api_extra}\n");
        let cfg = dir.join(format!("{name}.toml"));
        std::fs::write(&cfg, text).unwrap();
        SidecarProc { child: None, api, log: dir.join(format!("{name}.log")), config: cfg }
    }

    pub fn spawn(&mut self) {
        self.spawn_process();
        let deadline = Instant::now() + Duration::from_secs(15);
        while get(&self.url("/healthz")).is_err() {
            assert!(Instant::now() < deadline, "sidecar did not answer /healthz: {}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = bin_for(&["run", "--config", self.config.to_str().unwrap()])
            .env("AUTOBALANCER_LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM; returns the exit code and how long it took.
    pub fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut c = self.child.take().unwrap();
        let t0 = Instant::now();
        Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        let status = c.wait().unwrap();
        (status.code(), t0.elapsed())
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The JSON log lines whose message is `message`.
    pub fn events(&self, message: &str) -> Vec<serde_json::Value> {
        self.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == message)
            .collect()
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(&get(&self.url("/metrics")).unwrap().1, name)
    }
}

impl Drop for SidecarProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The value of one series in a text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// GET: (status, body).
pub fn get(url: &str) -> Result<(u16, String), String> {
    call("GET", url, None, None)
}

pub fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> Result<(u16, String), String> {
    let mut r = ureq::request(method, url).timeout(Duration::from_secs(120));
    if let Some(t) = token {
        r = r.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some(b) => r.set("Content-Type", "application/json").send_string(b),
        None => r.call(),
    };
    match res {
        Ok(resp) => {
            let code = resp.status();
            Ok((code, resp.into_string().unwrap_or_default()))
        }
        Err(ureq::Error::Status(code, resp)) => Ok((code, resp.into_string().unwrap_or_default())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// Polls `f` every 100 ms until it is true or `secs` pass.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls the async `f` every 100 ms until it is true or `secs` pass.
pub async fn wait_for_async<F: std::future::Future<Output = bool>>(secs: u64, what: &str, mut f: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `[cluster]` section for a local cluster, beside `member` when given, logged in as
/// the kit says (`username`, and a `password-file` written into `dir`).
pub fn cluster_section(c: &LocalCluster, dir: &Path, member: Option<&str>) -> String {
    cluster_section_as(c, dir, member, &c.login())
}

/// As `cluster_section`, logged in as `login`.
pub fn cluster_section_as(c: &LocalCluster, dir: &Path, member: Option<&str>, login: &Login) -> String {
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    let mut s = format!("[cluster]\nid = \"t\"\nseeds = [{}]\n", seeds.join(", "));
    if let Some(m) = member {
        s += &format!("member-id = \"{m}\"\n");
    }
    if let Some(u) = &login.username {
        s += &format!("username = \"{u}\"\n");
    }
    if let Some(pw) = &login.password {
        let f = dir.join("redis-password");
        std::fs::write(&f, format!("{pw}\n")).unwrap();
        s += &format!("password-file = \"{}\"\n", f.display());
    }
    s
}

/// How many times `addr` ran `CLUSTER <sub>` since its statistics were last reset
/// (INFO commandstats); None when it never did.
pub async fn cluster_calls(c: &LocalCluster, addr: &str, sub: &str) -> Option<u64> {
    let mut con = c.conn(addr).await.unwrap();
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(&mut con).await.unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_cluster|{sub}:calls=")))
        .map(|v| v.split(',').next().unwrap().parse::<u64>().unwrap())
}

/// A standalone coordinator's lock, held: the fence a test's direct moves and repairs
/// pass, as a run's do.
pub struct Held {
    coordinator: autobalancer::coord::Coordinator,
    guard: autobalancer::coord::LockGuard,
}

impl Held {
    pub async fn new() -> Held {
        let coordinator = autobalancer::coord::Coordinator::new(None, "t", "test").unwrap();
        let autobalancer::coord::Acquire::Acquired(guard) = coordinator.try_lock("manual").await.unwrap() else {
            panic!("a fresh in-process lock is free")
        };
        Held { coordinator, guard }
    }
}

impl autobalancer::coord::Fence for Held {
    async fn check(&self) -> Result<(), autobalancer::coord::FenceError> {
        self.coordinator.check(&self.guard).await
    }
}

/// A node's view of the cluster (CLUSTER NODES), parsed.
pub async fn nodes(c: &LocalCluster, addr: &str) -> Vec<autobalancer::cluster::redis::NodeLine> {
    let mut con = c.conn(addr).await.unwrap();
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await.unwrap();
    autobalancer::cluster::redis::parse_nodes(&text).unwrap()
}

/// Keys of `slot` on `addr`.
pub async fn count(c: &LocalCluster, addr: &str, slot: u16) -> u64 {
    let mut con = c.conn(addr).await.unwrap();
    redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot).query_async(&mut con).await.unwrap()
}

/// Waits for a slot half-moved: (slot, source addr, target addr), with keys on both.
pub async fn half_moved(c: &LocalCluster) -> (u16, String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "no slot was ever half-moved");
        for a in c.current_masters().await.unwrap() {
            let all = nodes(c, &a).await;
            let me = all.iter().find(|n| n.is_myself()).unwrap();
            for (slot, to) in &me.migrating {
                let Some(target) = all.iter().find(|n| &n.id == to) else { continue };
                if count(c, &target.addr, *slot).await >= 2 && count(c, &a, *slot).await >= 2 {
                    return (*slot, a.clone(), target.addr.clone());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `sig` (`-STOP`, `-CONT`, ...) to the node at `addr`.
pub fn signal_node(c: &LocalCluster, addr: &str, sig: &str) {
    let n = c.nodes.iter().find(|n| n.addr() == addr).unwrap();
    let pid = n.proc.as_ref().unwrap().id().to_string();
    assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
}

/// Waits until `replica` has applied everything `master` wrote (equal replication offsets).
pub async fn caught_up(c: &LocalCluster, master: &str, replica: &str) {
    let offset = |addr: String| async move {
        let mut con = c.conn(&addr).await.unwrap();
        let info: String = redis::cmd("INFO").arg("replication").query_async(&mut con).await.unwrap();
        let field = if addr == master { "master_repl_offset:" } else { "slave_repl_offset:" };
        info.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(0)
    };
    wait_for_async(20, "the target's replica to catch up", || async {
        offset(master.to_string()).await == offset(replica.to_string()).await
    })
    .await;
}

/// The run context of the config at `cfg`, built in this process as the daemon builds
/// its own; standalone, it keeps its state in a file of its own beside `cfg` (the
/// commands of [`bin_for`] lock theirs while they run).
pub fn context_for(cfg: &Path) -> autobalancer::run::Context {
    let mut config = autobalancer::config::Config::load(cfg).unwrap();
    config.cluster.state_file.get_or_insert_with(|| cfg.with_file_name("in-process-state.json"));
    autobalancer::run::Context::new(config).unwrap()
}

/// A run by hand, as `rebalance --once` asks for one.
pub const MANUAL: autobalancer::run::Trigger =
    autobalancer::run::Trigger::Manual { force: false, allow_big_keys: false };
