#!/usr/bin/env bash
# Footprint of a waiting sidecar and the cost of one empty evaluation (lock, repair,
# snapshot, plan, decide) on a 16384-slot Redis Cluster: runs the demo with --keep
# (4 sidecars, 60k keys, already balanced by the demo's run), measures, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
scripts/demo --keep > bench/out-demo.txt 2>&1 || { cat bench/out-demo.txt; exit 1; }
trap 'sh "$target/demo/stop.sh" 2>/dev/null || true' EXIT
urls=$(grep -o 'http://127.0.0.1:[0-9]*/status ' bench/out-demo.txt | sed 's|/status ||' | sort -u)
demo=$(cd "$target/demo" && pwd)
pids=$(pgrep -f "autobalancer run --config $demo/sidecar" || true)
sleep 5
echo "idle sidecars (waiting for tomorrow's slot):"
hz=$(getconf CLK_TCK)
for p in $pids; do
  rss=$(awk '/VmRSS/ {print $2}' /proc/$p/status)
  t0=$(awk '{print $14+$15}' /proc/$p/stat)
  sleep 30
  t1=$(awk '{print $14+$15}' /proc/$p/stat)
  echo "  pid $p: RSS $((rss/1024)) MiB, CPU $(echo "scale=3; 100*($t1-$t0)/$hz/30" | bc)% over 30 s"
  break
done
for p in $pids; do echo "  pid $p: RSS $(( $(awk '/VmRSS/ {print $2}' /proc/$p/status) / 1024 )) MiB"; done
echo "one empty evaluation (PUT /rebalance on a balanced cluster; lock, repair, snapshot, plan, decide):"
u=$(echo "$urls" | head -1)
for i in 1 2 3 4 5; do
  curl -s -o /dev/null -w "  %{time_total} s (HTTP %{http_code})\n" -X PUT "$u/rebalance"
done
curl -s "$u/metrics" | grep -E '^autobalancer_(snapshot|plan)_duration_seconds_(sum|count)'
