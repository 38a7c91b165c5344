//! The sidecar daemon against a real etcd and a real Redis Cluster started here: one
//! run per slot across the fleet, takeover after a SIGKILL, etcd outages, lost leases,
//! TLS and authentication, the HTTP API and its metrics.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use autobalancer_testkit::{ClusterSpec, Engine, LocalCluster, LocalEtcd, on_each_engine};
use common::*;

fn etcd_section(etcd: &LocalEtcd, ttl: &str) -> String {
    format!("[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-test\"\nlease-ttl = \"{ttl}\"\n", etcd.endpoint())
}

/// A sidecar's configuration beside `member`: the `[cluster]` section, then `lines` (more
/// `[cluster]` keys first, then other sections), then `[etcd]` with the lease `ttl`.
fn sidecar_config(
    c: &LocalCluster,
    dir: &std::path::Path,
    member: &str,
    lines: &str,
    etcd: &LocalEtcd,
    ttl: &str,
) -> String {
    format!("{}{lines}\n{}", cluster_section(c, dir, Some(member)), etcd_section(etcd, ttl))
}

/// Reads what the fleet keeps in etcd, as no sidecar of it.
fn observer(etcd: &LocalEtcd) -> autobalancer::coord::Coordinator {
    let e = autobalancer::config::EtcdConfig {
        endpoints: vec![etcd.endpoint()],
        prefix: "/ab-test".into(),
        ..Default::default()
    };
    autobalancer::coord::Coordinator::new(Some(&e), "t", "observer").unwrap()
}

/// The member a sidecar said it published the sizes of.
fn published_by(s: &SidecarProc) -> String {
    let e = s.events("sizes published");
    assert!(!e.is_empty(), "no sizes published: {}", s.logs());
    e[0]["fields"]["member"].as_str().unwrap().to_string()
}

/// The members whose sidecars' size tables are in etcd.
async fn published(etcd: &LocalEtcd) -> Vec<String> {
    let mut m: Vec<String> = observer(etcd).size_tables().await.unwrap().into_iter().map(|t| t.member).collect();
    m.sort();
    m
}

const FAST: &str = "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 4\nmax-moves-per-member = 4\n";

