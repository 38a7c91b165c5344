//! Configuration: TOML (kebab-case keys) plus `AUTOBALANCER_<SECTION>_<KEY>` environment
//! overrides, parsed into plain structs, then validated into one list of errors that each
//! name the dotted key and the accepted range.
//!
//! Owns: the file format and its defaults (here), sizes and durations as people write them
//! (`units`), validation per section (`validate`), and the one reader of secret files
//! (`secret`).
//! Does not own: what the values mean at run time (each module reads its own section).

mod secret;
mod units;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use secret::{SecretError, read_secret};
pub use units::{Dur, Size, human_bytes};

/// Sections an environment override may name.
const SECTIONS: &[&str] = &["cluster", "schedule", "balance", "execution", "etcd", "api", "log"];

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Redis,
    File,
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
    /// Keys sampled per slot with MEMORY USAGE; a slot with at most this many keys is exact.
    pub slot_sample_keys: u32,
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
            slot_sample_keys: 16,
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
    pub max_concurrent_moves: u32,
    pub max_moves_per_member: u32,
    /// 0 = unlimited.
    pub max_bytes_per_second: Size,
    /// 0 = unlimited.
    pub max_bytes_per_run: Size,
    pub max_run_time: Dur,
    pub migrate_batch_keys: u32,
    pub migrate_batch_bytes: Size,
    pub migrate_timeout: Dur,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            max_concurrent_moves: 4,
            max_moves_per_member: 1,
            max_bytes_per_second: Size(64 * 1024 * 1024),
            max_bytes_per_run: Size(0),
            max_run_time: Dur(Duration::from_secs(2 * 3600)),
            migrate_batch_keys: 500,
            migrate_batch_bytes: Size(8 * 1024 * 1024),
            migrate_timeout: Dur(Duration::from_secs(60)),
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
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, level: "info".into() }
    }
}

#[derive(Clone, Debug, Deserialize, Default)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    pub cluster: ClusterConfig,
    pub schedule: ScheduleConfig,
    pub balance: BalanceConfig,
    pub execution: ExecutionConfig,
    /// Absent: standalone, with an in-process lock.
    pub etcd: Option<EtcdConfig>,
    pub api: ApiConfig,
    pub log: LogConfig,
}

impl Config {
    /// Reads, applies the process environment, parses and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Config::from_toml_with_env(&text, std::env::vars())
    }

    /// Parses `text`, applies `AUTOBALANCER_<SECTION>_<KEY>` overrides from `env`, validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| ConfigError::Parse(format!("invalid TOML: {e}")))?;
        apply_env(&mut table, env)?;
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner().to_string();
            let inner = inner.trim();
            if path == "." || path.is_empty() {
                ConfigError::Parse(inner.to_string())
            } else {
                ConfigError::Parse(format!("{path}: {inner}"))
            }
        })?;
        let errors = config.validate();
        if errors.is_empty() { Ok(config) } else { Err(ConfigError::Invalid(errors)) }
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

