//! The `autobalancer` command: parses arguments, loads the config, hands off to the
//! library. Exit codes: 0 done (also a reasoned skip), 1 runtime failure, 2 bad usage or
//! config.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use autobalancer::config::Config;
use autobalancer::decide::{Thresholds, decide};
use autobalancer::model::ClusterSnapshot;
use autobalancer::plan::{PlanOptions, plan};
use autobalancer::report::Outcome;

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
    /// One run now: lock, repair, snapshot, plan, decide, move.
    Rebalance {
        #[arg(long)]
        config: PathBuf,
        /// Run here and now in this process (the only mode without a running sidecar).
        #[arg(long)]
        once: bool,
        /// Ignore size-threshold-percent and minimum-size; every other gate holds.
        #[arg(long)]
        force: bool,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Check a config file: prints `ok` or every error.
    CheckConfig { file: PathBuf },
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
        Some(c) => (c.log.level.clone(), c.log.format == autobalancer::config::LogFormat::Json),
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

fn context(config: Config) -> Result<autobalancer::run::Context, Fail> {
    autobalancer::run::Context::new(config).map_err(|e| usage(anyhow::anyhow!(e)))
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
        Command::Rebalance { config, once, force, format } => rebalance(config, once, force, format),
        Command::Simulate { snapshot, config, format } => {
            let config = config.as_deref().map(load_config).transpose()?;
            init_logs(config.as_ref());
            let balance = config.as_ref().map(|c| c.balance.clone()).unwrap_or_default();
            let snap = match (&snapshot, config) {
                (Some(path), _) => ClusterSnapshot::read_file(path).map_err(usage)?,
                (None, Some(config)) => {
                    let ctx = context(config)?;
                    let out = runtime().block_on(ctx.simulate(false)).map_err(|e| Fail(1, anyhow::anyhow!(e)))?;
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
            let out = Outcome::new(&snap, &p, d, &t);
            print_outcome(&out, format);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn snapshot(config: PathBuf, out: Option<PathBuf>) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let ctx = context(config)?;
    let snap = runtime().block_on(ctx.snapshot()).map_err(|e| Fail(1, anyhow::anyhow!(e)))?;
    let json = snap.to_json();
    match out {
        Some(p) => std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn rebalance(config: PathBuf, once: bool, force: bool, format: Format) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    if !once {
        return Err(usage(anyhow::anyhow!("pass --once to run here, or use PUT /rebalance on a running sidecar")));
    }
    let ctx = context(config)?;
    let rt = runtime();
    let out = rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let c2 = cancel.clone();
        // SIGINT/SIGTERM stop at the next safe point; the slot in flight finishes.
        tokio::spawn(async move {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            c2.cancel();
        });
        ctx.run_once(autobalancer::run::Trigger::Manual { force }, &cancel).await
    });
    print_outcome(&out, format);
    let failed = autobalancer::run::outcome_label(&out) == "failed"
        || out.decision.reason == Some(autobalancer::decide::SkipReason::SnapshotFailed);
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn print_outcome(out: &Outcome, format: Format) {
    match format {
        Format::Json => println!("{}", out.to_json()),
        Format::Table => print!("{}", out.to_table()),
    }
}
