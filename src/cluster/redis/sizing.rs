//! Slot sizes in bytes, measured.
//!
//! Exact (the default): a slot's bytes are the sum of MEMORY USAGE of its keys, with the
//! server's default sampling inside aggregates (never `SAMPLES 0`, which walks a huge
//! aggregate whole and blocks the server). Keys are listed per slot (GETKEYSINSLOT with
//! the slot's full count) and measured in pipelines; masters are measured in parallel,
//! each within `cluster.sizing-keys-per-second`.
//!
//! Sampled: a uniform random sample of `cluster.sizing-sample-keys` keys of each larger
//! slot is measured and scaled by the key count; the variance of each estimate is kept
//! so the snapshot can state a 95% bound on the error of the total. The bound is the
//! sample's own: a heavy tail the sample never met (one multi-MB key among thousands of
//! small ones) is not in it, which is why exact is the default.
//!
//! Every result is cached per slot and served again while the slot's key count is
//! unchanged and the result is younger than `cluster.sizing-max-age`. A slot this
//! backend moved is forgotten and measured again where it lives: the target rebuilds
//! aggregates from their serialized form (after DUMP/RESTORE, sets measure about 8%
//! smaller and sorted sets 3%), so a moved slot's bytes are the target's to say.
//!
//! Owns: [`Sizer`], a part of the backend with its own state (the cache and the budget of
//! [`super::slot_sizes`], the published tables), measuring over the connections it is
//! handed; big-key detection.
//! Does not own: which slots move.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use rand::seq::index::sample;

use chrono::Utc;

use std::collections::HashMap;

use super::conn::Conns;
use super::slot_sizes::{KeyBudget, SizeCache, SlotSize};
use super::{PIPELINE, SLOTS};
use crate::cluster::SizeTable;

/// How slot sizes are taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Exact,
    Sampled,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Exact => "exact",
            Mode::Sampled => "sampled",
        }
    }
}

#[derive(Clone, Debug)]
pub struct SizingOptions {
    pub mode: Mode,
    /// Keys measured per second on one master; 0 = no limit.
    pub keys_per_second: u64,
    /// A cached size older than this is measured again.
    pub max_age: Duration,
    /// Sampled mode: keys measured per slot.
    pub sample_keys: u32,
    /// A key bigger than this pins its slot.
    pub max_key_bytes: u64,
}

/// What sizing one master found.
#[derive(Debug, Default)]
pub struct MasterSizes {
    /// (slot, size) for each slot asked for, in the order asked.
    pub slots: Vec<(u16, SlotSize)>,
    pub keys_measured_now: u64,
}

/// A key at least this large is measured again with more samples (most keys are
/// smaller: strings are exact at any size, and small aggregates are packed and exact).
const REFINE_BYTES: u64 = 2048;
/// Elements looked at in a large key's second measurement.
const REFINE_SAMPLES: u32 = 1024;
/// What a second measurement counts in the keys-per-second budget.
const REFINE_WEIGHT: u64 = 16;
/// Sampled mode measures slots of up to this many times the sample size whole.
const WHOLE_SLOT_FACTOR: u64 = 4;
/// Keys listed per GETKEYSINSLOT round trip (a group of slots).
const LIST_KEYS: u64 = 8192;
/// Slots listed per round trip at most.
const LIST_SLOTS: usize = 512;
/// Groups of slots measured at once on one master: the next group's keys are listed
/// while the last one's are measured.
const GROUPS_IN_FLIGHT: usize = 2;
/// MEMORY USAGE pipelines in flight on one master's connection: the server works on one
/// while the client sends the next and reads the last.
const PIPELINES_IN_FLIGHT: usize = 3;

/// The sizer: slot sizes measured over the backend's connections, cached, and kept
/// within each master's key budget. Snapshots, the movers and repair share one.
pub(super) struct Sizer {
    pub(super) opts: SizingOptions,
    /// Slot sizes measured so far; a slot the backend moves is forgotten and measured again.
    cache: SizeCache,
    /// Size tables other sidecars published, by member: read at each snapshot of a run.
    published: Mutex<HashMap<String, SizeTable>>,
    /// Keys each master may still be asked to measure (`cluster.sizing-keys-per-second`).
    budget: KeyBudget,
}

