//! Safety in every mode, produced for real: a move whose source fails over (TAKEOVER)
//! and one whose target runs out of memory are settled by the run that made them, before
//! it ends, with the defaults (no `[etcd]`, the default state file) and with etcd; a
//! drain that does not fit moves what fits and says `no_room`; a second standalone
//! process on one state file is refused; every commit passes the fence; the mover is
//! chosen once, and `atomic` where a master cannot do it moves nothing; an atomic group
//! falling back to the legacy mover after the lock is lost opens no slot.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use autobalancer::cluster::redis::RedisCluster;
use autobalancer::cluster::{Cluster, ClusterError, RepairOptions, Unpaced};
use autobalancer::coord::{Acquire, Coordinator, Fence, FenceError, GuardFence};
use autobalancer::model::{ClusterSnapshot, MoveIntent};
use autobalancer::plan::{Move, MoveKind};
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd, digest_diff, on_each_engine};
use common::{SidecarProc, bin_for, cli, cluster_section, half_moved, json, nodes};

/// `[cluster]` for `c`, then `rest`; written to `dir/config.toml`.
fn write_config(dir: &Path, c: &LocalCluster, rest: &str) -> PathBuf {
    let p = dir.join("config.toml");
    std::fs::write(&p, format!("{}\n{rest}", cluster_section(c, dir, None))).unwrap();
    p
}

/// Slow legacy moves, so that a fault lands mid-slot; `[etcd]` when given.
fn slow(etcd: Option<&LocalEtcd>) -> String {
    let mut s = "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n[execution]\nmax-bytes-per-second = \"300KiB\"\nmigrate-batch-keys = 5\nmigration = \"legacy\"\n".to_string();
    if let Some(e) = etcd {
        s += &format!("[etcd]\nendpoints = [\"{}\"]\nlease-ttl = \"2s\"\n", e.endpoint());
    }
    s
}

/// `rebalance --once --format json` on `cfg`, started now.
fn spawn_run(cfg: &Path) -> std::process::Child {
    bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a run to end: (exit code, its answer, its log).
fn answer_of(child: std::process::Child) -> (i32, serde_json::Value, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (out.status.code().unwrap_or(-1), v, stderr)
}

/// No slot open, every node serving every slot, every key as before.
async fn settled_and_whole(c: &LocalCluster, before: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>, log: &str) {
    c.wait_ok(Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}: a node still reports the cluster down\n{log}"));
    assert!(c.open_slots().await.unwrap().is_empty(), "{:?}\n{log}", c.open_slots().await);
    if let Some(diff) = digest_diff(before, &c.digest().await.unwrap()) {
        panic!("{diff}\n{log}");
    }
}

/// The state file a standalone run beside `cfg` keeps by default, as JSON.
fn default_state(cfg: &Path) -> serde_json::Value {
    let path = cfg.parent().unwrap().join("t.json");
    json(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// A master fails over (TAKEOVER on its replica) while one of its slots is half-moved,
/// with no etcd and the default state file: the run that was moving settles the slot
/// before it ends (keys handed back to the new owner), no node is left answering
/// CLUSTERDOWN, and the next run is free to plan.
async fn a_source_failed_over_mid_move_is_settled_by_the_run_standalone(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 1).replicas(1).start().await.unwrap();
    c.load_skewed(20_000, 8).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, &slow(None));
    let run = spawn_run(&cfg);
    let (slot, src, _dst) = half_moved(&c).await;
    let src_id = c.id_of(&src).unwrap().to_string();
    let replica = nodes(&c, &src).await.into_iter().find(|n| n.master_id.as_deref() == Some(&src_id)).unwrap();
    // The run paused while the replica's view catches up: see `replica_view_caught_up`.
    let pid = run.id().to_string();
    let signal = |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    signal("-STOP");
    replica_view_caught_up(&c, &replica.addr).await;
    let mut con = c.conn(&replica.addr).await.unwrap();
    redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER").query_async::<()>(&mut con).await.unwrap();
    signal("-CONT");
    let (code, v, log) = answer_of(run);
    assert_eq!(code, 1, "the run ends failed, naming the move\n{v:#}\n{log}");
    let settled: Vec<&str> = v["settled"].as_array().unwrap().iter().filter_map(|l| l.as_str()).collect();
    assert!(
        settled.iter().any(|l| l.starts_with(&format!("slot {slot}: handed"))),
        "slot {slot} was not settled by the run: {settled:?}\n{log}"
    );
    settled_and_whole(&c, &before, &log).await;
    assert_eq!(default_state(&cfg)["moves"], serde_json::json!({}), "the settled move's intent is cleared");
    // The next run finds nothing of ours or anyone's open.
    let text = std::fs::read_to_string(&cfg).unwrap().replace("\"300KiB\"", "0").replace("migrate-batch-keys = 5", "");
    std::fs::write(&cfg, text).unwrap();
    let (code, v, log) = answer_of(spawn_run(&cfg));
    assert_eq!(code, 0, "{v:#}\n{log}");
    let reason = v["decision"]["reason"].as_str().unwrap_or("");
    assert!(!["migration_in_progress", "cluster_down"].contains(&reason), "{v:#}");
}

/// Waits until `replica` sees each slot a master claims for itself as that master's. A
/// replica promoted by TAKEOVER (which asks no master's vote) claims every slot its view
/// gives its old master, under a newer epoch; on Redis 7, which does not replicate
/// SETSLOT, that view trails each commit by a gossip round, and a claim of a slot whose
/// commit it has not seen takes the slot from its target, which drops the slot's keys,
/// whoever moved them. A failover that asks for votes is refused while a voter knows of
/// the newer owner; this test is about the half-moved slot, not that hazard of TAKEOVER.
async fn replica_view_caught_up(c: &LocalCluster, replica: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut claims = std::collections::HashMap::new();
        for a in c.current_masters().await.unwrap() {
            let all = nodes(c, &a).await;
            let me = all.iter().find(|n| n.is_myself()).unwrap();
            for &(lo, hi) in &me.slots {
                claims.extend((lo..=hi).map(|s| (s, me.id.clone())));
            }
        }
        let view = nodes(c, replica).await;
        if claims.iter().all(|(&s, id)| view.iter().find(|n| n.owns(s)).is_some_and(|n| &n.id == id)) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the replica's view did not follow the masters' claims");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The target of a move stops taking writes (its maxmemory drops below what it uses):
/// MIGRATE answers OOM; the run hands the keys that arrived back to the source, closes
/// the slot on both sides and says so.
async fn oom_on_the_target(engine: Engine, etcd: Option<&LocalEtcd>) {
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    c.load_skewed(20_000, 8).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, &slow(etcd));
    let run = spawn_run(&cfg);
    let (slot, _src, dst) = half_moved(&c).await;
    let mut con = c.conn(&dst).await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut con).await.unwrap();
    let used: u64 = info.lines().find_map(|l| l.strip_prefix("used_memory:")).unwrap().trim().parse().unwrap();
    for (k, v) in [("maxmemory-policy", "noeviction".to_string()), ("maxmemory", (used / 2).to_string())] {
        redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async::<()>(&mut con).await.unwrap();
    }
    let (code, v, log) = answer_of(run);
    redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async::<()>(&mut con).await.unwrap();
    assert_eq!(code, 1, "{v:#}\n{log}");
    let failures = v["failures"].to_string();
    assert!(failures.contains("OOM"), "the failure names the target's refusal: {failures}\n{log}");
    let settled = v["settled"].to_string();
    assert!(settled.contains(&format!("slot {slot}: handed")), "slot {slot}: {settled}\n{log}");
    settled_and_whole(&c, &before, &log).await;
    if etcd.is_none() {
        assert_eq!(default_state(&cfg)["moves"], serde_json::json!({}), "the settled move's intent is cleared");
    }
}

