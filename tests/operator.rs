//! Operator features against real etcd and Redis: evacuation, pause, on-demand
//! rebalance answers, fleet status, and refusal of bad input.

mod common;

use std::time::Duration;

use autobalancer_testkit::{ClusterSpec, Engine, LocalEtcd, on_each_engine};
use common::*;

fn etcd_section(etcd: &LocalEtcd) -> String {
    format!("[etcd]\nendpoints = [\"{}\"]\nprefix = \"/ab-op\"\nlease-ttl = \"3s\"\n", etcd.endpoint())
}

const QUIET: &str = "[schedule]\ncron = \"0 0 3 * * *\"\n[balance]\nminimum-size = 0\nsize-threshold-percent = 1\n[execution]\nmax-bytes-per-second = 0\nmax-concurrent-moves = 4\nmax-moves-per-member = 4\n";

async fn evacuation_drains_a_master_and_the_503_outlives_a_restart(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    c.load_skewed(8_000, 21).await.unwrap();
    let before = c.digest().await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let masters = c.master_addrs();
    // Members are named by node id, whatever address the config gives.
    let ids: Vec<String> = masters.iter().map(|a| c.id_of(a).unwrap().to_string()).collect();
    let mut s0 = SidecarProc::start(
        dir.path(),
        "e0",
        &format!("{}{}{QUIET}", cluster_section(&c, dir.path(), Some(&masters[0])), etcd_section(&etcd)),
    );
    let s1 = SidecarProc::start(
        dir.path(),
        "e1",
        &format!("{}{}{QUIET}", cluster_section(&c, dir.path(), Some(&masters[1])), etcd_section(&etcd)),
    );
    assert_eq!(get(&s0.url("/availability")).unwrap().0, 200);

    let cfg0 = s0.config.to_str().unwrap().to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        // Bounded: a sidecar that wedged mid-evacuation fails here with its log.
        cli_within(&["evacuate", "start", "--config", &cfg0, "--rate", "50MiB", "--wait"], Duration::from_secs(300))
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}\n{err}\n{}", s0.logs());
    assert!(out.contains("evacuated"), "{out}");
    // --wait reported progress on the way down (off a terminal: plain lines on stderr).
    assert!(err.lines().any(|l| l.starts_with("moved ") && l.contains(" slots, ")), "{err}");
    // Nothing left on the member, nothing lost.
    assert_eq!(c.key_counts().await.unwrap()[&masters[0]], 0);
    assert!(c.slot_owners().await.unwrap().iter().all(|o| *o != masters[0]));
    assert_eq!(c.digest().await.unwrap(), before);
    let (code, body) = get(&s0.url("/availability")).unwrap();
    assert_eq!((code, json(&body)["state"].clone()), (503, serde_json::json!("evacuated")));
    let st = json(&get(&s0.url("/status")).unwrap().1);
    assert_eq!(st["evacuation"]["buckets_left"], 0, "{st:#}");
    assert_eq!(s0.metric("autobalancer_evacuation_buckets_left"), 0.0);
    assert!(s0.logs().contains("evacuation round done"), "{}", s0.logs());

    // The state is in etcd: it survives a restart of the sidecar.
    let (code, _) = s0.terminate();
    assert_eq!(code, Some(0));
    s0.spawn();
    wait_for(10, "503 after restart", || get(&s0.url("/availability")).unwrap().0 == 503);

    // A rebalance never moves buckets back onto the evacuated member.
    let (code, body) = call("PUT", &s1.url("/rebalance?force=true"), None, None).unwrap();
    assert!(code == 200, "{body}");
    assert!(c.slot_owners().await.unwrap().iter().all(|o| *o != masters[0]));

    // Fleet status lists both sidecars, the evacuation and their states.
    let cfg1 = s1.config.to_str().unwrap().to_string();
    let mut fleet = serde_json::Value::Null;
    wait_for(15, "the fleet status to show the evacuated member", || {
        let (code, out, _) = cli(&["status", "--config", &cfg1, "--cluster"]);
        if code != 0 {
            return false;
        }
        fleet = json(&out);
        fleet["sidecars"].as_array().is_some_and(|s| {
            s.len() == 2
                && s.iter().any(|x| x["member"] == ids[0].as_str() && x["state"] == "evacuated")
                && s.iter().any(|x| x["member"] == ids[1].as_str() && !x["last_decision"].is_null())
        })
    });
    assert_eq!(fleet["evacuations"][0]["member"], ids[0].as_str());
    let e1 = fleet["sidecars"].as_array().unwrap().iter().find(|s| s["member"] == ids[1].as_str()).unwrap();
    assert_eq!(e1["address"], masters[1].as_str(), "{e1:#}");
    for k in ["state", "last_decision", "next_run", "progress", "version"] {
        assert!(!e1[k].is_null(), "{k} missing: {e1:#}");
    }

    // Stop: available again, and the member may receive buckets again.
    let cfg0 = s0.config.to_str().unwrap().to_string();
    let (code, _, err) = cli(&["evacuate", "stop", "--config", &cfg0]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(get(&s0.url("/availability")).unwrap().0, 200);
    let (code, body) = call("PUT", &s1.url("/rebalance"), None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(c.key_counts().await.unwrap()[&masters[0]] > 0, "{}", &body[..body.len().min(3000)]);
    assert_eq!(c.digest().await.unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_blocks_scheduled_and_on_demand_runs() {
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    let cluster = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n",
        snap.display()
    );
    // Paused before the sidecar's first slot.
    let cfg = dir.path().join("pre.toml");
    std::fs::write(&cfg, format!("{cluster}{}", etcd_section(&etcd))).unwrap();
    let (code, out, err) = cli(&["pause", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("paused by"));
    let every_second = QUIET.replace("0 0 3 * * *", "* * * * * *");
    let s = SidecarProc::start(dir.path(), "p", &format!("{cluster}{}{every_second}", etcd_section(&etcd)));
    wait_for(15, "paused skips", || s.metric("autobalancer_skips_total{reason=\"paused\"}") >= 2.0);
    assert_eq!(s.metric("autobalancer_runs_total{outcome=\"rebalanced\"}"), 0.0);
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!(code, 409, "{body}");
    assert_eq!(json(&body)["error"]["code"], "paused");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("paused"));
    assert!(json(&get(&s.url("/status")).unwrap().1)["paused"].is_string());
    // An evacuation asked for while paused measures what is left and waits: the gauges
    // show it; stopped, they fall back to 0.
    let (code, body) = call("POST", &s.url("/evacuation/start"), None, Some("{}")).unwrap();
    assert_eq!(code, 202, "{body}");
    wait_for(15, "the bytes left shown", || s.metric("autobalancer_evacuation_bytes_left") > 0.0);
    assert!(s.metric("autobalancer_evacuation_buckets_left") > 0.0);
    let (code, body) = call("POST", &s.url("/evacuation/stop"), None, None).unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for(15, "the gauges cleared", || {
        s.metric("autobalancer_evacuation_bytes_left") == 0.0 && s.metric("autobalancer_evacuation_buckets_left") == 0.0
    });
    let (code, _, err) = cli(&["resume", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    // A run goes ahead once resumed: its first moves are done (the whole run of some 1500
    // moves, each fenced through etcd, can take long on a loaded machine).
    wait_for(60, "a run after resume", || {
        s.metric("autobalancer_rebalance_moves_done") >= 1.0
            || s.metric("autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_answers_and_their_errors() {
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // One member: standalone.
    let one = dir.path().join("one.json");
    std::fs::write(&one, r#"{"version":1,"members":[{"id":"a"}],"buckets":[{"id":0,"bytes":5,"copies":["a"]}]}"#)
        .unwrap();
    let s = SidecarProc::start(
        dir.path(),
        "one",
        &format!(
            "[cluster]\nid = \"one\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"a\"\n{}{QUIET}",
            one.display(),
            etcd_section(&etcd)
        ),
    );
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (409, serde_json::json!("standalone")), "{body}");
    drop(s);
    // Two members, one down: too few healthy.
    let down = dir.path().join("down.json");
    std::fs::write(&down, r#"{"version":1,"members":[{"id":"a"},{"id":"b","health":"down"}],"buckets":[{"id":0,"bytes":5,"copies":["a"]}]}"#).unwrap();
    let s = SidecarProc::start(
        dir.path(),
        "down",
        &format!(
            "[cluster]\nid = \"down\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"a\"\n{}{QUIET}",
            down.display(),
            etcd_section(&etcd)
        ),
    );
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (409, serde_json::json!("too_few_healthy")), "{body}");
    drop(s);
    // A slow run: a second call while it runs is refused.
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    let slow = QUIET.replace("max-bytes-per-second = 0", "max-bytes-per-second = \"40MiB\"");
    let s = SidecarProc::start(
        dir.path(),
        "slow",
        &format!(
            "[cluster]\nid = \"slow\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n{}{slow}",
            snap.display(),
            etcd_section(&etcd)
        ),
    );
    let url = s.url("/rebalance");
    let first = std::thread::spawn(move || call("PUT", &url, None, None).unwrap());
    wait_for(10, "the run to start", || json(&get(&s.url("/status")).unwrap().1)["state"] == "moving");
    // /status says who holds the lock, for what, and that it is held here.
    let st = json(&get(&s.url("/status")).unwrap().1);
    let lock = &st["lock"];
    assert_eq!(lock["holder"], st["member"], "{st:#}");
    assert_eq!((lock["operation"].as_str(), lock["held_here"].as_bool()), (Some("manual"), Some(true)), "{st:#}");
    assert!(lock["age_seconds"].as_f64().is_some_and(|a| a >= 0.0) && lock.get("error").is_none(), "{st:#}");
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (409, serde_json::json!("already_running")), "{body}");
    // Stop it: it ends at a safe point, and says so.
    let (code, _) = call("POST", &s.url("/rebalance/stop"), None, None).unwrap();
    assert_eq!(code, 200);
    let (code, body) = first.join().unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["stopped"], "stopped on request");
    // Repeated calls converge.
    let mut last = String::new();
    for _ in 0..3 {
        let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
        assert_eq!(code, 200, "{body}");
        last = body;
        if json(&last)["message"] == "No buckets found for rebalance." {
            break;
        }
    }
    assert_eq!(json(&last)["message"], "No buckets found for rebalance.", "{last}");
}

async fn bad_evacuation_input_is_refused_and_moves_nothing(engine: Engine) {
    let mut c = ClusterSpec::new(engine, 3, 0).start().await.unwrap();
    c.load_skewed(2_000, 22).await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let masters = c.master_addrs();
    let s0 = SidecarProc::start(
        dir.path(),
        "b0",
        &format!("{}{}{QUIET}", cluster_section(&c, dir.path(), Some(&masters[0])), etcd_section(&etcd)),
    );
    let cfg = s0.config.to_str().unwrap().to_string();
    let owners = c.slot_owners().await.unwrap();

    let (code, _, err) = cli(&["evacuate", "start", "--config", &cfg, "--rate", "-5"]);
    assert_eq!(code, 2);
    assert!(err.contains("--rate"), "{err}");
    let (code, _, err) = cli(&["evacuate", "start", "--config", &cfg, "--migrate-to", &masters[0]]);
    assert_eq!(code, 2);
    assert!(err.contains("--migrate-to") && err.contains(&masters[0]), "{err}");
    let (code, _, err) = cli(&["evacuate", "start", "--config", &cfg, "--migrate-to", "10.9.9.9:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown member") && err.contains("10.9.9.9:1"), "{err}");
    c.kill(&masters[2]);
    let (code, _, err) = cli(&["evacuate", "start", "--config", &cfg, "--migrate-to", &masters[2]]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot receive"), "{err}");
    // A sidecar whose member is not in the cluster cannot name it by node id: it says so
    // and serves nothing (no state is ever keyed by a name that may be reused), and a
    // SIGTERM still ends it at once.
    let mut ghost = SidecarProc::start_unready(
        dir.path(),
        "ghost",
        &format!("{}{}{QUIET}", cluster_section(&c, dir.path(), Some("127.0.0.1:1")), etcd_section(&etcd)),
    );
    wait_for(15, "the ghost to say why it waits", || ghost.logs().contains("names no node of the cluster"));
    assert!(ghost.logs().contains("cannot name the local member yet"), "{}", ghost.logs());
    assert!(get(&ghost.url("/healthz")).is_err());
    let (code, took) = ghost.terminate();
    assert_eq!(code, Some(0), "{}", ghost.logs());
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing was persisted or moved.
    assert_eq!(get(&s0.url("/availability")).unwrap().0, 200);
    let (_, out, _) = cli(&["evacuate", "status", "--config", &cfg]);
    assert_eq!(json(&out)["active"], false);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let now = c.slot_owners().await.unwrap();
    assert_eq!(now, owners);
}

async fn a_caller_that_goes_away_neither_stops_nor_wedges_the_run(engine: Engine) {
    let c = ClusterSpec::new(engine, 3, 1).start().await.unwrap();
    c.load_skewed(6_000, 23).await.unwrap();
    let before = c.digest().await.unwrap();
    let etcd = LocalEtcd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paced = QUIET.replace("max-bytes-per-second = 0", "max-bytes-per-second = \"100KiB\"\nmigrate-batch-keys = 5");
    let s = SidecarProc::start(
        dir.path(),
        "gone",
        &format!("{}{}{paced}", cluster_section(&c, dir.path(), Some(&c.master_addrs()[0])), etcd_section(&etcd)),
    );
    // A CLI user's Ctrl-C: the caller gives up after a second and drops the connection.
    let url = s.url("/rebalance");
    let gone = tokio::task::spawn_blocking(move || {
        ureq::put(&url).timeout(Duration::from_secs(1)).call().map(|r| r.status()).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    assert!(gone.is_err(), "the run ended within a second, nothing left to test: {gone:?}");
    // The sidecar still answers at once, and the run goes on.
    let st = json(&get(&s.url("/status")).unwrap().1);
    assert_eq!(st["operation"], "manual", "{st:#}");
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!((code, json(&body)["error"]["code"].clone()), (409, serde_json::json!("already_running")), "{body}");
    // It finishes by itself, leaves no slot open, loses nothing, and records its outcome.
    wait_for(120, "the run to finish", || s.metric("autobalancer_runs_total{outcome=\"rebalanced\"}") >= 1.0);
    let st = json(&get(&s.url("/status")).unwrap().1);
    assert_eq!((&st["state"], &st["last_outcome"]), (&serde_json::json!("idle"), &serde_json::json!("rebalanced")));
    let fleet = json(&get(&s.url("/status/cluster")).unwrap().1);
    assert_eq!(fleet["last_run"]["outcome"], "rebalanced", "{fleet:#}");
    assert!(fleet["last_run"]["moved_bytes"].as_u64().unwrap() > 0, "{fleet:#}");
    assert!(c.open_slots().await.unwrap().is_empty());
    assert_eq!(c.digest().await.unwrap(), before);
    // Nothing is wedged: the next call runs.
    let (code, body) = call("PUT", &s.url("/rebalance"), None, None).unwrap();
    assert_eq!(code, 200, "{body}");
}

/// A body sent as `content_type`.
fn send(method: &str, url: &str, content_type: &str, body: &[u8]) -> (u16, String) {
    match ureq::request(method, url).set("Content-Type", content_type).send_bytes(body) {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {url}: {e}"),
    }
}

/// POSTs a file as JSON with curl, which waits for `100 Continue` before a large upload
/// (as operators' clients do): the server can refuse it without reading it.
fn curl_post(url: &str, file: &std::path::Path) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-H", "Content-Type: application/json", "-H", "Expect: 100-continue", "-w", "\n%{http_code}"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn bad_bodies_get_json_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("cluster.json");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/redis-16384.json"), &snap).unwrap();
    let cluster = format!(
        "[cluster]\nid = \"t\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\nmember-id = \"10.0.0.1:7001\"\n{QUIET}",
        snap.display()
    );
    let s = SidecarProc::start(dir.path(), "bad", &cluster);
    let start = s.url("/evacuation/start");
    let error = |(code, body): (u16, String)| {
        let v = json(&body);
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
        (code, v["error"]["code"].as_str().unwrap().to_string())
    };
    // JSON that is not an object: an array used to start a full evacuation.
    for body in ["[]", "[1, 2]", "\"x\"", "null", "7"] {
        let (code, c) = error(send("POST", &start, "application/json", body.as_bytes()));
        assert_eq!((code, c.as_str()), (400, "bad_request"), "{body}");
    }
    // Too large, not declared JSON, a method the route does not take: the framework's own
    // rejections answer in the same shape.
    let big = dir.path().join("big.json");
    std::fs::write(&big, format!("{{\"migrate_to\": [\"{}\"]}}", "x".repeat(3 << 20))).unwrap();
    assert_eq!(error(curl_post(&start, &big)), (413, "payload_too_large".into()));
    assert_eq!(error(send("POST", &start, "text/plain", b"{}")), (415, "unsupported_media_type".into()));
    assert_eq!(error(call("PUT", &start, None, None).unwrap()), (405, "method_not_allowed".into()));
    assert_eq!(error(send("POST", &start, "application/json", b"{\"rate\": 1, \"bogus\": 2}")).0, 400);
    // Nothing started.
    assert_eq!(get(&s.url("/availability")).unwrap().0, 200);
    let st = json(&get(&s.url("/status")).unwrap().1);
    assert_eq!(st["evacuation"]["active"], false, "{st:#}");
    assert!(!s.logs().contains("evacuation round done"), "{}", s.logs());
    // A well-formed call still works.
    assert_eq!(send("POST", &start, "application/json", b"{}").0, 202);
}

#[test]
fn an_empty_token_file_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("empty", ""), ("blank", " \n\n")] {
        let token = dir.path().join(name);
        std::fs::write(&token, text).unwrap();
        let cfg = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "[cluster]\nid = \"t\"\nseeds = [\"127.0.0.1:1\"]\n[api]\nlisten = \"127.0.0.1:{}\"\ntoken-file = \"{}\"\n",
                autobalancer_testkit::free_port(),
                token.display()
            ),
        )
        .unwrap();
        let (code, _, err) = cli(&["run", "--config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("api.token-file") && err.contains("empty"), "{err}");
    }
}

on_each_engine!(
    a_caller_that_goes_away_neither_stops_nor_wedges_the_run,
    evacuation_drains_a_master_and_the_503_outlives_a_restart,
    bad_evacuation_input_is_refused_and_moves_nothing,
);
