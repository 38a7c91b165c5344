#!/usr/bin/env bash
# Sizing speed on a loopback cluster: bench/snapshot.sh [--valkey] [KEYS] (default
# 1000000): exact sizing cold (no budget, default budget), warm from the cache, and
# redis-cli --memkeys on the three loaded masters at once.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=()
if [ "${1:-}" = --valkey ]; then engine=(--valkey); shift; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --example bench_snapshot
"$target/release/examples/bench_snapshot" "${engine[@]}" "${1:-1000000}"
