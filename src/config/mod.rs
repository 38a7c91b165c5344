//! Configuration: TOML (kebab-case keys) plus `AUTOBALANCER_<SECTION>_<KEY>` environment
//! overrides, parsed into plain structs, then validated into one list of errors that each
//! name the dotted key and the accepted range.
//!
//! Owns: the file format and its defaults (here), sizes and durations as people write them
//! (`units`), `AUTOBALANCER_*` overrides (`env`), validation per section (`validate`),
//! the check that every file named can be read (`files`) and what a TLS file must hold
//! (`pem`), the one reader of secret files (`secret`), and the `[topology]` and
//! `[traffic]` sections (`topology`, `traffic`).
//! Does not own: what the values mean at run time (each module reads its own section).

mod env;
mod files;
mod pem;
mod secret;
mod topology;
mod traffic;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use secret::{SecretError, read_secret};
pub use topology::TopologyConfig;
pub use traffic::TrafficConfig;
pub use units::{Dur, Size, human_bytes};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Parse(String),
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl ConfigError {
    /// Every problem, one per line (check-config prints them all).
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(v) => v.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// `cluster.backend`: where the layout comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A live Redis Cluster or Valkey Cluster.
    #[default]
    Redis,
    /// A snapshot JSON (`cluster.snapshot-file`), for what-if runs.
    File,
}

/// `cluster.sizing`: how a slot's bytes are measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Sizing {
    /// The sum of MEMORY USAGE of every key of the slot.
    #[default]
    Exact,
    /// MEMORY USAGE of a random sample of `sizing-sample-keys` keys per slot, scaled by the
    /// slot's key count; the snapshot states the error bound.
    Sampled,
}

