//! Loopback ports for the servers the kit starts.

use std::net::TcpListener;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

fn port_free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok()
}

/// A free port whose +10000 (the cluster bus) is free too. Ports come from
/// 10000..20000 (buses 20000..30000), below the kernel's ephemeral range, so a bus port
/// never collides with another cluster's node port or an outgoing connection; a counter
/// keeps one process from handing the same port out twice, and a start point drawn from
/// the process id and the clock keeps test binaries running side by side apart.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    static START: OnceLock<u32> = OnceLock::new();
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        (std::process::id().wrapping_mul(7919) ^ nanos) % 10000
    });
    for _ in 0..10000 {
        let p = 10000 + ((start + NEXT.fetch_add(1, Ordering::Relaxed)) % 10000) as u16;
        if port_free(p) && port_free(p + 10000) {
            return p;
        }
    }
    panic!("no free port pair on loopback");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let a: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let mut b = a.clone();
        b.sort_unstable();
        b.dedup();
        assert_eq!(a.len(), b.len());
        assert!(a.iter().all(|p| (10000..20000).contains(p)));
    }
}
