//! The rules, as counts of what is broken on a layout, and the planner that picks role
//! changes rule by rule on a simulated layout.

use std::collections::{BTreeMap, BTreeSet};

use super::layout::{Layout, Node, Shard};
use super::{PlacementOptions, RoleAction, RoleChange, Rule};

/// How many times `rule` is broken on `layout` with `r` replicas wanted per master.
pub fn violations(layout: &Layout, rule: Rule, r: u32) -> u32 {
    match rule {
        Rule::Redundancy => {
            layout.shards.iter().filter(|s| !s.down && (s.healthy_replicas() as u32) < r).count() as u32
        }
        Rule::Apart => apart(layout),
        Rule::Spread => spread(layout),
    }
}

/// Replicas on their master's host, plus (zones known) in their master's zone.
fn apart(layout: &Layout) -> u32 {
    let zones = layout.zones_known();
    let mut n = 0;
    for s in layout.shards.iter().filter(|s| !s.down) {
        for r in s.replicas.iter().filter(|r| r.healthy) {
            n += (r.host == s.master.host) as u32;
            n += (zones && r.zone.is_some() && r.zone == s.master.zone) as u32;
        }
    }
    n
}

/// Masters per host (and per zone, zones known) outside `floor..=ceil` of their share,
/// summed over hosts by how far outside.
fn spread(layout: &Layout) -> u32 {
    let hosts = excess(layout, |n| Some(n.host.clone()));
    let zones = if layout.zones_known() { excess(layout, |n| n.zone.clone()) } else { 0 };
    hosts + zones
}

fn excess(layout: &Layout, key: impl Fn(&Node) -> Option<String>) -> u32 {
    let mut masters: BTreeMap<String, u32> = BTreeMap::new();
    for n in layout.shards.iter().flat_map(Shard::nodes).filter(|n| n.healthy) {
        if let Some(k) = key(n) {
            masters.entry(k).or_default();
        }
    }
    let live: Vec<&Shard> = layout.shards.iter().filter(|s| !s.down).collect();
    for s in &live {
        if let Some(k) = key(&s.master) {
            *masters.entry(k).or_default() += 1;
        }
    }
    if masters.is_empty() {
        return 0;
    }
    let (m, h) = (live.len() as u32, masters.len() as u32);
    let (lo, hi) = (m / h, m.div_ceil(h));
    masters.values().map(|&c| c.saturating_sub(hi) + lo.saturating_sub(c)).sum()
}

/// Master bytes on the host holding the most of them: the tie-break among failovers.
fn heaviest_host_bytes(layout: &Layout) -> u64 {
    let mut by: BTreeMap<&str, u64> = BTreeMap::new();
    for s in layout.shards.iter().filter(|s| !s.down) {
        *by.entry(&s.master.host).or_default() += s.bytes;
    }
    by.values().copied().max().unwrap_or(0)
}

pub struct Planner<'a> {
    layout: &'a mut Layout,
    opts: &'a PlacementOptions,
    r: u32,
    budget: u32,
    touched: BTreeSet<String>,
    pub actions: Vec<RoleAction>,
    /// What stays broken, and why.
    pub left: Vec<String>,
}

