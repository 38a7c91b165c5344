//! The `autobalancer` command: parses arguments and dispatches to the subcommands
//! (`cli`), on one runtime. Exit codes: 0 done (also a reasoned skip), 1 a failed run or
//! command, 2 bad usage or config, 3 a run that lost the lock, 4 a run stopped at its
//! deadline or by a signal (`run::Outcome::exit_code`).
//!
//! Owns: the arguments. Does not own: what a command does (`cli`).

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{Fail, Format};

#[derive(Parser)]
#[command(name = "autobalancer", version, about = "Keeps a partitioned data cluster balanced by bytes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Plan and decide on a snapshot file or the live cluster, moving nothing.
    Simulate {
        #[arg(long)]
        snapshot: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        /// Plan by bytes only: take no traffic readings (with --config).
        #[arg(long)]
        no_traffic: bool,
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
        /// Plan by bytes only: take no traffic readings before the run (with --once).
        #[arg(long)]
        no_traffic: bool,
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
pub enum EvacuateAction {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let result = rt.block_on(dispatch(cli.command));
    // The daemon's shutdown is bounded; so is the runtime's: a task still waiting on a
    // hung server is dropped, not waited for.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(Fail(code, e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode, Fail> {
    use cli::commands;
    match command {
        Command::CheckConfig { file } => commands::check_config(file),
        Command::Snapshot { config, out } => commands::snapshot(config, out).await,
        Command::Run { config } => commands::serve(config).await,
        Command::Pause { config } => commands::pause(config, true).await,
        Command::Resume { config } => commands::pause(config, false).await,
        Command::Status { config, cluster } => commands::status(config, cluster),
        Command::Evacuate { action } => cli::evacuate::evacuate(action),
        Command::Repair { config, slot, dry_run } => cli::repair::repair(config, slot, dry_run).await,
        Command::Handoff { config, format } => cli::handoff::handoff(config, format).await,
        Command::Rebalance { config, once, force, allow_big_keys, no_traffic, format } => {
            commands::rebalance(config, commands::Rebalance { once, force, allow_big_keys, no_traffic, format }).await
        }
        Command::Simulate { snapshot, config, no_traffic, format } => {
            commands::simulate(snapshot, config, no_traffic, format).await
        }
    }
}
