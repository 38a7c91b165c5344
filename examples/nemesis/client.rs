//! The workload: SETs of increasing sequence numbers to a fixed key space (or, while
//! skew is on, to a few tenants with larger values), each followed by WAIT for the
//! master's replica; GETs that must never go back behind what was acknowledged; and the
//! record the checker reads at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

/// One key's writes: the last acknowledged sequence number, the last one a replica
/// also had when acknowledged (WAIT 1), the highest ever sent (an unacknowledged write
/// may still have landed), and when the last acknowledgement came.
#[derive(Clone, Copy)]
pub struct Writes {
    pub acked: u64,
    pub replicated: u64,
    pub sent: u64,
    pub acked_at: Instant,
}

/// A read that returned less than what was acknowledged before it was sent.
#[derive(Clone, Debug)]
pub struct StaleRead {
    /// Seconds from the start of the run.
    pub at: f64,
    pub key: String,
    pub slot: u16,
    pub got: Option<u64>,
    pub acked: u64,
    /// Behind a write a replica had too: no single failover explains it.
    pub behind_replicated: bool,
    pub ms_after_ack: u64,
}

impl StaleRead {
    /// No key at all, where a replica had it and nothing was acknowledged for 2 s: no
    /// demoted master answering late explains that (it would hold an older value), so
    /// the key was dropped.
    pub fn vanished(&self) -> bool {
        self.got.is_none() && self.behind_replicated && self.ms_after_ack >= 2000
    }
}

impl std::fmt::Display for StaleRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}s {} (slot {}): read {:?}, {} acknowledged {} ms before{}",
            self.at,
            self.key,
            self.slot,
            self.got,
            self.acked,
            self.ms_after_ack,
            if self.behind_replicated { ", on the replica too" } else { "" }
        )
    }
}

#[derive(Default)]
pub struct Record {
    pub acked: BTreeMap<String, Writes>,
    pub writes_acked: u64,
    /// Acknowledged by the master, and WAIT found its replica had it too.
    pub writes_replicated: u64,
    pub write_errors: u64,
    pub reads: u64,
    pub stale: Vec<StaleRead>,
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
    pub fn start(con: ClusterConnection, seed: u64, start: Instant) -> Client {
        let record = Arc::new(Mutex::new(Record::default()));
        let (skew, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        let (r, sk, st) = (record.clone(), skew.clone(), stop.clone());
        let task = tokio::spawn(async move { run(con, seed, start, r, sk, st).await });
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
    start: Instant,
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
            let before = record.lock().unwrap().acked.get(&key).copied().filter(|w| w.acked > 0);
            let got = tokio::time::timeout(bound, con.get::<_, Option<String>>(&key)).await;
            if let (Ok(Ok(v)), Some(w)) = (got, before) {
                let s = v.as_deref().and_then(seq_of);
                let mut r = record.lock().unwrap();
                r.reads += 1;
                if s.is_none_or(|s| s < w.acked) {
                    r.stale.push(StaleRead {
                        at: start.elapsed().as_secs_f64(),
                        slot: autobalancer_testkit::key_slot(&key),
                        key,
                        got: s,
                        acked: w.acked,
                        behind_replicated: w.replicated > 0 && s.is_none_or(|s| s < w.replicated),
                        ms_after_ack: w.acked_at.elapsed().as_millis() as u64,
                    });
                }
            }
            continue;
        }
        seq += 1;
        record
            .lock()
            .unwrap()
            .acked
            .entry(key.clone())
            .or_insert(Writes { acked: 0, replicated: 0, sent: 0, acked_at: Instant::now() })
            .sent = seq;
        // SET, then WAIT for the one replica (a master that joined has none: 0 after 50 ms).
        let mut p = redis::pipe();
        p.set(&key, value(seq, skewed)).ignore().cmd("WAIT").arg(1).arg(50);
        let res = tokio::time::timeout(bound, p.query_async::<(u64,)>(&mut con)).await;
        let mut r = record.lock().unwrap();
        match res {
            Ok(Ok((replicas,))) => {
                r.writes_acked += 1;
                let w = r.acked.get_mut(&key).unwrap();
                w.acked = seq;
                w.acked_at = Instant::now();
                if replicas >= 1 {
                    w.replicated = seq;
                    r.writes_replicated += 1;
                }
            }
            _ => r.write_errors += 1,
        }
    }
}

/// What the keys hold at the end, against what was acknowledged.
#[derive(Default)]
pub struct Ending {
    /// Gone, or behind, a write its replica also had (WAIT 1 answered 1): no failover
    /// explains it. Or holding a value never sent.
    pub lost: Vec<String>,
    pub stale: Vec<String>,
    /// Gone, or behind, only writes the master alone acknowledged (WAIT 1 answered 0):
    /// Redis and Valkey Cluster acknowledge a write before a replica has it, and a
    /// failover may drop it. Counted and shown, not a violation.
    pub unreplicated: Vec<String>,
}

/// Copies the fleet set aside (a key found with a different value on each side of its
/// slot), by the key they are a copy of: (the aside name, the sequence number it holds).
pub type Asides = BTreeMap<String, Vec<(String, u64)>>;

/// Where a key below what was acknowledged has a copy set aside that holds `need` or
/// more: said beside the violation, so a value kept under the other name is told apart
/// from one lost.
fn aside_note(asides: &Asides, key: &str, need: u64) -> String {
    asides
        .get(key)
        .and_then(|copies| copies.iter().filter(|(_, s)| *s >= need).max_by_key(|(_, s)| *s))
        .map_or(String::new(), |(name, s)| format!("; {s} is set aside under {name}"))
}

/// Every acknowledged write, read back. A key must hold its last acknowledged value or a
/// later one the client sent; below that, it must hold at least the last write a replica
/// confirmed.
pub async fn check(con: &mut ClusterConnection, record: &Record, asides: &Asides) -> Ending {
    let mut end = Ending::default();
    for (key, w) in &record.acked {
        let (acked, sent) = (w.acked, w.sent);
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
        let floor = w.replicated;
        let aside = |need: u64| aside_note(asides, key, need);
        match got.flatten().as_deref().and_then(seq_of) {
            None if floor > 0 => {
                end.lost.push(format!("{key}: gone (last acknowledged {acked}, replicated {floor}){}", aside(floor)))
            }
            None => end.unreplicated.push(format!("{key}: gone (last acknowledged {acked}, none replicated)")),
            Some(s) if s < floor => {
                end.stale.push(format!("{key}: holds {s}, {floor} was acknowledged and replicated{}", aside(floor)))
            }
            Some(s) if s < acked => end
                .unreplicated
                .push(format!("{key}: holds {s} ({floor} replicated), {acked} was acknowledged{}", aside(acked))),
            Some(s) if s > sent => end.stale.push(format!("{key}: holds {s}, never sent (last sent {sent})")),
            Some(_) => {}
        }
    }
    end
}
