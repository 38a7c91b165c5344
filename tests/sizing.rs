//! Slot sizes against a real cluster, on data made to fool estimates: values that grow
//! with key age and are heavy-tailed, a few multi-MB keys, hash-tagged tenants and
//! aggregates (hashes, lists, sets, sorted sets). The truth is computed here, key by key,
//! with `MEMORY USAGE key SAMPLES 0` on every master.

mod common;

use std::collections::BTreeMap;

use autobalancer::cluster::{AnyCluster, Cluster};
use autobalancer::config::Config;
use autobalancer::coord::Coordinator;
use autobalancer::model::ClusterSnapshot;
use autobalancer::run::Context;
use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd, on_each_engine};

/// A small deterministic generator (the data must be the same on every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000 + 1) as f64 / 1_000_000.0
    }
    /// Pareto with shape 1.3: most values near `min`, a long tail.
    fn heavy(&mut self, min: f64, cap: f64) -> usize {
        (min / self.unit().powf(1.0 / 1.3)).min(cap) as usize
    }
}

/// One key to write: its name and the commands that make it.
fn key_commands(i: usize, n: usize, rng: &mut Lcg) -> (String, Vec<redis::Cmd>) {
    // Older keys (small i) hold larger values: formats that grew, sessions that piled up.
    let age = 1.0 + 4.0 * (1.0 - i as f64 / n as f64);
    let name = if rng.next().is_multiple_of(4) {
        format!("{{tenant{}}}:{i}", rng.heavy(1.0, 60.0))
    } else {
        format!("key:{i}")
    };
    let value = |len: usize| vec![b'a' + (i % 26) as u8; len.max(1)];
    let mut cmds = Vec::new();
    match rng.next() % 10 {
        0 => {
            let mut c = redis::cmd("HSET");
            c.arg(&name);
            for f in 0..(5 + rng.next() % 200) {
                c.arg(format!("f{f}")).arg(value(rng.heavy(8.0 * age, 4096.0)));
            }
            cmds.push(c);
        }
        1 => {
            let mut c = redis::cmd("RPUSH");
            c.arg(&name);
            for _ in 0..(5 + rng.next() % 300) {
                c.arg(value(rng.heavy(8.0 * age, 2048.0)));
            }
            cmds.push(c);
        }
        2 => {
            let mut c = redis::cmd("SADD");
            c.arg(&name);
            for m in 0..(5 + rng.next() % 200) {
                c.arg(format!("member-{m}-{}", "x".repeat(rng.heavy(4.0 * age, 512.0))));
            }
            cmds.push(c);
        }
        3 => {
            let mut c = redis::cmd("ZADD");
            c.arg(&name);
            for m in 0..(5 + rng.next() % 200) {
                c.arg(m).arg(format!("z{m}-{}", "y".repeat(rng.heavy(4.0 * age, 512.0))));
            }
            cmds.push(c);
        }
        _ => {
            let mut c = redis::cmd("SET");
            c.arg(&name).arg(value(rng.heavy(40.0 * age, 256.0 * 1024.0)));
            cmds.push(c);
        }
    }
    (name, cmds)
}

/// Writes the data set through each key's owner; returns nothing but the keys' count.
async fn load(c: &LocalCluster, n: usize) -> usize {
    let owners = c.slot_owners().await.unwrap();
    let first = c.master_addrs()[0].clone();
    let mut any = c.conn(&first).await.unwrap();
    let mut rng = Lcg(7);
    let mut per: BTreeMap<String, Vec<redis::Cmd>> = BTreeMap::new();
    let mut keys: Vec<(String, Vec<redis::Cmd>)> = (0..n).map(|i| key_commands(i, n, &mut rng)).collect();
    // A tenant of strings only: its slot must measure the same on any node.
    for j in 0..300 {
        let mut c = redis::cmd("SET");
        c.arg(format!("{{strings}}:{j}")).arg(vec![b's'; rng.heavy(64.0, 64.0 * 1024.0)]);
        keys.push((format!("{{strings}}:{j}"), vec![c]));
    }
    // Multi-MB keys, old and few: the kind an estimate from a few keys never sees.
    for (j, mb) in [3usize, 5, 2].into_iter().enumerate() {
        let mut c = redis::cmd("SET");
        c.arg(format!("blob:{j}")).arg(vec![b'z'; mb << 20]);
        keys.push((format!("blob:{j}"), vec![c]));
    }
    for chunk in keys.chunks(2000) {
        let mut p = redis::pipe();
        for (k, _) in chunk {
            p.cmd("CLUSTER").arg("KEYSLOT").arg(k);
        }
        let slots: Vec<u16> = p.query_async(&mut any).await.unwrap();
        for ((_, cmds), s) in chunk.iter().zip(slots) {
            per.entry(owners[s as usize].clone()).or_default().extend(cmds.iter().cloned());
        }
    }
    for (addr, cmds) in per {
        let mut con = c.conn(&addr).await.unwrap();
        for chunk in cmds.chunks(200) {
            let mut p = redis::pipe();
            for cmd in chunk {
                p.add_command(cmd.clone()).ignore();
            }
            p.query_async::<()>(&mut con).await.unwrap();
        }
    }
    keys.len()
}

