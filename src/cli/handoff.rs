//! `autobalancer handoff`: the preStop of a rolling restart. In this process (it needs no
//! running sidecar): a master hands its role to its in-sync replica; beside a replica
//! there is nothing to do. Exit 0 when the node may stop without moving a slot; 1 when
//! it may not (no usable replica, a slot in flight, the failover did not finish); 2 for
//! a bad config.
//!
//! Owns: the command's output and exit code. Does not own: the handoff itself (the
//! backend's `handoff`).

use std::path::PathBuf;
use std::process::ExitCode;

use autobalancer::cluster::{AnyCluster, HANDOFF_WITHIN, HandoffError};

use super::{Fail, Format, init_logs, load_config, usage};

pub async fn handoff(config: PathBuf, format: Format) -> Result<ExitCode, Fail> {
    let config = load_config(&config)?;
    init_logs(Some(&config));
    let cluster = AnyCluster::from_config(&config).map_err(usage)?;
    let member = config.member_id();
    let result = cluster.handoff(&member, HANDOFF_WITHIN).await;
    match result {
        Ok(h) => {
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&h).expect("handoff serializes")),
                Format::Table => println!("{}", h.message),
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            if format == Format::Json {
                let v = serde_json::json!({"error": {"code": e.code(), "message": e.to_string()}});
                println!("{}", serde_json::to_string_pretty(&v).expect("error serializes"));
            }
            let code = if matches!(e, HandoffError::Unsupported) { 2 } else { 1 };
            Err(Fail(code, e.into()))
        }
    }
}