impl Sizer {
    pub(super) fn new(opts: SizingOptions) -> Sizer {
        let budget = KeyBudget::new(opts.keys_per_second);
        Sizer { opts, cache: SizeCache::default(), published: Mutex::default(), budget }
    }

    /// Whether sizes are exact measurements (the movers may report them as moved).
    pub(super) fn exact(&self) -> bool {
        self.opts.mode == Mode::Exact
    }

    /// The key count a slot's cached size was taken at.
    pub(super) fn cached_keys(&self, slot: u16) -> Option<u64> {
        self.cache.keys(slot)
    }

    /// Forgets a slot (it moved, or a move of it failed): the next snapshot measures it.
    pub(super) fn forget(&self, slot: u16) {
        self.cache.forget(slot)
    }

    /// Replaces the size tables other sidecars published.
    pub(super) fn adopt_sizes(&self, tables: Vec<SizeTable>) {
        *self.published.lock().unwrap() = tables.into_iter().map(|t| (t.member.clone(), t)).collect();
    }

    /// Offers the cache what `member`'s sidecar published of the slots the member owns
    /// now (`owns`): a slot that moved since is measured where it lives. The cache then
    /// serves an entry as it serves its own: while the key count holds, within
    /// `sizing-max-age`.
    pub(super) fn use_published(&self, member: &str, owns: impl Fn(usize) -> bool) {
        let tables = self.published.lock().unwrap();
        let Some(t) = tables.get(member) else { return };
        // A table stamped ahead of this clock counts as taken now.
        let since_taken = (Utc::now() - t.taken_at).to_std().unwrap_or_default();
        let now = Instant::now();
        for b in &t.buckets {
            let slot = b.bucket as usize;
            if slot >= SLOTS || !owns(slot) {
                continue;
            }
            let Some(measured_at) = now.checked_sub(since_taken + Duration::from_millis(b.age_ms)) else { continue };
            self.cache.offer(
                slot as u16,
                SlotSize {
                    keys: b.keys,
                    bytes: b.bytes,
                    largest_key: b.largest_key,
                    big_keys: b.big_keys,
                    variance: b.variance,
                    measured_at,
                },
            );
        }
    }

    /// Key counts of `slots` on `addr`. With `slot_stats` (the node runs Valkey 8 or
    /// later) one CLUSTER SLOT-STATS call answers for every slot the node owns; slots it
    /// did not answer for, and every slot when its reply cannot be read, are counted with
    /// COUNTKEYSINSLOT, pipelined.
    pub(super) async fn key_counts(
        &self,
        conns: &Conns,
        addr: &str,
        slots: &[u16],
        slot_stats: bool,
    ) -> Result<Vec<u64>, String> {
        let mut known = std::collections::HashMap::new();
        if slot_stats {
            match conns.query::<redis::Value>(addr, &super::slot_stats::request()).await {
                Ok(reply) => match super::slot_stats::parse(&reply) {
                    Ok(counts) => known = counts,
                    Err(e) => {
                        tracing::warn!(node = %addr, cause = %e, "unreadable CLUSTER SLOT-STATS; counting slot by slot")
                    }
                },
                Err(e) => tracing::debug!(node = %addr, cause = %e, "CLUSTER SLOT-STATS failed; counting slot by slot"),
            }
        }
        let missing: Vec<u16> = slots.iter().copied().filter(|s| !known.contains_key(s)).collect();
        for chunk in missing.chunks(PIPELINE) {
            let mut p = redis::pipe();
            for &s in chunk {
                p.cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(s);
            }
            known.extend(chunk.iter().copied().zip(conns.pipeline::<u64>(addr, &p).await?));
        }
        Ok(slots.iter().map(|s| known[s]).collect())
    }

