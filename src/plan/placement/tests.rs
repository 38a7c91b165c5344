use super::*;
use crate::model::{Bucket, ClusterSnapshot, Member, Observed, Replica};

/// Masters `(id, host, bytes)` and replicas `(id, host, master)`.
fn snap(masters: &[(&str, &str, u64)], replicas: &[(&str, &str, &str)]) -> ClusterSnapshot {
    ClusterSnapshot {
        cluster_id: "t".into(),
        taken_at: chrono::Utc::now(),
        members: masters
            .iter()
            .map(|(id, host, _)| Member {
                address: format!("{id}:6379"),
                hostname: Some(host.to_string()),
                ..Member::new(id)
            })
            .collect(),
        buckets: masters
            .iter()
            .enumerate()
            .map(|(i, (_, _, b))| Bucket { id: i as u64, group: None, bytes: *b, copies: vec![i as u32] })
            .collect(),
        open_migrations: vec![],
        replicas: replicas
            .iter()
            .map(|(id, host, m)| Replica {
                id: id.to_string(),
                address: format!("{id}:6379"),
                hostname: Some(host.to_string()),
                zone: None,
                master: Some(m.to_string()),
                healthy: true,
                in_sync: true,
            })
            .collect(),
        observed: Observed::default(),
        view: Default::default(),
    }
}

fn opts() -> PlacementOptions {
    PlacementOptions { replicas_per_master: None, max_role_changes: 2, tolerance_percent: 5, ..Default::default() }
}

fn kinds(p: &Placement) -> Vec<(Rule, String)> {
    p.actions
        .iter()
        .map(|a| {
            let what = match &a.change {
                RoleChange::Failover { node, master, .. } => format!("failover {node} over {master}"),
                RoleChange::Replicate { node, to_master, .. } => format!("replicate {node} to {to_master}"),
            };
            (a.rule, what)
        })
        .collect()
}

#[test]
fn two_masters_on_one_host_are_spread_by_a_failover() {
    // After failovers: m1 and m2 on host a, host c holds only a replica.
    let s = snap(
        &[("m1", "a", 10), ("m2", "a", 10), ("m3", "b", 10)],
        &[("r1", "b", "m1"), ("r2", "c", "m2"), ("r3", "c", "m3")],
    );
    let p = place(&s, &opts());
    assert_eq!(p.violations_of(Rule::Spread), 2, "{p:?}");
    assert_eq!(p.violations_of(Rule::Apart), 0);
    assert_eq!(kinds(&p), vec![(Rule::Spread, "failover r2 over m2".to_string())]);
    let a = p.hosts.iter().find(|h| h.name == "a").unwrap();
    assert_eq!(a.masters.len(), 2);
    assert_eq!(a.master_bytes, 20);
}

#[test]
fn a_replica_beside_its_master_is_swapped_or_exchanged() {
    // r1 beside m1 on a; m1's other replica on c: a role swap separates them.
    let s = snap(
        &[("m1", "a", 10), ("m2", "b", 10), ("m3", "c", 10)],
        &[
            ("r1", "a", "m1"),
            ("q1", "c", "m1"),
            ("r2", "c", "m2"),
            ("q2", "a", "m2"),
            ("r3", "a", "m3"),
            ("q3", "b", "m3"),
        ],
    );
    let p = place(&s, &opts());
    assert_eq!(p.violations_of(Rule::Apart), 1);
    // A swap to q1 (host c) separates m1 from r1, moving no data; spread then hands
    // host a a master back (c would hold two).
    assert_eq!(
        kinds(&p),
        vec![(Rule::Apart, "failover q1 over m1".into()), (Rule::Spread, "failover r3 over m3".into())]
    );
    let mut after = Layout::of(&s);
    p.actions.iter().for_each(|a| after.apply(&a.change));
    assert_eq!(rules::violations(&after, Rule::Apart, 2), 0);
    assert_eq!(rules::violations(&after, Rule::Spread, 2), 0);

    // One replica, beside its master, another shard's on a third host: an exchange.
    let s = snap(&[("m1", "a", 10), ("m2", "b", 10)], &[("r1", "a", "m1"), ("r2", "c", "m2")]);
    let p = place(&s, &opts());
    assert_eq!(kinds(&p), vec![(Rule::Apart, "replicate r1 to m2".into()), (Rule::Apart, "replicate r2 to m1".into())]);
    assert_eq!(p.actions.iter().map(|a| a.change.bytes()).sum::<u64>(), 20, "two full syncs");
}

