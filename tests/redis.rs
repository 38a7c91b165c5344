//! Against a real cluster started here, on Redis 7 and on Valkey 9: 3 loaded masters +
//! 1 empty, each with a replica, skewed hash-tagged keys. Every key and value must
//! survive every move.

mod common;

use std::time::Duration;

use autobalancer_testkit::{AclUser, ClusterSpec, Engine, LocalCluster, Login, on_each_engine};
use common::{bin, cluster_section_as};

fn write_config(dir: &std::path::Path, c: &LocalCluster, extra: &str) -> std::path::PathBuf {
    write_config_as(dir, c, &c.login(), extra)
}

fn write_config_as(dir: &std::path::Path, c: &LocalCluster, login: &Login, extra: &str) -> std::path::PathBuf {
    let text = format!(
        "{}\n[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 4\nmax-moves-per-member = 4\n{extra}\n",
        cluster_section_as(c, dir, None, login)
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn rebalance_json(cfg: &std::path::Path, extra: &[&str]) -> (i32, serde_json::Value, String) {
    let out = common::bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{stderr}", String::from_utf8_lossy(&out.stdout)));
    (out.status.code().unwrap_or(-1), v, stderr)
}

async fn simulate(cfg: &std::path::Path) -> serde_json::Value {
    let out = bin().args(["simulate", "--config", cfg.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn rebalance_by_bytes_loses_nothing(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).replicas(1).start().await.unwrap();
    c.load_skewed(30_000, 1).await.unwrap();
    let before = c.digest().await.unwrap();
    assert_eq!(before.len(), 30_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "");

    // The snapshot sees 4 masters (replicas recorded), the empty one at zero bytes.
    let snap_path = dir.path().join("s.json");
    let out = bin()
        .args(["snapshot", "--config", cfg.to_str().unwrap(), "--out", snap_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(&snap_path).unwrap()).unwrap();
    assert_eq!(snap["members"].as_array().unwrap().len(), 4);
    assert_eq!(snap["replicas"].as_array().unwrap().len(), 4);
    assert_eq!(snap["buckets"].as_array().unwrap().len(), 16384);
    let empty = c.master_addrs()[3].clone();
    // Copies name members by node id.
    let bytes_on = |s: &serde_json::Value, addr: &str| -> u64 {
        let id = c.id_of(addr).unwrap();
        s["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["copies"][0] == id)
            .map(|b| b["bytes"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(bytes_on(&snap, &empty), 0);
    assert!(bytes_on(&snap, &c.master_addrs()[0]) > 2 * bytes_on(&snap, &c.master_addrs()[2]));
    // The snapshot replays offline.
    let out = bin().args(["simulate", "--snapshot", snap_path.to_str().unwrap(), "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));

    let (code, v, stderr) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 0, "{stderr}\n{v:#}");
    assert_eq!(v["decision"]["action"], "rebalance", "{v:#}");
    assert!(v["failures"].is_null(), "{v:#}");
    let report = v["report"].as_array().unwrap();
    // Members are named by node id.
    let new = report.iter().find(|r| Some(r["id"].as_str().unwrap()) == c.id_of(&empty)).unwrap();
    assert!(new["current_buckets"].as_u64().unwrap() > 0);
    assert_eq!(v["moved_bytes"], v["transfer_bytes"]);
    // Off a terminal, progress is a plain line (every few seconds, the first at once).
    assert!(stderr.lines().any(|l| l.starts_with("moved ") && l.contains(" slots, ")), "{stderr}");

    // Nothing lost, nothing open, every node ok.
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.digest().await.unwrap(), before);
    assert!(c.open_slots().await.unwrap().is_empty());
    // Bytes now within tolerance of target where the slot sizes allow: a new simulation
    // finds nothing worth moving.
    let again = simulate(&cfg).await;
    for m in again["members"].as_array().unwrap() {
        let t = m["target_bytes"].as_f64().unwrap();
        let b = m["before"]["bytes"].as_f64().unwrap();
        assert!((b - t).abs() / t <= 0.06, "{} at {b} vs target {t}", m["id"]);
    }
    // Replicas follow their masters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = c.key_counts().await.unwrap();
    let mut con = c.conn(&c.nodes[7].addr()).await.unwrap();
    let replica_keys: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(Some(&replica_keys), counts.get(&c.nodes[c.nodes[7].replica_of.unwrap()].addr()));
}

async fn a_cluster_aware_writer_loses_no_write_during_the_move(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(20_000, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Paced so that the writer runs across many migrating slots.
    let cfg = write_config(dir.path(), &c, "");
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("max-bytes-per-second = 0", "max-bytes-per-second = \"2MiB\"");
    std::fs::write(&cfg, text).unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let nodes: Vec<String> = c.master_addrs().iter().map(|a| format!("redis://{a}")).collect();
    let client = redis::cluster::ClusterClient::new(nodes).unwrap();
    let mut con = client.get_async_connection().await.unwrap();
    let s2 = stop.clone();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut i = 0u64;
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            let key = format!("w:{{tenant{}}}:{i}", i % 97);
            let r: redis::RedisResult<()> = redis::cmd("SET").arg(&key).arg(i).query_async(&mut con).await;
            if r.is_ok() {
                acked.push((key, i));
            }
            // Also overwrite a pre-loaded key's neighbour space with reads.
            let _: redis::RedisResult<Option<String>> =
                redis::cmd("GET").arg(format!("user:{i}:1")).query_async(&mut con).await;
            i += 1;
        }
        (acked, con)
    });
    let cfg2 = cfg.clone();
    let (code, v, stderr) = tokio::task::spawn_blocking(move || rebalance_json(&cfg2, &[])).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, mut con) = writer.await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(v["moved_bytes"].as_u64().unwrap() > 0, "{v:#}");
    assert!(acked.len() > 100, "writer made too few writes: {}", acked.len());
    for (k, i) in &acked {
        let got: Option<u64> = redis::cmd("GET").arg(k).query_async(&mut con).await.unwrap();
        assert_eq!(got, Some(*i), "acknowledged write to {k} lost");
    }
    assert!(c.open_slots().await.unwrap().is_empty());
}

async fn an_operators_migration_is_left_alone_until_repair_settles_it(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    c.load_skewed(6_000, 3).await.unwrap();
    let before = c.digest().await.unwrap();
    let [a, b, e] = [c.master_addrs()[0].clone(), c.master_addrs()[1].clone(), c.master_addrs()[2].clone()];
    let id = |addr: &str| c.nodes.iter().find(|n| n.addr() == addr).unwrap().id.clone();
    let owners = c.slot_owners().await.unwrap();
    // One slot of a's with keys half-moved to e (finish); slot 16000: only flags set
    // (roll back).
    let half = c.half_move_by_hand(&a, &e).await.unwrap();
    let mut ce = c.conn(&e).await.unwrap();
    let mut cb = c.conn(&b).await.unwrap();
    let rolled = 16000u16;
    assert_eq!(owners[rolled as usize], b);
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(rolled)
        .arg("IMPORTING")
        .arg(id(&b))
        .query_async::<()>(&mut ce)
        .await
        .unwrap();
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(rolled)
        .arg("MIGRATING")
        .arg(id(&e))
        .query_async::<()>(&mut cb)
        .await
        .unwrap();
    assert_eq!(c.open_slots().await.unwrap().len(), 4);

    let counts = c.key_counts().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "");
    // A dry run sees the open slots and refuses to plan over them.
    let sim = simulate(&cfg).await;
    assert_eq!(sim["decision"]["reason"], "migration_in_progress", "{sim:#}");
    // Nobody recorded these moves: a run leaves them alone and says which and where.
    let (code, v, stderr) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["decision"]["reason"], "migration_in_progress", "{v:#}");
    let message = v["decision"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("bucket {half} is moving from {a} to {e}")), "{message}");
    assert!(message.contains("left untouched") && message.contains("open since"), "{message}");
    assert_eq!(c.open_slots().await.unwrap().len(), 4, "a foreign migration was touched");
    assert_eq!(c.key_counts().await.unwrap(), counts, "a foreign migration's keys moved");
    // The operator settles them: a dry run first, then one slot, then the rest.
    let repair = |extra: &[&str]| {
        let out = bin().args(["repair", "--config", cfg.to_str().unwrap()]).args(extra).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (code, out) = repair(&["--dry-run"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("slot {half}: would finish the move {a} -> {e}")), "{out}");
    assert_eq!(c.open_slots().await.unwrap().len(), 4, "a dry run changed something");
    let (code, out) = repair(&["--slot", &half.to_string()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("slot {half}: finished the move")), "{out}");
    assert_eq!(c.open_slots().await.unwrap().len(), 2);
    let (code, out) = repair(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains(&format!("slot {rolled}: rolled back")), "{out}");
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty());
    assert_eq!(c.digest().await.unwrap(), before);
    assert_eq!(c.slot_owners().await.unwrap()[half as usize], e);
    let (code, v, stderr) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["decision"]["action"], "rebalance", "{v:#}");
}

async fn a_killed_mover_is_repaired_by_the_next_run(engine: Engine) {
    // The moves' intents live in etcd: the next run, another process, reads them.
    let etcd = autobalancer_testkit::LocalEtcd::start().unwrap();
    let etcd_section = format!("[etcd]\nendpoints = [\"{}\"]\nlease-ttl = \"2s\"\n", etcd.endpoint());
    killed_mover(engine, |_| etcd_section.clone()).await
}

async fn a_killed_standalone_mover_is_repaired_from_its_state_file(engine: Engine) {
    // No etcd: the intents live in the state file, which the next process reads.
    killed_mover(engine, |dir| format!("state-file = \"{}\"\n", dir.join("state.json").display())).await
}

async fn a_killed_standalone_mover_is_repaired_from_its_default_state_file(engine: Engine) {
    // No etcd and no cluster.state-file, as a new user starts: the default state file.
    killed_mover(engine, |_| String::new()).await
}

/// A slow legacy run killed once a slot is open; the next run settles the slot as its own
/// (a slot open without an intent would be left alone as someone else's).
async fn killed_mover(engine: Engine, coordination: impl Fn(&std::path::Path) -> String) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(10_000, 4).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = coordination(dir.path());
    let cfg = write_config(dir.path(), &c, "");
    // Slow: small batches at a low rate, so a kill lands mid-slot.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "max-bytes-per-second = 0",
        "max-bytes-per-second = \"300KiB\"\nmigrate-batch-keys = 5\nmigration = \"legacy\"",
    );
    // `state-file` belongs to [cluster], which the file opens with; [etcd] goes last.
    let text = match extra.starts_with("state-file") {
        true => text.replacen('\n', &format!("\n{extra}"), 1),
        false => text + &extra,
    };
    std::fs::write(&cfg, text).unwrap();
    let mut child = common::bin_for(&["rebalance", "--config", cfg.to_str().unwrap(), "--once"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once a slot is open.
    let mut saw_open = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if !c.open_slots().await.unwrap().is_empty() {
            saw_open = true;
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(saw_open, "no slot was ever open during the slow run");
    // The killed holder's lease expires after its TTL; until then the lock is held.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (code, v, stderr) = loop {
        let (code, v, stderr) = rebalance_json(&cfg, &[]);
        if v["decision"]["reason"] != "lock_held_elsewhere" {
            break (code, v, stderr);
        }
        assert!(std::time::Instant::now() < deadline, "the killed holder's lock never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 0, "{stderr}\n{v:#}");
    assert!(stderr.contains("repair: slot"), "{stderr}");
    assert_ne!(v["decision"]["reason"], "migration_in_progress", "{v:#}");
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty());
    if let Some(diff) = autobalancer_testkit::digest_diff(&before, &c.digest().await.unwrap()) {
        panic!("{diff}");
    }
}

async fn a_down_master_skips_with_member_down(engine: Engine) {
    let mut c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(3_000, 5).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c, "");
    let victim = c.master_addrs()[1].clone();
    c.kill(&victim);
    let (code, v, stderr) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(v["decision"]["reason"], "member_down", "{v:#}");
    assert!(v["decision"]["message"].as_str().unwrap().contains(&victim));
}

async fn acl_user_and_password_from_a_file(engine: Engine) {
    // The kit creates the user on every node; the library logs in as it (AUTH2 on MIGRATE).
    let user = AclUser::new("balancer", "acl-pw-9", "~* &* +@all");
    let c = ClusterSpec::new(engine, 2, 1).password("s3cret-pw").user(user).start().await.unwrap();
    for a in c.live_addrs() {
        let mut con = c.client_conn(&a).await.unwrap();
        let me: String = redis::cmd("ACL").arg("WHOAMI").query_async(&mut con).await.unwrap();
        assert_eq!(me, "balancer", "{a}");
    }
    c.load_skewed(3_000, 6).await.unwrap();
    let before = c.digest().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // First as the default user, with `requirepass`.
    let default = Login { username: None, password: c.password.clone() };
    let cfg = write_config_as(dir.path(), &c, &default, "");
    let (code, v, stderr) = rebalance_json(&cfg, &["--force"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(v["moved_bytes"].as_u64().unwrap() > 0, "{v:#}");
    assert!(!stderr.contains("s3cret-pw"), "password logged");
    assert_eq!(c.digest().await.unwrap(), before);
    // Then as the ACL user, draining one member with weight 0, keyed by its node id.
    let drained = c.master_addrs()[0].clone();
    let drained_id = c.id_of(&drained).unwrap().to_string();
    let cfg = write_config(dir.path(), &c, &format!("\n[balance.weights]\n\"{drained_id}\" = 0\n"));
    let (code, v, stderr) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 0, "{stderr}\n{v:#}");
    let report = v["report"].as_array().unwrap();
    let r = report.iter().find(|r| r["id"] == drained_id.as_str()).unwrap();
    assert_eq!(r["current_buckets"], 0, "{v:#}");
    assert!(!stderr.contains("acl-pw-9"), "password logged");
    assert_eq!(c.key_counts().await.unwrap()[&drained], 0);
    assert_eq!(c.digest().await.unwrap(), before);
    // Wrong password: a clear snapshot failure, exit 1.
    std::fs::write(dir.path().join("redis-password"), "wrong\n").unwrap();
    let (code, v, _) = rebalance_json(&cfg, &[]);
    assert_eq!(code, 1);
    assert_eq!((&v["outcome"], &v["reason"]), (&serde_json::json!("failed"), &serde_json::json!("snapshot_failed")));
}

/// A stray copy of a key on the target (left by an earlier, interrupted attempt): an
/// identical value is replaced, a different one is set aside under another name.
async fn busykey_is_replaced_when_identical_and_set_aside_when_not(engine: Engine) {
    use autobalancer::cluster::{Cluster, Unpaced, redis::RedisCluster};
    use autobalancer::plan::{Move, MoveKind};
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    c.load_skewed(4_000, 31).await.unwrap();
    let [a, e] = [c.master_addrs()[0].clone(), c.master_addrs()[2].clone()];
    let a_id = c.nodes.iter().find(|n| n.addr() == a).unwrap().id.clone();
    let owners = c.slot_owners().await.unwrap();
    let mut ca = c.conn(&a).await.unwrap();
    let mut ce = c.conn(&e).await.unwrap();
    // Two slots of `a` with two keys or more; plant a stray copy of the last listed key
    // of each on `e`. MIGRATE of the batch moves the other keys and refuses that one:
    // the source, migrating, then answers ASK for the keys already moved.
    let mut picked = Vec::new();
    for s in 0..16384u16 {
        if owners[s as usize] != a {
            continue;
        }
        let keys: Vec<String> =
            redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(s).arg(10).query_async(&mut ca).await.unwrap();
        if keys.len() >= 2 {
            picked.push((s, keys.last().unwrap().clone()));
            if picked.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(picked.len(), 2, "no two slots of {a} hold two keys");
    for (i, (s, k)) in picked.iter().enumerate() {
        let v: Vec<u8> = redis::cmd("GET").arg(k).query_async(&mut ca).await.unwrap();
        let stray = if i == 0 { v.clone() } else { b"a different value".to_vec() };
        redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(*s)
            .arg("IMPORTING")
            .arg(&a_id)
            .query_async::<()>(&mut ce)
            .await
            .unwrap();
        let mut p = redis::pipe();
        p.cmd("ASKING").ignore().cmd("SET").arg(k).arg(stray).ignore();
        p.query_async::<()>(&mut ce).await.unwrap();
        redis::cmd("CLUSTER").arg("SETSLOT").arg(*s).arg("STABLE").query_async::<()>(&mut ce).await.unwrap();
    }
    let mut cfg = autobalancer::config::Config::default();
    cfg.cluster.id = "t".into();
    cfg.cluster.seeds = c.master_addrs();
    let rc = RedisCluster::from_config(&cfg).unwrap();
    let snap = rc.snapshot().await.unwrap();
    let idx = |m: &str| snap.member_named(m).unwrap();
    let mv = |s: u16| Move {
        kind: MoveKind::Copy,
        bucket: s as u64,
        bucket_index: snap.buckets.iter().position(|b| b.id == s as u64).unwrap() as u32,
        from: idx(&a),
        to: idx(&e),
        bytes: 1,
    };
    // Identical: replaced, the move completes, the value is the original.
    let (s0, k0) = &picked[0];
    let before: Vec<u8> = redis::cmd("GET").arg(k0).query_async(&mut ca).await.unwrap();
    rc.move_bucket(&snap, &mv(*s0), &Unpaced, &common::Held::new().await).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<u8> = redis::cmd("GET").arg(k0).query_async(&mut ce).await.unwrap();
    assert_eq!(after, before);
    assert_eq!(c.slot_owners().await.unwrap()[*s0 as usize], e);
    // Different: the source's value (the one clients read) moves; the target's is kept
    // under an aside name in the same slot, and the move completes.
    let (s1, k1) = &picked[1];
    let before: Vec<u8> = redis::cmd("GET").arg(k1).query_async(&mut ca).await.unwrap();
    let stats = rc.move_bucket(&snap, &mv(*s1), &Unpaced, &common::Held::new().await).await.unwrap();
    assert_eq!(stats.set_aside.len(), 1, "{stats:?}");
    assert_eq!((stats.set_aside[0].key.as_str(), stats.set_aside[0].node.as_str()), (k1.as_str(), e.as_str()));
    assert!(c.open_slots().await.unwrap().is_empty(), "{:?}", c.open_slots().await);
    assert_eq!(c.slot_owners().await.unwrap()[*s1 as usize], e);
    let moved: Vec<u8> = redis::cmd("GET").arg(k1).query_async(&mut ce).await.unwrap();
    assert_eq!(moved, before);
    let aside = &stats.set_aside[0].aside;
    assert_eq!(autobalancer_testkit::key_slot(aside), *s1, "{aside}");
    let kept: Vec<u8> = redis::cmd("GET").arg(aside).query_async(&mut ce).await.unwrap();
    assert_eq!(kept, b"a different value".to_vec());
}

on_each_engine!(
    rebalance_by_bytes_loses_nothing,
    a_cluster_aware_writer_loses_no_write_during_the_move,
    an_operators_migration_is_left_alone_until_repair_settles_it,
    a_killed_mover_is_repaired_by_the_next_run,
    a_killed_standalone_mover_is_repaired_from_its_state_file,
    a_killed_standalone_mover_is_repaired_from_its_default_state_file,
    a_down_master_skips_with_member_down,
    acl_user_and_password_from_a_file,
    busykey_is_replaced_when_identical_and_set_aside_when_not,
);