    /// Sizes of `slots` on `addr` whose key counts are `counts`: from the cache when
    /// fresh, measured otherwise.
    pub(super) async fn size_master(
        &self,
        conns: &Conns,
        addr: &str,
        slots: &[u16],
        counts: &[u64],
    ) -> Result<MasterSizes, String> {
        let opts = &self.opts;
        let mut out = MasterSizes::default();
        let mut todo: Vec<(u16, u64)> = Vec::new();
        for (&slot, &keys) in slots.iter().zip(counts) {
            match (keys, self.cache.fresh(slot, keys, opts)) {
                (0, _) => {
                    // Kept too, so the cache holds the count of every slot just seen.
                    self.cache.put(slot, SlotSize::empty());
                    out.slots.push((slot, SlotSize::empty()));
                }
                (_, Some(e)) => out.slots.push((slot, e)),
                (_, None) => todo.push((slot, keys)),
            }
        }
        let mut groups = Vec::new();
        let mut start = 0;
        while start < todo.len() {
            let mut end = start;
            let mut listed = 0;
            while end < todo.len() && end - start < LIST_SLOTS && (end == start || listed + todo[end].1 <= LIST_KEYS) {
                listed += todo[end].1;
                end += 1;
            }
            groups.push(&todo[start..end]);
            start = end;
        }
        // The futures are made before the stream, which then holds no closure: a stream
        // over a borrowing closure is not `Send` in a trait's async method.
        let groups: Vec<_> = groups.into_iter().map(|g| self.measure_group(conns, addr, g, false)).collect();
        let mut measured = stream::iter(groups).buffered(GROUPS_IN_FLIGHT);
        while let Some(sizes) = measured.next().await {
            for (slot, size) in sizes? {
                self.cache.put(slot, size);
                out.keys_measured_now += size.keys.min(self.measured_per_slot(size.keys));
                out.slots.push((slot, size));
            }
        }
        Ok(out)
    }

    /// Keys measured of a slot holding `keys`. Sampled mode measures a slot of up to
    /// [`WHOLE_SLOT_FACTOR`] times the sample size whole: a few keys cost little, and a
    /// small sample of a few keys misses a big one (its variance cannot see it).
    fn measured_per_slot(&self, keys: u64) -> u64 {
        let sample = self.opts.sample_keys.max(1) as u64;
        match self.opts.mode {
            Mode::Sampled if keys > sample * WHOLE_SLOT_FACTOR => sample,
            _ => keys,
        }
    }

    /// The bytes of every key now in `slots` on `addr`, slot by slot, whatever the sizing
    /// mode: what a mover that does not see the keys it moves reports as moved. Each slot
    /// comes with the keys it held when counted; up to twice that (at least 1024) are
    /// listed, for keys written since.
    pub(super) async fn measure_whole(
        &self,
        conns: &Conns,
        addr: &str,
        slots: &[(u16, u64)],
    ) -> Result<Vec<u64>, String> {
        let mut out = Vec::with_capacity(slots.len());
        for chunk in slots.chunks(64) {
            let bounds: Vec<(u16, u64)> = chunk.iter().map(|&(s, k)| (s, k.saturating_mul(2).max(1024))).collect();
            out.extend(self.measure_group(conns, addr, &bounds, true).await?.into_iter().map(|(_, s)| s.bytes));
        }
        Ok(out)
    }

    /// Lists the keys of a group of slots and measures them (all when `whole` or the
    /// sizing is exact, else a random sample).
    async fn measure_group(
        &self,
        conns: &Conns,
        addr: &str,
        group: &[(u16, u64)],
        whole: bool,
    ) -> Result<Vec<(u16, SlotSize)>, String> {
        let mut p = redis::pipe();
        for &(slot, keys) in group {
            p.cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(keys);
        }
        let listed: Vec<Vec<Vec<u8>>> = conns.pipeline(addr, &p).await?;
        let mut chosen: Vec<Vec<Vec<u8>>> = Vec::with_capacity(listed.len());
        for keys in listed {
            let n = if whole { keys.len() } else { self.measured_per_slot(keys.len() as u64) as usize };
            if n >= keys.len() {
                chosen.push(keys);
            } else {
                let picks = sample(&mut rand::thread_rng(), keys.len(), n);
                chosen.push(picks.into_iter().map(|i| keys[i].clone()).collect());
            }
        }
        let flat: Vec<&[u8]> = chosen.iter().flatten().map(Vec::as_slice).collect();
        let usage = self.memory_usage(conns, addr, &flat).await?;
        let mut sizes = Vec::with_capacity(group.len());
        let mut at = 0;
        for (&(slot, counted), keys) in group.iter().zip(&chosen) {
            let measured = &usage[at..at + keys.len()];
            at += keys.len();
            // Measured whole, a slot's keys are those listed (its count was a bound).
            let counted = if whole { keys.len() as u64 } else { counted };
            sizes.push((slot, self.estimate(counted, measured)));
        }
        Ok(sizes)
    }

