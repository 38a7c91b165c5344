//! The atomic mover against real Valkey 9 clusters (and the choice of mover on Redis 7):
//! one MIGRATESLOTS job per (source, target) group, every key and value intact, ownership
//! flipped on every node, the target's replica following, a stuck job cancelled with its
//! slots left at the source, a failing job retried and then moved by the legacy mover,
//! the ACL rules both paths need, and `execution.migration = "atomic"` refused on Redis 7.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use autobalancer::cluster::Unpaced;
use autobalancer::cluster::redis::{MigrationMode, RedisCluster};
use autobalancer::cluster::{Cluster, ClusterError, RepairOptions};
use autobalancer::model::{ClusterSnapshot, MoveIntent};
use autobalancer::plan::{Move, MoveKind};
use autobalancer_testkit::{AclUser, ClusterSpec, Engine, LocalCluster};

/// The library's backend for `c`, logged in as the kit says, with `migrate-timeout`.
fn backend(c: &LocalCluster, dir: &Path, migrate_timeout: Duration) -> RedisCluster {
    let mut cfg = autobalancer::config::Config::default();
    cfg.cluster.id = "t".into();
    cfg.cluster.seeds = c.master_addrs();
    let login = c.login();
    cfg.cluster.username = login.username.clone();
    if let Some(pw) = &login.password {
        let f = dir.join("password");
        std::fs::write(&f, format!("{pw}\n")).unwrap();
        cfg.cluster.password_file = Some(f);
    }
    cfg.execution.migrate_timeout = autobalancer::config::Dur(migrate_timeout);
    RedisCluster::from_config(&cfg).unwrap()
}

/// Moves of `n` slots owned by `from` to `to`: a run of contiguous slots, then every
/// other slot (so the job carries several ranges).
fn moves(snap: &ClusterSnapshot, from: &str, to: &str, n: usize) -> Vec<Move> {
    let (f, t) = (snap.member_named(from).unwrap(), snap.member_named(to).unwrap());
    let owned: Vec<(usize, u64)> =
        snap.buckets.iter().enumerate().filter(|(_, b)| b.copies[0] == f).map(|(i, b)| (i, b.id)).collect();
    let picked = owned.iter().take(n / 2).chain(owned.iter().skip(n / 2 + 1).step_by(2).take(n - n / 2));
    picked
        .map(|&(i, id)| Move {
            kind: MoveKind::Copy,
            bucket: id,
            bucket_index: i as u32,
            from: f,
            to: t,
            bytes: snap.buckets[i].bytes,
        })
        .collect()
}

/// Slot -> owner address as each live node sees it (read here, not by the library).
async fn views(c: &LocalCluster) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for a in c.live_addrs() {
        let mut con = c.conn(&a).await.unwrap();
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await.unwrap();
        let mut owner = vec![String::new(); 16384];
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let addr = f[1].split('@').next().unwrap();
            for r in f.iter().skip(8).filter(|r| !r.starts_with('[')) {
                let (x, y) = r.split_once('-').unwrap_or((r, r));
                let (x, y): (usize, usize) = (x.parse().unwrap(), y.parse().unwrap());
                owner[x..=y].fill(addr.to_string());
            }
        }
        out.insert(a, owner);
    }
    out
}

async fn wait_views(c: &LocalCluster, slots: &[u64], owner: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = views(c).await;
        let bad: Vec<String> = v
            .iter()
            .flat_map(|(node, o)| {
                slots.iter().filter(|&&s| o[s as usize] != owner).map(move |s| format!("{node}: {s}"))
            })
            .collect();
        if bad.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "slots not shown at {owner}: {:?}", &bad[..bad.len().min(5)]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every key on one node with its DUMP payload (READONLY first, so a replica answers).
async fn dump_node(c: &LocalCluster, addr: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    c.dump_node(addr).await.unwrap()
}

/// The hash slot of each key.
async fn slots_of<'a>(c: &LocalCluster, keys: impl Iterator<Item = &'a Vec<u8>>) -> Vec<u64> {
    let mut con = c.conn(&c.master_addrs()[0]).await.unwrap();
    let mut p = redis::pipe();
    for k in keys {
        p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
    }
    p.query_async(&mut con).await.unwrap()
}