#[test]
fn a_master_without_its_replica_gets_one_from_a_master_with_two() {
    let s = snap(
        &[("m1", "a", 10), ("m2", "b", 10), ("m3", "c", 10)],
        &[("r1", "b", "m1"), ("q1", "c", "m1"), ("r2", "c", "m2")],
    );
    let p = place(&s, &PlacementOptions { replicas_per_master: Some(1), ..opts() });
    assert_eq!(p.violations_of(Rule::Redundancy), 1);
    // q1 (host c) to m3 would stand beside m3: r1 (host b) goes.
    assert_eq!(kinds(&p), vec![(Rule::Redundancy, "replicate r1 to m3".into())]);
    assert_eq!(p.actions[0].change.bytes(), 10);

    // No master has one to spare: said, nothing done.
    let s = snap(&[("m1", "a", 10), ("m2", "b", 10)], &[("r1", "b", "m1")]);
    let p = place(&s, &PlacementOptions { replicas_per_master: Some(1), ..opts() });
    assert!(p.actions.is_empty());
    assert!(p.explanation.iter().any(|l| l.contains("no master has a replica to spare")), "{:?}", p.explanation);
}

#[test]
fn nothing_moves_on_an_open_shard_or_out_of_sync_replica_and_the_budget_holds() {
    let base = snap(
        &[("m1", "a", 10), ("m2", "a", 10), ("m3", "b", 10)],
        &[("r1", "b", "m1"), ("r2", "c", "m2"), ("r3", "c", "m3")],
    );
    let mut s = base.clone();
    s.replicas[1].in_sync = false;
    let p = place(&s, &opts());
    // m2's replica is not in sync; m1's replica is on b, which has a master already, but
    // moving m1 there leaves a even and b with two: no gain. Nothing to do.
    assert!(p.actions.is_empty(), "{p:?}");
    let mut s = base.clone();
    s.open_migrations.push(crate::model::OpenMigration { bucket: 1, from: Some("m2".into()), to: Some("m3".into()) });
    assert!(place(&s, &opts()).actions.is_empty());
    let p = place(&base, &PlacementOptions { max_role_changes: 0, ..opts() });
    assert!(p.actions.is_empty());
    assert!(p.explanation.iter().any(|l| l.contains("max-role-changes-per-run")), "{:?}", p.explanation);
}

