//! A member is its node id: an evacuation, a weight and the metric labels stay with it when
//! it comes back at another address, and a new node at a reused address inherits nothing.
//! Against a real cluster and etcd, on both engines.

mod common;

use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd, on_each_engine};
use common::*;

fn etcd_section(etcd: &LocalEtcd) -> String {
    format!("[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-id\"\nlease-ttl = \"3s\"\n", etcd.endpoint())
}

const PAUSED_RUNS: &str =
    "[schedule]\ncron = \"0 0 3 * * *\"\n[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n";

fn plan_targets(s: &SidecarProc) -> serde_json::Value {
    let (code, body) = get(&s.url("/plan")).unwrap();
    assert_eq!(code, 200, "{body}");
    json(&body)["members"].clone()
}

/// target_bytes of the member `id` in a plan's members.
fn target(members: &serde_json::Value, id: &str) -> f64 {
    let m = members.as_array().unwrap().iter().find(|m| m["id"] == id);
    m.unwrap_or_else(|| panic!("{id} not in {members:#}"))["target_bytes"].as_f64().unwrap()
}

async fn a_member_keeps_its_state_across_an_address_change(engine: Engine) {
    let mut c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    c.load_skewed(3_000, 31).await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let masters = c.master_addrs();
    let (a, b) = (masters[0].clone(), masters[1].clone());
    let (a_id, b_id) = (c.id_of(&a).unwrap().to_string(), c.id_of(&b).unwrap().to_string());
    // A weight keyed by the node id; the runs are paused, so nothing moves.
    let config = |member: &str, c: &autobalancer_testkit::LocalCluster| {
        format!(
            "{}{}{PAUSED_RUNS}[balance.weights]\n\"{a_id}\" = 2\n",
            cluster_section(c, dir.path(), Some(member)),
            etcd_section(&etcd)
        )
    };
    let mut s0 = SidecarProc::start(dir.path(), "a", &config(&a, &c));
    let cfg0 = s0.config.to_str().unwrap().to_string();
    let (code, _, err) = cli(&["pause", "--config", &cfg0]);
    assert_eq!(code, 0, "{err}");

    // Named by its node id, though configured by address; the weight applies.
    let st = json(&get(&s0.url("/status")).unwrap().1);
    assert_eq!(st["member"], a_id.as_str(), "{st:#}");
    let plan = plan_targets(&s0);
    let ratio = target(&plan, &a_id) / target(&plan, &b_id);
    assert!((ratio - 2.0).abs() < 0.01, "{plan:#}");
    let info = format!("autobalancer_member_info{{address=\"{a}\",hostname=\"\",member=\"{a_id}\"}}");
    assert_eq!(s0.metric(&info), 1.0, "{}", get(&s0.url("/metrics")).unwrap().1);
    let (code, body) = call("POST", &s0.url("/evacuation/start"), None, Some("{}")).unwrap();
    assert_eq!(code, 202, "{body}");
    assert_eq!(json(&body)["evacuation"]["member"], a_id.as_str());
    assert_eq!(get(&s0.url("/availability")).unwrap().0, 503);

    // The node comes back at another address, and its sidecar with it.
    let (code, _) = s0.terminate();
    assert_eq!(code, Some(0));
    let moved = c.readdress(&a).await.unwrap();
    assert_ne!(moved, a);
    let mut s0 = SidecarProc::start(dir.path(), "a-moved", &config(&moved, &c));
    let st = json(&get(&s0.url("/status")).unwrap().1);
    assert_eq!(st["member"], a_id.as_str(), "{st:#}");
    // The evacuation stayed with the member: still evacuating, still draining in a plan.
    wait_for(15, "the evacuation to be seen again", || get(&s0.url("/availability")).unwrap().0 == 503);
    let (_, body) = get(&s0.url("/plan")).unwrap();
    assert!(json(&body)["explanation"].to_string().contains("is draining"), "{body}");
    // Once stopped, the weight is the member's at its new address; the label is the same
    // member, now at the new address.
    let (code, body) = call("POST", &s0.url("/evacuation/stop"), None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    let plan = plan_targets(&s0);
    let ratio = target(&plan, &a_id) / target(&plan, &b_id);
    assert!((ratio - 2.0).abs() < 0.01, "{plan:#}");
    let metrics = get(&s0.url("/metrics")).unwrap().1;
    let info = format!("autobalancer_member_info{{address=\"{moved}\",hostname=\"\",member=\"{a_id}\"}}");
    assert_eq!(metric(&metrics, &info), 1.0, "{metrics}");
    assert!(!metrics.contains(&format!("address=\"{a}\"")), "{metrics}");
    assert!(metrics.contains(&format!("autobalancer_member_load_bytes{{member=\"{a_id}\"}}")), "{metrics}");

    // Evacuate the member again, then give its old address to a new node: the new node
    // is another member, neither evacuating nor weighted.
    let (code, body) = call("POST", &s0.url("/evacuation/start"), None, Some("{}")).unwrap();
    assert_eq!(code, 202, "{body}");
    let old_port: u16 = a.rsplit_once(':').unwrap().1.parse().unwrap();
    let n_id = c.add_master_at(old_port).await.unwrap();
    assert_ne!(n_id, a_id);
    let s2 = SidecarProc::start(dir.path(), "reused", &config(&a, &c));
    let st = json(&get(&s2.url("/status")).unwrap().1);
    assert_eq!(st["member"], n_id.as_str(), "{st:#}");
    let (code, body) = get(&s2.url("/availability")).unwrap();
    assert_eq!(code, 200, "{body}");
    let plan = plan_targets(&s2);
    // The new member has an equal share (weight 1), like b; a (draining) none.
    assert!((target(&plan, &n_id) - target(&plan, &b_id)).abs() <= 1.0, "{plan:#}");
    assert_eq!(target(&plan, &a_id), 0.0, "{plan:#}");
    // And the fleet's records name both by node id, each at its own address.
    let (code, out, err) = cli(&["status", "--config", s2.config.to_str().unwrap(), "--cluster"]);
    assert_eq!(code, 0, "{err}");
    let fleet = json(&out);
    let evacuating: Vec<&str> =
        fleet["evacuations"].as_array().unwrap().iter().map(|e| e["member"].as_str().unwrap()).collect();
    assert_eq!(evacuating, vec![a_id.as_str()], "{fleet:#}");
    s0.kill9();
}

on_each_engine!(a_member_keeps_its_state_across_an_address_change);

/// `member-id` may name the member by its node id or by `hostname:port` (the announced
/// hostname): the sidecar names it by its node id either way.
async fn member_id_takes_a_node_id_or_an_announced_hostname(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = c.master_addrs()[1].clone();
    let b_id = c.id_of(&b).unwrap().to_string();
    let mut con = c.conn(&b).await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("cluster-announce-hostname")
        .arg("redis-b.invalid")
        .query_async(&mut con)
        .await
        .unwrap();
    let port = b.rsplit_once(':').unwrap().1;
    let by_host = format!("redis-b.invalid:{port}");
    // Gossip carries the hostname to the seed's view.
    let first = c.master_addrs()[0].clone();
    let mut seed = c.conn(&first).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut seed).await.unwrap();
        if text.lines().any(|l| l.starts_with(&b_id) && l.contains(",redis-b.invalid")) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the hostname never reached the seed's view: {text}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for (name, member) in [(b_id.as_str(), "by-id"), (by_host.as_str(), "by-host")] {
        let s = SidecarProc::start(
            dir.path(),
            member,
            &format!("{}{PAUSED_RUNS}", cluster_section(&c, dir.path(), Some(name))),
        );
        let st = json(&get(&s.url("/status")).unwrap().1);
        assert_eq!(st["member"], b_id.as_str(), "{name}: {st:#}");
        plan_targets(&s);
        let metrics = get(&s.url("/metrics")).unwrap().1;
        assert!(metrics.contains("hostname=\"redis-b.invalid\""), "{metrics}");
    }
}

on_each_engine!(member_id_takes_a_node_id_or_an_announced_hostname);