/// The tests of this file share two cores with their servers: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The EXPORT jobs `addr` lists, as (state, slot_ranges, message).
async fn jobs(c: &LocalCluster, addr: &str) -> Vec<(String, String, String)> {
    let mut con = c.conn(addr).await.unwrap();
    let v: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("GETSLOTMIGRATIONS").query_async(&mut con).await.unwrap();
    v.into_iter()
        .map(|e| {
            let m: BTreeMap<String, String> = e
                .chunks(2)
                .map(|p| {
                    (
                        redis::from_redis_value(p[0].clone()).unwrap(),
                        redis::from_redis_value(p[1].clone()).unwrap_or_default(),
                    )
                })
                .collect();
            (m["state"].clone(), m["slot_ranges"].clone(), m["message"].clone())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_job_per_source_moves_every_key_and_flips_ownership_everywhere() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 3, 1).start().await.unwrap();
    c.load_skewed(30_000, 11).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(30));
    let snap = rc.snapshot().await.unwrap();
    let caps = rc.capabilities().unwrap();
    assert!(caps.atomic_migration && caps.slot_stats && caps.engine.starts_with("valkey 9."), "{caps:?}");
    // Key counts came from one SLOT-STATS per master, none from COUNTKEYSINSLOT, and
    // they match what the servers hold.
    assert_eq!(snap.observed.sizing.as_ref().unwrap().keys, 30_000);
    let m = c.master_addrs();
    for a in &m {
        let calls =
            (common::cluster_calls(&c, a, "slot-stats").await, common::cluster_calls(&c, a, "countkeysinslot").await);
        assert_eq!(calls, (Some(1), None), "{a}");
    }
    let mut moved = Vec::new();
    for src in &m[..3] {
        let group = moves(&snap, src, &m[3], 400);
        let mut con = c.conn(src).await.unwrap();
        let mut want = 0;
        for mv in &group {
            let n: u64 =
                redis::cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(mv.bucket).query_async(&mut con).await.unwrap();
            want += n;
        }
        let results = rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await;
        assert_eq!(results.len(), group.len());
        for (mv, r) in group.iter().zip(&results) {
            let stats = r.as_ref().unwrap_or_else(|e| panic!("slot {}: {e}", mv.bucket));
            assert_eq!(stats.bytes, mv.bytes, "bytes reported are the snapshot's");
        }
        let keys: u64 = results.iter().map(|r| r.as_ref().unwrap().keys).sum();
        // One job from this source, carrying every slot of the group.
        let exported = jobs(&c, src).await;
        assert_eq!(exported.len(), 1, "{exported:?}");
        assert_eq!(exported[0].0, "success");
        let ranges = exported[0].1.split_whitespace().count();
        assert!(ranges > 100, "contiguous slots merged, the rest one range each: {ranges}");
        moved.extend(group.iter().map(|mv| mv.bucket));
        assert!(keys > 0);
        assert_eq!(keys, want, "keys reported are the group's keys");
    }
    assert_eq!(rc.legacy_fallbacks(), 0);
    wait_views(&c, &moved, &m[3]).await;
    assert_eq!(c.digest().await.unwrap(), before, "every key and value intact");
    let on_target = dump_node(&c, &m[3]).await;
    for s in slots_of(&c, on_target.keys()).await {
        assert!(moved.contains(&s), "a key of slot {s} on the target");
    }
    let expected = before.iter().filter(|(k, _)| on_target.contains_key(*k)).count();
    assert_eq!(on_target.len(), expected);
    assert!(c.open_slots().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_targets_replica_holds_the_moved_slots() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 3, 1).replicas(1).start().await.unwrap();
    c.load_skewed(20_000, 12).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(30));
    let snap = rc.snapshot().await.unwrap();
    let m = c.master_addrs();
    let group = moves(&snap, &m[1], &m[3], 600);
    for r in rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await {
        r.unwrap();
    }
    let slots: Vec<u64> = group.iter().map(|mv| mv.bucket).collect();
    wait_views(&c, &slots, &m[3]).await;
    let target = dump_node(&c, &m[3]).await;
    assert!(target.len() > 100, "{} keys moved", target.len());
    let replica = c.nodes.iter().find(|n| n.replica_of.is_some_and(|i| c.nodes[i].addr() == m[3])).unwrap().addr();
    // The replica catches up by replication: wait for it, bounded.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = dump_node(&c, &replica).await;
        if r == target {
            break;
        }
        assert!(Instant::now() < deadline, "replica {replica} holds {} keys, its master {}", r.len(), target.len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the source's replica no longer holds them.
    let src_replica = c.nodes.iter().find(|n| n.replica_of.is_some_and(|i| c.nodes[i].addr() == m[1])).unwrap().addr();
    let deadline = Instant::now() + Duration::from_secs(15);
    while dump_node(&c, &src_replica).await.keys().any(|k| target.contains_key(k)) {
        assert!(Instant::now() < deadline, "the source's replica still holds moved keys");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.digest().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_job_is_cancelled_and_its_slots_stay_with_the_source() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 2, 1).start().await.unwrap();
    c.load_skewed(10_000, 13).await.unwrap();
    let before = c.digest().await.unwrap();
    let owners = c.slot_owners().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(1));
    let snap = rc.snapshot().await.unwrap();
    let m = c.master_addrs();
    let group = moves(&snap, &m[0], &m[2], 200);
    // The target stops answering: the job cannot end on its own within its time.
    common::signal_node(&c, &m[2], "-STOP");
    let t0 = Instant::now();
    let results = rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await;
    common::signal_node(&c, &m[2], "-CONT");
    assert!(t0.elapsed() < Duration::from_secs(10), "bounded by the job's timeout: {:?}", t0.elapsed());
    for r in &results {
        match r {
            Err(ClusterError::Move { message, open: false, .. }) => {
                assert!(message.contains("cancelled") && message.contains(&m[0]), "{message}")
            }
            other => panic!("expected a cancelled move, got {other:?}"),
        }
    }
    let exported = jobs(&c, &m[0]).await;
    assert_eq!(exported.iter().map(|j| j.0.as_str()).collect::<Vec<_>>(), ["cancelled"]);
    assert_eq!(c.slot_owners().await.unwrap(), owners, "every slot where it was");
    // The target drops what it had imported; nothing is lost or duplicated.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dump_node(&c, &m[2]).await.is_empty() {
        assert!(Instant::now() < deadline, "the target kept keys of a cancelled job");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_ok(Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.digest().await.unwrap(), before);
    // The same slots move once the target is back.
    let snap = rc.snapshot().await.unwrap();
    assert!(rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await.iter().all(Result::is_ok));
    assert_eq!(c.digest().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_in_halves_then_moved_by_the_legacy_mover() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 2, 1).start().await.unwrap();
    c.load_skewed(10_000, 14).await.unwrap();
    let before = c.digest().await.unwrap();
    let m = c.master_addrs();
    // The source logs in to the target as a user the target does not have: every job
    // from it fails at once ("Failed to AUTH to target node").
    let mut con = c.conn(&m[0]).await.unwrap();
    for (k, v) in [("masteruser", "no-such-user"), ("masterauth", "x")] {
        redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async::<()>(&mut con).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(10));
    let snap = rc.snapshot().await.unwrap();
    let group = moves(&snap, &m[0], &m[2], 40);
    let results = rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await;
    for (mv, r) in group.iter().zip(&results) {
        let stats = r.as_ref().unwrap();
        assert_eq!(stats.bytes, mv.bytes);
        assert!(stats.fallback, "the move says the legacy mover made it");
    }
    assert_eq!(rc.legacy_fallbacks(), 40);
    let exported = jobs(&c, &m[0]).await;
    assert_eq!(exported.len(), 3, "one job, then two halves: {exported:?}");
    assert!(exported.iter().all(|j| j.0 == "failed" && j.2.contains("AUTH")), "{exported:?}");
    let slots: Vec<u64> = group.iter().map(|mv| mv.bucket).collect();
    wait_views(&c, &slots, &m[2]).await;
    assert!(c.open_slots().await.unwrap().is_empty());
    assert_eq!(c.digest().await.unwrap(), before);
}

