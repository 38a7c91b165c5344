#!/usr/bin/env bash
# Snapshot speed on a loopback Redis Cluster: bench/snapshot.sh [KEYS] (default 1000000).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin autobalancer --example bench_snapshot
./target/release/examples/bench_snapshot "${1:-1000000}" target/release/autobalancer