async fn a_target_out_of_memory_mid_move_is_settled_standalone(engine: Engine) {
    oom_on_the_target(engine, None).await
}

async fn a_target_out_of_memory_mid_move_is_settled_with_etcd(engine: Engine) {
    let etcd = LocalEtcd::start().unwrap();
    oom_on_the_target(engine, Some(&etcd)).await
}

async fn used_and_max(c: &LocalCluster, addr: &str) -> (u64, u64) {
    let mut con = c.conn(addr).await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut con).await.unwrap();
    let num = |k: &str| -> u64 {
        info.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(':'))).unwrap().trim().parse().unwrap()
    };
    (num("used_memory"), num("maxmemory"))
}

/// A member drained (weight 0) whose data the others have no room for: the run moves
/// what fits below critical memory, names what could not be placed (`no_room`) with each
/// receiver's figures, and no receiver answers OOM.
async fn a_drain_that_does_not_fit_moves_what_fits_and_says_no_room(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    c.load_skewed(30_000, 11).await.unwrap();
    let before = c.digest().await.unwrap();
    let m = c.master_addrs();
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\ncritical-memory-percent = 90\n[balance.weights]\n\"{}\" = 0\n",
        m[0]
    );
    let cfg = write_config(dir.path(), &c, &rest);
    let (code, out, err) = cli(&["simulate", "--config", cfg.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let drained = json(&out)["members"][0]["before"]["bytes"].as_u64().unwrap();
    // Each receiver has room for about a third of what must leave: together, two thirds.
    for addr in &m[1..] {
        let (used, _) = used_and_max(&c, addr).await;
        let max = (used + drained / 3) * 100 / 90;
        let mut con = c.conn(addr).await.unwrap();
        for (k, v) in [("maxmemory-policy", "noeviction".to_string()), ("maxmemory", max.to_string())] {
            redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async::<()>(&mut con).await.unwrap();
        }
    }
    let (code, v, log) = answer_of(spawn_run(&cfg));
    assert_eq!(code, 0, "{v:#}\n{log}");
    assert!(v["failures"].as_array().is_none_or(|f| f.is_empty()), "no move failed: {v:#}");
    assert!(v["moved_bytes"].as_u64().unwrap() > 0, "what fits moves: {v:#}");
    let explanation = v["explanation"].to_string();
    assert!(explanation.contains("could not be placed") && explanation.contains("used "), "{explanation}");
    assert!(v["decision"]["message"].as_str().unwrap().contains("no_room"), "{v:#}");
    for addr in &m[1..] {
        let (used, max) = used_and_max(&c, addr).await;
        assert!(used < max, "{addr} filled past its maxmemory: {used} of {max}");
    }
    for addr in &m[1..] {
        let mut con = c.conn(addr).await.unwrap();
        redis::cmd("CONFIG").arg("SET").arg("maxmemory").arg(0).query_async::<()>(&mut con).await.unwrap();
    }
    settled_and_whole(&c, &before, &log).await;
}

/// Two standalone processes on one state file: the second refuses, naming the first's
/// pid; a dry run beside it only reads; once the first is gone the file is free.
async fn a_second_standalone_process_on_one_state_file_is_refused(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecar = SidecarProc::start(dir.path(), "a", &cluster_section(&c, dir.path(), None));
    let cfg = sidecar.config.clone();
    let cfg = cfg.to_str().unwrap();
    let (code, _, err) = cli(&["rebalance", "--config", cfg, "--once"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("in use by another autobalancer process"), "{err}");
    assert!(err.contains(&format!("pid {}", sidecar.pid())), "{err}");
    let (code, _, err) = cli(&["simulate", "--config", cfg]);
    assert_eq!(code, 0, "a dry run only reads the state: {err}");
    sidecar.kill9();
    let (code, out, err) = cli(&["rebalance", "--config", cfg, "--once", "--format", "json"]);
    assert_eq!(code, 0, "a killed holder's file lock goes with it: {err}");
    assert!(json(&out)["decision"]["reason"] != "lock_held_elsewhere", "{out}");
}

/// An operator's migration left half-done, then its source fails over (TAKEOVER): the
/// target imports the slot from a node that is no longer a master. Nobody recorded it, so
/// runs leave it alone, but they name it as `cluster_down` with the node, the slot and the
/// command; that command settles it and every node serves every slot again.
async fn residue_that_blocks_the_cluster_is_named_and_settled_by_the_command_it_names(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).replicas(1).start().await.unwrap();
    c.load_skewed(4_000, 7).await.unwrap();
    let before = c.digest().await.unwrap();
    let m = c.master_addrs();
    let slot = c.half_move_by_hand(&m[0], &m[1]).await.unwrap();
    let src_id = c.id_of(&m[0]).unwrap().to_string();
    let replica = nodes(&c, &m[0]).await.into_iter().find(|n| n.master_id.as_deref() == Some(&src_id)).unwrap();
    let mut con = c.conn(&replica.addr).await.unwrap();
    redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER").query_async::<()>(&mut con).await.unwrap();
    common::wait_for_async(20, "the replica to be promoted", || async {
        c.current_masters().await.unwrap().contains(&replica.addr)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n");
    let (code, v, log) = answer_of(spawn_run(&cfg));
    assert_eq!(code, 0, "a reasoned skip: {v:#}\n{log}");
    // The same run in process, as a daemon runs it: its gauge says the cluster is down.
    let ctx = common::context_for(&cfg);
    let never = tokio_util::sync::CancellationToken::new();
    let f = ctx.run_once(common::MANUAL, &never).await;
    let down = matches!(engine, Engine::Redis);
    assert_eq!(f.answer.decision.reason.map(|r| r.as_str()), v["decision"]["reason"].as_str(), "{:?}", f.answer);
    assert_eq!(ctx.metrics.cluster_down.get(), down as i64);
    let message = v["decision"]["message"].as_str().unwrap();
    match engine {
        // Redis: the promoted replica has no flag; the target imports from a replica.
        Engine::Redis => {
            assert_eq!(v["decision"]["reason"], "cluster_down", "{v:#}\n{log}");
            let command = format!("autobalancer repair --slot {slot}");
            assert!(
                message.contains(&format!("slot {slot}")) && message.contains(&m[1]) && message.contains(&command),
                "{message}"
            );
        }
        // Valkey replicates a slot's migration state: the promoted replica goes on
        // migrating it, a migration in progress that blocks nobody.
        Engine::Valkey => {
            assert_eq!(v["decision"]["reason"], "migration_in_progress", "{v:#}\n{log}");
            assert!(message.contains(&format!("bucket {slot} is moving from {}", replica.addr)), "{message}");
        }
    }
    let (code, out, err) = cli(&["repair", "--config", cfg.to_str().unwrap(), "--slot", &slot.to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    settled_and_whole(&c, &before, &format!("{out}\n{err}")).await;
    let f = ctx.run_once(common::MANUAL, &never).await;
    let reason = f.answer.reason.as_deref().unwrap_or("");
    assert!(
        f.outcome.exit_code() == 0 && !["cluster_down", "migration_in_progress"].contains(&reason),
        "{:?}",
        f.answer
    );
    assert_eq!(ctx.metrics.cluster_down.get(), 0, "the gauge falls back once every node serves every slot");
    let (code, v, log) = answer_of(spawn_run(&cfg));
    assert_eq!(code, 0, "{v:#}\n{log}");
    assert!(
        !["cluster_down", "migration_in_progress"].contains(&v["decision"]["reason"].as_str().unwrap_or("")),
        "{v:#}"
    );
}

/// Moves of the first `n` buckets member 0 alone holds (with bytes) to member 1.
fn first_moves(snap: &autobalancer::model::ClusterSnapshot, n: usize) -> Vec<Move> {
    snap.buckets
        .iter()
        .enumerate()
        .filter(|(_, b)| b.bytes > 0 && b.copies == [0])
        .take(n)
        .map(|(i, b)| Move {
            kind: MoveKind::Copy,
            bucket: b.id,
            bucket_index: i as u32,
            from: 0,
            to: 1,
            bytes: b.bytes,
        })
        .collect()
}

/// A fence that always says no: the lock was lost.
struct Lost;

impl Fence for Lost {
    async fn check(&self) -> Result<(), FenceError> {
        Err(FenceError::Expired)
    }
}

/// Two masters (with `replicas` each) holding skewed keys (`seed`), their digest, a
/// backend over them with the legacy mover, and its snapshot: where the tests of the
/// legacy mover's commit start.
struct LegacySetUp {
    c: LocalCluster,
    before: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    _dir: tempfile::TempDir,
    rc: RedisCluster,
    snap: ClusterSnapshot,
}

async fn legacy_set_up(engine: Engine, replicas: usize, seed: u64) -> LegacySetUp {
    let c = ClusterSpec::new(engine, 2, 0).replicas(replicas).start().await.unwrap();
    c.load_skewed(4_000, seed).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "[execution]\nmigration = \"legacy\"\n");
    let rc = RedisCluster::from_config(&autobalancer::config::Config::load(&cfg).unwrap()).unwrap();
    let snap = rc.snapshot().await.unwrap();
    LegacySetUp { c, before, _dir: dir, rc, snap }
}

/// The legacy mover's commit and repair's finish both pass the fence: refused, the slot
/// stays open with its keys safe; the next holder, reading the intent, finishes it.
async fn every_commit_passes_the_fence(engine: Engine) {
    let LegacySetUp { c, before, _dir, rc, snap } = legacy_set_up(engine, 0, 3).await;
    let b = snap.buckets.iter().find(|b| b.bytes > 0 && b.copies == [0]).unwrap();
    let mv = Move { kind: MoveKind::Copy, bucket: b.id, bucket_index: 0, from: 0, to: 1, bytes: b.bytes };
    let slot = b.id;
    match rc.move_bucket(&snap, &mv, &Unpaced, &Lost).await {
        Err(ClusterError::Fenced { bucket, .. }) => assert_eq!(bucket, slot),
        other => panic!("the commit went past a lost lock: {other:?}"),
    }
    assert!(!c.open_slots().await.unwrap().is_empty(), "refused before its commit, the slot stays open");
    let intent = MoveIntent {
        bucket: slot,
        from: snap.members[0].id.clone(),
        to: snap.members[1].id.clone(),
        holder: "a holder that lost the lock".into(),
        started_at: chrono::Utc::now(),
    };
    let opts = RepairOptions { intents: vec![intent], ..Default::default() };
    let r = rc.repair(&opts, &Lost).await.unwrap();
    assert!(r.settled.is_empty() && r.failed.iter().any(|(b, _)| *b == slot), "{r:?}");
    assert!(!c.open_slots().await.unwrap().is_empty(), "repair refused by the fence leaves the slot open");
    // A live run handing its failed move back passes the same fence.
    let back = RepairOptions { hand_back: true, ..opts.clone() };
    let r = rc.repair(&back, &Lost).await.unwrap();
    assert!(r.settled.is_empty() && r.failed.iter().any(|(b, _)| *b == slot), "{r:?}");
    assert!(!c.open_slots().await.unwrap().is_empty(), "a hand-back refused by the fence leaves the slot open");
    let r = rc.repair(&opts, &common::Held::new().await).await.unwrap();
    assert!(r.settled.iter().any(|l| l.contains("finished the move")), "{r:?}");
    assert_eq!(r.intents_done, vec![slot]);
    settled_and_whole(&c, &before, "").await;
}

/// A fence that fails a side of the group over (TAKEOVER on `replica`, a replica of
/// `demoted`) when a commit asks it with every slot of the group drained from `src` (the
/// group's last commit), and says yes once `demoted` calls itself a replica: that commit
/// then meets a side that refuses SETSLOT, and a new master the group never knew.
struct DemotedAtCommit<'a> {
    c: &'a LocalCluster,
    src: String,
    demoted: String,
    replica: String,
    slots: Vec<u64>,
    done: std::sync::atomic::AtomicBool,
}

impl Fence for DemotedAtCommit<'_> {
    async fn check(&self) -> Result<(), FenceError> {
        let mut on_src = self.c.conn(&self.src).await.unwrap();
        let mut left = 0u64;
        for &slot in &self.slots {
            left +=
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot).query_async::<u64>(&mut on_src).await.unwrap();
        }
        if left == 0 && !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // The replica first learns (by gossip) of the slots already committed: one
            // promoted with a stale view claims them back under a newer epoch, and the
            // target then drops their keys, which Redis Cluster does to any mover (a
            // commit is not replicated to the source's replicas on Redis 7).
            let owner = |ns: &[autobalancer::cluster::redis::NodeLine], slot: u64| {
                ns.iter().find(|n| n.owns(slot as u16)).map(|n| n.id.clone())
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                let (at_master, at_replica) = (nodes(self.c, &self.demoted).await, nodes(self.c, &self.replica).await);
                if self.slots.iter().all(|&s| owner(&at_master, s) == owner(&at_replica, s)) {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "the replica's view did not follow its master's");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A takeover whose epoch ties the master's (it had not heard of the master's
            // last bump) can lose the tie: asked again until the master is demoted.
            let mut con = self.c.conn(&self.replica).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let mut asked = std::time::Instant::now() - Duration::from_secs(5);
            while nodes(self.c, &self.demoted).await.iter().any(|n| n.is_myself() && n.is_master()) {
                assert!(std::time::Instant::now() < deadline, "{} was not demoted", self.demoted);
                if asked.elapsed() >= Duration::from_secs(5) {
                    redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER").query_async::<()>(&mut con).await.unwrap();
                    asked = std::time::Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }
}

/// The run's hand-back of its failed moves of `slots` (members 0 to 1 of `snap`), as it
/// settles them before it ends; every slot settled.
async fn hand_back(rc: &RedisCluster, snap: &ClusterSnapshot, slots: &[u64]) -> autobalancer::cluster::RepairReport {
    let intents = slots
        .iter()
        .map(|&bucket| MoveIntent {
            bucket,
            from: snap.members[0].id.clone(),
            to: snap.members[1].id.clone(),
            holder: "this run".into(),
            started_at: chrono::Utc::now(),
        })
        .collect();
    let opts = RepairOptions { intents, hand_back: true, ..Default::default() };
    let r = rc.repair(&opts, &common::Held::new().await).await.unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    r
}

/// A group of the legacy mover whose source is demoted between its drain and its commit:
/// no key is lost. The source refuses the commit, and its promoted replica claims the
/// slots under a newer epoch (its view, and on Valkey the replicated MIGRATING flags,
/// still give them to its old master); a target committed first would own their keys and
/// drop them to that claim. The commit leaves those slots open instead, their keys on the
/// importing target (which takes no claim to a slot it imports); the run's hand-back
/// returns them to the promoted replica, and then no node, master or replica, shows a slot
/// open, so no later run sees a move nobody recorded.
async fn a_source_demoted_at_the_commit_leaves_no_slot_open(engine: Engine) {
    let LegacySetUp { c, before, _dir, rc, snap } = legacy_set_up(engine, 1, 5).await;
    let moves = first_moves(&snap, 5);
    assert_eq!(moves.len(), 5);
    let src = snap.members[0].address.clone();
    let src_id = c.id_of(&src).unwrap().to_string();
    let replica = nodes(&c, &src).await.into_iter().find(|n| n.master_id.as_deref() == Some(&src_id)).unwrap().addr;
    let slots = moves.iter().map(|mv| mv.bucket).collect();
    let fence = DemotedAtCommit {
        c: &c,
        src: src.clone(),
        demoted: src,
        replica: replica.clone(),
        slots,
        done: Default::default(),
    };
    let results = rc.move_group(&snap, &moves, &Unpaced, &fence).await;
    assert!(fence.done.load(std::sync::atomic::Ordering::SeqCst), "the source was failed over at a commit");
    let mut left_open = Vec::new();
    for (mv, r) in moves.iter().zip(&results) {
        match r {
            Ok(_) => {}
            Err(ClusterError::Move { open: true, message, .. }) if message.contains("on the source") => {
                left_open.push(mv.bucket)
            }
            other => panic!("slot {}: committed, or left open by its source's refusal: {other:?}", mv.bucket),
        }
    }
    assert!(!left_open.is_empty(), "the last commit met the demoted source: {results:?}");
    // Until the run settles them, their keys are on the target, which still imports them.
    let target = snap.members[1].address.clone();
    let mut con = c.conn(&target).await.unwrap();
    for &slot in &left_open {
        let n: u64 = redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot).query_async(&mut con).await.unwrap();
        assert!(n > 0, "slot {slot}: the target kept the keys of a slot left open");
    }
    hand_back(&rc, &snap, &left_open).await;
    let owners = c.slot_owners().await.unwrap();
    for mv in &moves {
        let owner = &owners[mv.bucket as usize];
        let want = if left_open.contains(&mv.bucket) { &replica } else { &target };
        assert_eq!(owner, want, "slot {}: committed to the target, or handed back to the promoted replica", mv.bucket);
    }
    settled_and_whole(&c, &before, "").await;
}

/// A group of the legacy mover whose target is demoted between its drain and its commit:
/// no key is lost. The target refuses the commit (the source may have taken it first,
/// and is given the slots back); its promoted replica holds the drained keys, and the
/// run's hand-back returns them to the source, leaving no slot open.
async fn a_target_demoted_at_the_commit_loses_no_key(engine: Engine) {
    let LegacySetUp { c, before, _dir, rc, snap } = legacy_set_up(engine, 1, 5).await;
    let moves = first_moves(&snap, 5);
    assert_eq!(moves.len(), 5);
    let (src, dst) = (snap.members[0].address.clone(), snap.members[1].address.clone());
    let dst_id = c.id_of(&dst).unwrap().to_string();
    let replica = nodes(&c, &dst).await.into_iter().find(|n| n.master_id.as_deref() == Some(&dst_id)).unwrap().addr;
    let slots = moves.iter().map(|mv| mv.bucket).collect();
    let fence = DemotedAtCommit { c: &c, src: src.clone(), demoted: dst, replica, slots, done: Default::default() };
    let results = rc.move_group(&snap, &moves, &Unpaced, &fence).await;
    assert!(fence.done.load(std::sync::atomic::Ordering::SeqCst), "the target was failed over at a commit");
    let failed: Vec<u64> = moves.iter().zip(&results).filter(|(_, r)| r.is_err()).map(|(mv, _)| mv.bucket).collect();
    for (mv, r) in moves.iter().zip(&results) {
        assert!(
            matches!(r, Ok(_) | Err(ClusterError::Move { open: true, .. })),
            "slot {}: committed, or failed and left for the run to settle: {r:?}",
            mv.bucket
        );
    }
    assert!(!failed.is_empty(), "the last commit met the demoted target: {results:?}");
    let r = hand_back(&rc, &snap, &failed).await;
    let owners = c.slot_owners().await.unwrap();
    for &slot in &failed {
        assert_eq!(owners[slot as usize], src, "slot {slot}: handed back to its source");
    }
    settled_and_whole(&c, &before, &format!("{r:?}")).await;
}

/// A stop between a commit's two steps (the source took the new owner, the target not
/// yet): no master claims the slot, the target imports it with every key. Repair commits
/// it on the target instead of leaving it open with "no live owner" (clean-clone CI,
/// `failover_of_the_source_mid_move_is_finished_by_the_next_holder::valkey`).
async fn a_slot_committed_on_its_source_only_is_committed_on_its_target_by_repair(engine: Engine) {
    let LegacySetUp { c, before, _dir, rc, snap } = legacy_set_up(engine, 0, 3).await;
    let slot = snap.buckets.iter().find(|b| b.bytes > 0 && b.copies == [0]).unwrap().id;
    let (src, dst) = (snap.members[0].address.clone(), snap.members[1].address.clone());
    let (src_id, dst_id) = (c.id_of(&src).unwrap().to_string(), c.id_of(&dst).unwrap().to_string());
    let (mut on_src, mut on_dst) = (c.conn(&src).await.unwrap(), c.conn(&dst).await.unwrap());
    let setslot = |args: Vec<String>| {
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SETSLOT").arg(slot).arg(args);
        cmd
    };
    setslot(vec!["IMPORTING".into(), src_id]).query_async::<()>(&mut on_dst).await.unwrap();
    setslot(vec!["MIGRATING".into(), dst_id.clone()]).query_async::<()>(&mut on_src).await.unwrap();
    let (host, port) = dst.rsplit_once(':').unwrap();
    loop {
        let keys: Vec<Vec<u8>> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100).query_async(&mut on_src).await.unwrap();
        if keys.is_empty() {
            break;
        }
        let mut m = redis::cmd("MIGRATE");
        m.arg(host).arg(port).arg("").arg(0).arg(5000).arg("KEYS").arg(&keys);
        m.query_async::<()>(&mut on_src).await.unwrap();
    }
    setslot(vec!["NODE".into(), dst_id]).query_async::<()>(&mut on_src).await.unwrap();
    let intent = MoveIntent {
        bucket: slot,
        from: snap.members[0].id.clone(),
        to: snap.members[1].id.clone(),
        holder: "a holder stopped between the two commits".into(),
        started_at: chrono::Utc::now(),
    };
    let opts = RepairOptions { intents: vec![intent], ..Default::default() };
    let r = rc.repair(&opts, &common::Held::new().await).await.unwrap();
    assert!(
        r.failed.is_empty() && r.settled.iter().any(|l| l.starts_with(&format!("slot {slot}: committed on"))),
        "{r:?}"
    );
    assert_eq!(c.slot_owners().await.unwrap()[slot as usize], dst);
    settled_and_whole(&c, &before, &format!("{r:?}")).await;
}

/// An atomic group whose job the source refuses falls back to the legacy mover slot by
/// slot, long after the group's intents were recorded; a holder that lost the lock
/// meanwhile opens none of them (nemesis, Valkey seed 62: slots opened after the lease
/// was lost were recorded nowhere and stayed open for every later run).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_after_the_lock_is_lost_opens_no_slot() {
    let c = ClusterSpec::new(Engine::Valkey, 2, 0).start().await.unwrap();
    c.load_skewed(4_000, 5).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "[execution]\nmigration = \"atomic\"\n");
    let rc = RedisCluster::from_config(&autobalancer::config::Config::load(&cfg).unwrap()).unwrap();
    let snap = rc.snapshot().await.unwrap();
    let mut moves = first_moves(&snap, 6);
    assert_eq!(moves.len(), 6);
    // One slot of the source half-moved by hand: the source refuses every job.
    let (src, dst) = (snap.members[0].address.clone(), snap.members[1].address.clone());
    let by_hand = moves.pop().unwrap().bucket;
    let dst_id = c.id_of(&dst).unwrap().to_string();
    let mut con = c.conn(&src).await.unwrap();
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(by_hand)
        .arg("MIGRATING")
        .arg(&dst_id)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let results = rc.move_group(&snap, &moves, &Unpaced, &Lost).await;
    for (mv, r) in moves.iter().zip(&results) {
        match r {
            Err(ClusterError::FencedBeforeStart { bucket, .. }) => assert_eq!(*bucket, mv.bucket),
            other => panic!("slot {}: the legacy mover started past a lost lock: {other:?}", mv.bucket),
        }
    }
    let open = c.open_slots().await.unwrap();
    assert!(open.iter().all(|o| o.contains(&format!("[{by_hand}-"))), "only the slot opened by hand is open: {open:?}");
    redis::cmd("CLUSTER").arg("SETSLOT").arg(by_hand).arg("STABLE").query_async::<()>(&mut con).await.unwrap();
    let owners = c.slot_owners().await.unwrap();
    for mv in &moves {
        assert_eq!(owners[mv.bucket as usize], src, "slot {} stays with its source", mv.bucket);
    }
    settled_and_whole(&c, &before, "").await;
}

