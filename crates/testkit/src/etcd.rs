//! A single-member etcd on loopback, in a temporary directory unless told where, that can
//! be stopped and started again on the same ports and data (an outage, then recovery).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;
use crate::ports::free_port;
use crate::proc::{Proc, version_of};

pub struct LocalEtcd {
    pub port: u16,
    pub peer_port: u16,
    pub proc: Option<Proc>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra: Vec<String>,
    scheme: &'static str,
}

impl LocalEtcd {
    pub fn start() -> Result<LocalEtcd> {
        Self::start_with(Vec::new(), "http")
    }

    /// Starts with extra flags (TLS, auth); `scheme` is the client URL scheme.
    pub fn start_with(extra: Vec<String>, scheme: &'static str) -> Result<LocalEtcd> {
        let tmp = tempfile::Builder::new().prefix("ab-etcd-").tempdir().map_err(|e| e.to_string())?;
        let mut e = Self::start_in(tmp.path(), extra, scheme)?;
        e._tmp = Some(tmp);
        Ok(e)
    }

    /// As `start_with`, in a directory that outlives the value (the demo's `--keep`).
    pub fn start_in(dir: &Path, extra: Vec<String>, scheme: &'static str) -> Result<LocalEtcd> {
        version_of("etcd".as_ref(), "install it (apt-get install etcd-server)")?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let mut e = LocalEtcd {
            port: free_port(),
            peer_port: free_port(),
            proc: None,
            dir: dir.to_path_buf(),
            _tmp: None,
            extra,
            scheme,
        };
        e.spawn()?;
        Ok(e)
    }

    pub fn endpoint(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn spawn(&mut self) -> Result<()> {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.join("etcd.log")).map_err(|e| e.to_string())?;
        let child = Command::new("etcd")
            .args(["--name", "t", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("t={peer}")])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        self.proc = Some(Proc::new(child, "etcd"));
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("etcd did not listen within 15 s; see {}", self.dir.join("etcd.log").display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts again on the same ports and data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
