#!/usr/bin/env bash
# Snapshot speed on a loopback Redis Cluster: bench/snapshot.sh [--valkey] [KEYS]
# (default 1000000); --valkey: on Valkey 9.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=()
if [ "${1:-}" = --valkey ]; then engine=(--valkey); shift; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_snapshot
"$target/release/examples/bench_snapshot" "${engine[@]}" "${1:-1000000}" "$target/release/autobalancer"