/// The truth: MEMORY USAGE SAMPLES 0 of every key, per master and per slot.
async fn exact(c: &LocalCluster) -> (BTreeMap<String, u64>, BTreeMap<u16, u64>) {
    let mut per_master = BTreeMap::new();
    let mut per_slot = BTreeMap::new();
    for addr in c.master_addrs() {
        let mut con = c.conn(&addr).await.unwrap();
        let mut total = 0u64;
        for keys in c.keys_on(&addr).await.unwrap().chunks(1000) {
            let mut p = redis::pipe();
            for k in keys {
                p.cmd("MEMORY").arg("USAGE").arg(k.as_slice()).arg("SAMPLES").arg(0);
                p.cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice());
            }
            let v: Vec<u64> = p.query_async(&mut con).await.unwrap();
            for pair in v.chunks(2) {
                total += pair[0];
                *per_slot.entry(pair[1] as u16).or_insert(0) += pair[0];
            }
        }
        per_master.insert(addr, total);
    }
    (per_master, per_slot)
}

fn config(dir: &std::path::Path, c: &LocalCluster, extra: &str) -> Config {
    let text = format!("{}\n{extra}\n", common::cluster_section(c, dir, None));
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    Config::load(&p).unwrap()
}

fn member_bytes(s: &ClusterSnapshot) -> BTreeMap<String, u64> {
    let mut out: BTreeMap<String, u64> = s.members.iter().map(|m| (m.address.clone(), 0)).collect();
    for b in &s.buckets {
        *out.get_mut(&s.members[b.copies[0] as usize].address).unwrap() += b.bytes;
    }
    out
}

fn off(a: u64, b: u64) -> f64 {
    (a as f64 - b as f64).abs() / (b as f64).max(1.0)
}

