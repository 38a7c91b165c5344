//! The `autobalancer` command: parses arguments, loads the config, hands off to the
//! library. Exit codes: 0 done (also a reasoned skip), 1 runtime failure (a failed run, a
//! failed task of the daemon), 2 bad usage or config.
//!
//! Owns: the subcommands, their output and exit codes, the calls to the local sidecar's
//! API, and bounding `rebalance --once` after a signal. Does not own: what a run does
//! (`run`) or the daemon (`sidecar`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use autobalancer::config::Config;
use autobalancer::decide::SkipReason;
use autobalancer::decide::{Thresholds, decide};
use autobalancer::model::ClusterSnapshot;
use autobalancer::plan::{PlanOptions, plan};
use autobalancer::report::Answer;
use autobalancer::run::{Outcome, Trigger};
use autobalancer::sidecar::SidecarError;

#[path = "cli/evacuate.rs"]
mod evacuate;
#[path = "cli/handoff.rs"]
mod handoff;
#[path = "cli/local.rs"]
mod local;
#[path = "cli/progress.rs"]
mod progress;
#[path = "cli/repair.rs"]
mod repair;

use local::Local;

#[derive(Parser)]
#[command(name = "autobalancer", version, about = "Keeps a partitioned data cluster balanced by bytes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Plan and decide on a snapshot file or the live cluster, moving nothing.
    Simulate {
        #[arg(long)]
        snapshot: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Write a snapshot of the live cluster (replay it with `simulate --snapshot`).
    Snapshot {
        #[arg(long)]
        config: PathBuf,
        /// Output file; standard output when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The sidecar daemon: schedule, lock, moves, HTTP API and metrics.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// One run now: with --once in this process, otherwise through the local sidecar.
    Rebalance {
        #[arg(long)]
        config: PathBuf,
        /// Run here and now in this process (the only mode without a running sidecar).
        #[arg(long)]
        once: bool,
        /// Ignore size-threshold-percent and minimum-size; every other gate holds.
        #[arg(long)]
        force: bool,
        /// Move buckets that hold a key above execution.max-key-bytes too (with --once).
        #[arg(long)]
        allow_big_keys: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Drain the local member before maintenance (persisted until `evacuate stop`).
    Evacuate {
        #[command(subcommand)]
        action: EvacuateAction,
    },
    /// Pause scheduled and on-demand runs cluster-wide (persisted in etcd).
    Pause {
        #[arg(long)]
        config: PathBuf,
    },
    /// Lift a pause.
    Resume {
        #[arg(long)]
        config: PathBuf,
    },
    /// The local sidecar's status, or with --cluster every sidecar's.
    Status {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        cluster: bool,
    },
    /// Settle what moves left behind, like `redis-cli --cluster fix`: open slots (ours or
    /// anyone's) are finished or rolled back, stray keys returned to their owner.
    Repair {
        #[arg(long)]
        config: PathBuf,
        /// Only this slot.
        #[arg(long)]
        slot: Option<u16>,
        /// Say what would be done, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Before the local node stops (rolling restart): a master hands its role to its
    /// in-sync replica (CLUSTER FAILOVER); beside a replica, nothing to do.
    Handoff {
        #[arg(long)]
        config: PathBuf,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Check a config file: prints `ok` or every error.
    CheckConfig { file: PathBuf },
}

#[derive(Subcommand)]
enum EvacuateAction {
    /// Start moving every bucket off the local member.
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Bytes per second (e.g. 10485760 or "10MiB"); default: execution.max-bytes-per-second.
        #[arg(long, allow_hyphen_values = true)]
        rate: Option<String>,
        /// Members to move to (repeatable); default: the planner's choice.
        #[arg(long = "migrate-to")]
        migrate_to: Vec<String>,
        /// Block until the member holds nothing (before a scale-down removes it).
        #[arg(long)]
        wait: bool,
    },
    /// End the evacuation: the member may receive buckets again.
    Stop {
        #[arg(long)]
        config: PathBuf,
    },
    /// Progress of the evacuation.
    Status {
        #[arg(long)]
        config: PathBuf,
    },
}

/// A failure with its exit code.
struct Fail(u8, anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for Fail {
    fn from(e: E) -> Fail {
        Fail(1, e.into())
    }
}

fn usage(e: impl Into<anyhow::Error>) -> Fail {
    Fail(2, e.into())
}

fn load_config(path: &std::path::Path) -> Result<Config, Fail> {
    Config::load(path).map_err(|e| usage(anyhow::anyhow!("{}: {e}", path.display())))
}

fn init_logs(config: Option<&Config>) {
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

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime")
}

/// The run context, the member named by its stable id (the configured name, with a
/// warning, when the cluster does not answer: the command's own call says why).
fn context(config: Config) -> Result<autobalancer::run::Context, Fail> {
    autobalancer::run::Context::new(named(config)).map_err(usage)
}

/// As `context`, for a command that only reads: a standalone sidecar's state file stays
/// with the process that holds it.
fn reader(config: Config) -> Result<autobalancer::run::Context, Fail> {
    autobalancer::run::Context::reader(named(config)).map_err(usage)
}

/// The config with its member named by its stable id.
fn named(mut config: Config) -> Config {
    match runtime().block_on(autobalancer::run::stable_member_id(&config)) {
        Ok(id) => config.cluster.member_id = Some(id),
        Err(e) => tracing::warn!(member = %config.member_id(), cause = %e, "cannot name the member by its node id"),
    }
    config
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(Fail(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, Fail> {
    match cli.command {
        Command::CheckConfig { file } => match Config::load(&file) {
            Ok(_) => {
                println!("ok");
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                for line in e.lines() {
                    println!("{line}");
                }
                Ok(ExitCode::from(2))
            }
        },
        Command::Snapshot { config, out } => snapshot(config, out),
        Command::Run { config } => {
            let config = load_config(&config)?;
            init_logs(Some(&config));
            let shutdown = tokio_util::sync::CancellationToken::new();
            let rt = runtime();
            let served = rt.block_on(autobalancer::sidecar::serve(config, shutdown));
            // The daemon's shutdown is bounded; so is the runtime's: a task still waiting
            // on a hung server is dropped, not waited for.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            served.map_err(|e| match e {
                SidecarError::Config(_) | SidecarError::Setup(_) => usage(e),
                other => Fail(1, other.into()),
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Pause { config } => pause(config, true),
        Command::Resume { config } => pause(config, false),
        Command::Status { config, cluster } => {
            let config = load_config(&config)?;
            let v = Local::new(&config)?.call("GET", if cluster { "/status/cluster" } else { "/status" }, None)?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap());
            Ok(ExitCode::SUCCESS)
        }
        Command::Evacuate { action } => evacuate::evacuate(action),
        Command::Repair { config, slot, dry_run } => repair::repair(config, slot, dry_run),
        Command::Handoff { config, format } => handoff::handoff(config, format),
        Command::Rebalance { config, once, force, allow_big_keys, format } => {
            rebalance(config, once, force, allow_big_keys, format)
        }
        Command::Simulate { snapshot, config, format } => {
            let config = config.as_deref().map(load_config).transpose()?;
            init_logs(config.as_ref());
            let balance = config.as_ref().map(|c| c.balance.clone()).unwrap_or_default();
            let snap = match (&snapshot, config) {
                (Some(path), _) => ClusterSnapshot::read_file(path).map_err(usage)?,
                (None, Some(config)) => {
                    let ctx = reader(config)?;
                    let out = runtime().block_on(ctx.simulate(false))?;
                    print_outcome(&out, format);
                    return Ok(ExitCode::SUCCESS);
                }
                (None, None) => {
                    return Err(usage(anyhow::anyhow!("simulate needs --snapshot FILE or --config FILE")));
                }
            };
            let p = plan(&snap, &PlanOptions::from_config(&balance)).context("planning")?;
            let t = Thresholds::from_config(&balance, false);
            let d = decide(&snap, &p, &t);
            let out = Answer::new(&snap, &p, d, &t);
            print_outcome(&out, format);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn snapshot(config: PathBuf, out: Option<PathBuf>) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let ctx = reader(config)?;
    let snap = runtime().block_on(ctx.snapshot())?;
    let json = snap.to_json();
    match out {
        Some(p) => std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn rebalance(config: PathBuf, once: bool, force: bool, allow_big_keys: bool, format: Format) -> Result<ExitCode, Fail> {
    if allow_big_keys && !once {
        return Err(usage(anyhow::anyhow!(
            "--allow-big-keys needs --once: a big key's move is an operator's own decision"
        )));
    }
    let config = load_config(&config)?;
    init_logs(Some(&config));
    if !once {
        let path = if force { "/rebalance?force=true" } else { "/rebalance" };
        let v = Local::new(&config)?.call("PUT", path, None)?;
        match format {
            Format::Json => println!("{}", serde_json::to_string_pretty(&v).unwrap()),
            Format::Table => match serde_json::from_value::<Answer>(v.clone()) {
                Ok(o) => print!("{}", o.to_table()),
                Err(_) => println!("{}", serde_json::to_string_pretty(&v).unwrap()),
            },
        }
        if let Some(m) = v["message"].as_str() {
            println!("{m}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let grace = autobalancer::sidecar::shutdown_timeout(&config);
    let ctx = context(config)?;
    ctx.warn_if_standalone();
    let rt = runtime();
    let finished = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let run = with_progress(ctx.run_once(Trigger::Manual { force, allow_big_keys }, &cancel), &ctx.progress);
        tokio::pin!(run);
        tokio::select! {
            f = &mut run => return Ok(f),
            _ = signalled() => cancel.cancel(),
        }
        // Stop at the next safe point: moves in flight finish, within the shutdown timeout.
        tokio::time::timeout(grace, run).await.map_err(|_| {
            Fail(1, anyhow::anyhow!("shutdown timeout ({grace:?}) reached: moves in flight left recorded as intents"))
        })
    });
    let finished = finished?;
    if finished.moved {
        rt.block_on(async {
            tokio::select! {
                _ = ctx.check_after_run() => {}
                _ = signalled() => {}
            }
        });
    }
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    print_outcome(&finished.answer, format);
    let failed = matches!(finished.outcome, Outcome::Failed(_) | Outcome::Skipped(SkipReason::SnapshotFailed));
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Runs `run`, showing the run's progress meanwhile.
async fn with_progress<T>(run: impl std::future::Future<Output = T>, p: &autobalancer::execute::Progress) -> T {
    use std::sync::atomic::Ordering::Relaxed;
    let mut shown = progress::Shown::new();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(200));
    let figures = || progress::Figures {
        bytes_done: p.bytes_done.load(Relaxed),
        bytes_planned: p.bytes_planned.load(Relaxed),
        slots_done: p.done.load(Relaxed),
        slots_planned: p.planned.load(Relaxed),
    };
    tokio::pin!(run);
    loop {
        tokio::select! {
            out = &mut run => {
                shown.finish(Some(figures()));
                return out;
            }
            _ = tick.tick() => shown.update(figures()),
        }
    }
}

/// Resolves at SIGINT or SIGTERM.
async fn signalled() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn pause(config: PathBuf, on: bool) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let member = config.member_id();
    let c = autobalancer::coord::Coordinator::new(config.etcd.as_ref(), &config.cluster.id, &member)
        .map_err(|e| usage(anyhow::anyhow!(e)))?;
    if c.is_standalone() {
        return Err(usage(anyhow::anyhow!("pause and resume need [etcd]: a standalone sidecar keeps no shared state")));
    }
    let by = on.then(|| format!("paused by {member} at {}", chrono::Utc::now().to_rfc3339()));
    runtime().block_on(c.set_paused(by.clone())).map_err(|e| Fail(1, e.into()))?;
    println!("{}", by.unwrap_or_else(|| "resumed".into()));
    Ok(ExitCode::SUCCESS)
}

fn print_outcome(out: &Answer, format: Format) {
    match format {
        Format::Json => println!("{}", out.to_json()),
        Format::Table => print!("{}", out.to_table()),
    }
}
