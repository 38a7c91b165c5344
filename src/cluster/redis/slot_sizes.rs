//! What the sizer keeps between snapshots: one slot's measured size, the per-slot cache
//! that serves it again while the slot's key count holds, and each master's
//! keys-per-second budget.
//!
//! Owns: when a cached size still stands, and the budget's rate. Does not own: measuring
//! ([`super::sizing`]).

use std::sync::Mutex;
use std::time::Instant;

use super::SLOTS;
use super::sizing::{Mode, SizingOptions};

/// One slot's measured size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotSize {
    pub keys: u64,
    pub bytes: u64,
    /// The largest key measured, and how many measured keys exceed `max-key-bytes`.
    pub largest_key: u64,
    pub big_keys: u32,
    /// Variance of `bytes` as an estimate (0 when every key was measured).
    pub variance: f64,
    pub measured_at: Instant,
}

impl SlotSize {
    pub(super) fn empty() -> SlotSize {
        SlotSize { keys: 0, bytes: 0, largest_key: 0, big_keys: 0, variance: 0.0, measured_at: Instant::now() }
    }
    fn is_exact(&self) -> bool {
        self.variance == 0.0
    }
}

/// Per-slot sizes, shared by snapshots and the movers.
pub(super) struct SizeCache {
    slots: Mutex<Vec<Option<SlotSize>>>,
}

impl Default for SizeCache {
    fn default() -> Self {
        SizeCache { slots: Mutex::new(vec![None; SLOTS]) }
    }
}

impl SizeCache {
    /// The cached size when it still stands for a slot holding `keys` keys.
    pub(super) fn fresh(&self, slot: u16, keys: u64, opts: &SizingOptions) -> Option<SlotSize> {
        let e = self.slots.lock().unwrap()[slot as usize]?;
        let usable =
            e.keys == keys && e.measured_at.elapsed() <= opts.max_age && (opts.mode == Mode::Sampled || e.is_exact());
        usable.then_some(e)
    }

    pub(super) fn put(&self, slot: u16, size: SlotSize) {
        self.slots.lock().unwrap()[slot as usize] = Some(size);
    }

    /// Keeps `size` unless the cache holds a later measurement of the slot.
    pub(super) fn offer(&self, slot: u16, size: SlotSize) {
        let mut slots = self.slots.lock().unwrap();
        let e = &mut slots[slot as usize];
        if e.is_none_or(|e| e.measured_at < size.measured_at) {
            *e = Some(size);
        }
    }

    /// The key count a slot's cached size was taken at.
    pub(super) fn keys(&self, slot: u16) -> Option<u64> {
        self.slots.lock().unwrap()[slot as usize].map(|e| e.keys)
    }

    /// Forgets a slot (it moved, or a move of it failed): the next snapshot measures it.
    pub(super) fn forget(&self, slot: u16) {
        self.slots.lock().unwrap()[slot as usize] = None;
    }
}

/// Keeps each master's measuring within `cluster.sizing-keys-per-second`: a token bucket
/// per master, kept for the life of the backend. It holds one second's worth of keys, so
/// a master holding fewer keys than that is measured at once, and a larger one at the
/// budget's rate on average; a snapshot and the check after a run draw on the same bucket.
pub(super) struct KeyBudget {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    burst: u32,
}

impl KeyBudget {
    /// `per_second` keys per master; 0 = no limit.
    pub(super) fn new(per_second: u64) -> KeyBudget {
        let burst = u32::try_from(per_second).unwrap_or(u32::MAX);
        let limiter =
            std::num::NonZeroU32::new(burst).map(|n| governor::RateLimiter::keyed(governor::Quota::per_second(n)));
        KeyBudget { limiter, burst }
    }

    /// Waits until `n` more keys may be measured on `addr`.
    pub(super) async fn take(&self, addr: &str, mut n: u64) {
        let Some(limiter) = &self.limiter else { return };
        let key = addr.to_string();
        while n > 0 {
            let part = n.min(self.burst as u64) as u32;
            let cells = std::num::NonZeroU32::new(part).expect("part > 0");
            // `part` never exceeds the bucket, so the wait always ends.
            let _ = limiter.until_key_n_ready(&key, cells).await;
            n -= part as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn opts(mode: Mode) -> SizingOptions {
        SizingOptions {
            mode,
            keys_per_second: 0,
            max_age: Duration::from_secs(60),
            sample_keys: 4,
            max_key_bytes: 1000,
        }
    }

    #[test]
    fn cache_serves_a_slot_while_its_key_count_holds() {
        let c = SizeCache::default();
        let e = SlotSize { keys: 10, bytes: 500, ..SlotSize::empty() };
        c.put(7, e);
        assert_eq!(c.fresh(7, 10, &opts(Mode::Exact)), Some(e));
        assert_eq!(c.fresh(7, 11, &opts(Mode::Exact)), None, "a key came or went");
        let mut short = opts(Mode::Exact);
        short.max_age = Duration::ZERO;
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(c.fresh(7, 10, &short), None, "too old");
        // A sampled estimate does not stand in for an exact size.
        c.put(8, SlotSize { keys: 10, bytes: 500, variance: 4.0, ..SlotSize::empty() });
        assert_eq!(c.fresh(8, 10, &opts(Mode::Exact)), None);
        assert!(c.fresh(8, 10, &opts(Mode::Sampled)).is_some());
        c.forget(7);
        assert_eq!(c.fresh(7, 10, &opts(Mode::Exact)), None, "forgotten");
    }

    #[test]
    fn the_cache_keeps_the_later_of_two_measurements() {
        let c = SizeCache::default();
        let earlier = Instant::now() - Duration::from_secs(30);
        let later = SlotSize { keys: 10, bytes: 500, ..SlotSize::empty() };
        c.offer(7, SlotSize { keys: 10, bytes: 400, measured_at: earlier, ..SlotSize::empty() });
        c.offer(7, later);
        c.offer(7, SlotSize { keys: 10, bytes: 300, measured_at: earlier, ..SlotSize::empty() });
        assert_eq!(c.fresh(7, 10, &opts(Mode::Exact)), Some(later));
    }

    #[tokio::test]
    async fn the_budget_lets_one_seconds_worth_through_then_holds_the_rate() {
        let b = KeyBudget::new(1000);
        let t = Instant::now();
        // One take larger than the bucket: 1000 at once, 1000 a second later, then 500.
        b.take("a:1", 2500).await;
        assert!(t.elapsed() >= Duration::from_millis(1450), "{:?}", t.elapsed());
        // The unlimited budget never waits, however much is taken.
        let free = KeyBudget::new(0);
        free.take("a:1", u64::MAX).await;
    }
}