/// The real etcd lock's fence, whose lease is revoked (as etcd does when a holder's lease
/// runs out) at the first check that finds a slot open: the first commit.
struct RevokedAtCommit<'a> {
    fence: GuardFence<'a>,
    c: &'a LocalCluster,
    endpoint: String,
    revoked: std::sync::atomic::AtomicBool,
}

impl Fence for RevokedAtCommit<'_> {
    async fn check(&self) -> Result<(), FenceError> {
        if !self.revoked.load(std::sync::atomic::Ordering::SeqCst) && !self.c.open_slots().await.unwrap().is_empty() {
            self.revoked.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut etcd = etcd_client::Client::connect([self.endpoint.as_str()], None).await.unwrap();
            let leases = etcd.leases().await.unwrap();
            assert!(!leases.leases().is_empty(), "the holder has a lease");
            for l in leases.leases() {
                etcd.lease_revoke(l.id()).await.unwrap();
            }
        }
        self.fence.check().await
    }
}

/// With etcd, the lease revoked right before a commit: the commit is refused and the slot
/// stays open with its keys safe, then the next holder finishes it. On Valkey the atomic
/// mover is asked and its job fails (every source logs in to the target as a user the
/// target does not have), so the slots go by the legacy fallback, one at a time: the
/// first passes the fence before it opens, its commit is refused, and the others, asked
/// before they open, never open.
async fn a_lease_revoked_at_the_commit_stops_it(engine: Engine) {
    let etcd = LocalEtcd::start().unwrap();
    let c = ClusterSpec::new(engine, 2, 0).start().await.unwrap();
    c.load_skewed(4_000, 9).await.unwrap();
    let before = c.digest().await.unwrap();
    let mover = match engine {
        Engine::Redis => "legacy",
        Engine::Valkey => {
            for a in c.master_addrs() {
                let mut con = c.conn(&a).await.unwrap();
                for (k, v) in [("masteruser", "no-such-user"), ("masterauth", "x")] {
                    redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async::<()>(&mut con).await.unwrap();
                }
            }
            "atomic"
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let rest = format!("[execution]\nmigration = \"{mover}\"\n[etcd]\nendpoints = [\"{}\"]\n", etcd.endpoint());
    let cfg = write_config(dir.path(), &c, &rest);
    let config = autobalancer::config::Config::load(&cfg).unwrap();
    let rc = RedisCluster::from_config(&config).unwrap();
    let snap = rc.snapshot().await.unwrap();
    // A group of five slots, moved as one: the fence is asked once, before their commit.
    let group = first_moves(&snap, 5);
    let first = Coordinator::new(config.etcd.as_ref(), &config.cluster.id, "first").unwrap();
    let Acquire::Acquired(guard) = first.try_lock("manual").await.unwrap() else { panic!("not acquired") };
    let fence = RevokedAtCommit {
        fence: GuardFence { coordinator: &first, guard: &guard },
        c: &c,
        endpoint: etcd.endpoint(),
        revoked: Default::default(),
    };
    let results = rc.move_group(&snap, &group, &Unpaced, &fence).await;
    // Redis commits the group together; Valkey's fallback moves one slot at a time.
    let left_open = if engine == Engine::Valkey { 1 } else { group.len() };
    let (mut fenced, mut not_started) = (0, 0);
    for (mv, r) in group.iter().zip(&results) {
        match r {
            Err(ClusterError::Fenced { bucket, .. }) if *bucket == mv.bucket => fenced += 1,
            Err(ClusterError::FencedBeforeStart { bucket, .. }) if *bucket == mv.bucket => not_started += 1,
            other => panic!("slot {}: the mover went past a revoked lease: {other:?}", mv.bucket),
        }
    }
    assert_eq!((fenced, not_started), (left_open, group.len() - left_open), "{results:?}");
    assert!(fence.revoked.load(std::sync::atomic::Ordering::SeqCst), "the commit asked the fence");
    if engine == Engine::Valkey {
        assert_eq!(rc.legacy_fallbacks(), 0, "the fallback did not commit");
    }
    assert!(!c.open_slots().await.unwrap().is_empty(), "refused before its commit, the slot stays open");
    // The next holder takes the lock the revoked lease freed and finishes the move.
    let next = Coordinator::new(config.etcd.as_ref(), &config.cluster.id, "next").unwrap();
    let Acquire::Acquired(g) = next.try_lock("manual").await.unwrap() else { panic!("the revoked lock is still held") };
    let intents: Vec<MoveIntent> = group
        .iter()
        .map(|mv| MoveIntent {
            bucket: mv.bucket,
            from: snap.members[0].id.clone(),
            to: snap.members[1].id.clone(),
            holder: "first".into(),
            started_at: chrono::Utc::now(),
        })
        .collect();
    let opts = RepairOptions { intents, ..Default::default() };
    let r = rc.repair(&opts, &GuardFence { coordinator: &next, guard: &g }).await.unwrap();
    assert_eq!(r.settled.iter().filter(|l| l.contains("finished the move")).count(), left_open, "{r:?}");
    let mut done = r.intents_done.clone();
    done.sort_unstable();
    let mut all: Vec<u64> = group.iter().map(|mv| mv.bucket).collect();
    all.sort_unstable();
    assert_eq!(done, all, "every intent settled, those never opened too");
    settled_and_whole(&c, &before, "").await;
}

/// The mover is chosen once per run and said: `auto` names its choice and why;
/// `atomic` on a master that cannot do it fails the run before anything moves, naming
/// the master and its version.
async fn the_mover_is_chosen_once_and_said(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    c.load_skewed(4_000, 5).await.unwrap();
    let owners = c.slot_owners().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &c,
        "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n[execution]\nmigration = \"atomic\"\n",
    );
    let (code, v, log) = answer_of(spawn_run(&cfg));
    match engine {
        Engine::Redis => {
            assert_eq!(code, 1, "{v:#}\n{log}");
            let said = v["stopped"].as_str().unwrap();
            assert!(said.contains("execution.migration") && said.contains("runs redis 7."), "{said}");
            assert!(said.contains(&c.master_addrs()[0]) || c.master_addrs().iter().any(|a| said.contains(a)), "{said}");
            assert_eq!(c.slot_owners().await.unwrap(), owners, "nothing moved");
        }
        Engine::Valkey => {
            assert_eq!(code, 0, "{v:#}\n{log}");
            assert!(v["mover"].as_str().unwrap().starts_with("mover: atomic"), "{v:#}");
        }
    }
    let text = std::fs::read_to_string(&cfg).unwrap().replace("migration = \"atomic\"", "migration = \"auto\"");
    std::fs::write(&cfg, text).unwrap();
    let (code, out, err) = cli(&["simulate", "--config", cfg.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let explanation = json(&out)["explanation"].to_string();
    let want = match engine {
        Engine::Redis => "mover: legacy (SETSLOT and MIGRATE; redis 7.",
        Engine::Valkey => "mover: atomic (CLUSTER MIGRATESLOTS",
    };
    assert!(explanation.contains(want), "{explanation}");
}

on_each_engine!(
    a_source_failed_over_mid_move_is_settled_by_the_run_standalone,
    a_target_out_of_memory_mid_move_is_settled_standalone,
    a_target_out_of_memory_mid_move_is_settled_with_etcd,
    a_drain_that_does_not_fit_moves_what_fits_and_says_no_room,
    residue_that_blocks_the_cluster_is_named_and_settled_by_the_command_it_names,
    a_second_standalone_process_on_one_state_file_is_refused,
    every_commit_passes_the_fence,
    a_source_demoted_at_the_commit_leaves_no_slot_open,
    a_target_demoted_at_the_commit_loses_no_key,
    a_slot_committed_on_its_source_only_is_committed_on_its_target_by_repair,
    a_lease_revoked_at_the_commit_stops_it,
    the_mover_is_chosen_once_and_said
);

/// A holder frozen past its lease (here: its one runtime thread blocked, so neither its
/// keep-alive nor anything else runs) reports the lock as gone the moment it is asked
/// again, before its keep-alive has found out: two sidecars never both report
/// `autobalancer_lock_held 1`. Found by the nemesis run (a resumed holder reported it for
/// 1.6 s beside the new holder).
#[tokio::test(flavor = "current_thread")]
async fn a_holder_frozen_past_its_lease_reports_the_lock_gone_at_once() {
    let etcd = LocalEtcd::start().unwrap();
    let e = autobalancer::config::EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        lease_ttl: autobalancer::config::Dur(Duration::from_secs(2)),
        ..Default::default()
    };
    let coord = Coordinator::new(Some(&e), "t", "frozen").unwrap();
    let Acquire::Acquired(guard) = coord.try_lock("scheduled").await.unwrap() else { panic!("the lock is free") };
    let metrics = autobalancer::metrics::Metrics::new();
    metrics.lock_taken(guard.held_check());
    // Held, and kept alive across a few keep-alive rounds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(metrics.render().contains("autobalancer_lock_held 1"), "kept alive while the process runs");
    // Frozen: nothing of this process runs for longer than the lease.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(metrics.render().contains("autobalancer_lock_held 0"), "a frozen holder's lock is gone when it wakes");
    assert!(!guard.held_check()(), "and the guard says so");
    metrics.lock_released();
    assert!(metrics.render().contains("autobalancer_lock_held 0"));
}