impl<'a> Planner<'a> {
    pub fn new(layout: &'a mut Layout, r: u32, opts: &'a PlacementOptions) -> Planner<'a> {
        Planner {
            layout,
            opts,
            r,
            budget: opts.max_role_changes,
            touched: BTreeSet::new(),
            actions: Vec::new(),
            left: Vec::new(),
        }
    }

    pub fn run(&mut self) {
        self.redundancy();
        self.apart();
        self.spread();
    }

    /// A shard a change may touch: live, not mid-move, not touched yet this run.
    fn free(&self, s: &Shard) -> bool {
        !s.down && !s.open && s.master.healthy && !self.touched.contains(&s.master.id)
    }

    fn take(&mut self, rule: Rule, changes: Vec<RoleChange>, why: String) -> bool {
        if (changes.len() as u32) > self.budget {
            self.left
                .push(format!("{}: {why}: left for the next run (topology.max-role-changes-per-run)", rule.as_str()));
            return false;
        }
        for c in changes {
            self.budget -= 1;
            self.touched.extend(c.shards().into_iter().map(str::to_string));
            self.layout.apply(&c);
            self.actions.push(RoleAction { rule, change: c, why: why.clone(), result: None });
        }
        true
    }

    fn redundancy(&mut self) {
        let mut short: Vec<(usize, String)> = self
            .layout
            .shards
            .iter()
            .filter(|s| !s.down && (s.healthy_replicas() as u32) < self.r)
            .map(|s| (s.healthy_replicas(), s.master.id.clone()))
            .collect();
        short.sort();
        for (have, id) in short {
            let Some(s) = self.layout.shards.iter().find(|s| s.master.id == id) else { continue };
            let why = format!("{} has {have} of {} replicas", s.master.address, self.r);
            if !self.free(s) {
                self.left.push(format!("redundancy: {why}: its shard is mid-move or already changing"));
                continue;
            }
            let (host, zone, bytes) = (s.master.host.clone(), s.master.zone.clone(), s.bytes);
            let mut best: Option<((u32, bool, bool, String), RoleChange)> = None;
            for d in self.layout.shards.iter().filter(|d| self.free(d) && (d.healthy_replicas() as u32) > self.r) {
                for x in d.replicas.iter().filter(|x| x.healthy) {
                    let change = RoleChange::Replicate {
                        node: x.id.clone(),
                        address: x.address.clone(),
                        from_master: d.master.id.clone(),
                        to_master: id.clone(),
                        bytes,
                    };
                    let mut after = self.layout.clone();
                    after.apply(&change);
                    let rank = (apart(&after), x.host == host, zone.is_some() && x.zone == zone, x.id.clone());
                    if best.as_ref().is_none_or(|(b, _)| rank < *b) {
                        best = Some((rank, change));
                    }
                }
            }
            match best {
                Some((_, change)) => {
                    self.take(Rule::Redundancy, vec![change], why);
                }
                None => self.left.push(format!("redundancy: {why}: no master has a replica to spare")),
            }
        }
    }

    fn apart(&mut self) {
        let ids: Vec<String> = self.layout.shards.iter().map(|s| s.master.id.clone()).collect();
        for id in ids {
            let before = apart(self.layout);
            let Some(s) = self.layout.shards.iter().find(|s| s.master.id == id) else { continue };
            let Some(x) = s.replicas.iter().find(|r| r.healthy && breaks_apart(self.layout, s, r)) else { continue };
            let why = format!("{} stands beside its master {} ({})", x.address, s.master.address, where_(s, x));
            if !self.free(s) {
                self.left.push(format!("apart: {why}: its shard is mid-move or already changing"));
                continue;
            }
            let swap = s.replicas.iter().filter(|r| r.in_sync && r.healthy).find_map(|r| {
                let c = RoleChange::Failover { node: r.id.clone(), address: r.address.clone(), master: id.clone() };
                let mut after = self.layout.clone();
                after.apply(&c);
                (apart(&after) < before).then_some(c)
            });
            if let Some(c) = swap {
                self.take(Rule::Apart, vec![c], why);
                continue;
            }
            match self.exchange(&id, &x.id.clone(), before) {
                Some(changes) => {
                    self.take(Rule::Apart, changes, why);
                }
                None => self.left.push(format!("apart: {why}: no swap or exchange separates them")),
            }
        }
    }

    /// The replica `x` of shard `a` traded with a replica of another shard, when that
    /// leaves fewer replicas beside their masters.
    fn exchange(&self, a: &str, x: &str, before: u32) -> Option<Vec<RoleChange>> {
        let sa = self.layout.shards.iter().find(|s| s.master.id == a)?;
        let xa = sa.replicas.iter().find(|r| r.id == x)?;
        let mut best: Option<((u32, String), Vec<RoleChange>)> = None;
        for sb in self.layout.shards.iter().filter(|b| b.master.id != a && self.free(b)) {
            for y in sb.replicas.iter().filter(|y| y.healthy) {
                let changes = vec![
                    RoleChange::Replicate {
                        node: xa.id.clone(),
                        address: xa.address.clone(),
                        from_master: a.to_string(),
                        to_master: sb.master.id.clone(),
                        bytes: sb.bytes,
                    },
                    RoleChange::Replicate {
                        node: y.id.clone(),
                        address: y.address.clone(),
                        from_master: sb.master.id.clone(),
                        to_master: a.to_string(),
                        bytes: sa.bytes,
                    },
                ];
                let mut after = self.layout.clone();
                changes.iter().for_each(|c| after.apply(c));
                let rank = (apart(&after), y.id.clone());
                if rank.0 < before && best.as_ref().is_none_or(|(b, _)| rank < *b) {
                    best = Some((rank, changes));
                }
            }
        }
        best.map(|(_, c)| c)
    }

    fn spread(&mut self) {
        loop {
            let (before, apart_before) = (spread(self.layout), apart(self.layout));
            if before == 0 {
                return;
            }
            let mut best: Option<((u32, bool, u64, String), RoleChange)> = None;
            let mut held: Option<String> = None;
            for s in self.layout.shards.iter().filter(|s| self.free(s)) {
                for r in s.replicas.iter().filter(|r| r.healthy && r.in_sync) {
                    if let Some(why) = self.unquiet(&s.master.id, &r.id) {
                        held.get_or_insert(why);
                        continue;
                    }
                    let c = RoleChange::Failover {
                        node: r.id.clone(),
                        address: r.address.clone(),
                        master: s.master.id.clone(),
                    };
                    let mut after = self.layout.clone();
                    after.apply(&c);
                    // A lower rule never undoes a higher one.
                    if apart(&after) > apart_before {
                        continue;
                    }
                    let failback = self.opts.former_masters.contains(&r.id);
                    let rank = (spread(&after), !failback, heaviest_host_bytes(&after), r.id.clone());
                    if rank.0 < before && best.as_ref().is_none_or(|(b, _)| rank < *b) {
                        best = Some((rank, c));
                    }
                }
            }
            let Some((rank, c)) = best else {
                let why = held.unwrap_or_else(|| "no in-sync replica where a master is wanted".into());
                self.left.push(format!("spread: masters per host (or zone) off their share by {before}: {why}"));
                return;
            };
            let RoleChange::Failover { master, node, .. } = &c else { return };
            let s = self.layout.shards.iter().find(|s| s.master.id == *master).expect("chosen from the layout");
            let mut why = format!("host {} holds more masters than its share", s.master.host);
            if !rank.1 {
                why += &format!("; failback: {node} was a master, and has been quiet for topology.failback-after");
            }
            if !self.take(Rule::Spread, vec![c], why) {
                return;
            }
        }
    }
}

impl Planner<'_> {
    /// Why a failover of `master` to `replica` must wait, if it must.
    fn unquiet(&self, master: &str, replica: &str) -> Option<String> {
        let o = self.opts;
        [master, replica].into_iter().find_map(|n| {
            if o.flapping.contains(n) {
                Some(format!("{n} flaps (two role changes within topology.failback-after): left alone"))
            } else if o.settling.contains(n) {
                Some(format!("{n} changed role within topology.failback-after: waits until it is quiet"))
            } else {
                None
            }
        })
    }
}

/// The replica stands on its master's host, or (zones known) in its zone.
fn breaks_apart(layout: &Layout, s: &Shard, r: &Node) -> bool {
    r.host == s.master.host || (layout.zones_known() && r.zone.is_some() && r.zone == s.master.zone)
}

fn where_(s: &Shard, r: &Node) -> String {
    if r.host == s.master.host {
        format!("host {}", r.host)
    } else {
        format!("zone {}", r.zone.as_deref().unwrap_or("?"))
    }
}
