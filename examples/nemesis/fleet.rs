//! The sidecars of the nemesis run: one `autobalancer run` beside every node, with
//! etcd and a cron of a few seconds, each killed, frozen and restarted at will.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autobalancer_testkit::{LocalCluster, LocalEtcd};

pub struct Sidecar {
    pub node: String,
    pub api: String,
    pub config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pub frozen: bool,
    bin: PathBuf,
}

/// What every sidecar is configured with: moves allowed on small data, runs every few
/// seconds, a short lease so frozen holders lose it.
pub fn config(c: &LocalCluster, etcd: &LocalEtcd, node: &str, api: &str) -> String {
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        "[cluster]\nid = \"nemesis\"\nseeds = [{}]\nmember-id = \"{node}\"\nsizing-refresh = \"10s\"\n\
         [schedule]\ncron = \"*/4 * * * * *\"\n\
         [balance]\nminimum-size = 0\nsize-threshold-percent = 1\ntolerance-percent = 5\n\
         [execution]\nmax-run-time = \"30s\"\nmax-bytes-per-second = 0\n\
         [topology]\nfailback-after = \"5s\"\n\
         [etcd]\nendpoints = [\"{}\"]\nprefix = \"/nemesis\"\nlease-ttl = \"3s\"\n\
         [api]\nlisten = \"{api}\"\n[log]\nlevel = \"info\"\nformat = \"json\"\n",
        seeds.join(", "),
        etcd.endpoint()
    )
}

impl Sidecar {
    pub fn start(dir: &Path, bin: &Path, c: &LocalCluster, etcd: &LocalEtcd, node: &str) -> Sidecar {
        let api = format!("127.0.0.1:{}", autobalancer_testkit::free_port());
        let name = node.replace([':', '.'], "_");
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, self::config(c, etcd, node, &api)).unwrap();
        let mut s = Sidecar {
            node: node.to_string(),
            api,
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
            frozen: false,
            bin: bin.to_path_buf(),
        };
        s.spawn();
        s
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(&self.bin)
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("STATE_DIRECTORY", self.config.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.frozen = false;
    }

    /// Started again on a fresh API port when it exited because its port was taken
    /// (another process on the machine took it while this one was down): the machine's
    /// doing, not the sidecar's. Any other exit is left for the checks to report.
    /// Returns whether it was.
    pub fn rebind_if_port_taken(&mut self) -> bool {
        let exited = self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_some());
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let last = log.lines().last().unwrap_or_default();
        let taken = last.contains(&format!("api.listen {}", self.api)) && last.contains("Address already in use");
        if !(exited && taken) {
            return false;
        }
        let api = format!("127.0.0.1:{}", autobalancer_testkit::free_port());
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(
            &self.config,
            text.replace(&format!("listen = \"{}\"", self.api), &format!("listen = \"{api}\"")),
        )
        .unwrap();
        self.api = api;
        self.spawn();
        true
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT.
    pub fn freeze(&mut self, on: bool) {
        if let Some(c) = &self.child {
            signal(c.id(), if on { "-STOP" } else { "-CONT" });
            self.frozen = on;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        if !self.alive() || self.frozen {
            return None;
        }
        let r = ureq::get(&self.url(path)).timeout(Duration::from_secs(2)).call();
        match r {
            Ok(resp) => Some((resp.status(), resp.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, resp)) => Some((code, resp.into_string().unwrap_or_default())),
            Err(_) => None,
        }
    }

    pub fn healthy(&self) -> bool {
        self.get("/healthz").is_some_and(|(code, _)| code == 200)
    }

    /// Whether `/status` says this sidecar holds the lock for a run now.
    pub fn holds(&self) -> bool {
        self.get("/status")
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .is_some_and(|v| v["lock"]["held_here"] == true)
    }

    /// The sum of one metric's series whose line starts with `series`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics")?;
        Some(
            text.lines()
                .filter(|l| l.starts_with(series))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum(),
        )
    }

    /// The log lines whose message starts with `prefix`.
    pub fn logged(&self, prefix: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
            .count()
    }

    /// The `run ended` lines with this outcome.
    pub fn logged_run(&self, outcome: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["fields"]["message"] == "run ended" && v["fields"]["outcome"] == outcome)
            .count()
    }

    /// Waits until the sidecar answers `/healthz`, at most `within`.
    pub fn wait_healthy(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.healthy() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.freeze(false);
        self.kill9();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}
