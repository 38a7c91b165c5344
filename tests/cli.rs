//! The command line on snapshot fixtures: simulate's JSON contract, exit codes,
//! check-config.

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autobalancer"))
}

fn fixture() -> String {
    format!("{}/examples/redis-16384.json", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn simulate_json_has_the_documented_fields() {
    let out = bin().args(["simulate", "--snapshot", &fixture(), "--format", "json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["action"], "rebalance");
    assert!(v["decision"]["reason"].is_null());
    for key in ["transfer_bytes", "total_bytes", "transfer_percent", "lower_bound_bytes"] {
        assert!(v[key].is_number(), "{key} missing");
    }
    let transfer = v["transfer_bytes"].as_u64().unwrap();
    let moves = v["moves"].as_array().unwrap();
    assert!(!moves.is_empty());
    let sum: u64 = moves.iter().filter(|m| m["kind"] == "copy").map(|m| m["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum, transfer);
    for m in moves {
        for k in ["kind", "bucket", "from", "to", "bytes"] {
            assert!(!m[k].is_null(), "move field {k} missing");
        }
    }
    let members = v["members"].as_array().unwrap();
    assert_eq!(members.len(), 4);
    for m in members {
        assert!(m["id"].is_string());
        assert!(m["target_bytes"].is_number());
        for side in ["before", "after"] {
            for k in ["bytes", "buckets", "primaries"] {
                assert!(m[side][k].is_number(), "{side}.{k} missing");
            }
        }
    }
    // The new member receives data.
    assert_eq!(members[3]["before"]["bytes"], 0);
    assert!(members[3]["after"]["bytes"].as_u64().unwrap() > 0);
}

#[test]
fn simulate_table_states_the_decision() {
    let out = bin().args(["simulate", "--snapshot", &fixture()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("decision: rebalance: off balance"), "{text}");
    assert!(text.contains("threshold 10%"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("10.0.0.")).count(), 4);
}

#[test]
fn thresholds_come_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[cluster]\nid = \"x\"\nseeds = [\"127.0.0.1:7001\"]\n[balance]\nsize-threshold-percent = 60\n",
    )
    .unwrap();
    let out = bin()
        .args(["simulate", "--snapshot", &fixture(), "--config", cfg.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["action"], "skip");
    assert_eq!(v["decision"]["reason"], "below_threshold");
}

#[test]
fn malformed_snapshot_is_exit_2_naming_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.json");
    std::fs::write(&p, r#"{"version":1,"members":[{"id":"a"}],"buckets":[{"id":5,"bytes":1,"copies":["zz"]}]}"#)
        .unwrap();
    let out = bin().args(["simulate", "--snapshot", p.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bucket 5") && err.contains("\"zz\""), "{err}");
}

#[test]
fn bad_usage_is_exit_2() {
    assert_eq!(bin().args(["simulate"]).output().unwrap().status.code(), Some(2));
    assert_eq!(bin().args(["no-such-command"]).output().unwrap().status.code(), Some(2));
}

#[test]
fn check_config_prints_ok_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = format!("{}/config.toml.example", env!("CARGO_MANIFEST_DIR"));
    let out = bin().args(["check-config", &good]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[cluster]\nid = \"x\"\nseeds = [\"127.0.0.1:7001\"]\n[balance]\nsize-threshold-percent = 0\ntolerance-percent = 99\n").unwrap();
    let out = bin().args(["check-config", bad.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("balance.size-threshold-percent must be 1..=99, got 0"), "{text}");
    assert!(text.contains("balance.tolerance-percent must be 0..=50, got 99"), "{text}");
}
