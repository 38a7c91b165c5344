//! `autobalancer repair`: the operator's settling of open slots and stray keys, under the
//! lock, like `redis-cli --cluster fix`.
//!
//! Owns: the command's output and exit code. Does not own: the repair itself (the
//! backend's `repair`).

use std::path::PathBuf;
use std::process::ExitCode;

use super::{Fail, context, init_logs, load_config};

/// The operator's repair: under the lock, every open slot and stray key is settled
/// (foreign ones included); exit 1 when anything could not be.
pub async fn repair(config: PathBuf, slot: Option<u16>, dry_run: bool) -> Result<ExitCode, Fail> {
    use autobalancer::cluster::{Cluster, RepairOptions};
    use autobalancer::coord::{Acquire, GuardFence};
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let ctx = context(config).await?;
    let fail = |e: String| Fail(1, anyhow::anyhow!(e));
    {
        let guard = match ctx.coordinator.try_lock("repair").await.map_err(|e| fail(e.to_string()))? {
            Acquire::Acquired(g) => g,
            Acquire::HeldElsewhere(h) => {
                return Err(fail(format!(
                    "the lock is held by {} ({} since {}); try again when it is free",
                    h.member, h.operation, h.started_at
                )));
            }
        };
        let intents = ctx.coordinator.moves().await.map_err(|e| fail(e.to_string()));
        let opts = intents.map(|intents| RepairOptions {
            intents,
            take_foreign: true,
            only: slot.map(u64::from),
            dry_run,
            ..Default::default()
        });
        let report = match opts {
            Ok(o) => {
                let fence = GuardFence { coordinator: &ctx.coordinator, guard: &guard };
                ctx.cluster.repair(&o, &fence).await.map_err(|e| fail(e.to_string()))
            }
            Err(e) => Err(e),
        };
        if let Ok(r) = &report
            && !dry_run
        {
            let _ = ctx.coordinator.clear_moves(&r.intents_done).await;
        }
        ctx.coordinator.release(guard).await;
        let r = report?;
        for line in &r.settled {
            println!("{line}");
        }
        for a in &r.set_aside {
            println!("set aside: {a}");
        }
        for (bucket, e) in &r.failed {
            println!("failed: slot {bucket}: {e}");
        }
        for d in &r.down {
            println!("unserved: {d}");
        }
        if r.settled.is_empty() && r.set_aside.is_empty() && r.failed.is_empty() {
            println!("nothing to repair");
        }
        Ok(if r.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
    }
}
