//! Config tests: parsing, defaults, validation, the files a config names.

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_with_env(text, Vec::<(String, String)>::new())
}

const MIN: &str = "[cluster]\nid = \"orders\"\nseeds = [\"127.0.0.1:7001\"]\n";

#[test]
fn defaults_follow_the_design() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.balance.size_threshold_percent, 10);
    assert_eq!(c.balance.minimum_size, Size(100 * 1024 * 1024));
    assert_eq!(c.execution.max_run_time.0, Duration::from_secs(7200));
    assert_eq!(c.schedule.cron, "0 0 3 * * *");
    assert!(c.etcd.is_none());
    assert_eq!(c.member_id(), "127.0.0.1:7001");
}

#[test]
fn sizing_tls_and_mover_defaults() {
    let c = parse(MIN).unwrap();
    assert_eq!(c.cluster.sizing, Sizing::Exact);
    assert_eq!(c.cluster.sizing_keys_per_second, 100_000);
    assert_eq!(c.cluster.sizing_max_age.0, Duration::from_secs(3600));
    assert_eq!(c.cluster.sizing_refresh.0, Duration::from_secs(900));
    assert_eq!(c.cluster.slot_sample_keys, 64);
    assert!(!c.cluster.tls && c.cluster.ca_file.is_none() && c.cluster.cert_file.is_none());
    assert_eq!(c.execution.migration, Migration::Auto);
    assert_eq!(c.execution.max_key_bytes, Size(64 << 20));
    assert_eq!(c.execution.shutdown_timeout.0, Duration::from_secs(20));
    assert_eq!(c.execution.migrate_timeout.0, Duration::from_secs(60));
    assert_eq!(c.log.level, LogLevel::Info);
}

#[test]
fn the_new_keys_are_read() {
    let c = parse(&format!(
        "{MIN}sizing = \"sampled\"\nsizing-keys-per-second = 5000\nsizing-max-age = \"10m\"\nsizing-sample-keys = 200\n\
         sizing-refresh = \"0s\"\ntls = true\nca-file = \"/ca.pem\"\n[execution]\nmigration = \"legacy\"\nmax-key-bytes = \"1GiB\"\n\
         shutdown-timeout = \"5s\"\n[log]\nlevel = \"debug\"\n"
    ))
    .unwrap();
    assert_eq!(c.cluster.sizing, Sizing::Sampled);
    assert_eq!(c.cluster.sizing_keys_per_second, 5000);
    assert_eq!(c.cluster.sizing_max_age.0, Duration::from_secs(600));
    assert!(c.cluster.sizing_refresh.0.is_zero(), "0s: never");
    assert_eq!(c.cluster.slot_sample_keys, 200);
    assert!(c.cluster.tls);
    assert_eq!(c.execution.migration, Migration::Legacy);
    assert_eq!(c.execution.max_key_bytes, Size(1 << 30));
    assert_eq!(c.execution.shutdown_timeout.0, Duration::from_secs(5));
    assert_eq!(c.log.level.as_str(), "debug");
}

#[test]
fn slot_sample_keys_is_still_read_as_sizing_sample_keys() {
    let c = parse(&format!("{MIN}slot-sample-keys = 32\n")).unwrap();
    assert_eq!(c.cluster.slot_sample_keys, 32);
    let env = vec![("AUTOBALANCER_CLUSTER_SLOT_SAMPLE_KEYS".to_string(), "48".to_string())];
    assert_eq!(Config::from_toml_with_env(MIN, env).unwrap().cluster.slot_sample_keys, 48);
    let e = parse(&format!("{MIN}slot-sample-keys = 0\n")).unwrap_err();
    assert_eq!(e.lines(), vec!["cluster.sizing-sample-keys must be 1..=10000, got 0"]);
    let e = parse(&format!("{MIN}slot-sample-keys = 32\nsizing-sample-keys = 32\n")).unwrap_err();
    assert!(e.to_string().contains("sizing-sample-keys"), "{e}");
}