/// `execution.migration`: which mover carries a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Migration {
    /// Atomic where every master supports it, legacy otherwise.
    #[default]
    Auto,
    /// Valkey 9's CLUSTER MIGRATESLOTS.
    Atomic,
    /// SETSLOT IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE.
    Legacy,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterConfig {
    pub id: String,
    pub backend: Backend,
    pub seeds: Vec<String>,
    /// Defaults to the first seed.
    pub member_id: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub snapshot_file: Option<PathBuf>,
    pub sizing: Sizing,
    /// MEMORY USAGE calls per second per master while sizing.
    pub sizing_keys_per_second: u32,
    /// A cached slot size older than this is measured again.
    pub sizing_max_age: Dur,
    /// How often a sidecar measures its own member's slots and publishes them for the
    /// lock holder (standalone: every master, into its own cache); 0 = never.
    pub sizing_refresh: Dur,
    /// `cluster.sizing-sample-keys` (`slot-sample-keys`, its former name, is still read):
    /// keys measured per slot in sampled mode.
    #[serde(rename = "sizing-sample-keys", alias = "slot-sample-keys")]
    pub slot_sample_keys: u32,
    /// TLS to every Redis node (`ca-file`, `cert-file`, `key-file` need it).
    pub tls: bool,
    /// CA that signed the servers' certificates; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for servers that require one (both or neither).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Standalone only (no `[etcd]`): where recorded moves, pause, evacuations and the
    /// last scheduled slot outlive the process. Default: `<cluster.id>.json` under
    /// `$STATE_DIRECTORY`, `$XDG_STATE_HOME/autobalancer`, `~/.local/state/autobalancer`
    /// or `/var/lib/autobalancer`, the first that is set ([`Config::state_file`]).
    pub state_file: Option<PathBuf>,
    /// The host and zone of the node beside this sidecar, published in its registration
    /// for placement (e.g. from the Kubernetes downward API), where the server announces
    /// no hostname or zone of its own.
    pub host: Option<String>,
    pub zone: Option<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            id: String::new(),
            backend: Backend::Redis,
            seeds: Vec::new(),
            member_id: None,
            username: None,
            password_file: None,
            snapshot_file: None,
            sizing: Sizing::Exact,
            // About a tenth of one core of a master: a pipelined MEMORY USAGE of a string
            // costs the server about 1 us.
            sizing_keys_per_second: 100_000,
            sizing_max_age: Dur(Duration::from_secs(3600)),
            sizing_refresh: Dur(Duration::from_secs(900)),
            slot_sample_keys: 64,
            tls: false,
            ca_file: None,
            cert_file: None,
            key_file: None,
            state_file: None,
            host: None,
            zone: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ScheduleConfig {
    pub cron: String,
    pub timezone: String,
    pub enabled: bool,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { cron: "0 0 3 * * *".into(), timezone: "UTC".into(), enabled: true }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct BalanceConfig {
    pub size_threshold_percent: u32,
    pub minimum_size: Size,
    pub tolerance_percent: u32,
    pub critical_memory_percent: u32,
    /// Per-member weight overriding capacity; 0 drains the member (without the persistent
    /// evacuation state).
    pub weights: BTreeMap<String, f64>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            size_threshold_percent: 10,
            minimum_size: Size(100 * 1024 * 1024),
            tolerance_percent: 5,
            critical_memory_percent: 90,
            weights: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ExecutionConfig {
    /// Moves (or groups of moves between two members) at once; 0 = as many as
    /// `max-moves-per-member` lets the members run, which grows with the cluster.
    pub max_concurrent_moves: u32,
    /// Moves (or groups) at once that involve one member, as source or target.
    pub max_moves_per_member: u32,
    /// 0 = unlimited.
    pub max_bytes_per_second: Size,
    /// 0 = unlimited.
    pub max_bytes_per_run: Size,
    pub max_run_time: Dur,
    pub migrate_batch_keys: u32,
    pub migrate_batch_bytes: Size,
    pub migrate_timeout: Dur,
    pub migration: Migration,
    /// A slot holding a key bigger than this is not moved automatically.
    pub max_key_bytes: Size,
    /// On SIGTERM, moves in flight get this long; then the process exits, their intents
    /// recorded for the next run's repair.
    pub shutdown_timeout: Dur,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            max_concurrent_moves: 0,
            max_moves_per_member: 4,
            max_bytes_per_second: Size(64 * 1024 * 1024),
            max_bytes_per_run: Size(0),
            max_run_time: Dur(Duration::from_secs(2 * 3600)),
            migrate_batch_keys: 500,
            migrate_batch_bytes: Size(8 * 1024 * 1024),
            migrate_timeout: Dur(Duration::from_secs(60)),
            migration: Migration::Auto,
            max_key_bytes: Size(64 * 1024 * 1024),
            shutdown_timeout: Dur(Duration::from_secs(20)),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub lease_ttl: Dur,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: "/autobalancer".into(),
            lease_ttl: Dur(Duration::from_secs(15)),
            username: None,
            password_file: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApiConfig {
    pub listen: String,
    pub token_file: Option<PathBuf>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig { listen: "127.0.0.1:9410".into(), token_file: None }
    }
}

/// `log.format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: LogLevel,
}

/// `log.level`: the least severe events logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The name as the config and a tracing filter write it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: LogLevel::Info }
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub schedule: ScheduleConfig,
    pub balance: BalanceConfig,
    pub execution: ExecutionConfig,
    pub topology: TopologyConfig,
    pub traffic: TrafficConfig,
    /// Absent: standalone, with an in-process lock.
    pub etcd: Option<EtcdConfig>,
    pub api: ApiConfig,
    pub log: LogConfig,
}

impl Config {
    /// Reads, applies the process environment, parses, validates, and checks that every
    /// file the config names can be read (secrets: and is not empty). All problems at once.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let config = Config::parse(&text, std::env::vars())?;
        let mut errors = config.validate();
        errors.extend(config.check_files());
        if errors.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(errors)) }
    }

    /// Parses `text`, applies `AUTOBALANCER_<SECTION>_<KEY>` overrides from `env`, validates.
    /// Touches no file: the files the config names are checked by `load`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let config = Config::parse(text, env)?;
        let errors = config.validate();
        if errors.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(errors)) }
    }

    /// TOML, then the environment, then typed sections; an error names the dotted key (an
    /// enumeration's also names the accepted values).
    fn parse(text: &str, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(format!("invalid TOML: {e}")))?;
        env::apply(&mut table, env)?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            // toml appends "in `section.key`": the path above already says it.
            let inner = inner.lines().filter(|l| !l.starts_with("in `")).collect::<Vec<_>>().join(" ");
            let inner = inner.trim();
            if path == "." || path.is_empty() {
                ConfigError::Parse(inner.to_string())
            } else {
                ConfigError::Parse(format!("{path}: {inner}"))
            }
        })
    }

    /// Where a standalone sidecar keeps what must outlive it: `cluster.state-file`, else
    /// the default path for `cluster.id`. None with `[etcd]` (etcd keeps it) or for a
    /// snapshot file (its moves apply whole).
    pub fn state_file(&self) -> Option<PathBuf> {
        if self.etcd.is_some() || self.cluster.backend == Backend::File {
            return None;
        }
        self.cluster.state_file.clone().or_else(|| Some(default_state_dir().join(format!("{}.json", self.cluster.id))))
    }

    /// The member this sidecar sits beside.
    pub fn member_id(&self) -> String {
        self.cluster
            .member_id
            .clone()
            .or_else(|| self.cluster.seeds.first().cloned())
            .unwrap_or_else(|| "local".to_string())
    }
}

/// The directory of the default state file: systemd's `StateDirectory=`, else the XDG
/// state directory, else the system's.
fn default_state_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = var("STATE_DIRECTORY") {
        // systemd sets a colon-separated list when several are configured.
        let first = d.to_string_lossy().split(':').next().unwrap_or_default().to_string();
        return PathBuf::from(first);
    }
    var("XDG_STATE_HOME")
        .map(|d| d.join("autobalancer"))
        .or_else(|| var("HOME").map(|h| h.join(".local/state/autobalancer")))
        .unwrap_or_else(|| PathBuf::from("/var/lib/autobalancer"))
}

#[cfg(test)]
mod tests;
