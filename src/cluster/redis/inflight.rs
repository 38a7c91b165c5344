//! Atomic jobs left running by a previous holder (Valkey 9). MIGRATESLOTS runs on the
//! servers: a holder that vanished mid-job leaves the job going, with no MIGRATING or
//! IMPORTING flag to show for it. Before anything else, repair lists every master's
//! exports with `CLUSTER GETSLOTMIGRATIONS`:
//!
//! - a running job whose slots were recorded is ours: it is waited for (at most
//!   [`JOB_WAIT`]), and its end settles the intents: success, the slots are the target's;
//!   failed or cancelled, the servers have left them with the source;
//! - a running job nobody recorded is someone else's: left untouched and named, like an
//!   operator's open slot.
//!
//! Owns: that first step of repair. Does not own: starting or following our own jobs
//! ([`super::atomic`]) or open slots ([`super::repair`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use tracing::{info, warn};

use super::migrations::SlotMigration;
use super::repair::Repair;
use super::topology::Topology;
use crate::cluster::{ForeignMove, RepairOptions, RepairReport};
use crate::model::MoveIntent;

/// How long repair waits for a previous holder's job to end. The executor sizes jobs to
/// a few seconds of transfer; one that runs far longer is reported, not waited out.
const JOB_WAIT: Duration = Duration::from_secs(60);

impl Repair<'_> {
    /// Settles or names the atomic jobs running on the masters. Returns the slots of jobs
    /// still running (ours past the wait, or someone else's): repair leaves them alone.
    pub(super) async fn settle_jobs(
        &self,
        topo: &Topology,
        opts: &RepairOptions,
        report: &mut RepairReport,
    ) -> Vec<u16> {
        if !self.atomic_jobs {
            return Vec::new();
        }
        let intents: HashMap<u64, &MoveIntent> = opts.intents.iter().map(|i| (i.bucket, i)).collect();
        let mut busy = Vec::new();
        for (src, job) in self.running_exports(topo).await {
            let slots = slots_of(&job);
            if opts.only.is_some_and(|o| !slots.iter().any(|s| *s as u64 == o)) {
                continue;
            }
            let ours = slots.iter().any(|s| intents.contains_key(&(*s as u64)));
            if !ours || opts.dry_run {
                let to = topo.master_by_id(&job.target_node).map(|m| m.addr.clone());
                if ours {
                    report.settled.push(format!("{}: would wait for the running job {}", ranges(&job), job.name));
                } else {
                    let since = *self.first_seen.lock().expect("first seen").entry(slots[0]).or_insert_with(Utc::now);
                    report.foreign.push(ForeignMove { bucket: slots[0] as u64, from: Some(src), to, since });
                }
                busy.extend(slots);
                continue;
            }
            match self.wait_job(&src, &job.name).await {
                Some(end) => {
                    let line = format!("{}: a previous holder's job {} ended {}", ranges(&job), job.name, end);
                    info!("{line}");
                    report.settled.push(line);
                    report.intents_done.extend(slots.iter().map(|s| *s as u64));
                }
                None => {
                    let why = format!("job {} on {src} still running after {JOB_WAIT:?}", job.name);
                    warn!("{}: {why}", ranges(&job));
                    report.failed.extend(slots.iter().map(|s| (*s as u64, why.clone())));
                    busy.extend(slots);
                }
            }
        }
        busy
    }

    /// (source address, job) for every export still running on a live master.
    async fn running_exports(&self, topo: &Topology) -> Vec<(String, SlotMigration)> {
        let mut out = Vec::new();
        for m in topo.masters.iter().filter(|m| !m.is_failed()) {
            match self.nodes.slot_migrations(&m.addr).await {
                Ok(jobs) => out.extend(
                    jobs.into_iter()
                        .filter(|j| j.operation.eq_ignore_ascii_case("export") && !j.has_ended())
                        .map(|j| (m.addr.clone(), j)),
                ),
                Err(e) => warn!(node = %m.addr, cause = %e, "CLUSTER GETSLOTMIGRATIONS failed; its jobs are not known"),
            }
        }
        out
    }

    /// Polls the job named `name` on `src` until it ends: `Some("success")`, or the state
    /// and the server's message; `None` when still running after [`JOB_WAIT`].
    async fn wait_job(&self, src: &str, name: &str) -> Option<String> {
        let deadline = Instant::now() + JOB_WAIT;
        while Instant::now() < deadline {
            if let Ok(jobs) = self.nodes.slot_migrations(src).await {
                match jobs.into_iter().find(|j| j.name == name) {
                    Some(j) if j.state == "success" => return Some("in success".into()),
                    Some(j) if j.has_ended() => {
                        return Some(format!("{} ({}): its slots stay with {src}", j.state, j.message));
                    }
                    // Gone from the list: ended long enough ago to be dropped.
                    None => return Some("(no longer listed; the slots are where the nodes say)".into()),
                    Some(_) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

fn slots_of(job: &SlotMigration) -> Vec<u16> {
    job.slot_ranges.iter().flat_map(|&(a, b)| a..=b).collect()
}

fn ranges(job: &SlotMigration) -> String {
    let r: Vec<String> =
        job.slot_ranges.iter().map(|&(a, b)| if a == b { a.to_string() } else { format!("{a}-{b}") }).collect();
    format!("slots {}", r.join(","))
}
