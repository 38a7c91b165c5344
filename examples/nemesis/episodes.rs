//! Stale reads set beside what the nemesis did: reads behind an acknowledged write,
//! grouped into episodes (no more than 2 s between two of them), each printed with the
//! faults of the 15 s before it, so each can be put down to a cause.

use super::client::StaleRead;

/// At most this many episodes are printed; the count of all is in the summary.
const SHOWN: usize = 12;

pub fn print(stale: &[StaleRead], events: &[(f64, String)]) {
    let mut episodes: Vec<Vec<&StaleRead>> = Vec::new();
    for s in stale {
        match episodes.last_mut() {
            Some(e) if s.at - e.last().unwrap().at <= 2.0 => e.push(s),
            _ => episodes.push(vec![s]),
        }
    }
    if !episodes.is_empty() {
        println!("stale reads mid-run: {} in {} episode(s)", stale.len(), episodes.len());
    }
    for e in episodes.iter().take(SHOWN) {
        let (from, to) = (e[0].at, e.last().unwrap().at);
        let mut slots: Vec<u16> = e.iter().map(|s| s.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        let replicated = e.iter().filter(|s| s.behind_replicated).count();
        let absent = e.iter().filter(|s| s.got.is_none()).count();
        let vanished = e.iter().filter(|s| s.vanished()).count();
        println!(
            "  {from:.1}-{to:.1}s: {} read(s), {replicated} behind a write its replica had, {absent} found no key ({vanished} for 2 s or more), {} slot(s) {:?}{}",
            e.len(),
            slots.len(),
            &slots[..slots.len().min(8)],
            if slots.len() > 8 { " ..." } else { "" }
        );
        println!("    first: {}", e[0]);
        for (t, what) in events.iter().filter(|(t, _)| *t >= from - 15.0 && *t <= to) {
            println!("    {t:.1}s {what}");
        }
    }
}
