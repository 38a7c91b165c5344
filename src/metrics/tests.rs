use super::*;

/// The README's metrics table names every registered metric, and nothing else.
#[test]
fn the_readme_table_is_the_registry() {
    let readme = include_str!("../../README.md");
    let table = &readme[readme.find("## Metrics").unwrap()..readme.find("## Deploying").unwrap()];
    let mut documented: Vec<String> = table
        .split('`')
        .filter(|w| w.starts_with("autobalancer_") && w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .map(str::to_string)
        .collect();
    documented.sort();
    documented.dedup();
    // Labelled by member: gathered once a member is named.
    let m = Metrics::new();
    use crate::model::fixtures::*;
    let s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
    m.observe_snapshot(&s);
    m.observe_plan(&crate::plan::plan(&s, &Default::default()).unwrap());
    m.member_used_memory_bytes.with_label_values(&["m1"]).set(1.0);
    let mut s = s;
    s.members[0].zone = Some("z1".into());
    s.members[1].zone = Some("z2".into());
    m.observe_placement(&s, &crate::plan::placement::place(&s, &Default::default()));
    let (input, p) = traffic_plan(&s);
    m.observe_traffic(&s, Some(&input), &p);
    let mut registered: Vec<String> = m.registry.gather().iter().map(|f| f.name().to_string()).collect();
    registered.sort();
    assert_eq!(documented, registered);
}

#[test]
fn every_design_metric_is_exported_with_its_labels() {
    let m = Metrics::new();
    let text = m.render();
    for name in [
        "autobalancer_runs_total{outcome=\"stopped\"} 0",
        "autobalancer_failures_total{reason=\"snapshot_failed\"} 0",
        "autobalancer_skips_total{reason=\"cluster_down\"} 0",
        "autobalancer_failures_total{reason=\"plan_failed\"} 0",
        "autobalancer_lock_held 0",
        "autobalancer_lock_acquisitions_total{result=\"held_elsewhere\"} 0",
        "autobalancer_last_run_timestamp_seconds 0",
        "autobalancer_next_run_timestamp_seconds 0",
        "autobalancer_transfer_size_bytes 0",
        "autobalancer_cluster_size_bytes 0",
        "autobalancer_transfer_ratio 0",
        "autobalancer_moves_total{outcome=\"not_started\"} 0",
        "autobalancer_moves_total{outcome=\"lock_lost\"} 0",
        "autobalancer_moved_bytes_total 0",
        "autobalancer_rebalance_in_progress 0",
        "autobalancer_rebalance_moves_planned 0",
        "autobalancer_rebalance_moves_done 0",
        "autobalancer_move_duration_seconds_count 0",
        "autobalancer_plan_duration_seconds_count 0",
        "autobalancer_snapshot_duration_seconds_count 0",
        "autobalancer_build_info{engine=\"unknown\",version=",
        "autobalancer_lock_age_seconds 0",
        "autobalancer_sizing_duration_seconds_count 0",
        "autobalancer_sizing_age_seconds 0",
        "autobalancer_size_refresh_timestamp_seconds 0",
        "autobalancer_size_threshold_ratio 0",
        "autobalancer_etcd_up 0",
        "autobalancer_evacuation_buckets_left 0",
        "autobalancer_evacuation_bytes_left 0",
    ] {
        assert!(text.contains(name), "missing {name}");
    }
    assert_eq!(text.matches("autobalancer_skips_total{").count(), SkipReason::ALL.len());
    // Labelled by member: present once a member is named.
    m.member_used_memory_bytes.with_label_values(&["m1"]).set(7.0);
    assert!(m.render().contains("autobalancer_member_used_memory_bytes{member=\"m1\"} 7"));
    for (vec, name) in [(&m.big_keys, "big_keys"), (&m.stray_keys, "stray_keys")] {
        vec.with_label_values(&["m1"]).set(3);
        assert!(m.render().contains(&format!("autobalancer_{name}{{member=\"m1\"}} 3")), "missing {name}");
    }
    m.set_engine("valkey-9.0.0");
    let text = m.render();
    assert_eq!(text.matches("autobalancer_build_info{").count(), 1, "{text}");
    assert!(text.contains("autobalancer_build_info{engine=\"valkey-9.0.0\",version="), "{text}");
    use crate::model::fixtures::*;
    let s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![0]), (100, vec![0]), (100, vec![1])]);
    let p = crate::plan::plan(&s, &Default::default()).unwrap();
    m.observe_plan(&p);
    let text = m.render();
    assert!(text.contains("autobalancer_member_load_bytes{member=\"m1\"} 300"), "{text}");
    assert!(text.contains("autobalancer_member_buckets{member=\"m1\"} 3"));
    assert!(text.contains("autobalancer_member_target_bytes{member=\"m2\"} 200"));
    assert!(text.contains("autobalancer_transfer_ratio 0.25"));
    // member_info joins the stable id to where the member is now; a member that moved
    // shows its new address only.
    let mut s = s;
    s.members[0].address = "10.0.0.1:6379".into();
    s.members[0].hostname = Some("redis-0".into());
    m.observe_snapshot(&s);
    s.members[0].address = "10.0.0.7:6379".into();
    m.observe_snapshot(&s);
    let text = m.render();
    assert!(
        text.contains("autobalancer_member_info{address=\"10.0.0.7:6379\",hostname=\"redis-0\",member=\"m1\"} 1"),
        "{text}"
    );
    assert!(!text.contains("10.0.0.1:6379"), "{text}");
}

