//! What `deploy/` ships, checked against a running sidecar: every metric the alert
//! rules and the dashboard use is exported, and a real Prometheus scrapes the sidecar
//! with the rules loaded. The Kubernetes pods hand off before they stop, with commands
//! the binary takes, and wait for nothing that is never written; the sidecar can read
//! its secrets; the image runs as that same user. (`scripts/test` validates the
//! manifests against the Kubernetes schemas.)

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
    for m in used.iter().filter(|m| !TRAFFIC_METRICS.contains(&m.as_str())) {
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
    let declared =
        read("deploy/prometheus/rules.yml").lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    assert_eq!(names.len(), declared, "every rule of rules.yml loaded: {names:?}");
    assert!(rules["data"]["groups"][0]["rules"].as_array().unwrap().iter().all(|r| r["health"] != "err"), "{rules:#}");
    // Every expression of the dashboard, its Grafana variables filled in, is a query
    // Prometheus accepts, over metrics the sidecar exports.
    let dashboard = json(&read("deploy/grafana/autobalancer.json"));
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    let exported = get(&s.url("/metrics")).unwrap().1;
    for e in &exprs {
        let filled = e
            .replace("$cluster", ".*")
            .replace("$__rate_interval", "1m")
            .replace("$__range", "1h")
            .replace("$__interval", "1m");
        let encoded: String = filled
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect();
        let (_, body) =
            get(&format!("{base}/api/v1/query?query={encoded}")).unwrap_or_else(|e| panic!("{filled}: {e}"));
        let answer = json(&body);
        assert_eq!(answer["status"], "success", "{filled}: {answer:#}");
        for m in metric_names(e).into_iter().filter(|m| !TRAFFIC_METRICS.contains(&m.as_str())) {
            assert!(exported.contains(&format!("# TYPE {m} ")), "{m} in {e:?} is not exported");
        }
    }
    drop(prometheus);
}

/// Exported only where the servers measure traffic, which a snapshot file does not: the
/// dashboard's traffic row is queried against a sidecar on a live Valkey cluster in
/// `tests/traffic.rs`.
const TRAFFIC_METRICS: &[&str] =
    &["autobalancer_member_cpu_usec_rate", "autobalancer_member_network_bytes_rate", "autobalancer_hot_slots"];

/// The `expr` of every panel target, however deep.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

fn read(p: &str) -> String {
    std::fs::read_to_string(root(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
}

#[test]
fn pods_hand_off_before_they_stop_and_wait_for_nothing_unwritten() {
    let sts = read("deploy/kubernetes/statefulset.yaml");
    // The sidecar's preStop is `handoff` (a rolling restart moves no slot), not an
    // evacuation, and the binary takes it as written: run with a config of its own, it
    // reaches the handoff, which refuses a snapshot file.
    let hook = sts.lines().find(|l| l.contains("\"handoff\"")).expect("a preStop running handoff");
    let args: Vec<String> = serde_json::from_str(hook.trim().trim_start_matches("command:").trim()).unwrap();
    assert_eq!(&args[..3], ["/usr/local/bin/autobalancer", "handoff", "--config"], "{hook}");
    assert!(!sts.contains("evacuate start"), "a restart must not evacuate");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let snap = root("examples/redis-16384.json");
    std::fs::write(
        &cfg,
        format!("[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\n", snap.display()),
    )
    .unwrap();
    let mut argv: Vec<String> = args[1..].to_vec();
    argv[2] = cfg.display().to_string();
    let out = bin().args(&argv).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("handoff needs cluster.backend"), "{out:?}");
    // Nothing waits for a file some other hook may never write.
    for waits in ["[ ! -f", "touch ", "/handoff"] {
        assert!(!sts.contains(waits), "statefulset.yaml still has {waits:?}");
    }
    // Redis waits for the handoff a bounded time, within the grace period.
    assert!(sts.contains("for i in $(seq 30)"), "the Redis preStop waits at most 30 s");
    let grace: u64 = sts
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("terminationGracePeriodSeconds");
    assert!((45..=300).contains(&grace), "{grace}: the 15 s handoff and the 30 s wait, not an evacuation's hour");
}

#[test]
fn the_sidecar_can_read_its_secrets_and_the_image_runs_as_its_user() {
    let sts = read("deploy/kubernetes/statefulset.yaml");
    // Secret files are root's; the sidecar runs as 65534: the group it gets through
    // fsGroup must be allowed to read them.
    assert!(sts.contains("runAsUser: 65534") && sts.contains("fsGroup: 65534"), "{sts}");
    let mode = sts.split("defaultMode:").nth(1).and_then(|r| r.split(['}', '\n']).next()).expect("defaultMode");
    let mode = u32::from_str_radix(mode.trim().trim_start_matches('0'), 8).unwrap();
    assert_eq!(mode & 0o040, 0o040, "defaultMode {mode:o}: the group cannot read the secrets");
    assert_eq!(mode & 0o007, 0, "defaultMode {mode:o}: others can read the secrets");
    let docker = read("Dockerfile");
    assert_eq!(docker.lines().filter(|l| l.starts_with("FROM ")).count(), 2, "a build stage and a runtime stage");
    assert!(docker.lines().any(|l| l == "USER 65534:65534"), "{docker}");
    assert!(docker.contains("/usr/local/bin/autobalancer"), "the path the preStop hook runs");
}

#[test]
fn the_shipped_sidecar_config_is_valid() {
    // As the pod sees it: secrets mounted, member and etcd from the environment.
    let dir = tempfile::tempdir().unwrap();
    let text =
        read("deploy/kubernetes/config.toml").replace("/etc/autobalancer/secrets", &dir.path().display().to_string());
    std::fs::write(dir.path().join("redis-password"), "pw\n").unwrap();
    std::fs::write(dir.path().join("api-token"), "token\n").unwrap();
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = bin()
        .args(["check-config", cfg.to_str().unwrap()])
        .env("AUTOBALANCER_CLUSTER_MEMBER_ID", "10.0.0.7:6379")
        .env("AUTOBALANCER_ETCD_ENDPOINTS", "[\"http://etcd.etcd.svc:2379\"]")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok", "{out:?}");
    assert_eq!(out.status.code(), Some(0));
}
