//! What the benches share: the library's backend for a local cluster, a reader of what a
//! fleet keeps in etcd, the exact bytes of every slot, what a way of rebalancing moved
//! and how even it left the masters, and the table.
// Each bench is a crate of its own and uses part of this.
#![allow(dead_code)]

use std::collections::BTreeMap;

use autobalancer::cluster::Cluster;
use autobalancer::cluster::redis::RedisCluster;
use autobalancer::coord::Coordinator;
use autobalancer_testkit::{LocalCluster, LocalEtcd};

/// Owner (its address) and exact bytes of every slot.
pub struct Slots {
    owner: Vec<String>,
    bytes: Vec<u64>,
}

/// One row of the table.
pub struct Row {
    pub wall: f64,
    pub slots_moved: usize,
    pub bytes_moved: u64,
    pub masters_mb: Vec<f64>,
    pub max_dev: f64,
    pub intact: bool,
}

/// The library's backend for the cluster (exact sizing, every key of a slot measured).
pub fn backend(c: &LocalCluster) -> RedisCluster {
    let mut cfg = autobalancer::config::Config::default();
    cfg.cluster.id = "bench".into();
    cfg.cluster.seeds = c.master_addrs();
    cfg.cluster.slot_sample_keys = 10_000;
    RedisCluster::from_config(&cfg).unwrap()
}

/// Writes `dir/c.toml`: cluster `bench` seeded by the cluster's masters, then `rest`
/// (more `[cluster]` keys first, then other sections).
pub fn write_config(dir: &std::path::Path, c: &LocalCluster, rest: &str) -> std::path::PathBuf {
    let cfg = dir.join("c.toml");
    let seeds: Vec<String> = c.master_addrs().iter().map(|a| format!("\"{a}\"")).collect();
    std::fs::write(&cfg, format!("[cluster]\nid = \"bench\"\nseeds = [{}]\n{rest}", seeds.join(","))).unwrap();
    cfg
}

/// Reads what the benches' fleet (cluster id `bench`) keeps in `etcd`, as no sidecar of it.
pub fn observer(etcd: &LocalEtcd) -> Coordinator {
    let e = autobalancer::config::EtcdConfig { endpoints: vec![etcd.endpoint()], ..Default::default() };
    Coordinator::new(Some(&e), "bench", "bench").unwrap()
}

pub async fn exact_bytes(c: &LocalCluster) -> Slots {
    let s = backend(c).snapshot().await.unwrap();
    let mut slots = Slots { owner: vec![String::new(); 16384], bytes: vec![0u64; 16384] };
    for b in &s.buckets {
        slots.owner[b.id as usize] = s.members[b.copies[0] as usize].address.clone();
        slots.bytes[b.id as usize] = b.bytes;
    }
    slots
}

/// The row of a way that took `wall` seconds: the slots it moved since `before` (and
/// their bytes then), the masters' bytes now and their largest deviation from the mean.
pub async fn row(c: &LocalCluster, before: &Slots, wall: f64, intact: bool) -> Row {
    let after = exact_bytes(c).await;
    let moved: Vec<usize> = (0..16384).filter(|&s| before.owner[s] != after.owner[s]).collect();
    let mut per: BTreeMap<String, u64> = c.master_addrs().into_iter().map(|a| (a, 0)).collect();
    for s in 0..16384 {
        *per.entry(after.owner[s].clone()).or_default() += after.bytes[s];
    }
    let mean = per.values().sum::<u64>() as f64 / per.len() as f64;
    Row {
        wall,
        slots_moved: moved.len(),
        bytes_moved: moved.iter().map(|&s| before.bytes[s]).sum(),
        masters_mb: per.values().map(|&b| b as f64 / 1e6).collect(),
        max_dev: per.values().map(|&b| (b as f64 - mean).abs() / mean).fold(0.0, f64::max),
        intact,
    }
}

/// The table's header; `first` names the first column.
pub fn print_header(first: &str) {
    println!(
        "| {first} | wall time (s) | slots moved | bytes moved (MB) | masters after (MB) | max byte deviation | every key intact |"
    );
    println!("|---|---|---|---|---|---|---|");
}

pub fn print_row(name: &str, r: &Row) {
    let mb: Vec<String> = r.masters_mb.iter().map(|m| format!("{m:.1}")).collect();
    println!(
        "| {name} | {:.2} | {} | {:.1} | {} | {:.1}% | {} |",
        r.wall,
        r.slots_moved,
        r.bytes_moved as f64 / 1e6,
        mb.join(", "),
        100.0 * r.max_dev,
        if r.intact { "yes" } else { "NO" }
    );
}
