#!/usr/bin/env bash
# Scale-out cost against the number of masters: 3 -> 4, 9 -> 12, 18 -> 24 (and with
# SCALE_OUT_LARGE=1, 36 -> 48) on loopback, one cold `rebalance --once` with the default
# settings beside `redis-cli --cluster rebalance --cluster-use-empty-masters`, each on a
# fresh cluster with the same keys (KEYS_PER_MASTER per loaded master, default 50000).
# Usage: bench/scale-out.sh [--valkey]. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in redis-server redis-cli; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install redis-server redis-tools" >&2; exit 2; }
done
engine=()
if [ "${1:-}" = --valkey ]; then engine=(--valkey); shift; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_scale_out
per="${KEYS_PER_MASTER:-50000}"
shapes=("3 1" "9 3" "18 6")
[ "${SCALE_OUT_LARGE:-0}" = 1 ] && shapes+=("36 12")
echo "| masters | tool | wall time (s) | slots moved | ms per slot | bytes moved (MB) | max byte deviation | every key intact |"
echo "|---|---|---|---|---|---|---|---|"
for s in "${shapes[@]}"; do
  read -r loaded empty <<<"$s"
  "$target/release/examples/bench_scale_out" "${engine[@]}" "$loaded" "$empty" "$((loaded * per))" "$target/release/autobalancer"
done
