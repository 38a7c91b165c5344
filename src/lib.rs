//! autobalancer: a sidecar that keeps a partitioned data cluster balanced by bytes.
//!
//! Layout, one module per step of `schedule -> lock -> snapshot -> plan -> decide ->
//! execute -> report`:
//!
//! - [`config`]: TOML and environment into a validated `Config`; errors name the key.
//! - [`schedule`]: cron expressions and fire times in a time zone (clock passed in).
//! - [`model`]: `Member`, `Bucket`, `ClusterSnapshot` and the snapshot JSON.
//! - [`plan`]: the pure, synchronous planner: ordered moves, loads, lower bound.
//! - [`decide`]: rebalance or skip, with one reason from a closed set.
//! - [`report`]: the answer of `simulate` and `rebalance`, as a table or JSON.
//!
//! `plan` and `decide` never touch tokio, etcd or Redis.

pub mod api;
pub mod cluster;
pub mod config;
pub mod decide;
pub mod execute;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sidecar;
pub mod testkit;