    /// MEMORY USAGE of `keys`, pipelined, within the budget. A key gone meanwhile is 0.
    ///
    /// The server's default looks at 5 elements of an aggregate, which for a hash or set
    /// of uneven values can be tens of percent off, and differently on each node (the
    /// elements it looks at depend on the node's hash table). Keys the first pass finds
    /// large are measured again with `SAMPLES` [`REFINE_SAMPLES`]: exact for aggregates of
    /// up to that many elements, a bounded cost for huge ones (never `SAMPLES 0`).
    async fn memory_usage(&self, conns: &Conns, addr: &str, keys: &[&[u8]]) -> Result<Vec<u64>, String> {
        let mut out = self.memory_usage_pass(conns, addr, keys, None).await?;
        let large: Vec<usize> = (0..keys.len()).filter(|&i| out[i] >= REFINE_BYTES).collect();
        let again: Vec<&[u8]> = large.iter().map(|&i| keys[i]).collect();
        let refined = self.memory_usage_pass(conns, addr, &again, Some(REFINE_SAMPLES)).await?;
        for (i, bytes) in large.into_iter().zip(refined) {
            out[i] = bytes;
        }
        Ok(out)
    }

    async fn memory_usage_pass(
        &self,
        conns: &Conns,
        addr: &str,
        keys: &[&[u8]],
        samples: Option<u32>,
    ) -> Result<Vec<u64>, String> {
        // A refined key costs the server up to REFINE_SAMPLES element visits: charge it.
        let weight = if samples.is_some() { REFINE_WEIGHT } else { 1 };
        let pass: Vec<_> = keys
            .chunks(PIPELINE / 2)
            .map(|chunk| async move {
                self.budget.take(addr, chunk.len() as u64 * weight).await;
                let mut p = redis::pipe();
                for k in chunk {
                    p.cmd("MEMORY").arg("USAGE").arg(*k);
                    if let Some(n) = samples {
                        p.arg("SAMPLES").arg(n);
                    }
                }
                conns.pipeline::<Option<u64>>(addr, &p).await
            })
            .collect();
        let mut replies = stream::iter(pass).buffered(PIPELINES_IN_FLIGHT);
        let mut out = Vec::with_capacity(keys.len());
        while let Some(u) = replies.next().await {
            out.extend(u?.into_iter().map(Option::unwrap_or_default));
        }
        Ok(out)
    }

    /// A slot's size from the keys measured: their sum when all were measured, else the
    /// mean scaled by the key count, with the variance of that estimate (finite
    /// population corrected).
    fn estimate(&self, counted: u64, measured: &[u64]) -> SlotSize {
        let n = measured.len() as f64;
        let sum: u64 = measured.iter().sum();
        let largest_key = measured.iter().copied().max().unwrap_or(0);
        let big_keys = measured.iter().filter(|&&b| b > self.opts.max_key_bytes).count() as u32;
        let all = counted <= measured.len() as u64;
        let (bytes, variance) = if all || measured.is_empty() {
            (sum, 0.0)
        } else {
            let mean = sum as f64 / n;
            let var = measured.iter().map(|&b| (b as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
            let big_n = counted as f64;
            ((mean * big_n).round() as u64, big_n * big_n * var / n * (1.0 - n / big_n))
        };
        SlotSize { keys: counted, bytes, largest_key, big_keys, variance, measured_at: Instant::now() }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_published_table_is_written_as_arrays_and_read_back() {
        use crate::cluster::{MeasuredBucket, SizeTable};
        let t = SizeTable {
            member: "abc".into(),
            taken_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            buckets: vec![MeasuredBucket {
                bucket: 16383,
                keys: 12,
                bytes: 3456,
                largest_key: 789,
                big_keys: 0,
                variance: 0.0,
                age_ms: 1500,
            }],
        };
        let text = serde_json::to_string(&t).unwrap();
        assert!(text.contains("[[16383,12,3456,789,0,0.0,1500]]"), "{text}");
        assert_eq!(serde_json::from_str::<SizeTable>(&text).unwrap(), t);
    }
}
