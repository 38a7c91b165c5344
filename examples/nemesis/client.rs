//! The workload: SETs of increasing sequence numbers to a fixed key space (or, while
//! skew is on, to a few tenants with larger values), GETs that must never go back
//! behind what was acknowledged, and the record the checker reads at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

/// Per key: the last acknowledged sequence number and the highest one ever sent (an
/// unacknowledged write may still have landed).
#[derive(Default)]
pub struct Record {
    pub acked: BTreeMap<String, (u64, u64)>,
    pub writes_acked: u64,
    pub write_errors: u64,
    pub reads: u64,
    /// A read that returned less than what was acknowledged before it was sent.
    pub stale: Vec<String>,
}

pub struct Client {
    pub record: Arc<Mutex<Record>>,
    pub skew: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

const KEYS: u64 = 3000;

fn value(seq: u64, skewed: bool) -> String {
    let pad = if skewed { 2000 } else { 100 };
    format!("{seq:020}{}", "x".repeat(pad))
}

pub fn seq_of(v: &str) -> Option<u64> {
    v.get(..20)?.parse().ok()
}

impl Client {
    pub fn start(con: ClusterConnection, seed: u64) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        let (skew, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (r, sk, st) = (record.clone(), skew.clone(), stop.clone());
        let task = tokio::spawn(async move { run(con, seed, r, sk, st).await });
        Client { record, skew, stop, task }
    }

    pub async fn stop(self) -> Arc<Mutex<Record>> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.record
    }
}

async fn run(
    mut con: ClusterConnection,
    seed: u64,
    record: Arc<Mutex<Record>>,
    skew: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut seq = 0u64;
    let bound = Duration::from_secs(5);
    while !stop.load(Ordering::Relaxed) {
        let skewed = skew.load(Ordering::Relaxed);
        let key = if skewed {
            format!("{{tenant{}}}:{}", rng.gen_range(0..3), rng.gen_range(0..400))
        } else {
            format!("nem:{}", rng.gen_range(0..KEYS))
        };
        if rng.gen_bool(0.3) {
            let before = record.lock().unwrap().acked.get(&key).map(|a| a.0);
            let got = tokio::time::timeout(bound, con.get::<_, Option<String>>(&key)).await;
            if let (Ok(Ok(v)), Some(floor)) = (got, before) {
                let s = v.as_deref().and_then(seq_of);
                let mut r = record.lock().unwrap();
                r.reads += 1;
                if s.is_none_or(|s| s < floor) {
                    r.stale.push(format!("{key}: read {s:?} after {floor} was acknowledged"));
                }
            }
            continue;
        }
        seq += 1;
        record.lock().unwrap().acked.entry(key.clone()).or_default().1 = seq;
        let res = tokio::time::timeout(bound, con.set::<_, _, ()>(&key, value(seq, skewed))).await;
        let mut r = record.lock().unwrap();
        match res {
            Ok(Ok(())) => {
                r.writes_acked += 1;
                r.acked.get_mut(&key).unwrap().0 = seq;
            }
            _ => r.write_errors += 1,
        }
    }
}

/// Every acknowledged write, read back: (lost, stale) descriptions. A key must hold its
/// last acknowledged value or a later one the client sent.
pub async fn check(con: &mut ClusterConnection, record: &Record) -> (Vec<String>, Vec<String>) {
    let (mut lost, mut stale) = (Vec::new(), Vec::new());
    for (key, &(acked, sent)) in &record.acked {
        if acked == 0 {
            continue;
        }
        let mut got = None;
        for _ in 0..5 {
            match con.get::<_, Option<String>>(key).await {
                Ok(v) => {
                    got = Some(v);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        match got.flatten().as_deref().and_then(seq_of) {
            None => lost.push(format!("{key}: gone (last acknowledged {acked})")),
            Some(s) if s < acked => stale.push(format!("{key}: holds {s}, {acked} was acknowledged")),
            Some(s) if s > sent => stale.push(format!("{key}: holds {s}, never sent (last sent {sent})")),
            Some(_) => {}
        }
    }
    (lost, stale)
}