#[test]
fn every_enumeration_names_its_key_and_the_accepted_values() {
    let cases: [(&str, &str, &[&str]); 5] = [
        ("log", "level = \"loud\"", &["trace", "debug", "info", "warn", "error"]),
        ("log", "format = \"xml\"", &["text", "json"]),
        ("cluster", "backend = \"mongo\"", &["redis", "file"]),
        ("cluster", "sizing = \"guess\"", &["exact", "sampled"]),
        ("execution", "migration = \"fast\"", &["auto", "atomic", "legacy"]),
    ];
    for (section, line, accepted) in cases {
        let text = format!("[cluster]\nid = \"x\"\nseeds = [\"127.0.0.1:7001\"]\n[{section}]\n{line}\n");
        let text = text.replacen("[cluster]\n", "", (section == "cluster") as usize);
        let msg = parse(&text).unwrap_err().to_string();
        let key = format!("{section}.{}", line.split(' ').next().unwrap());
        assert!(msg.starts_with(&key), "{msg}");
        for v in accepted {
            assert!(msg.contains(&format!("`{v}`")), "{key}: {msg}");
        }
    }
    for level in ["trace", "debug", "info", "warn", "error"] {
        parse(&format!("{MIN}[log]\nlevel = \"{level}\"\n")).unwrap();
    }
}

#[test]
fn sizing_budget_and_mover_limits_are_checked() {
    let e = parse(&format!(
        "{MIN}sizing-keys-per-second = 10\nsizing-refresh = \"2s\"\n[execution]\nmax-key-bytes = 0\nshutdown-timeout = \"0s\"\n"
    ))
    .unwrap_err();
    assert_eq!(
        e.lines(),
        vec![
            "cluster.sizing-keys-per-second must be 100..=10000000, got 10",
            "cluster.sizing-refresh = 2s: at least 10s, or 0s to never refresh",
            "execution.max-key-bytes must be greater than 0 (a size such as \"64MiB\")",
            "execution.shutdown-timeout must be greater than 0 (a duration such as \"20s\")",
        ]
    );
}

#[test]
fn redis_tls_files_need_tls_and_go_together() {
    let e = parse(&format!("{MIN}ca-file = \"/ca.pem\"\ncert-file = \"/c.pem\"\n")).unwrap_err();
    assert_eq!(
        e.lines(),
        vec![
            "cluster.cert-file and cluster.key-file go together",
            "cluster.ca-file, cluster.cert-file and cluster.key-file need cluster.tls = true",
        ]
    );
    parse(&format!("{MIN}tls = true\ncert-file = \"/c.pem\"\nkey-file = \"/k.pem\"\n")).unwrap();
    parse(&format!("{MIN}tls = true\n")).unwrap();
}

#[test]
fn sizes_and_durations_in_the_file() {
    let c = parse(&format!("{MIN}[balance]\nminimum-size = 104857600\n[execution]\nmax-run-time = 90\n")).unwrap();
    assert_eq!(c.balance.minimum_size, Size(104_857_600));
    assert_eq!(c.execution.max_run_time.0, Duration::from_secs(90));
}

#[test]
fn errors_name_the_dotted_key_and_range() {
    let e = parse(&format!("{MIN}[balance]\nsize-threshold-percent = 0\n")).unwrap_err();
    assert_eq!(e.lines(), vec!["balance.size-threshold-percent must be 1..=99, got 0"]);
    let e = parse(&format!("{MIN}[balance]\nminimum-size = \"big\"\n")).unwrap_err();
    assert!(e.to_string().contains("balance.minimum-size"), "{e}");
    let e = parse(&format!("{MIN}[execution]\nmax-run-time = -1\n")).unwrap_err();
    assert!(e.to_string().contains("execution.max-run-time"), "{e}");
}