#[test]
fn zones_split_a_shard_standing_in_one_zone() {
    // Hosts a and b in zone x, c and d in y; each shard stands within one zone.
    let mut s = snap(&[("m1", "a", 10), ("m2", "c", 10)], &[("r1", "b", "m1"), ("r2", "d", "m2")]);
    let p = place(&s, &opts());
    assert!(p.explanation.iter().any(|l| l.contains("zones unknown")));
    assert!(p.actions.is_empty(), "{p:?}");
    let zone = |h: &str| Some(if h < "c" { "x" } else { "y" }.to_string());
    s.members.iter_mut().for_each(|m| m.zone = zone(m.hostname.as_deref().unwrap()));
    s.replicas.iter_mut().for_each(|r| r.zone = zone(r.hostname.as_deref().unwrap()));
    let p = place(&s, &opts());
    assert_eq!(p.violations_of(Rule::Apart), 2, "{p:?}");
    assert_eq!(kinds(&p), vec![(Rule::Apart, "replicate r1 to m2".into()), (Rule::Apart, "replicate r2 to m1".into())]);
    let mut after = Layout::of(&s);
    p.actions.iter().for_each(|a| after.apply(&a.change));
    assert_eq!(rules::violations(&after, Rule::Apart, 1), 0);
    assert_eq!(p.zones.len(), 2);

    // Three shards, and one zone with two nodes: no layout splits every shard; said so.
    let mut s = snap(
        &[("m1", "a", 10), ("m2", "b", 10), ("m3", "c", 10)],
        &[("r1", "b", "m1"), ("r2", "c", "m2"), ("r3", "a", "m3")],
    );
    let zone = |h: &str| Some(if h == "c" { "y" } else { "x" }.to_string());
    s.members.iter_mut().for_each(|m| m.zone = zone(m.hostname.as_deref().unwrap()));
    s.replicas.iter_mut().for_each(|r| r.zone = zone(r.hostname.as_deref().unwrap()));
    let p = place(&s, &opts());
    assert!(p.actions.is_empty(), "{p:?}");
    assert!(p.explanation.iter().any(|l| l.contains("no swap or exchange separates them")), "{:?}", p.explanation);
}

#[test]
fn a_balanced_layout_is_left_alone() {
    let s = snap(
        &[("m1", "a", 10), ("m2", "b", 10), ("m3", "c", 10)],
        &[("r1", "b", "m1"), ("r2", "c", "m2"), ("r3", "a", "m3")],
    );
    let p = place(&s, &opts());
    assert!(p.violations.is_empty() && p.actions.is_empty(), "{p:?}");
    assert_eq!(p.replicas_per_master, 1);
}

#[test]
fn no_role_changes_while_a_replica_follows_no_known_master() {
    let mut s = snap(
        &[("m1", "a", 10), ("m2", "a", 10), ("m3", "b", 10)],
        &[("r1", "b", "m1"), ("r2", "c", "m2"), ("r3", "c", "m3")],
    );
    s.replicas[0].master = Some("gone".into());
    let p = place(&s, &opts());
    assert!(p.actions.is_empty(), "{p:?}");
    assert!(p.explanation.iter().any(|l| l.contains("roles are settling")), "{:?}", p.explanation);
}

#[test]
fn failback_waits_for_quiet_prefers_the_former_master_and_leaves_a_flapper_alone() {
    // m2 failed over to r2 (host c, now two masters there: r2 and m3), m2 came back on b
    // as r2's replica; r3 (host b too) could also take a master role back to b.
    let s = snap(
        &[("m1", "a", 10), ("r2", "c", 10), ("m3", "c", 10)],
        &[("r1", "b", "m1"), ("m2", "b", "r2"), ("r3", "b", "m3")],
    );
    let settling = |ids: &[&str]| PlacementOptions { settling: ids.iter().map(|s| s.to_string()).collect(), ..opts() };
    let p = place(&s, &settling(&["m2", "r2"]));
    // Only r3 is quiet: it takes the role, not the former master.
    assert_eq!(kinds(&p), vec![(Rule::Spread, "failover r3 over m3".into())]);
    let p = place(&s, &PlacementOptions { former_masters: ["m2".to_string()].into(), ..opts() });
    assert_eq!(kinds(&p), vec![(Rule::Spread, "failover m2 over r2".into())], "failback first");
    assert!(p.actions[0].why.contains("failback"), "{}", p.actions[0].why);
    let p = place(&s, &settling(&["m2", "r2", "r3", "m3"]));
    assert!(p.actions.is_empty());
    assert!(p.explanation.iter().any(|l| l.contains("waits until it is quiet")), "{:?}", p.explanation);
    let p = place(&s, &PlacementOptions { flapping: ["m2".into(), "r3".into()].into(), ..opts() });
    assert!(p.actions.is_empty(), "{p:?}");
    assert!(p.explanation.iter().any(|l| l.contains("flaps")), "{:?}", p.explanation);
}
