//! The HTTP API against its own contract: schemathesis reads `GET /openapi.json` from a
//! live sidecar (real etcd, a real cluster, a bearer token) and fuzzes every operation
//! with every check: no 5xx, no status, header or body outside the document, bad input
//! refused with a 4xx. The fuzzing starts runs, evacuations and pauses for real; the
//! cluster is small, and at the end it holds the same data with no slot left open.
//!
//! Schemathesis comes from the virtualenv `scripts/test` makes (`SCHEMATHESIS_BIN`).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd, on_each_engine};
use common::*;

const TOKEN: &str = "contract-token";

/// `SCHEMATHESIS_BIN`, else the virtualenv `scripts/test` installs it into.
fn schemathesis() -> PathBuf {
    let path = std::env::var_os("SCHEMATHESIS_BIN").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
        cache.join("autobalancer/venv/bin/schemathesis")
    });
    assert!(
        path.is_file(),
        "schemathesis not found at {}: run scripts/test, which installs it, or set SCHEMATHESIS_BIN",
        path.display()
    );
    path
}

/// Runs schemathesis with every check on the operations `filter` selects; fails with its
/// report and the sidecar's log when it finds anything.
fn fuzz(bin: &Path, schema: &str, filter: &[&str], dir: &Path, s: &SidecarProc) {
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contract/schemathesis.toml");
    let out = Command::new(bin)
        .args(["--config-file", config, "run", schema, "--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
        .args(["--phases", "examples,coverage,fuzzing", "--max-examples", "15", "--seed", "1", "--workers", "1"])
        .args(["--request-timeout", "120", "--no-color"])
        .args(filter)
        .current_dir(dir)
        .output()
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{report}\n\nsidecar log:\n{}", s.logs());
}

async fn the_api_keeps_its_openapi_contract_under_fuzzing(engine: Engine) {
    let bin = schemathesis();
    // Two masters share the slots; the sidecar sits beside a third that holds none, so
    // an evacuation of it has nothing to move until a forced run gave it slots.
    let c = ClusterSpec::new(engine, 2, 1).start().await.unwrap();
    c.load_skewed(400, 21).await.unwrap();
    let before = c.digest().await.unwrap();
    let owners = c.slot_owners().await.unwrap();
    let local = c.master_addrs().into_iter().find(|m| !owners.contains(m)).expect("an empty master");
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
    let cfg = format!(
        "{}\n[schedule]\ncron = \"0 0 3 * * *\"\nenabled = false\n[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-contract\"\nlease-ttl = \"3s\"\n",
        cluster_section(&c, dir.path(), Some(&local)),
        etcd.endpoint()
    );
    let token = format!("token-file = \"{}\"", dir.path().join("token").display());
    let s = SidecarProc::start_with(dir.path(), "contract", &cfg, &token);
    wait_for(20, "readyz", || get(&s.url("/readyz")).unwrap().0 == 200);

    // The contract is public; everything else keeps its rules.
    let (code, body) = get(&s.url("/openapi.json")).unwrap();
    assert_eq!(code, 200, "{body}");
    let doc = json(&body);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc:#}");
    assert_eq!(get(&s.url("/plan")).unwrap().0, 401);

    // Two passes: the pause first held every later run back, so the calls that start runs
    // and evacuations are fuzzed with the fleet unpaused, then the pause on its own.
    let runs = || {
        ["rebalanced", "skipped", "failed", "stopped"]
            .iter()
            .map(|o| s.metric(&format!("autobalancer_runs_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    // The disabled schedule's skip at start-up is counted as a run's end: runs counted
    // beyond it were started by the fuzzing.
    wait_for(20, "the start-up skip counted", || s.metric("autobalancer_skips_total{reason=\"disabled\"}") == 1.0);
    let at_start = runs();
    for filter in ["--exclude-path", "--include-path"] {
        fuzz(&bin, &s.url("/openapi.json"), &[filter, "/pause"], dir.path(), &s);
        if filter == "--exclude-path" {
            assert!(runs() > at_start, "the fuzzing started no run:\n{}", s.logs());
        }
    }

    // Whatever the fuzzing left: lift the pause, end the evacuation, let the run stop.
    for (method, path) in [("DELETE", "/pause"), ("POST", "/evacuation/stop")] {
        let (code, body) = call(method, &s.url(path), Some(TOKEN), None).unwrap();
        assert_eq!(code, 200, "{method} {path}: {body}");
    }
    wait_for(120, "the sidecar to be idle", || {
        get(&s.url("/status")).is_ok_and(|(code, body)| code == 200 && json(&body)["operation"].is_null())
    });
    c.wait_ok(Duration::from_secs(20)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty(), "a slot was left open");
    assert_eq!(c.digest().await.unwrap(), before, "the data changed");
}

on_each_engine!(the_api_keeps_its_openapi_contract_under_fuzzing);
