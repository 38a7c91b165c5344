#!/usr/bin/env bash
# Scale-out cost against the number of masters: 3 -> 4, 9 -> 12, 18 -> 24 (and with
# SCALE_OUT_LARGE=1, 36 -> 48) on loopback, one cold `rebalance --once` with the default
# settings beside `redis-cli --cluster rebalance --cluster-use-empty-masters`, each on a
# fresh cluster with the same keys (KEYS in all, default 450000, so that a slot holds
# about as many bytes whatever the number of masters).
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
keys="${KEYS:-450000}"
shapes=("3 1" "9 3" "18 6")
[ "${SCALE_OUT_LARGE:-0}" = 1 ] && shapes+=("36 12")
echo "| masters | tool | wall time (s) | moving (s, ms per slot) | slots moved | ms per slot (wall) | bytes moved (MB) | max byte deviation | every key intact |"
echo "|---|---|---|---|---|---|---|---|---|"
for s in "${shapes[@]}"; do
  read -r loaded empty <<<"$s"
  "$target/release/examples/bench_scale_out" "${engine[@]}" "$loaded" "$empty" "$keys" "$target/release/autobalancer"
done