/// ACL: the legacy rules plus the atomic commands move atomically; the legacy rules
/// alone still move (MIGRATESLOTS refused, the legacy mover takes over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_rules_for_the_atomic_path() {
    let _one = ONE_AT_A_TIME.lock().await;
    // MIGRATE logs in to the target as this user and sends SELECT and RESTORE-ASKING.
    const LEGACY: &str = "~* -@all +info +ping +asking +dump +migrate +select +restore-asking +memory|usage \
                          +cluster|info +cluster|nodes +cluster|countkeysinslot +cluster|getkeysinslot +cluster|setslot";
    const ATOMIC: &str = "+cluster|slot-stats +cluster|migrateslots +cluster|getslotmigrations \
                          +cluster|cancelslotmigrations";
    for (rules, atomic) in [(format!("{LEGACY} {ATOMIC}"), true), (LEGACY.to_string(), false)] {
        let user = AclUser::new("balancer", "pw-acl-1", &rules);
        let c = ClusterSpec::new(Engine::Valkey, 2, 1).user(user).start().await.unwrap();
        c.load_skewed(5_000, 15).await.unwrap();
        let before = c.digest().await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rc = backend(&c, dir.path(), Duration::from_secs(10));
        let snap = rc.snapshot().await.unwrap();
        assert_eq!(snap.observed.sizing.as_ref().unwrap().keys, 5_000);
        let m = c.master_addrs();
        let group = moves(&snap, &m[1], &m[2], 30);
        for r in rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await {
            r.unwrap();
        }
        let exported = jobs(&c, &m[1]).await;
        if atomic {
            assert_eq!((rc.legacy_fallbacks(), exported.len()), (0, 1), "{rules}");
        } else {
            assert_eq!((rc.legacy_fallbacks(), exported.len()), (30, 0), "{rules}");
        }
        let slots: Vec<u64> = group.iter().map(|mv| mv.bucket).collect();
        wait_views(&c, &slots, &m[2]).await;
        assert_eq!(c.digest().await.unwrap(), before);
    }
}