async fn exact_sizes_match_the_per_key_sum_and_follow_a_moved_slot(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    let written = load(&c, 12_000).await;
    let (truth, truth_slots) = exact(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &c, "");

    let cluster = AnyCluster::from_config(&cfg).unwrap();
    let snap = cluster.snapshot().await.unwrap();
    let got = member_bytes(&snap);
    for (addr, want) in &truth {
        let have = got[addr];
        assert!(
            off(have, *want) <= 0.02,
            "{addr}: snapshot {have} bytes, per-key sum {want} ({:.2}% off)",
            100.0 * off(have, *want)
        );
    }
    let sizing = snap.observed.sizing.clone().expect("sizing summary");
    assert_eq!(sizing.mode, "exact");
    assert_eq!(sizing.keys as usize, written, "every key counted");
    assert_eq!(sizing.keys_measured_now as usize, written, "a cold cache measures every key");
    assert_eq!(sizing.error_bytes, 0);
    let want = match engine {
        Engine::Redis => "redis 7",
        Engine::Valkey => "valkey 9",
    };
    assert!(snap.observed.engine.as_deref().unwrap_or("").starts_with(want), "{:?}", snap.observed.engine);

    // A second snapshot is served from the cache: nothing changed, nothing is measured.
    let again = cluster.snapshot().await.unwrap();
    assert_eq!(again.observed.sizing.as_ref().unwrap().keys_measured_now, 0);
    assert_eq!(member_bytes(&again), got);

    // The biggest slot (the 5 MB key's) moves to the empty master and measures the same
    // there, through a backend with a cold cache.
    let (&slot, &slot_truth) = truth_slots.iter().max_by_key(|(_, b)| **b).unwrap();
    let index = snap.buckets.iter().position(|b| b.id == slot as u64).unwrap();
    let before = snap.buckets[index].clone();
    assert!(off(before.bytes, slot_truth) <= 0.01, "slot {slot}: {} vs {slot_truth}", before.bytes);
    let empty = snap.member_named(&c.master_addrs()[3]).unwrap();
    let mv = copy_move(&snap, slot as u64, empty);
    let stats =
        cluster.move_bucket(&snap, &mv, &autobalancer::cluster::Unpaced, &common::Held::new().await).await.unwrap();
    assert_eq!(stats.bytes, before.bytes, "bytes moved are the measured size");
    let fresh = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    let after = fresh.buckets.iter().find(|b| b.id == slot as u64).unwrap();
    assert_eq!(after.copies[0], empty);
    // DUMP/RESTORE repacks aggregates (sets come out ~8% smaller, sorted sets ~3%,
    // hashes ~1%), so the slot is held to the per-key truth on each side of the move.
    let (_, truth_after) = exact(&c).await;
    assert!(
        off(after.bytes, truth_after[&slot]) <= 0.01,
        "slot {slot} on its new owner: {} measured, {} per-key sum",
        after.bytes,
        truth_after[&slot]
    );
    assert!(off(after.bytes, before.bytes) <= 0.03, "slot {slot}: {} before, {} after", before.bytes, after.bytes);
    // Strings are not repacked: their slot measures the same on both sides, within 1%.
    let mut con = c.conn(&c.master_addrs()[0]).await.unwrap();
    let strings: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg("{strings}").query_async(&mut con).await.unwrap();
    let index = fresh.buckets.iter().position(|b| b.id == strings as u64).unwrap();
    let before = fresh.buckets[index].clone();
    assert!(off(before.bytes, truth_slots[&strings]) <= 0.01, "{} vs {}", before.bytes, truth_slots[&strings]);
    let to = (before.copies[0] + 1) % fresh.members.len() as u32;
    let mv = copy_move(&fresh, strings as u64, to);
    cluster.move_bucket(&fresh, &mv, &autobalancer::cluster::Unpaced, &common::Held::new().await).await.unwrap();
    let moved = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    let after = &moved.buckets[index];
    assert_eq!(after.copies[0], to);
    assert!(off(after.bytes, before.bytes) <= 0.01, "slot {strings}: {} before, {} after", before.bytes, after.bytes);
    // The moving backend forgot the slot and measures it again where it lives now.
    let rechecked = cluster.snapshot().await.unwrap();
    assert!(rechecked.observed.sizing.as_ref().unwrap().keys_measured_now > 0);
    let total = |s: &ClusterSnapshot| s.buckets.iter().map(|b| b.bytes).sum::<u64>();
    assert!(off(total(&rechecked), total(&snap)) <= 0.01, "{} vs {}", total(&rechecked), total(&snap));
}