#[test]
fn unknown_keys_are_rejected_by_name() {
    let e = parse(&format!("{MIN}[balance]\nsize-treshold-percent = 10\n")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("size-treshold-percent"), "{msg}");
    let e = parse(&format!("{MIN}[balanse]\n")).unwrap_err();
    assert!(e.to_string().contains("balanse"), "{e}");
}

#[test]
fn invalid_cron_names_the_expression() {
    let e = parse(&format!("{MIN}[schedule]\ncron = \"every night\"\n")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("schedule.cron") && msg.contains("every night"), "{msg}");
    let e = parse(&format!("{MIN}[schedule]\ntimezone = \"Mars/Olympus\"\n")).unwrap_err();
    assert!(e.to_string().contains("schedule.timezone"), "{e}");
}

#[test]
fn all_errors_are_reported_together() {
    let e =
        parse("[cluster]\nid = \"\"\n[balance]\nsize-threshold-percent = 100\ntolerance-percent = 80\n").unwrap_err();
    let lines = e.lines();
    assert!(lines.len() >= 4, "{lines:?}");
    assert!(lines.iter().any(|l| l.starts_with("cluster.id")));
    assert!(lines.iter().any(|l| l.starts_with("cluster.seeds")));
    assert!(lines.iter().any(|l| l.contains("size-threshold-percent must be 1..=99, got 100")));
}

#[test]
fn environment_overrides_the_file() {
    let env = vec![
        ("AUTOBALANCER_BALANCE_SIZE_THRESHOLD_PERCENT".to_string(), "25".to_string()),
        ("AUTOBALANCER_BALANCE_MINIMUM_SIZE".to_string(), "1GiB".to_string()),
        ("AUTOBALANCER_SCHEDULE_ENABLED".to_string(), "false".to_string()),
        ("AUTOBALANCER_ETCD_ENDPOINTS".to_string(), "[\"http://10.0.0.1:2379\"]".to_string()),
        ("HOME".to_string(), "/root".to_string()),
    ];
    let c = Config::from_toml_with_env(MIN, env).unwrap();
    assert_eq!(c.balance.size_threshold_percent, 25);
    assert_eq!(c.balance.minimum_size, Size(1 << 30));
    assert!(!c.schedule.enabled);
    assert_eq!(c.etcd.unwrap().endpoints, vec!["http://10.0.0.1:2379"]);
    let bad = vec![("AUTOBALANCER_NOPE_X".to_string(), "1".to_string())];
    assert!(Config::from_toml_with_env(MIN, bad).unwrap_err().to_string().contains("AUTOBALANCER_NOPE_X"));
}

#[test]
fn non_loopback_api_needs_a_token() {
    let e = parse(&format!("{MIN}[api]\nlisten = \"0.0.0.0:9410\"\n")).unwrap_err();
    assert!(e.to_string().contains("api.token-file"), "{e}");
    parse(&format!("{MIN}[api]\nlisten = \"0.0.0.0:9410\"\ntoken-file = \"/t\"\n")).unwrap();
}

#[test]
fn file_backend_needs_a_snapshot() {
    let e = parse("[cluster]\nid = \"x\"\nbackend = \"file\"\n").unwrap_err();
    assert!(e.to_string().contains("cluster.snapshot-file"), "{e}");
    let e = parse("[cluster]\nid = \"x\"\nbackend = \"mongo\"\n").unwrap_err();
    assert!(e.to_string().contains("cluster.backend"), "{e}");
}

/// A config naming every kind of file, all in `dir`, with etcd and a token.
fn naming_files(dir: &std::path::Path) -> Config {
    let f = |name: &str| dir.join(name).display().to_string();
    parse(&format!(
        "[cluster]\nid = \"x\"\nbackend = \"file\"\nsnapshot-file = \"{}\"\npassword-file = \"{}\"\n\
         tls = true\nca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n\
         [etcd]\nusername = \"u\"\npassword-file = \"{}\"\nca-file = \"{}\"\ncert-file = \"{}\"\nkey-file = \"{}\"\n\
         [api]\ntoken-file = \"{}\"\n",
        f("snap.json"),
        f("redis-pw"),
        f("redis-ca.pem"),
        f("redis-cert.pem"),
        f("redis-key.pem"),
        f("etcd-pw"),
        f("etcd-ca.pem"),
        f("etcd-cert.pem"),
        f("etcd-key.pem"),
        f("token"),
    ))
    .unwrap()
}

