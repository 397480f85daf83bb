#!/usr/bin/env bash
# Capacity planning: measures ringbeat (fast mode) at several client counts
# with a 30 s heartbeat interval, fits the cost per connection (memory) and
# per heartbeat/s (CPU), plots them, and writes a planner report:
#   bash scripts/capacity.sh [--quick] [--counts "10000 50000 ..."]
#   python3 scripts/capacity.py plan --clients 5000000 --interval 30 --cores 16 --ram-gib 64 \
#       --model results/capacity-DATE.json
# Writes results/capacity-DATE.{json,md} and results/capacity-DATE-{memory,cpu}.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
counts="10000 100000 250000 500000 1000000"
run_s=80
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) counts="10000 50000 100000 200000"; run_s=70; shift ;;
    --counts) counts=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--counts \"N1 N2 ...\"]" >&2; exit 2 ;;
  esac
done
cargo build --release --quiet --bin ringbeat --bin ringbeat-load
stamp=$(date -u +%Y%m%d-%H%M%S)
out=results/capacity-$stamp
mkdir -p results
source scripts/lib/loadbox.sh
loadbox_begin capacity sysctls
printf 'recv_buffers = 256\nsend_chunks = 256\n' > "$out-server.toml"
port=7760
points=()
for n in $counts; do
  wait_sockets_freed capacity tw   # this run's kernel bytes are its own
  port=$((port + 2))
  shards=$(( (n * 105 / 100 + 18999) / 19000 )); [ "$shards" -lt 2 ] && shards=2
  ./target/release/ringbeat serve --listen 127.0.0.1:$port --shards "$shards" \
    --max-connections $((n * 11 / 10)) --interval 30s --timeout 60s --config "$out-server.toml" \
    2> "$out-$n-server.log" &
  server=$!; pids+=("$server"); sleep 1
  rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
  ramp=$(( n < 50000 ? 10000 : 5000 ))
  ramp_s=$(( (n + ramp - 1) / ramp ))
  # CPU is measured by the load generator over the steady state only, which
  # starts once every client has sent its first PING (connect + 30 s +- 10%):
  # connects cost CPU too, and averaging the ramp in overstated the cost per
  # heartbeat.
  echo "capacity: $n clients, $shards shards, ramp ${ramp_s}s + ${run_s}s"
  nice -n 10 ./target/release/ringbeat-load --connect 127.0.0.1:$port --clients "$n" --ramp $ramp \
    --interval 30s --timeout 60s --duration "$((ramp_s + run_s))s" --server-pid "$server" \
    --batch-wait 10ms --steady-after "$((ramp_s + 34))s" --json "$out-$n-load.json" 2> "$out-$n-load.log" > /dev/null || true
  echo "$rss0" > "$out-$n-rss0"
  kill "$server"; wait "$server" 2>/dev/null || true
  points+=("$n")
done
python3 scripts/capacity.py report --prefix "$out" --counts "${points[@]}"
