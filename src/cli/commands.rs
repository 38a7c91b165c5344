//! The commands that plan, move or read in this process, and the ones that are one call:
//! `simulate`, `snapshot`, `run` (the daemon), `rebalance`, `pause`/`resume`, `status`,
//! `check-config`.
//!
//! Owns: their output and exit codes, and bounding `rebalance --once` after a signal.
//! Does not own: what a run does (`autobalancer::run`) or the daemon (`sidecar`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use autobalancer::config::Config;
use autobalancer::decide::{Thresholds, decide};
use autobalancer::model::ClusterSnapshot;
use autobalancer::plan::{PlanOptions, plan};
use autobalancer::report::Answer;
use autobalancer::run::Trigger;
use autobalancer::sidecar::{SidecarError, signalled};

use super::local::Local;
use super::{Fail, Format, context, init_logs, load_config, print_outcome, progress, reader, usage};

pub fn check_config(file: PathBuf) -> Result<ExitCode, Fail> {
    match Config::load(&file) {
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
    }
}

/// The daemon, until a signal or a failed task.
pub async fn serve(config: PathBuf) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let shutdown = tokio_util::sync::CancellationToken::new();
    autobalancer::sidecar::serve(config, shutdown).await.map_err(|e| match e {
        SidecarError::Config(_) | SidecarError::Setup(_) => usage(e),
        other => Fail(1, other.into()),
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The local sidecar's status, or with `cluster` every sidecar's.
pub fn status(config: PathBuf, cluster: bool) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    let v = Local::new(&config)?.call("GET", if cluster { "/status/cluster" } else { "/status" }, None)?;
    println!("{}", serde_json::to_string_pretty(&v).unwrap());
    Ok(ExitCode::SUCCESS)
}

/// Plans and decides on a snapshot file, or on the live cluster, moving nothing.
pub async fn simulate(
    snapshot: Option<PathBuf>,
    config: Option<PathBuf>,
    no_traffic: bool,
    format: Format,
) -> Result<ExitCode, Fail> {
    let mut config = config.as_deref().map(load_config).transpose()?;
    if let Some(c) = config.as_mut().filter(|_| no_traffic) {
        c.traffic.enabled = false;
    }
    init_logs(config.as_ref());
    let balance = config.as_ref().map(|c| c.balance.clone()).unwrap_or_default();
    let snap = match (&snapshot, config) {
        (Some(path), _) => ClusterSnapshot::read_file(path).map_err(usage)?,
        (None, Some(config)) => {
            let ctx = reader(config).await?;
            let cancel = tokio_util::sync::CancellationToken::new();
            tokio::select! {
                _ = ctx.settle_traffic(&cancel) => {}
                _ = signalled() => return Ok(ExitCode::from(130)),
            }
            let out = ctx.simulate(false).await?;
            print_outcome(&out, format);
            return Ok(ExitCode::SUCCESS);
        }
        (None, None) => return Err(usage(anyhow::anyhow!("simulate needs --snapshot FILE or --config FILE"))),
    };
    let p = plan(&snap, &PlanOptions::from_config(&balance)).context("planning")?;
    let t = Thresholds::from_config(&balance, false);
    let d = decide(&snap, &p, &t);
    print_outcome(&Answer::new(&snap, &p, d, &t), format);
    Ok(ExitCode::SUCCESS)
}

pub async fn snapshot(config: PathBuf, out: Option<PathBuf>) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let snap = reader(config).await?.snapshot().await?;
    let json = snap.to_json();
    match out {
        Some(p) => std::fs::write(&p, json).with_context(|| format!("writing {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// What `rebalance` was asked.
pub struct Rebalance {
    pub once: bool,
    pub force: bool,
    pub allow_big_keys: bool,
    /// Bytes only: no traffic readings before the run.
    pub no_traffic: bool,
    pub format: Format,
}

/// One run: with `once` in this process, exiting with the outcome's code; otherwise
/// through the local sidecar.
pub async fn rebalance(config: PathBuf, r: Rebalance) -> Result<ExitCode, Fail> {
    let Rebalance { once, force, allow_big_keys, no_traffic, format } = r;
    if allow_big_keys && !once {
        return Err(usage(anyhow::anyhow!(
            "--allow-big-keys needs --once: a big key's move is an operator's own decision"
        )));
    }
    if no_traffic && !once {
        return Err(usage(anyhow::anyhow!(
            "--no-traffic needs --once: the sidecar plans with the rates it keeps (traffic.enabled = false turns them off)"
        )));
    }
    let mut config = load_config(&config)?;
    config.traffic.enabled &= !no_traffic;
    init_logs(Some(&config));
    if !once {
        return through_the_sidecar(&config, force, format);
    }
    let grace = autobalancer::sidecar::shutdown_timeout(&config);
    let ctx = context(config).await?;
    ctx.warn_if_standalone();
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = async {
        ctx.settle_traffic(&cancel).await;
        with_progress(ctx.run_once(Trigger::Manual { force, allow_big_keys }, &cancel), &ctx.progress).await
    };
    tokio::pin!(run);
    let signalled_first = tokio::select! {
        f = &mut run => Err(f),
        _ = signalled() => Ok(()),
    };
    let finished = match signalled_first {
        Err(f) => f,
        Ok(()) => {
            cancel.cancel();
            // Stop at the next safe point: moves in flight finish, within the shutdown timeout.
            tokio::time::timeout(grace, run).await.map_err(|_| {
                Fail(
                    1,
                    anyhow::anyhow!("shutdown timeout ({grace:?}) reached: moves in flight left recorded as intents"),
                )
            })?
        }
    };
    if finished.moved {
        tokio::select! {
            _ = ctx.check_after_run() => {}
            _ = signalled() => {}
        }
    }
    print_outcome(&finished.answer, format);
    Ok(ExitCode::from(finished.outcome.exit_code()))
}

/// `PUT /rebalance` on the local sidecar.
fn through_the_sidecar(config: &Config, force: bool, format: Format) -> Result<ExitCode, Fail> {
    let path = if force { "/rebalance?force=true" } else { "/rebalance" };
    let v = Local::new(config)?.call("PUT", path, None)?;
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
    Ok(ExitCode::SUCCESS)
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

/// Pauses (`on`) or resumes runs cluster-wide.
pub async fn pause(config: PathBuf, on: bool) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let member = config.member_id();
    let c = autobalancer::coord::Coordinator::new(config.etcd.as_ref(), &config.cluster.id, &member)
        .map_err(|e| usage(anyhow::anyhow!(e)))?;
    if c.is_standalone() {
        return Err(usage(anyhow::anyhow!("pause and resume need [etcd]: a standalone sidecar keeps no shared state")));
    }
    let by = on.then(|| format!("paused by {member} at {}", chrono::Utc::now().to_rfc3339()));
    c.set_paused(by.clone()).await.map_err(|e| Fail(1, e.into()))?;
    println!("{}", by.unwrap_or_else(|| "resumed".into()));
    Ok(ExitCode::SUCCESS)
}