const FILES: [(&str, &str); 10] = [
    ("cluster.snapshot-file", "snap.json"),
    ("cluster.password-file", "redis-pw"),
    ("cluster.ca-file", "redis-ca.pem"),
    ("cluster.cert-file", "redis-cert.pem"),
    ("cluster.key-file", "redis-key.pem"),
    ("etcd.password-file", "etcd-pw"),
    ("etcd.ca-file", "etcd-ca.pem"),
    ("etcd.cert-file", "etcd-cert.pem"),
    ("etcd.key-file", "etcd-key.pem"),
    ("api.token-file", "token"),
];

#[test]
fn every_referenced_file_must_exist_naming_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let c = naming_files(dir.path());
    let errs = c.check_files();
    assert_eq!(errs.len(), FILES.len(), "{errs:#?}");
    for (key, name) in FILES {
        let path = dir.path().join(name);
        let line = errs.iter().find(|l| l.starts_with(&format!("{key} "))).unwrap_or_else(|| panic!("{key}"));
        assert!(line.starts_with(&format!("{key} {}: cannot read: ", path.display())), "{line}");
    }
    fill(dir.path());
    assert_eq!(c.check_files(), Vec::<String>::new());
}

/// A CA, a client certificate and its key, and the directory that holds them.
fn certificates() -> (tempfile::TempDir, autobalancer_testkit::TlsFiles) {
    let dir = tempfile::tempdir().unwrap();
    let tls = autobalancer_testkit::TlsFiles::generate(dir.path()).unwrap();
    (dir, tls)
}

/// Writes every file of `FILES` as its key wants it: a CA, a client certificate and its
/// key where the key names one, a line of text elsewhere.
fn fill(dir: &std::path::Path) {
    let (_keep, tls) = certificates();
    for (key, name) in FILES {
        let from = match key.rsplit('.').next().unwrap() {
            "ca-file" => Some(&tls.ca),
            "cert-file" => Some(&tls.client_cert),
            "key-file" => Some(&tls.client_key),
            _ => None,
        };
        let content = from.map_or_else(|| b"x\n".to_vec(), |p| std::fs::read(p).unwrap());
        std::fs::write(dir.join(name), content).unwrap();
    }
}

#[test]
fn a_bad_pem_names_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = naming_files(dir.path());
    fill(dir.path());
    let (_keep, other) = certificates();
    let at = |name: &str| dir.path().join(name);
    // A key where a certificate belongs, a certificate where a key belongs, no PEM at all.
    std::fs::copy(&other.client_key, at("redis-ca.pem")).unwrap();
    std::fs::copy(&other.client_cert, at("redis-key.pem")).unwrap();
    std::fs::write(at("etcd-cert.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
    let errs = c.check_files();
    let line = |key: &str| errs.iter().find(|l| l.starts_with(&format!("{key} "))).cloned().unwrap_or_default();
    let ca = line("cluster.ca-file");
    assert!(
        ca.starts_with(&format!("cluster.ca-file {}: no PEM certificate", at("redis-ca.pem").display())),
        "{errs:#?}"
    );
    let key = line("cluster.key-file");
    assert!(
        key.starts_with(&format!("cluster.key-file {}: no PEM private key", at("redis-key.pem").display())),
        "{errs:#?}"
    );
    assert!(line("etcd.cert-file").contains(": certificate 1 of 1 is not X.509"), "{errs:#?}");
    assert_eq!(errs.len(), 3, "a pair with a bad file is not compared as well: {errs:#?}");
}

#[test]
fn a_client_key_must_be_its_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let c = naming_files(dir.path());
    fill(dir.path());
    // The key of another client certificate.
    let (_keep, other) = certificates();
    std::fs::copy(&other.client_key, dir.path().join("redis-key.pem")).unwrap();
    let errs = c.check_files();
    assert_eq!(errs.len(), 1, "{errs:#?}");
    let want = format!(
        "cluster.key-file {} is not the key of cluster.cert-file {}: ",
        dir.path().join("redis-key.pem").display(),
        dir.path().join("redis-cert.pem").display()
    );
    assert!(errs[0].starts_with(&want), "{errs:#?}");
}

