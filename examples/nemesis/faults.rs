//! The nemesis: a fault every few seconds from a seeded stream, each with its heal due
//! some seconds later, so faults overlap.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    KillSidecar,
    FreezeHolder,
    Failover,
    Takeover,
    FreezeNode,
    KillEtcd,
    JoinMaster,
    Evacuate,
    Skew,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::KillSidecar,
        Kind::FreezeHolder,
        Kind::Failover,
        Kind::Takeover,
        Kind::FreezeNode,
        Kind::KillEtcd,
        Kind::JoinMaster,
        Kind::Evacuate,
        Kind::Skew,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::KillSidecar => "kill_sidecar",
            Kind::FreezeHolder => "freeze_holder",
            Kind::Failover => "failover",
            Kind::Takeover => "takeover",
            Kind::FreezeNode => "freeze_node",
            Kind::KillEtcd => "kill_etcd",
            Kind::JoinMaster => "join_master",
            Kind::Evacuate => "evacuate",
            Kind::Skew => "skew",
        }
    }

    /// How often each is drawn, out of the weights' sum.
    fn weight(self) -> u32 {
        match self {
            Kind::KillSidecar | Kind::FreezeHolder | Kind::Failover => 4,
            Kind::FreezeNode | Kind::Skew => 3,
            Kind::Takeover | Kind::KillEtcd | Kind::Evacuate => 2,
            Kind::JoinMaster => 1,
        }
    }

    pub fn draw(rng: &mut StdRng) -> Kind {
        let total: u32 = Kind::ALL.iter().map(|k| k.weight()).sum();
        let mut x = rng.gen_range(0..total);
        for k in Kind::ALL {
            if x < k.weight() {
                return k;
            }
            x -= k.weight();
        }
        unreachable!()
    }
}

/// What must be undone later.
#[derive(Clone, Debug)]
pub enum Heal {
    RestartSidecar(usize),
    ThawSidecar(usize),
    ThawNode(String),
    StartEtcd,
    StopEvacuation(usize),
    SkewOff,
}

/// Heals due, in order; what was done, by kind.
#[derive(Default)]
pub struct Ledger {
    pub due: Vec<(Instant, Heal)>,
    pub done: BTreeMap<&'static str, u32>,
    pub skipped: BTreeMap<&'static str, u32>,
}

impl Ledger {
    pub fn later(&mut self, rng: &mut StdRng, lo: f64, hi: f64, h: Heal) {
        let d = Duration::from_secs_f64(rng.gen_range(lo..hi));
        self.due.push((Instant::now() + d, h));
    }

    /// Heals whose time has come (all, at the end).
    pub fn take_due(&mut self, all: bool) -> Vec<Heal> {
        let now = Instant::now();
        let (now_due, later): (Vec<_>, Vec<_>) = self.due.drain(..).partition(|(t, _)| all || *t <= now);
        self.due = later;
        now_due.into_iter().map(|(_, h)| h).collect()
    }

    pub fn count(&mut self, k: Kind, applied: bool) {
        *(if applied { &mut self.done } else { &mut self.skipped }).entry(k.name()).or_default() += 1;
    }
}
