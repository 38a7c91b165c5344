#!/usr/bin/env bash
# End-to-end planner scale: generate large snapshots, then time `autobalancer simulate`
# (JSON read + plan + decide + JSON out) on one core, with peak memory.
# Usage: bench/scale.sh            (all cases)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --quiet --bin autobalancer --example gen_snapshot
out=bench/out; mkdir -p "$out"
cases=(
  "16384 1 4 1"         # Redis Cluster: 16384 slots, 3 masters + 1 empty
  "1000000 2 1000 10"   # 1M buckets x 2 copies over 1,000 members, 10 new
  "1400000 2 215 5"     # Cruise Control's large cluster size: 1.4M x 2 over 215
)
printf '%-28s %10s %10s %12s %10s %12s\n' case json_MB wall_s peak_RSS_MB moves transfer/LB
for c in "${cases[@]}"; do
  read -r nb k nm ne <<<"$c"
  f="$out/snap-$nb-$k-$nm.json"
  [ -f "$f" ] || "$target"/release/examples/gen_snapshot "$nb" "$k" "$nm" "$ne" 1 > "$f"
  size=$(( $(stat -c %s "$f") / 1000000 ))
  /usr/bin/time -f '%e %M' -o "$out/time" taskset -c 0 "$target"/release/autobalancer simulate --snapshot "$f" --format json > "$out/result.json"
  read -r wall rss < "$out/time"
  moves=$(python3 -c "import json;d=json.load(open('$out/result.json'));print(len(d['moves']))")
  ratio=$(python3 -c "import json;d=json.load(open('$out/result.json'));lb=d['lower_bound_bytes'];print(round(d['transfer_bytes']/lb,3) if lb else '-')")
  printf '%-28s %10s %10s %12s %10s %12s\n' "${nb}x${k} over ${nm}" "$size" "$wall" "$((rss/1024))" "$moves" "$ratio"
done