/// ACL of the nodes themselves: a job's source logs in to the target as its own
/// `masteruser`, which there must run the writes of the stream, not only replicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sources_masteruser_needs_write_rights_on_the_target() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 2, 1).start().await.unwrap();
    c.load_skewed(5_000, 17).await.unwrap();
    let before = c.digest().await.unwrap();
    let acl = |rules: &'static str| {
        let c = &c;
        async move {
            for a in c.live_addrs() {
                let mut con = c.conn(&a).await.unwrap();
                let mut cmd = redis::cmd("ACL");
                cmd.arg("SETUSER").arg("repl").arg("reset").arg("on").arg(">repl-pw");
                for r in rules.split_whitespace() {
                    cmd.arg(r);
                }
                cmd.query_async::<()>(&mut con).await.unwrap();
                for (k, v) in [("masteruser", "repl"), ("masterauth", "repl-pw")] {
                    redis::cmd("CONFIG").arg("SET").arg(k).arg(v).query_async::<()>(&mut con).await.unwrap();
                }
            }
        }
    };
    // What a replica needs: enough for replication, not for a slot migration stream.
    acl("+psync +replconf +ping +cluster|syncslots").await;
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(10));
    let snap = rc.snapshot().await.unwrap();
    let m = c.master_addrs();
    let first = moves(&snap, &m[0], &m[2], 20);
    assert!(rc.move_group(&snap, &first, &Unpaced, &common::Held::new().await).await.iter().all(Result::is_ok));
    assert_eq!(rc.legacy_fallbacks(), 20, "jobs failed, the legacy mover moved the slots");
    assert!(jobs(&c, &m[0]).await.iter().all(|j| j.0 == "failed"));
    // With SELECT and the write commands on every key, jobs succeed.
    acl("+psync +replconf +ping +cluster|syncslots +select +@write ~*").await;
    let second = moves(&snap, &m[1], &m[2], 20);
    assert!(rc.move_group(&snap, &second, &Unpaced, &common::Held::new().await).await.iter().all(Result::is_ok));
    assert_eq!(rc.legacy_fallbacks(), 20, "no new fallback");
    assert_eq!(jobs(&c, &m[1]).await.iter().map(|j| j.0.as_str()).collect::<Vec<_>>(), ["success"]);
    let slots: Vec<u64> = first.iter().chain(&second).map(|mv| mv.bucket).collect();
    wait_views(&c, &slots, &m[2]).await;
    assert_eq!(c.digest().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_on_redis_7_is_refused_naming_the_key_and_auto_moves_with_legacy() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Redis, 2, 1).start().await.unwrap();
    c.load_skewed(3_000, 16).await.unwrap();
    let before = c.digest().await.unwrap();
    let owners = c.slot_owners().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut rc = backend(&c, dir.path(), Duration::from_secs(10));
    rc.migration = MigrationMode::Atomic;
    let snap = rc.snapshot().await.unwrap();
    let caps = rc.capabilities().unwrap();
    assert!(!caps.atomic_migration && !caps.slot_stats && caps.engine.starts_with("redis 7."), "{caps:?}");
    let m = c.master_addrs();
    let group = moves(&snap, &m[0], &m[2], 10);
    for r in rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await {
        let e = r.unwrap_err().to_string();
        assert!(e.contains("execution.migration = \"atomic\"") && e.contains(&caps.engine), "{e}");
    }
    assert_eq!(c.slot_owners().await.unwrap(), owners, "nothing moved");
    rc.migration = MigrationMode::Auto;
    for r in rc.move_group(&snap, &group, &Unpaced, &common::Held::new().await).await {
        r.unwrap();
    }
    let slots: Vec<u64> = group.iter().map(|mv| mv.bucket).collect();
    wait_views(&c, &slots, &m[2]).await;
    assert_eq!(c.digest().await.unwrap(), before);
}