async fn three_sidecars_give_one_evaluation_per_slot_and_one_rebalance(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(8_000, 11).await.unwrap();
    let before = c.digest().await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sidecars: Vec<SidecarProc> = c.master_addrs()[..3]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cfg = sidecar_config(
                &c,
                dir.path(),
                m,
                &format!("\n[schedule]\ncron = \"*/3 * * * * *\"\n{FAST}"),
                &etcd,
                "3s",
            );
            SidecarProc::start(dir.path(), &format!("s{i}"), &cfg)
        })
        .collect();
    // Until one has rebalanced (it may take several slots on a busy machine), then two
    // more slots in which all three evaluate.
    wait_for(90, "a rebalance", || {
        sidecars.iter().any(|s| s.metric("autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0)
    });
    // The holder checks the cluster after the run, once it has answered: the log says what
    // is left to move.
    wait_for(30, "the check after the run", || sidecars.iter().any(|s| s.logs().contains("after the run: transfer")));
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Each decision says what its sizes cost: the keys it holds and those it measured
    // itself, fewer once sizes were known (published, or in the holder's cache).
    let decisions: Vec<serde_json::Value> = sidecars
        .iter()
        .flat_map(|s| {
            s.logs().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).collect::<Vec<_>>()
        })
        .filter(|v| v["fields"]["message"].as_str().is_some_and(|m| m.starts_with("decision: ")))
        .map(|v| v["fields"].clone())
        .collect();
    assert!(decisions.iter().all(|d| d["keys"].as_u64() >= Some(8_000)), "{decisions:?}");
    assert!(
        decisions.iter().any(|d| d["keys_measured_now"].as_u64().is_some_and(|n| n < 8_000)),
        "every decision measured every key: {decisions:?}"
    );
    // Each measured its own master at start and published the sizes, under its lease.
    let mut ids: Vec<String> = sidecars.iter().map(published_by).collect();
    ids.sort();
    assert_eq!(published(&etcd).await, ids);
    // SIGTERM: each stops cleanly and quickly.
    for s in sidecars.iter_mut() {
        let (code, took) = s.terminate();
        assert_eq!(code, Some(0), "{}", s.logs());
        assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    }
    assert!(published(&etcd).await.is_empty(), "the tables went with their sidecars");
    // slot -> outcomes from every sidecar.
    let mut slots: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for s in &sidecars {
        for e in s.events("scheduled run done") {
            let f = &e["fields"];
            slots
                .entry(f["slot"].as_str().unwrap().to_string())
                .or_default()
                .push((f["outcome"].as_str().unwrap().to_string(), f["reason"].as_str().unwrap().to_string()));
        }
    }
    let complete = slots.values().filter(|v| v.len() == 3).count();
    assert!(complete >= 2, "too few complete slots: {slots:?}");
    let mut rebalanced = 0;
    let mut all_locked_out = 0;
    for (slot, outcomes) in &slots {
        let evaluations =
            outcomes.iter().filter(|(_, r)| r != "lock_held_elsewhere" && r != "already_ran_this_slot").count();
        // Never two evaluations of one slot, across the fleet.
        assert!(evaluations <= 1, "slot {slot}: {outcomes:?}");
        if outcomes.len() == 3 && evaluations == 0 {
            // Only the slot after a rebalance that outlasted its own may pass unevaluated.
            all_locked_out += 1;
        }
        rebalanced += outcomes.iter().filter(|(o, _)| o == "rebalanced").count();
    }
    assert!(all_locked_out <= 1, "{slots:?}");
    assert_eq!(rebalanced, 1, "{slots:?}");
    assert_eq!(c.digest().await.unwrap(), before);
    assert!(c.open_slots().await.unwrap().is_empty());
}