async fn big_keys_pin_their_slot_and_stray_keys_are_counted(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    load(&c, 2_000).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &c, "");
    let snap = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    // The multi-MB blobs (2-5 MB) are far below the default max-key-bytes (64 MiB).
    assert!(snap.observed.pinned.is_empty(), "{:?}", snap.observed.pinned);
    assert!(snap.observed.members.iter().all(|f| f.stray_keys == 0 && f.used_memory_bytes > 0));

    // A key written straight into a master that does not own its slot (as a failover
    // mid-move leaves it) shows as a stray key of that master.
    let target = c.master_addrs()[2].clone();
    write_stray(&c, &target, "stray").await;
    let snap = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    let i = snap.member_named(&target).unwrap() as usize;
    assert_eq!(snap.observed.members[i].stray_keys, 1);

    // With a small max-key-bytes the blobs pin their slots, and the reason names the limit.
    let cfg = config(dir.path(), &c, "[execution]\nmax-key-bytes = \"1MiB\"\n");
    let snap = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    assert_eq!(snap.observed.pinned.len(), 3, "{:?}", snap.observed.pinned);
    assert!(snap.observed.pinned.iter().all(|p| p.largest_key_bytes >= 2 << 20 && p.reason.contains("max-key-bytes")));
    assert_eq!(snap.observed.members.iter().map(|f| f.big_keys).sum::<u64>(), 3);
    // A plan leaves them where they are and says why.
    let p = autobalancer::plan::plan(&snap, &autobalancer::plan::PlanOptions::from_config(&cfg.balance)).unwrap();
    assert!(p.moves.iter().all(|m| snap.observed.pinned.iter().all(|x| x.bucket != m.bucket)));
    assert_eq!(p.explanation.iter().filter(|l| l.contains("stays: 1 key(s) above")).count(), 3, "{:?}", p.explanation);

    // A migrate-timeout above the cluster's node timeout draws a warning.
    config(dir.path(), &c, "[execution]\nmigrate-timeout = \"10m\"\n");
    let out = common::bin()
        .args(["snapshot", "--config", dir.path().join("config.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("migrate-timeout is above the cluster's cluster-node-timeout"), "{stderr}");
}

/// Sampled mode measures a random sample per slot and says how far off it may be: every
/// member's bytes lie within the stated bound of the per-key truth.
async fn sampled_sizes_state_their_error_bound(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    let mut written = load(&c, 12_000).await;
    // A tenant large enough to be sampled: 3000 keys in one slot, values 100-1100 bytes.
    let owner = c.slot_owners().await.unwrap()[autobalancer_testkit::key_slot("bulk") as usize].clone();
    let mut con = c.conn(&owner).await.unwrap();
    let mut rng = Lcg(11);
    let mut p = redis::pipe();
    for i in 0..3000 {
        p.cmd("SET").arg(format!("{{bulk}}:{i}")).arg(vec![b'b'; 100 + (rng.next() % 1000) as usize]).ignore();
    }
    p.query_async::<()>(&mut con).await.unwrap();
    written += 3000;
    let (truth, _) = exact(&c).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &c, "sizing = \"sampled\"\nsizing-sample-keys = 64\n");
    let snap = AnyCluster::from_config(&cfg).unwrap().snapshot().await.unwrap();
    let sizing = snap.observed.sizing.clone().unwrap();
    assert_eq!(sizing.mode, "sampled");
    assert_eq!(sizing.keys as usize, written);
    assert!((sizing.keys_measured_now as usize) < written, "{sizing:?}");
    assert!(sizing.error_bytes > 0, "{sizing:?}");
    let got = member_bytes(&snap);
    let total_off: u64 = truth.iter().map(|(a, t)| got[a].abs_diff(*t)).sum();
    // The bound is a 95% one; three times it is far beyond any honest sample's reach.
    assert!(total_off <= 3 * sizing.error_bytes, "off by {total_off} bytes in all, bound {}", sizing.error_bytes);
    let p = autobalancer::plan::plan(&snap, &autobalancer::plan::PlanOptions::from_config(&cfg.balance)).unwrap();
    assert!(
        p.explanation[0].starts_with("sizes: sampled") && p.explanation[0].contains("error within"),
        "{:?}",
        p.explanation
    );

    // The sampled slot moves with the engine's own mover (Valkey's atomic, Redis's
    // grouped legacy): the bytes it reports are measured, not the plan's figure (set to
    // 1 here so it cannot pass for a measurement).
    let cluster = AnyCluster::from_config(&cfg).unwrap();
    cluster.choose_mover().await.unwrap();
    assert!(cluster.groups_moves());
    let snap = cluster.snapshot().await.unwrap();
    let bulk = autobalancer_testkit::key_slot("bulk") as u64;
    let from = snap.buckets.iter().find(|b| b.id == bulk).unwrap().copies[0];
    let mv = autobalancer::plan::Move { bytes: 1, ..copy_move(&snap, bulk, (from + 1) % snap.members.len() as u32) };
    let r = cluster.move_group(&snap, &[mv], &autobalancer::cluster::Unpaced, &common::Held::new().await).await;
    let stats = r.into_iter().next().unwrap().unwrap();
    let (_, truth_after) = exact(&c).await;
    let want = truth_after[&(bulk as u16)];
    assert!(off(stats.bytes, want) <= 0.01, "slot {bulk}: {} bytes reported, {want} measured after", stats.bytes);
}

/// What a sidecar measured on its own member and published in etcd serves the lock
/// holder's snapshot where it still holds: a slot the member still owns with the same key
/// count. A slot that gained a key, or moved, is measured again; the table goes with its
/// sidecar's lease.
async fn published_sizes_serve_the_holder_where_they_still_hold(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    let written = load(&c, 6_000).await as u64;
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let masters = c.master_addrs();
    let a = node_id(&c, &masters[0]).await;
    let etcd_section = format!("[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-sizes\"\n", etcd.endpoint());
    let write = |name: &str, member: &str| {
        let text = format!("{}\n{etcd_section}", common::cluster_section(&c, dir.path(), Some(member)));
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        Config::load(&p).unwrap()
    };
    let (cfg_a, holder) = (write("a.toml", &a), write("holder.toml", &masters[1]));
    let measured_now = |s: &ClusterSnapshot| s.observed.sizing.as_ref().unwrap().keys_measured_now;

    // With nothing published, a holder measures every key.
    let cold = Context::new(holder.clone()).unwrap().snapshot().await.unwrap();
    assert_eq!(measured_now(&cold), written);

    // A's sidecar measures its member and publishes; the table reads back as written.
    let (table, measured) =
        AnyCluster::from_config(&cfg_a).unwrap().measure_member(&a).await.unwrap().expect("A is a master");
    let a_keys: u64 = table.buckets.iter().map(|b| b.keys).sum();
    assert!(a_keys > 0 && table.buckets.iter().all(|b| b.keys > 0 && b.variance == 0.0));
    assert_eq!(measured, a_keys, "a sidecar with a cold cache measures every key of its member");
    let coord_a = Coordinator::for_config(&cfg_a).unwrap();
    coord_a.publish_sizes(Some(&table)).await.unwrap();
    assert_eq!(coord_a.size_tables().await.unwrap(), vec![table.clone()]);
    let nobody = AnyCluster::from_config(&cfg_a).unwrap().measure_member(&"0".repeat(40)).await.unwrap();
    assert!(nobody.is_none(), "a member owning no slot has no table");

    // A holder with a cold cache measures only the slots the table does not cover, and
    // uses the table's sizes as published.
    let warm = Context::new(holder.clone()).unwrap().snapshot().await.unwrap();
    assert_eq!(measured_now(&warm), written - a_keys);
    for b in &table.buckets {
        let got = warm.buckets.iter().find(|x| x.id == b.bucket).unwrap();
        assert_eq!(got.bytes, b.bytes, "slot {}", b.bucket);
    }
    let (cold_bytes, warm_bytes) = (member_bytes(&cold), member_bytes(&warm));
    for (addr, want) in &cold_bytes {
        assert!(off(warm_bytes[addr], *want) <= 0.01, "{addr}: {} warm, {want} cold", warm_bytes[addr]);
    }

    // One of A's slots gains a key; another moves to the empty master. Both are measured
    // again, the moved one where it lives now (A's table still lists it).
    let small = |b: &&autobalancer::cluster::MeasuredBucket| b.largest_key < 1 << 20;
    let mut mine = table.buckets.iter().filter(small);
    let (grown, moved) = (*mine.next().unwrap(), *mine.next().unwrap());
    let key =
        (0..).map(|i| format!("grown:{i}")).find(|k| autobalancer_testkit::key_slot(k) as u64 == grown.bucket).unwrap();
    let mut con = c.conn(&masters[0]).await.unwrap();
    redis::cmd("SET").arg(&key).arg("one more").query_async::<()>(&mut con).await.unwrap();
    let mv = copy_move(&cold, moved.bucket, cold.member_named(&masters[3]).unwrap());
    let mover = AnyCluster::from_config(&holder).unwrap();
    mover.move_bucket(&cold, &mv, &autobalancer::cluster::Unpaced, &common::Held::new().await).await.unwrap();
    let after = Context::new(holder.clone()).unwrap().snapshot().await.unwrap();
    assert_eq!(measured_now(&after), written - a_keys + (grown.keys + 1) + moved.keys);

    // The table lives under its sidecar's registration lease, and goes with it.
    coord_a.deregister().await;
    assert!(coord_a.size_tables().await.unwrap().is_empty());
}

/// Writes `key` into `target`, a master that does not own its slot, the way a failover
/// mid-move leaves a key: RESTORE into a slot the node does not own is refused, and
/// ASKING lets a write through only while the node imports the slot.
async fn write_stray(c: &LocalCluster, target: &str, key: &str) {
    let owners = c.slot_owners().await.unwrap();
    let mut con = c.conn(target).await.unwrap();
    let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key).query_async(&mut con).await.unwrap();
    assert_ne!(owners[slot as usize], target);
    redis::cmd("CLUSTER")
        .arg("SETSLOT")
        .arg(slot)
        .arg("IMPORTING")
        .arg(node_id(c, &owners[slot as usize]).await)
        .query_async::<()>(&mut con)
        .await
        .unwrap();
    let mut p = redis::pipe();
    p.cmd("ASKING").ignore().cmd("SET").arg(key).arg("value").ignore();
    p.query_async::<()>(&mut con).await.unwrap();
    redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("STABLE").query_async::<()>(&mut con).await.unwrap();
}