/// `CLUSTER MIGRATESLOTS` of `slots` from `src` to the node `dst_id`, issued by hand.
async fn migrate_slots(c: &LocalCluster, src: &str, slots: &[u64], dst_id: &str) {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("MIGRATESLOTS").arg("SLOTSRANGE");
    for s in slots {
        cmd.arg(s).arg(s);
    }
    cmd.arg("NODE").arg(dst_id);
    cmd.query_async::<()>(&mut c.conn(src).await.unwrap()).await.unwrap();
}

/// A holder that vanished leaves its jobs running on the servers, with no slot flag to
/// show for them: the next holder's repair finds them with GETSLOTMIGRATIONS, waits for
/// the one it recorded and settles its intents, and names the one nobody recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_left_running_are_found_waited_for_or_left_alone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let c = ClusterSpec::new(Engine::Valkey, 2, 1).start().await.unwrap();
    c.load_skewed(10_000, 17).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rc = backend(&c, dir.path(), Duration::from_secs(10));
    let snap = rc.snapshot().await.unwrap();
    let m = c.master_addrs();
    let ours: Vec<u64> = moves(&snap, &m[0], &m[2], 40).iter().map(|mv| mv.bucket).collect();
    let theirs: Vec<u64> = moves(&snap, &m[1], &m[2], 40).iter().map(|mv| mv.bucket).collect();
    let target = c.id_of(&m[2]).unwrap().to_string();
    // The target is frozen, so neither job can end before repair has looked.
    common::signal_node(&c, &m[2], "-STOP");
    migrate_slots(&c, &m[0], &ours, &target).await;
    migrate_slots(&c, &m[1], &theirs, &target).await;
    assert!(jobs(&c, &m[0]).await.iter().all(|j| !["success", "failed", "cancelled"].contains(&j.0.as_str())));
    let intents: Vec<MoveIntent> = ours
        .iter()
        .map(|&bucket| MoveIntent {
            bucket,
            from: m[0].clone(),
            to: m[2].clone(),
            holder: "a vanished holder".into(),
            started_at: chrono::Utc::now(),
        })
        .collect();
    let opts = RepairOptions { intents, ..RepairOptions::default() };
    let repair = tokio::spawn(async move { rc.repair(&opts, &common::Held::new().await).await });
    // Thawed well within the cluster's node timeout (3 s): the jobs then end on their own.
    tokio::time::sleep(Duration::from_millis(800)).await;
    common::signal_node(&c, &m[2], "-CONT");
    let report = repair.await.unwrap().unwrap();
    assert!(
        report.settled.iter().any(|l| l.contains("a previous holder's job") && l.contains("ended in success")),
        "{report:?}"
    );
    let mut done = report.intents_done.clone();
    done.sort_unstable();
    let mut want = ours.clone();
    want.sort_unstable();
    assert_eq!(done, want, "every recorded slot settled, nothing else");
    // The job nobody recorded is named while it runs. Repair reads the frozen target's
    // view first, so on a busy machine both jobs may have ended once it looks: a job
    // nobody recorded that ended in success blocks nothing and is not named (its slots
    // are checked on the target below either way).
    let foreign: Vec<_> = report.foreign.iter().filter(|f| f.from.as_deref() == Some(m[1].as_str())).collect();
    let listed = jobs(&c, &m[1]).await;
    let theirs_ended = !listed.is_empty() && listed.iter().all(|j| j.0 == "success");
    assert!(foreign.len() == 1 || (foreign.is_empty() && theirs_ended), "the job nobody recorded: {report:?}");
    assert!(foreign.iter().all(|f| theirs.contains(&f.bucket) && f.to.as_deref() == Some(m[2].as_str())));
    wait_views(&c, &ours, &m[2]).await;
    wait_views(&c, &theirs, &m[2]).await;
    c.wait_ok(Duration::from_secs(20)).await.unwrap();
    assert_eq!(c.digest().await.unwrap(), before);
}
