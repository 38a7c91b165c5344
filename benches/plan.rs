//! Planner speed: the 16384-slot Redis example (4 members, one new and empty), and a
//! synthetic 100k-bucket, 2-copy cluster over 100 members. End-to-end runs at the scale of
//! millions of buckets (JSON read included) are in `bench/scale.sh`.

use criterion::{Criterion, criterion_group, criterion_main};

use autobalancer::model::{Bucket, ClusterSnapshot, Member};
use autobalancer::plan::{PlanOptions, plan};

fn synthetic(buckets: u64, members: u32) -> ClusterSnapshot {
    // A fixed linear congruential sequence: deterministic without a dependency.
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let mut next = move || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        x >> 33
    };
    let loaded = members - 2;
    ClusterSnapshot {
        cluster_id: "bench".into(),
        taken_at: chrono::Utc::now(),
        members: (0..members).map(|i| Member::new(&format!("m{i}"))).collect(),
        buckets: (0..buckets)
            .map(|id| {
                let a = (next() % loaded as u64) as u32;
                let b = (a + 1 + (next() % (loaded as u64 - 1)) as u32) % loaded;
                Bucket { id, group: None, bytes: 1000 + next() % 1_000_000, copies: vec![a, b] }
            })
            .collect(),
        open_migrations: vec![],
        observed: Default::default(),
        view: Default::default(),
        replicas: vec![],
    }
}

fn bench(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json");
    let redis = ClusterSnapshot::read_file(std::path::Path::new(path)).unwrap();
    let opts = PlanOptions { tolerance_percent: 5, ..Default::default() };
    c.bench_function("plan 16384 slots x 4 members", |b| b.iter(|| plan(&redis, &opts).unwrap()));
    let big = synthetic(100_000, 100);
    let mut g = c.benchmark_group("large");
    g.sample_size(10);
    g.bench_function("plan 100k buckets x 2 copies x 100 members", |b| b.iter(|| plan(&big, &opts).unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
