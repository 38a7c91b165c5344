//! A Prometheus server on loopback that scrapes given targets every second with given
//! rule files loaded, in a temporary directory. Owns the process, not the queries.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Result;
use crate::ports::free_port;
use crate::proc::Proc;

pub struct LocalPrometheus {
    pub port: u16,
    pub proc: Proc,
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl LocalPrometheus {
    /// Scrapes `targets` (`host:port`) as job `job`, with `rule_files` loaded.
    pub fn start(job: &str, targets: &[String], rule_files: &[&Path]) -> Result<LocalPrometheus> {
        let tmp = tempfile::Builder::new().prefix("ab-prometheus-").tempdir().map_err(|e| e.to_string())?;
        let dir = tmp.path().to_path_buf();
        let port = free_port();
        let rules: String = rule_files.iter().map(|f| format!("  - {}\n", f.display())).collect();
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("prometheus: {e}: install Debian's prometheus package (scripts/test does)"))?;
        Ok(LocalPrometheus { port, proc: Proc::new(child, "prometheus"), dir, _tmp: tmp })
    }

    /// The HTTP API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}