async fn a_killed_lock_holder_is_taken_over_and_repaired(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(6_000, 12).await.unwrap();
    let before = c.digest().await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The legacy mover: a slot left half-moved is its state to repair.
    let slow = "[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n[execution]\nmax-bytes-per-second = \"200KiB\"\nmigrate-batch-keys = 5\nmigration = \"legacy\"\n";
    let mut sidecars: Vec<SidecarProc> = c.master_addrs()[..2]
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let cfg = sidecar_config(
                &c,
                dir.path(),
                m,
                &format!("\n[schedule]\ncron = \"*/2 * * * * *\"\n{slow}"),
                &etcd,
                "2s",
            );
            SidecarProc::start(dir.path(), &format!("k{i}"), &cfg)
        })
        .collect();
    // Wait for a holder that is moving with a slot open, then SIGKILL it.
    let mut victim = None;
    wait_for(30, "a sidecar moving with an open slot", || {
        for (i, s) in sidecars.iter().enumerate() {
            if let Ok((200, body)) = get(&s.url("/status"))
                && json(&body)["state"] == "moving"
            {
                victim = Some(i);
                return true;
            }
        }
        false
    });
    for i in 0.. {
        if !c.open_slots().await.unwrap().is_empty() {
            break;
        }
        assert!(i < 200, "no slot was open while moving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let v = victim.unwrap();
    sidecars[v].kill9();
    let survivor = &sidecars[1 - v];
    // The survivor takes over after the lease expires, repairs, and finishes.
    wait_for(90, "the survivor to finish a rebalance", || {
        survivor.metric("autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0
    });
    assert!(survivor.logs().contains("repair: slot"), "{}", survivor.logs());
    assert!(c.open_slots().await.unwrap().is_empty());
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert_eq!(c.digest().await.unwrap(), before);
    // The killed sidecar's size table expired with its lease; the survivor's stays.
    let (gone, kept) = (published_by(&sidecars[v]), published_by(survivor));
    assert_ne!(gone, kept);
    for i in 0.. {
        let now = published(&etcd).await;
        if now == [kept.clone()] {
            break;
        }
        assert!(i < 300, "tables in etcd: {now:?}; {gone} was killed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_skips_with_lock_unavailable_and_recovers() {
    let mut etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    let cfg = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n[schedule]\ncron = \"* * * * * *\"\n{}\n{FAST}",
        snap.display(),
        etcd_section(&etcd, "2s")
    );
    let s = SidecarProc::start(dir.path(), "o", &cfg);
    wait_for(90, "a first rebalance", || s.metric("autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0);
    assert_eq!(get(&s.url("/readyz")).unwrap().0, 200);
    assert_eq!(s.metric("autobalancer_etcd_up"), 1.0);
    etcd.stop();
    wait_for(20, "lock_unavailable skips", || s.metric("autobalancer_skips_total{reason=\"lock_unavailable\"}") >= 2.0);
    wait_for(20, "etcd_up to fall", || s.metric("autobalancer_etcd_up") == 0.0);
    wait_for(20, "readyz to say why", || {
        let (code, body) = get(&s.url("/readyz")).unwrap();
        code == 503 && body.contains("etcd unavailable")
    });
    assert_eq!(get(&s.url("/healthz")).unwrap().0, 200, "the process stays up");
    etcd.restart().unwrap();
    let evaluated = s.metric("autobalancer_skips_total{reason=\"below_threshold\"}")
        + s.metric("autobalancer_skips_total{reason=\"nothing_to_move\"}");
    wait_for(90, "runs to succeed again", || {
        s.metric("autobalancer_skips_total{reason=\"below_threshold\"}")
            + s.metric("autobalancer_skips_total{reason=\"nothing_to_move\"}")
            > evaluated
    });
    wait_for(20, "readyz 200 again", || get(&s.url("/readyz")).unwrap().0 == 200);
    wait_for(20, "etcd_up again", || s.metric("autobalancer_etcd_up") == 1.0);
}

/// A sidecar whose etcd is down when it starts measures its master, says it cannot
/// publish, and publishes once etcd is back.
async fn sizes_are_published_once_etcd_is_back(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).start().await.unwrap();
    c.load_skewed(2_000, 5).await.unwrap();
    let mut etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let member = c.master_addrs()[0].clone();
    etcd.stop();
    let cfg =
        sidecar_config(&c, dir.path(), &member, "sizing-refresh = \"10s\"\n[schedule]\nenabled = false\n", &etcd, "3s");
    let s = SidecarProc::start(dir.path(), "p", &cfg);
    wait_for(30, "a refresh that cannot publish", || !s.events("cannot publish the member's sizes").is_empty());
    assert_eq!(s.metric("autobalancer_size_refresh_timestamp_seconds"), 0.0);
    etcd.restart().unwrap();
    wait_for(60, "the sizes published", || !s.events("sizes published").is_empty());
    assert_eq!(published(&etcd).await, [published_by(&s)]);
    assert!(s.metric("autobalancer_size_refresh_timestamp_seconds") > 1e9);
}

/// When a JSON log line was written.
fn logged_at(e: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    let t = e["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {e}"));
    chrono::DateTime::parse_from_rfc3339(t).unwrap().to_utc()
}

/// With runs every 20 s and a refresh interval of 40 s, the refresh after the one at start
/// is timed to end shortly before a run: twice the last refresh's time plus 10 s ahead.
async fn a_refresh_ends_shortly_before_a_scheduled_run(engine: Engine) {
    let c = ClusterSpec::new(engine, 2, 0).start().await.unwrap();
    c.load_skewed(2_000, 7).await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let member = c.master_addrs()[0].clone();
    // The runs decide and move nothing: the data is far below minimum-size.
    let lines = "sizing-refresh = \"40s\"\n[schedule]\ncron = \"*/20 * * * * *\"\n[balance]\nminimum-size = \"1TiB\"\n";
    let cfg = sidecar_config(&c, dir.path(), &member, lines, &etcd, "3s");
    let s = SidecarProc::start(dir.path(), "aligned", &cfg);
    wait_for(30, "the refresh at start", || !s.events("sizes published").is_empty());
    // The next run at least 10 s away is 20 to 40 s after the start: the refresh ahead of
    // it comes before the 40 s interval would bring one.
    wait_for(35, "a refresh ahead of a run", || s.events("sizes published").len() >= 2);
    let published = s.events("sizes published");
    let took = published[0]["fields"]["seconds"].as_f64().unwrap();
    let ended = logged_at(&published[1]);
    let next_run = (ended.timestamp() / 20 + 1) * 20;
    let ahead = (next_run * 1000 - ended.timestamp_millis()) as f64 / 1000.0;
    assert!(
        (3.0..=10.5 + 2.0 * took).contains(&ahead),
        "the refresh ended {ahead:.2} s before the run at {next_run} (the one before took {took:.3} s): {}",
        s.logs()
    );
    assert!(observer(&etcd).size_tables().await.unwrap().iter().any(|t| t.member == published_by(&s)));
}

async fn a_lease_lost_mid_run_stops_before_the_next_move(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(8_000, 13).await.unwrap();
    let before = c.digest().await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        sidecar_config(
            &c,
            dir.path(),
            &c.master_addrs()[0],
            "\n[balance]\nminimum-size = 0\n[execution]\nmax-bytes-per-second = \"300KiB\"\nmigrate-batch-keys = 10\nmigration = \"legacy\"\n",
            &etcd,
            "2s",
        ),
    )
    .unwrap();
    let owners = c.slot_owners().await.unwrap();
    let child = bin()
        .args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Revoke the lock's lease once the run holds it.
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    let mut lease = 0;
    for _ in 0..100 {
        let r = client.get("/ab-test/t/lock", None).await.unwrap();
        if let Some(kv) = r.kvs().first() {
            lease = kv.lease();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(lease, 0, "the run never took the lock");
    // Once a first move has committed (a slot changed owner): the run is mid-way.
    for i in 0.. {
        if c.slot_owners().await.unwrap() != owners {
            break;
        }
        assert!(i < 600, "no move committed within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.lease_revoke(lease).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stopped"], "the lock was lost", "{v:#}\n{}", String::from_utf8_lossy(&out.stderr));
    let planned = v["moves"].as_array().unwrap().len() as u64;
    let done: u64 = v["report"].as_array().unwrap().iter().map(|r| r["accepted_unload"].as_u64().unwrap()).sum();
    assert!(done > 0 && done < planned, "done {done} of {planned}");
    // A move whose commit found the lock lost stays open and recorded for the next holder.
    let open = c.open_slots().await.unwrap();
    let intents = client.get("/ab-test/t/moves/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert!(open.is_empty() || !intents.kvs().is_empty(), "open slots {open:?} without a recorded intent");
    // The next holder settles it; nothing is lost.
    let out = bin().args(["rebalance", "--config", cfg.to_str().unwrap(), "--once"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    c.wait_ok(Duration::from_secs(10)).await.unwrap();
    assert!(c.open_slots().await.unwrap().is_empty(), "a slot was left open");
    let left = client.get("/ab-test/t/moves/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert!(left.kvs().is_empty(), "intents left after repair");
    assert_eq!(c.digest().await.unwrap(), before);
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_with_client_tls_and_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ],
    );
    for (name, cn) in [("server", "127.0.0.1"), ("client", "root")] {
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "1",
                "-extfile",
                "ext.cnf",
            ],
        );
    }
    let p = |f: &str| d.join(f).to_str().unwrap().to_string();
    let etcd = LocalEtcd::start_with(
        vec![
            "--cert-file".into(),
            p("server.pem"),
            "--key-file".into(),
            p("server.key"),
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            p("ca.pem"),
        ],
        "https",
    )
    .unwrap();
    // Enable authentication with a root user.
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(d.join("ca.pem")).unwrap()))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(d.join("client.pem")).unwrap(),
            std::fs::read(d.join("client.key")).unwrap(),
        ));
    let mut admin =
        etcd_client::Client::connect([etcd.endpoint()], Some(etcd_client::ConnectOptions::new().with_tls(tls.clone())))
            .await
            .unwrap();
    admin.user_add("root", "etcd-pw-1", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let snap = d.join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    std::fs::write(d.join("etcd-password"), "etcd-pw-1\n").unwrap();
    let cfg = d.join("c.toml");
    let write_cfg = |password_file: &str| {
        std::fs::write(
            &cfg,
            format!(
                "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n{FAST}\n[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-test\"\nusername = \"root\"\npassword-file = \"{}\"\nca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n",
                snap.display(), etcd.endpoint(), p(password_file), p("ca.pem"), p("client.pem"), p("client.key")
            ),
        )
        .unwrap();
    };
    write_cfg("etcd-password");
    let out =
        bin().args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["action"], "rebalance", "{v:#}\n{}", String::from_utf8_lossy(&out.stderr));
    // The run record went through the authenticated, encrypted connection.
    let mut root = etcd_client::Client::connect(
        [etcd.endpoint()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls).with_user("root", "etcd-pw-1")),
    )
    .await
    .unwrap();
    let r = root.get("/ab-test/t/runs/last", None).await.unwrap();
    let rec: serde_json::Value = serde_json::from_slice(r.kvs()[0].value()).unwrap();
    assert_eq!(rec["outcome"], "rebalanced");
    // A wrong password: the run skips with lock_unavailable, naming etcd.
    std::fs::write(d.join("bad-password"), "nope\n").unwrap();
    write_cfg("bad-password");
    let out =
        bin().args(["rebalance", "--config", cfg.to_str().unwrap(), "--once", "--format", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["reason"], "lock_unavailable", "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_every_call_and_its_metrics_pass_promtool() {
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    std::fs::write(dir.path().join("token"), "tok-123\n").unwrap();
    let cfg = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n[schedule]\ncron = \"0 0 3 * * *\"\n{}\n{FAST}",
        snap.display(),
        etcd_section(&etcd, "3s")
    );
    let token = format!("token-file = \"{}\"", dir.path().join("token").display());
    let s = SidecarProc::start_with(dir.path(), "api", &cfg, &token);

    // /metrics passes promtool and carries every metric of the design.
    let (code, metrics) = get(&s.url("/metrics")).unwrap();
    assert_eq!(code, 200);
    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool not found: install Debian's prometheus package (the test command does)");
    use std::io::Write;
    let mut promtool = promtool;
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for m in [
        "autobalancer_runs_total",
        "autobalancer_skips_total",
        "autobalancer_lock_held",
        "autobalancer_lock_acquisitions_total",
        "autobalancer_last_run_timestamp_seconds",
        "autobalancer_next_run_timestamp_seconds",
        "autobalancer_transfer_size_bytes",
        "autobalancer_cluster_size_bytes",
        "autobalancer_transfer_ratio",
        "autobalancer_moves_total",
        "autobalancer_moved_bytes_total",
        "autobalancer_rebalance_in_progress",
        "autobalancer_rebalance_moves_planned",
        "autobalancer_rebalance_moves_done",
        "autobalancer_move_duration_seconds",
        "autobalancer_plan_duration_seconds",
        "autobalancer_snapshot_duration_seconds",
        "autobalancer_build_info",
    ] {
        assert!(metrics.contains(&format!("# TYPE {m} ")), "{m} missing");
    }
    assert!(metric(&metrics, "autobalancer_next_run_timestamp_seconds") > 1e9);

    assert_eq!(get(&s.url("/healthz")).unwrap().0, 200);
    wait_for(10, "readyz", || get(&s.url("/readyz")).unwrap().0 == 200);
    let st = json(&get(&s.url("/status")).unwrap().1);
    assert_eq!(st["member"], "10.0.0.1:7001");
    assert_eq!(st["state"], "idle");
    assert!(st["next_run"].is_string(), "{st:#}");
    assert_eq!(st["schedule"]["cron"], "0 0 3 * * *");
    // A dry run sizes the whole cluster: it needs the token too.
    let (code, body) = get(&s.url("/plan")).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (401, serde_json::json!("unauthorized")), "{body}");
    let (code, body) = call("GET", &s.url("/plan"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let plan = json(&body);
    assert_eq!(plan["decision"]["action"], "rebalance");

    // Mutating calls need the token; errors are JSON with 4xx codes.
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!(code, 401);
    assert_eq!(json(&body)["error"]["code"], "unauthorized");
    let (code, _) = call("PUT", &s.url("/rebalance"), Some("wrong"), None).unwrap();
    assert_eq!(code, 403);
    let (code, body) = call("PUT", &s.url("/rebalance?force=maybe"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 400, "{body}");
    let (code, body) = call("PUT", &s.url("/rebalance?bogus=1"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("bogus"));
    let (code, body) = get(&s.url("/no/such/thing")).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (404, serde_json::json!("not_found")));
    let (code, body) = call("DELETE", &s.url("/rebalance"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 405, "{body}");
    json(&body);
    let (code, body) = call("POST", &s.url("/evacuation/start"), Some("tok-123"), Some("{not json")).unwrap();
    assert_eq!(code, 400, "{body}");
    json(&body);
    let (code, body) = call("POST", &s.url("/rebalance/stop"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 409, "{body}");

    // PUT /rebalance runs now and answers per member.
    let (code, body) = call("PUT", &s.url("/rebalance"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    let report = v["report"].as_array().unwrap();
    assert_eq!(report.len(), 4);
    for r in report {
        for k in ["previous_buckets", "requested_unload", "accepted_unload", "current_buckets"] {
            assert!(r[k].is_u64(), "{k} missing in {r}");
        }
    }
    let accepted: u64 = report.iter().map(|r| r["accepted_unload"].as_u64().unwrap()).sum();
    assert!(accepted > 0);
    // Again: converged, a clear answer, not an error.
    let (code, body) = call("PUT", &s.url("/rebalance"), Some("tok-123"), None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["message"], "No buckets found for rebalance.");
    let m = get(&s.url("/metrics")).unwrap().1;
    assert_eq!(metric(&m, "autobalancer_runs_total{outcome=\"rebalanced\"}"), 1.0);
    assert!(metric(&m, "autobalancer_moved_bytes_total") > 0.0);
    assert_eq!(metric(&m, "autobalancer_lock_held"), 0.0);
    // One decision line per run, with its figures.
    let decisions = s.logs().matches("\"message\":\"decision: ").count();
    assert!(decisions >= 2, "{}", s.logs());
}

#[test]
fn a_non_loopback_api_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[cluster]\nid = \"t\"\nseeds = [\"127.0.0.1:1\"]\n[api]\nlisten = \"0.0.0.0:9410\"\n")
        .unwrap();
    let out = bin().args(["run", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.token-file"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_stops_at_a_safe_point_and_releases_the_lock() {
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    // ~146 MiB to move at 20 MiB/s: several seconds of moving.
    let cfg = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n[schedule]\ncron = \"0 0 3 * * *\"\n{}\n[balance]\nminimum-size = 0\n[execution]\nmax-bytes-per-second = \"20MiB\"\n",
        snap.display(),
        etcd_section(&etcd, "3s")
    );
    let mut s = SidecarProc::start(dir.path(), "t", &cfg);
    let url = s.url("/rebalance");
    let put = std::thread::spawn(move || call("PUT", &url, None, None));
    wait_for(10, "moving", || json(&get(&s.url("/status")).unwrap().1)["state"] == "moving");
    let (code, took) = s.terminate();
    assert_eq!(code, Some(0), "{}", s.logs());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // The on-demand caller got its answer: stopped, with what was done.
    let (code, body) = put.join().unwrap().unwrap();
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["stopped"], "stopped on request");
    let done: u64 = v["report"].as_array().unwrap().iter().map(|r| r["accepted_unload"].as_u64().unwrap()).sum();
    assert!(done > 0 && done < v["moves"].as_array().unwrap().len() as u64, "{done}");
    // The moves done are in the file, the lock and the registration are gone.
    let after = autobalancer::model::ClusterSnapshot::read_file(&snap).unwrap();
    let on_new = after.buckets.iter().filter(|b| b.copies[0] == 3).count() as u64;
    assert!(on_new > 0 && on_new <= done);
    let mut client = etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap();
    assert!(client.get("/ab-test/t/lock", None).await.unwrap().kvs().is_empty(), "lock not released");
    let reg = client.get("/ab-test/t/sidecars/", Some(etcd_client::GetOptions::new().with_prefix())).await.unwrap();
    assert!(reg.kvs().is_empty(), "registration not removed");
}

#[test]
fn a_disabled_schedule_never_wakes_but_serves_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    let cfg = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n[schedule]\ncron = \"* * * * * *\"\nenabled = false\n{FAST}",
        snap.display()
    );
    let s = SidecarProc::start(dir.path(), "off", &cfg);
    std::thread::sleep(Duration::from_millis(2500));
    let m = get(&s.url("/metrics")).unwrap().1;
    assert_eq!(metric(&m, "autobalancer_skips_total{reason=\"disabled\"}"), 1.0);
    assert_eq!(metric(&m, "autobalancer_next_run_timestamp_seconds"), 0.0);
    assert_eq!(metric(&m, "autobalancer_runs_total{outcome=\"rebalanced\"}"), 0.0);
    let st = json(&get(&s.url("/status")).unwrap().1);
    assert_eq!(st["schedule"]["enabled"], false);
    assert!(st["next_run"].is_null());
    // On demand still works.
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["moved_bytes"].as_u64().unwrap() > 0);
}

/// `execution.shutdown-timeout`'s default. Once the key exists, the test config should
/// set it to "3s" and this bound follow.
/// The test's `execution.shutdown-timeout`.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);

fn redis_pids(c: &LocalCluster) -> Vec<String> {
    c.nodes.iter().filter_map(|n| n.proc.as_ref()).map(|p| p.child.id().to_string()).collect()
}

fn signal(sig: &str, pids: &[String]) {
    let status = std::process::Command::new("kill").arg(format!("-{sig}")).args(pids).status().unwrap();
    assert!(status.success(), "kill -{sig} {pids:?}");
}

async fn sigterm_with_every_redis_node_frozen_mid_move_exits_within_the_shutdown_timeout(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(6_000, 14).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let slow = "[schedule]\ncron = \"0 0 3 * * *\"\n[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n[execution]\nmax-bytes-per-second = \"100KiB\"\nmigrate-batch-keys = 5\nshutdown-timeout = \"4s\"\nmigration = \"legacy\"\n";
    let mut s = SidecarProc::start(
        dir.path(),
        "frozen",
        &format!("{}{slow}", cluster_section(&c, dir.path(), Some(&c.master_addrs()[0]))),
    );
    let url = s.url("/rebalance");
    let caller = std::thread::spawn(move || call("PUT", &url, None, None));
    wait_for(30, "moving", || json(&get(&s.url("/status")).unwrap().1)["state"] == "moving");
    for i in 0.. {
        if !c.open_slots().await.unwrap().is_empty() {
            break;
        }
        assert!(i < 200, "no slot was open while moving");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every node hangs mid-move; then the orchestrator asks the sidecar to stop.
    let pids = redis_pids(&c);
    signal("STOP", &pids);
    let (code, took) = s.terminate();
    signal("CONT", &pids);
    assert_eq!(code, Some(0), "{}", s.logs());
    assert!(took < SHUTDOWN_TIMEOUT + Duration::from_secs(5), "took {took:?}\n{}", s.logs());
    assert!(s.logs().contains("shutdown timeout reached"), "{}", s.logs());
    // The caller got an answer saying so, rather than a hang.
    let (code, body) = caller.join().unwrap().unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (500, serde_json::json!("run_lost")), "{body}");
}

/// Starts `autobalancer run` with `env` set, without waiting for its API.
fn spawn_with_env(dir: &std::path::Path, name: &str, config: &str, env: &[(&str, &str)]) -> SidecarProc {
    let api = format!("127.0.0.1:{}", autobalancer_testkit::free_port());
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg, format!("{config}\n[api]\nlisten = \"{api}\"\n")).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = bin()
        .args(["run", "--config", cfg.to_str().unwrap()])
        .env("AUTOBALANCER_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    SidecarProc { child: Some(child), api, log, config: cfg }
}

/// Waits for the process to exit; its code.
fn exit_code(s: &mut SidecarProc, within: Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    let child = s.child.as_mut().unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            s.child = None;
            return status.code();
        }
        assert!(std::time::Instant::now() < deadline, "still running after {within:?}: {}", s.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_task_that_panics_fails_healthz_and_the_process_exits_non_zero() {
    if !cfg!(debug_assertions) {
        eprintln!("failpoints are read by debug builds only");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // Six 32 MiB buckets on one of two members, moved at 8 MiB/s: three moves, one every
    // 4 s, so one is in flight when the second heartbeat (5 s after start) panics, and
    // the shutdown waits for it with /healthz answering 503.
    let snap = dir.path().join("cluster.json");
    let buckets: Vec<String> =
        (0..6).map(|i| format!("{{\"id\":{i},\"bytes\":33554432,\"copies\":[\"a\"]}}")).collect();
    std::fs::write(
        &snap,
        format!(
            "{{\"version\":1,\"members\":[{{\"id\":\"a\"}},{{\"id\":\"b\"}}],\"buckets\":[{}]}}",
            buckets.join(",")
        ),
    )
    .unwrap();
    let cfg = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"a\"\n[schedule]\ncron = \"0 0 3 * * *\"\n[balance]\nminimum-size = 0\n[execution]\nmax-bytes-per-second = \"8MiB\"\n",
        snap.display()
    );
    let mut s = spawn_with_env(dir.path(), "panic", &cfg, &[("FAILPOINTS", "heartbeat=1*off->panic")]);
    wait_for(15, "the API", || get(&s.url("/healthz")).is_ok_and(|(code, _)| code == 200));
    let url = s.url("/rebalance");
    std::thread::spawn(move || call("PUT", &url, None, None));
    let mut unhealthy = None;
    wait_for(15, "/healthz to fail", || match get(&s.url("/healthz")) {
        Ok((503, body)) => {
            unhealthy = Some(body);
            true
        }
        _ => false,
    });
    let v = json(&unhealthy.unwrap());
    assert_eq!(v["error"]["code"], "unhealthy");
    assert!(v["error"]["message"].as_str().unwrap().contains("heartbeat panicked"), "{v}");
    assert_eq!(exit_code(&mut s, Duration::from_secs(20)), Some(1), "{}", s.logs());
    assert!(s.logs().contains("supervised task failed"), "{}", s.logs());

    // A task that ends before shutdown was asked for is a failure too.
    let mut s = spawn_with_env(dir.path(), "return", &cfg, &[("FAILPOINTS", "heartbeat=return")]);
    assert_eq!(exit_code(&mut s, Duration::from_secs(20)), Some(1), "{}", s.logs());
    assert!(s.logs().contains("ended unexpectedly"), "{}", s.logs());
}

on_each_engine!(
    sigterm_with_every_redis_node_frozen_mid_move_exits_within_the_shutdown_timeout,
    three_sidecars_give_one_evaluation_per_slot_and_one_rebalance,
    a_killed_lock_holder_is_taken_over_and_repaired,
    a_lease_lost_mid_run_stops_before_the_next_move,
    sizes_are_published_once_etcd_is_back,
    a_refresh_ends_shortly_before_a_scheduled_run,
);