#[test]
fn only_a_snapshot_may_be_empty() {
    let dir = tempfile::tempdir().unwrap();
    let c = naming_files(dir.path());
    for (_, name) in FILES {
        std::fs::write(dir.path().join(name), "\n").unwrap();
    }
    let errs = c.check_files();
    let empty: Vec<&str> =
        errs.iter().filter(|l| l.ends_with(": the file is empty")).map(|l| l.split(' ').next().unwrap()).collect();
    let want: Vec<&str> = FILES.iter().map(|(k, _)| *k).filter(|k| *k != "cluster.snapshot-file").collect();
    assert_eq!(empty, want, "{errs:#?}");
    assert_eq!(errs.len(), empty.len(), "a snapshot may hold anything here: {errs:#?}");
}

#[test]
fn a_directory_is_not_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse(&format!("{MIN}tls = true\nca-file = \"{}\"\n", dir.path().display())).unwrap();
    assert_eq!(c.check_files(), vec![format!("cluster.ca-file {}: not a file", dir.path().display())]);
}

#[test]
fn load_reports_bad_values_and_missing_files_together() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    let text = format!(
        "{MIN}[balance]\nsize-threshold-percent = 0\n[etcd]\nusername = \"u\"\npassword-file = \"/nonexistent/pw\"\n"
    );
    std::fs::write(&path, text).unwrap();
    let lines = Config::load(&path).unwrap_err().lines();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0], "balance.size-threshold-percent must be 1..=99, got 0");
    assert!(lines[1].starts_with("etcd.password-file /nonexistent/pw: cannot read: "), "{lines:?}");
}

#[test]
fn example_config_is_valid() {
    let text = include_str!("../../config.toml.example");
    parse(text).unwrap();
}

#[test]
fn traffic_defaults_and_every_bad_key_named() {
    let c = parse(MIN).unwrap();
    assert!(c.traffic.enabled);
    assert_eq!((c.traffic.sample_every.0.as_secs(), c.traffic.window.0.as_secs()), (60, 3600));
    assert_eq!((c.traffic.min_samples, c.traffic.tolerance_percent, c.traffic.threshold_percent), (5, 20, 50));
    let bad = format!(
        "{MIN}[traffic]\nsample-every = \"2m\"\nwindow = \"1m\"\nmin-samples = 0\ntolerance-percent = 30\nthreshold-percent = 10\ndimensions = [\"cpu\", \"network-out\"]\n"
    );
    let lines = parse(&bad).unwrap_err().lines();
    for want in [
        "traffic.window (60s) must be at least traffic.sample-every (120s)",
        "traffic.min-samples must be 1..=1000, got 0",
        "traffic.threshold-percent (10) must be at least traffic.tolerance-percent (30)",
        "traffic.dimensions: \"network-out\" is not balanced",
    ] {
        assert!(lines.iter().any(|l| l.starts_with(want)), "missing {want:?} in {lines:?}");
    }
    let env = Config::from_toml_with_env(MIN, vec![("AUTOBALANCER_TRAFFIC_ENABLED".to_string(), "false".to_string())]);
    assert!(!env.unwrap().traffic.enabled, "the section takes environment overrides");
}
