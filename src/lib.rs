//! autobalancer: a sidecar that keeps a partitioned data cluster balanced by bytes.
//!
//! Layout, one module per step of `schedule -> lock -> repair -> snapshot -> plan ->
//! decide -> execute -> report`:
//!
//! - [`config`]: TOML and environment into a validated `Config`; errors name the key.
//! - [`schedule`]: cron expressions and fire times in a time zone (clock passed in).
//! - [`coord`]: coordination in etcd (or in-process, with a state file, standalone): the
//!   lock with its lease and fence, move intents, run records, registrations, published
//!   sizes and traffic rates, each node's role over time, pause and evacuation state.
//! - [`model`]: `Member`, `Bucket`, `ClusterSnapshot` and the snapshot JSON.
//! - [`cluster`]: the `Cluster` trait at the I/O edge (snapshot, repair, moves, room,
//!   handoff); the Redis Cluster and file backends.
//! - [`plan`]: the pure, synchronous planner: ordered moves, loads, lower bound;
//!   [`plan::placement`] the role changes that keep masters and replicas where they
//!   should stand; [`plan::traffic`] CPU per master as a second dimension.
//! - [`traffic`]: per-slot rates from SLOT-STATS counters.
//! - [`decide`]: rebalance or skip, with one reason from a closed set.
//! - [`execute`]: moves within the limits, fenced by the lock; the per-member report.
//! - [`run`]: one run, shared by every trigger: named gates, then the pipeline; its typed
//!   outcome and errors.
//! - [`report`]: the answer of `simulate` and `rebalance`, as a table or JSON.
//! - [`metrics`]: the Prometheus registry.
//! - [`api`]: the HTTP API, over a control handle (a trait the daemon implements).
//! - [`sidecar`]: the daemon: one operation at a time in tasks of their own, schedule,
//!   heartbeat, evacuations, supervision, bounded shutdown.
//!
//! `plan` and `decide` never touch tokio, etcd or Redis.

pub mod api;
pub mod cluster;
pub mod config;
pub mod coord;
pub mod decide;
pub mod execute;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sidecar;
pub mod traffic;