/// Applies `AUTOBALANCER_<SECTION>_<KEY>=value`: the key's underscores become dashes; the
/// value is read as a TOML value (number, bool, array) or else as a string.
fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
    let mut errs = Vec::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("AUTOBALANCER_") else {
            continue;
        };
        let lower = rest.to_ascii_lowercase();
        let Some((section, key)) = lower.split_once('_') else {
            errs.push(format!("environment {name}: expected AUTOBALANCER_<SECTION>_<KEY>"));
            continue;
        };
        if !SECTIONS.contains(&section) {
            errs.push(format!("environment {name}: unknown section {section:?} (one of {})", SECTIONS.join(", ")));
            continue;
        }
        let key = key.replace('_', "-");
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table.entry(section.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => errs.push(format!("environment {name}: {section} is not a table in the file")),
        }
    }
    if errs.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errs)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Vec::<(String, String)>::new())
    }

    const MIN: &str = "[cluster]\nid = \"orders\"\nseeds = [\"127.0.0.1:7001\"]\n";

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(MIN).unwrap();
        assert_eq!(c.balance.size_threshold_percent, 10);
        assert_eq!(c.balance.minimum_size, Size(100 * 1024 * 1024));
        assert_eq!(c.execution.max_run_time.0, Duration::from_secs(7200));
        assert_eq!(c.schedule.cron, "0 0 3 * * *");
        assert!(c.etcd.is_none());
        assert_eq!(c.member_id(), "127.0.0.1:7001");
    }

    #[test]
    fn sizes_and_durations_in_the_file() {
        let c = parse(&format!("{MIN}[balance]\nminimum-size = 104857600\n[execution]\nmax-run-time = 90\n")).unwrap();
        assert_eq!(c.balance.minimum_size, Size(104_857_600));
        assert_eq!(c.execution.max_run_time.0, Duration::from_secs(90));
    }

    #[test]
    fn errors_name_the_dotted_key_and_range() {
        let e = parse(&format!("{MIN}[balance]\nsize-threshold-percent = 0\n")).unwrap_err();
        assert_eq!(e.lines(), vec!["balance.size-threshold-percent must be 1..=99, got 0"]);
        let e = parse(&format!("{MIN}[balance]\nminimum-size = \"big\"\n")).unwrap_err();
        assert!(e.to_string().contains("balance.minimum-size"), "{e}");
        let e = parse(&format!("{MIN}[execution]\nmax-run-time = -1\n")).unwrap_err();
        assert!(e.to_string().contains("execution.max-run-time"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let e = parse(&format!("{MIN}[balance]\nsize-treshold-percent = 10\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("size-treshold-percent"), "{msg}");
        let e = parse(&format!("{MIN}[balanse]\n")).unwrap_err();
        assert!(e.to_string().contains("balanse"), "{e}");
    }

    #[test]
    fn invalid_cron_names_the_expression() {
        let e = parse(&format!("{MIN}[schedule]\ncron = \"every night\"\n")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("schedule.cron") && msg.contains("every night"), "{msg}");
        let e = parse(&format!("{MIN}[schedule]\ntimezone = \"Mars/Olympus\"\n")).unwrap_err();
        assert!(e.to_string().contains("schedule.timezone"), "{e}");
    }

    #[test]
    fn all_errors_are_reported_together() {
        let e = parse("[cluster]\nid = \"\"\n[balance]\nsize-threshold-percent = 100\ntolerance-percent = 80\n")
            .unwrap_err();
        let lines = e.lines();
        assert!(lines.len() >= 4, "{lines:?}");
        assert!(lines.iter().any(|l| l.starts_with("cluster.id")));
        assert!(lines.iter().any(|l| l.starts_with("cluster.seeds")));
        assert!(lines.iter().any(|l| l.contains("size-threshold-percent must be 1..=99, got 100")));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            ("AUTOBALANCER_BALANCE_SIZE_THRESHOLD_PERCENT".to_string(), "25".to_string()),
            ("AUTOBALANCER_BALANCE_MINIMUM_SIZE".to_string(), "1GiB".to_string()),
            ("AUTOBALANCER_SCHEDULE_ENABLED".to_string(), "false".to_string()),
            ("AUTOBALANCER_ETCD_ENDPOINTS".to_string(), "[\"http://10.0.0.1:2379\"]".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let c = Config::from_toml_with_env(MIN, env).unwrap();
        assert_eq!(c.balance.size_threshold_percent, 25);
        assert_eq!(c.balance.minimum_size, Size(1 << 30));
        assert!(!c.schedule.enabled);
        assert_eq!(c.etcd.unwrap().endpoints, vec!["http://10.0.0.1:2379"]);
        let bad = vec![("AUTOBALANCER_NOPE_X".to_string(), "1".to_string())];
        assert!(Config::from_toml_with_env(MIN, bad).unwrap_err().to_string().contains("AUTOBALANCER_NOPE_X"));
    }

    #[test]
    fn non_loopback_api_needs_a_token() {
        let e = parse(&format!("{MIN}[api]\nlisten = \"0.0.0.0:9410\"\n")).unwrap_err();
        assert!(e.to_string().contains("api.token-file"), "{e}");
        parse(&format!("{MIN}[api]\nlisten = \"0.0.0.0:9410\"\ntoken-file = \"/t\"\n")).unwrap();
    }

    #[test]
    fn file_backend_needs_a_snapshot() {
        let e = parse("[cluster]\nid = \"x\"\nbackend = \"file\"\n").unwrap_err();
        assert!(e.to_string().contains("cluster.snapshot-file"), "{e}");
        let e = parse("[cluster]\nid = \"x\"\nbackend = \"mongo\"\n").unwrap_err();
        assert!(e.to_string().contains("cluster.backend"), "{e}");
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../config.toml.example");
        parse(text).unwrap();
    }
}
