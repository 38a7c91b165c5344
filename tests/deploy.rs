//! What `deploy/` ships, checked against a running sidecar: every metric the alert
//! rules and the dashboard use is exported, and a real Prometheus scrapes the sidecar
//! with the rules loaded.

mod common;

use std::collections::BTreeSet;

use autobalancer_testkit::LocalPrometheus;
use common::*;

fn root(p: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// A sidecar on the bundled example snapshot (standalone, schedule far away).
fn example_sidecar(dir: &std::path::Path) -> SidecarProc {
    let snap = dir.join("cluster.json");
    std::fs::copy(root("examples/redis-16384.json"), &snap).unwrap();
    let cfg = format!(
        "[cluster]\nid = \"demo\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n[schedule]\ncron = \"0 0 3 * * *\"\n",
        snap.display()
    );
    let s = SidecarProc::start(dir, "d", &cfg);
    // A dry run fills the per-member series.
    assert_eq!(get(&s.url("/plan")).unwrap().0, 200);
    s
}

fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("autobalancer_") {
        let start = i + pos;
        let mut end = start;
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_' || bytes[end].is_ascii_digit())
        {
            end += 1;
        }
        let mut name = text[start..end].to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            if let Some(n) = name.strip_suffix(suffix) {
                name = n.to_string();
            }
        }
        out.insert(name);
        i = end;
    }
    out
}

#[test]
fn rules_and_dashboard_use_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = example_sidecar(dir.path());
    let exported = get(&s.url("/metrics")).unwrap().1;
    let rules = std::fs::read_to_string(root("deploy/prometheus/rules.yml")).unwrap();
    let dashboard = std::fs::read_to_string(root("deploy/grafana/autobalancer.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&dashboard).expect("dashboard is JSON");
    let used: BTreeSet<String> = metric_names(&rules).into_iter().chain(metric_names(&dashboard)).collect();
    assert!(used.len() >= 15, "{used:?}");
    for m in &used {
        assert!(exported.contains(&format!("# TYPE {m} ")), "{m} is used by deploy/ but not exported");
    }
    // The member series the dashboard plots carry the member label.
    assert!(exported.contains("autobalancer_member_load_bytes{member=\"10.0.0.1:7001\"}"));
}

#[test]
fn a_real_prometheus_scrapes_the_sidecar_with_the_rules_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let s = example_sidecar(dir.path());
    let rules = root("deploy/prometheus/rules.yml");
    let prometheus = LocalPrometheus::start("autobalancer", std::slice::from_ref(&s.api), &[&rules]).unwrap();
    let base = prometheus.url();
    let q = |query: &str| -> serde_json::Value {
        let url =
            format!("{base}/api/v1/query?query={}", query.replace('"', "%22").replace('{', "%7B").replace('}', "%7D"));
        get(&url).ok().map(|(_, b)| serde_json::from_str(&b).unwrap_or_default()).unwrap_or_default()
    };
    wait_for(60, "Prometheus to scrape the sidecar", || {
        q("up{job=\"autobalancer\"}")["data"]["result"][0]["value"][1] == "1"
    });
    let info = q("autobalancer_build_info");
    assert_eq!(info["data"]["result"][0]["metric"]["version"], env!("CARGO_PKG_VERSION"), "{info:#}");
    let load = q("autobalancer_member_load_bytes");
    assert_eq!(load["data"]["result"].as_array().unwrap().len(), 4, "{load:#}");
    let rules = json(&get(&format!("{base}/api/v1/rules")).unwrap().1);
    let names: Vec<&str> =
        rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 7, "{names:?}");
    assert!(rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().all(|r| r["health"] != "err"), "{rules:#}");
    drop(prometheus);
}
