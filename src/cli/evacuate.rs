//! `autobalancer evacuate start|stop|status`: through the local sidecar's API. `--wait`
//! polls the sidecar's status until the member holds nothing, showing progress.
//!
//! Owns: the commands' arguments, output and exit codes. Does not own: the evacuation
//! (the sidecar runs it).

use std::process::ExitCode;

use super::local::Local;
use super::{Fail, load_config, progress, usage};
use crate::EvacuateAction;

pub fn evacuate(action: EvacuateAction) -> Result<ExitCode, Fail> {
    match action {
        EvacuateAction::Start { config, rate, migrate_to, wait } => {
            let rate = match rate {
                None => None,
                Some(r) => match autobalancer::config::Size::parse(&r) {
                    Ok(s) if s.0 > 0 => Some(s.0),
                    _ => {
                        return Err(usage(anyhow::anyhow!(
                            "--rate must be a positive size in bytes per second (e.g. 10485760 or \"10MiB\"), got {r:?}"
                        )));
                    }
                },
            };
            let config = load_config(&config)?;
            let me = config.member_id();
            if migrate_to.contains(&me) {
                return Err(usage(anyhow::anyhow!("--migrate-to names {me}, the member being evacuated")));
            }
            let local = Local::new(&config)?;
            let v = local.call(
                "POST",
                "/evacuation/start",
                Some(serde_json::json!({"rate": rate, "migrate_to": migrate_to})),
            )?;
            println!("evacuation of {me} started: {}", v["evacuation"]);
            if wait {
                wait_evacuated(&local, &me)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        EvacuateAction::Stop { config } => {
            let config = load_config(&config)?;
            Local::new(&config)?.call("POST", "/evacuation/stop", None)?;
            println!("evacuation of {} stopped", config.member_id());
            Ok(ExitCode::SUCCESS)
        }
        EvacuateAction::Status { config } => {
            let config = load_config(&config)?;
            let s = Local::new(&config)?.call("GET", "/status", None)?;
            println!("{}", serde_json::to_string_pretty(&s["evacuation"]).unwrap());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Polls the sidecar until `me` holds nothing, showing what has left it meanwhile. What
/// is left is unknown (null) until the sidecar's first look after the start: that is not
/// "nothing left".
fn wait_evacuated(local: &Local, me: &str) -> Result<(), Fail> {
    let mut shown = progress::Shown::new();
    let mut first: Option<(u64, u64)> = None;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let s = local.call("GET", "/status", None)?;
        let e = &s["evacuation"];
        if !e["active"].as_bool().unwrap_or(false) {
            shown.finish(None);
            return Err(Fail(1, anyhow::anyhow!("the evacuation was stopped before the member was empty")));
        }
        let (Some(slots_left), Some(bytes_left)) = (e["buckets_left"].as_u64(), e["bytes_left"].as_u64()) else {
            continue;
        };
        let (slots, bytes) = *first.get_or_insert((slots_left, bytes_left));
        let figures = progress::Figures {
            bytes_done: bytes.saturating_sub(bytes_left),
            bytes_planned: bytes,
            slots_done: slots.saturating_sub(slots_left),
            slots_planned: slots,
        };
        if slots_left == 0 {
            shown.finish(Some(figures));
            println!("{me} holds nothing: evacuated");
            return Ok(());
        }
        shown.update(figures);
    }
}