#[test]
fn placement_gauges_show_hosts_zones_replicas_and_broken_rules() {
    use crate::model::{Replica, fixtures::*};
    let m = Metrics::new();
    let mut s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
    for (i, mm) in s.members.iter_mut().enumerate() {
        mm.hostname = Some("h1".into());
        mm.zone = Some(format!("z{i}"));
    }
    // m1's replica stands beside it on h1; m2 has none.
    s.replicas = vec![Replica {
        id: "r1".into(),
        address: "10.0.0.9:6379".into(),
        hostname: Some("h1".into()),
        zone: Some("z0".into()),
        master: Some("m1".into()),
        healthy: true,
        in_sync: true,
    }];
    let p = crate::plan::placement::place(&s, &Default::default());
    m.observe_placement(&s, &p);
    let text = m.render();
    for line in [
        "autobalancer_masters{host=\"h1\"} 2",
        "autobalancer_masters_by_zone{zone=\"z0\"} 1",
        "autobalancer_shard_replicas{member=\"m1\"} 1",
        "autobalancer_shard_replicas{member=\"m2\"} 0",
        "autobalancer_placement_violations{rule=\"apart\"} 2",
        "autobalancer_placement_violations{rule=\"redundancy\"} 1",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
}

/// Two masters, the first one's slot hot: a traffic input and the plan made with it.
fn traffic_plan(s: &ClusterSnapshot) -> (crate::plan::traffic::TrafficInput, crate::plan::Plan) {
    let input = crate::plan::traffic::TrafficInput {
        cpu: vec![900.0, 100.0],
        net_in: vec![50.0, 5.0],
        net_out: vec![70.0, 7.0],
        keys: vec![3, 4],
        tolerance_percent: 20,
        threshold_percent: 50,
        ..Default::default()
    };
    let opts = crate::plan::PlanOptions { traffic: Some(input.clone()), ..Default::default() };
    (input.clone(), crate::plan::plan(s, &opts).unwrap())
}

#[test]
fn traffic_gauges_show_rates_per_master_and_hot_slots_and_go_when_traffic_is_off() {
    use crate::model::fixtures::*;
    let m = Metrics::new();
    let s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
    let (input, p) = traffic_plan(&s);
    m.observe_traffic(&s, Some(&input), &p);
    let text = m.render();
    for line in [
        "autobalancer_member_cpu_usec_rate{member=\"m1\"} 900",
        "autobalancer_member_cpu_usec_rate{member=\"m2\"} 100",
        "autobalancer_member_network_bytes_rate{direction=\"out\",member=\"m1\"} 70",
        "autobalancer_member_network_bytes_rate{direction=\"in\",member=\"m2\"} 5",
        "autobalancer_hot_slots{member=\"m1\"} 1",
        "autobalancer_hot_slots{member=\"m2\"} 0",
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    m.observe_traffic(&s, None, &crate::plan::plan(&s, &Default::default()).unwrap());
    assert!(!m.render().contains("autobalancer_member_cpu_usec_rate{"), "off: no stale rates");
}

#[test]
fn a_snapshots_sizing_is_shown_as_its_duration_and_the_oldest_sizes_age() {
    use crate::model::fixtures::*;
    let m = Metrics::new();
    let mut s = make_snapshot(make_members(2), &[(100, vec![0]), (100, vec![1])]);
    s.observed.sizing = Some(crate::model::SizingSummary {
        mode: "exact".into(),
        keys: 10,
        keys_measured_now: 4,
        oldest_seconds: 42.5,
        duration_seconds: 0.25,
        error_bytes: 0,
    });
    m.observe_snapshot(&s);
    let text = m.render();
    for line in [
        "autobalancer_sizing_age_seconds 42.5",
        "autobalancer_sizing_duration_seconds_count 1",
        "autobalancer_sizing_duration_seconds_sum 0.25",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
}
