#!/usr/bin/env bash
# Head-to-head: redis-cli --cluster rebalance vs autobalancer rebalance --once, on the
# same skewed, hash-tagged data set in a fresh local Redis Cluster each (loopback).
# Usage: bench/redis-vs-cli.sh [KEYS]   (default 200000). Prints a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
for p in redis-server redis-cli; do
  command -v "$p" >/dev/null || { echo "missing $p: apt-get install redis-server redis-tools" >&2; exit 2; }
done
cargo build --release --quiet --bin autobalancer --example bench_redis
./target/release/examples/bench_redis "${1:-200000}" target/release/autobalancer