/// The snapshot right after a repair that changed nothing starts from what the repair
/// read: every slot's key count is asked for once, not twice. A move, or a repair that
/// changed something, makes the next snapshot read everything again.
async fn a_snapshot_after_a_repair_that_changed_nothing_reads_it_once(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    let written = load(&c, 2_000).await as u64;
    let dir = tempfile::tempdir().unwrap();
    let cluster = AnyCluster::from_config(&config(dir.path(), &c, "")).unwrap();
    let masters = c.master_addrs();
    // Key counts asked for, summed over the masters: slots counted one by one on Redis
    // 7, SLOT-STATS calls (one answers for a whole master) on Valkey.
    let (counting, per_reading) = match engine {
        Engine::Redis => ("countkeysinslot", 16384),
        Engine::Valkey => ("slot-stats", masters.len() as u64),
    };
    let counted = || async {
        let mut n = 0;
        for a in &masters {
            n += common::cluster_calls(&c, a, counting).await.unwrap_or(0);
        }
        n
    };
    let first = cluster.snapshot().await.unwrap();
    let base = counted().await;

    let r = cluster.repair(&Default::default(), &common::Held::new().await).await.unwrap();
    assert!(r.settled.is_empty() && r.set_aside.is_empty(), "{r:?}");
    assert!(r.reading.is_some(), "a repair that changed nothing hands on what it read");
    let snap = cluster.snapshot_after(r.reading).await.unwrap();
    assert_eq!(counted().await - base, per_reading, "the repair's reading serves the snapshot");
    assert_eq!(snap.observed.sizing.as_ref().unwrap().keys, written);
    assert_eq!(
        snap.buckets.iter().map(|b| b.copies.clone()).collect::<Vec<_>>(),
        first.buckets.iter().map(|b| b.copies.clone()).collect::<Vec<_>>()
    );

    // A snapshot not handed a reading reads the cluster itself.
    let base = counted().await;
    cluster.snapshot().await.unwrap();
    assert_eq!(counted().await - base, per_reading, "a snapshot of its own reads once");

    // A repair that returned a stray key changed a count: the snapshot reads again and
    // finds the key with its owner.
    write_stray(&c, &masters[2], "stray").await;
    let r = cluster.repair(&Default::default(), &common::Held::new().await).await.unwrap();
    assert_eq!(r.settled.len(), 1, "{r:?}");
    let after = cluster.snapshot().await.unwrap();
    assert_eq!(after.observed.sizing.as_ref().unwrap().keys, written + 1);
    assert!(after.observed.members.iter().all(|f| f.stray_keys == 0), "{:?}", after.observed.members);
}

/// The move of `bucket` from where `snap` saw it to member `to`, with the bytes `snap` saw.
fn copy_move(snap: &ClusterSnapshot, bucket: u64, to: u32) -> autobalancer::plan::Move {
    let index = snap.buckets.iter().position(|b| b.id == bucket).unwrap();
    let b = &snap.buckets[index];
    autobalancer::plan::Move {
        kind: autobalancer::plan::MoveKind::Copy,
        bucket,
        bucket_index: index as u32,
        from: b.copies[0],
        to,
        bytes: b.bytes,
    }
}

async fn node_id(c: &LocalCluster, addr: &str) -> String {
    let mut con = c.conn(addr).await.unwrap();
    redis::cmd("CLUSTER").arg("MYID").query_async(&mut con).await.unwrap()
}

on_each_engine!(
    exact_sizes_match_the_per_key_sum_and_follow_a_moved_slot,
    big_keys_pin_their_slot_and_stray_keys_are_counted,
    sampled_sizes_state_their_error_bound,
    published_sizes_serve_the_holder_where_they_still_hold,
    a_snapshot_after_a_repair_that_changed_nothing_reads_it_once,
);
