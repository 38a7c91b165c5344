//! The subcommands, one function each, and what they share: the exit-code carrying
//! failure, config and log set-up, the run context with its member named, output.
//!
//! Layout: `commands` the commands that plan or move in this process (`simulate`,
//! `snapshot`, `rebalance`, `pause`/`resume`, `status`, `check-config`); `repair`,
//! `handoff`, `evacuate` one each; `local` the client of the local sidecar's API;
//! `progress` the terminal's progress line. Does not own: argument parsing (`main.rs`),
//! what a run does (`run`) or the daemon (`sidecar`).

pub mod commands;
pub mod evacuate;
pub mod handoff;
pub mod local;
pub mod progress;
pub mod repair;

use autobalancer::config::Config;
use autobalancer::report::Answer;

/// How a command prints its answer.
#[derive(Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

/// A failure with its exit code.
pub struct Fail(pub u8, pub anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail(1, e.into())
    }
}

/// Bad usage or config: exit 2.
pub fn usage(e: impl Into<anyhow::Error>) -> Fail {
    Fail(2, e.into())
}

pub fn load_config(path: &std::path::Path) -> Result<Config, Fail> {
    Config::load(path).map_err(|e| usage(anyhow::anyhow!("{}: {e}", path.display())))
}

pub fn init_logs(config: Option<&Config>) {
    let (level, json) = match config {
        Some(c) => (c.log.level.as_str().to_string(), c.log.format == autobalancer::config::LogFormat::Json),
        None => ("warn".to_string(), false),
    };
    // AUTOBALANCER_LOG_LEVEL overrides log.level like any other key.
    let filter = tracing_subscriber::EnvFilter::new(level);
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}

/// The run context, the member named by its stable id (the configured name, with a
/// warning, when the cluster does not answer: the command's own call says why).
pub async fn context(config: Config) -> Result<autobalancer::run::Context, Fail> {
    autobalancer::run::Context::new(named(config).await).map_err(usage)
}

/// As `context`, for a command that only reads: a standalone sidecar's state file stays
/// with the process that holds it.
pub async fn reader(config: Config) -> Result<autobalancer::run::Context, Fail> {
    autobalancer::run::Context::reader(named(config).await).map_err(usage)
}

/// The config with its member named by its stable id.
async fn named(mut config: Config) -> Config {
    match autobalancer::run::stable_member_id(&config).await {
        Ok(id) => config.cluster.member_id = Some(id),
        Err(e) => tracing::warn!(member = %config.member_id(), cause = %e, "cannot name the member by its node id"),
    }
    config
}

pub fn print_outcome(out: &Answer, format: Format) {
    match format {
        Format::Json => println!("{}", out.to_json()),
        Format::Table => print!("{}", out.to_table()),
    }
}
