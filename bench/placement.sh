#!/usr/bin/env bash
# Placement at scale: every master on one host, replicas on two others; runs of
# `rebalance --once` until masters are spread one third per host, with the default
# max-role-changes-per-run and with all changes in one run. 6 and 12 masters.
# Usage: bench/placement.sh [--valkey]. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in redis-server redis-cli; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install redis-server redis-tools" >&2; exit 2; }
done
engine=()
if [ "${1:-}" = --valkey ]; then engine=(--valkey); shift; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_placement
echo "| masters | max role changes per run | runs | failovers | wall time (s) | s per failover | slots | bytes moved | masters per host after | every key intact |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for m in 6 12; do
  "$target/release/examples/bench_placement" "${engine[@]}" "$m" "${KEYS:-60000}" "$target/release/autobalancer"
done
