//! Validation of a parsed `Config`: one function per section, every problem collected
//! (check-config prints them all), each naming its dotted key and the accepted range.
//!
//! Owns: ranges, keys that go together, cross-key rules. Does not own: parsing and the
//! enumerations (`mod.rs`: serde refuses an unknown value, naming the key and the accepted
//! values), the files the keys name (`files.rs`).

use std::fmt::Display;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{ApiConfig, Backend, BalanceConfig, ClusterConfig, Config, EtcdConfig, ExecutionConfig, ScheduleConfig};

impl Config {
    /// Every problem, each naming its dotted key.
    pub fn validate(&self) -> Vec<String> {
        let mut errs = Vec::new();
        cluster(&self.cluster, &mut errs);
        schedule(&self.schedule, &mut errs);
        balance(&self.balance, &mut errs);
        execution(&self.execution, &mut errs);
        self.topology.validate(&mut errs);
        self.traffic.validate(&mut errs);
        if let Some(e) = &self.etcd {
            etcd(e, &mut errs);
            if self.cluster.state_file.is_some() {
                errs.push("cluster.state-file is for a standalone sidecar: with [etcd] the state lives in etcd".into());
            }
        }
        api(&self.api, &mut errs);
        // log.level and log.format are enumerations: serde refuses a bad value by name.
        errs
    }
}

/// `key must be lo..=hi, got v` unless `v` is in `range`.
fn in_range<T: PartialOrd + Display>(errs: &mut Vec<String>, key: &str, v: T, range: RangeInclusive<T>) {
    if !range.contains(&v) {
        errs.push(format!("{key} must be {}..={}, got {v}", range.start(), range.end()));
    }
}

fn valid_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((h, p)) => !h.is_empty() && p.parse::<u16>().is_ok(),
        None => false,
    }
}

fn cluster(c: &ClusterConfig, errs: &mut Vec<String>) {
    if c.id.is_empty() {
        errs.push("cluster.id is required (it names the etcd key space and the metrics)".into());
    } else if !c.id.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch)) {
        errs.push(format!("cluster.id may hold only letters, digits, '-', '_' and '.', got {:?}", c.id));
    }
    match c.backend {
        Backend::Redis => {
            if c.seeds.is_empty() {
                errs.push(
                    "cluster.seeds must name at least one Redis node (host:port) when cluster.backend = \"redis\""
                        .into(),
                );
            }
            for s in &c.seeds {
                if !valid_host_port(s) {
                    errs.push(format!("cluster.seeds: {s:?} is not host:port"));
                }
            }
        }
        Backend::File => {
            if c.snapshot_file.is_none() {
                errs.push("cluster.snapshot-file is required when cluster.backend = \"file\"".into());
            }
        }
    }
    in_range(errs, "cluster.sizing-keys-per-second", c.sizing_keys_per_second, 100..=10_000_000);
    in_range(errs, "cluster.sizing-sample-keys", c.slot_sample_keys, 1..=10_000);
    let refresh = c.sizing_refresh.0;
    if !refresh.is_zero() && refresh < Duration::from_secs(10) {
        errs.push(format!("cluster.sizing-refresh = {}: at least 10s, or 0s to never refresh", c.sizing_refresh));
    }
    tls_files(errs, "cluster", c.cert_file.is_some(), c.key_file.is_some());
    if !c.tls && (c.ca_file.is_some() || c.cert_file.is_some() || c.key_file.is_some()) {
        errs.push("cluster.ca-file, cluster.cert-file and cluster.key-file need cluster.tls = true".into());
    }
}

/// A client certificate and its key go together.
fn tls_files(errs: &mut Vec<String>, section: &str, cert: bool, key: bool) {
    if cert != key {
        errs.push(format!("{section}.cert-file and {section}.key-file go together"));
    }
}

fn schedule(s: &ScheduleConfig, errs: &mut Vec<String>) {
    if let Err(e) = crate::schedule::Schedule::new(&s.cron, &s.timezone) {
        errs.push(e.to_string());
    }
}

fn balance(b: &BalanceConfig, errs: &mut Vec<String>) {
    in_range(errs, "balance.size-threshold-percent", b.size_threshold_percent, 1..=99);
    in_range(errs, "balance.tolerance-percent", b.tolerance_percent, 0..=50);
    in_range(errs, "balance.critical-memory-percent", b.critical_memory_percent, 1..=100);
    for (m, w) in &b.weights {
        if !w.is_finite() || *w < 0.0 {
            errs.push(format!("balance.weights.{m:?} must be a number >= 0, got {w}"));
        }
    }
}

fn execution(x: &ExecutionConfig, errs: &mut Vec<String>) {
    in_range(errs, "execution.max-concurrent-moves", x.max_concurrent_moves, 0..=1024);
    in_range(errs, "execution.max-moves-per-member", x.max_moves_per_member, 1..=1024);
    if x.max_run_time.0.is_zero() {
        errs.push("execution.max-run-time must be greater than 0 (a duration such as \"2h\")".into());
    }
    in_range(errs, "execution.migrate-batch-keys", x.migrate_batch_keys, 1..=100_000);
    if x.migrate_batch_bytes.0 == 0 {
        errs.push("execution.migrate-batch-bytes must be greater than 0".into());
    }
    if x.migrate_timeout.0 < Duration::from_millis(100) {
        errs.push(format!("execution.migrate-timeout must be at least 100ms, got {}", x.migrate_timeout));
    }
    if x.max_key_bytes.0 == 0 {
        errs.push("execution.max-key-bytes must be greater than 0 (a size such as \"64MiB\")".into());
    }
    if x.shutdown_timeout.0.is_zero() {
        errs.push("execution.shutdown-timeout must be greater than 0 (a duration such as \"20s\")".into());
    }
}

fn etcd(e: &EtcdConfig, errs: &mut Vec<String>) {
    if e.endpoints.is_empty() {
        errs.push("etcd.endpoints must name at least one endpoint (remove [etcd] to run standalone)".into());
    }
    for ep in &e.endpoints {
        if !(ep.starts_with("http://") || ep.starts_with("https://") || valid_host_port(ep)) {
            errs.push(format!("etcd.endpoints: {ep:?} is not http(s)://host:port or host:port"));
        }
    }
    if !e.prefix.starts_with('/') || e.prefix.len() < 2 {
        errs.push(format!("etcd.prefix must start with '/' and name a key space, got {:?}", e.prefix));
    }
    if e.lease_ttl.0 < Duration::from_secs(2) || e.lease_ttl.0 > Duration::from_secs(600) {
        errs.push(format!("etcd.lease-ttl must be 2s..=10m, got {}", e.lease_ttl));
    }
    if e.username.is_some() != e.password_file.is_some() {
        errs.push("etcd.username and etcd.password-file go together".into());
    }
    tls_files(errs, "etcd", e.cert_file.is_some(), e.key_file.is_some());
}

fn api(a: &ApiConfig, errs: &mut Vec<String>) {
    match a.listen.parse::<SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() && a.token_file.is_none() {
                errs.push(format!(
                    "api.token-file is required to listen beyond loopback (api.listen = {:?})",
                    a.listen
                ));
            }
        }
        Err(_) => errs.push(format!("api.listen must be ip:port, got {:?}", a.listen)),
    }
}
