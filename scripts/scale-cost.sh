#!/usr/bin/env bash
# Scaling curve: marginal CPU per heartbeat, server and load generator, user
# and system apart, at 15K, 100K, 250K, 500K and 1M clients (30 s interval,
# the same shard count at every point), as a ratio to 15K:
#   bash scripts/scale-cost.sh [--quick] [--counts "15000 100000 ..."] [--shards N] [--threads N]
# --quick stops at 250K. Each point: ramp, every client's first PING, then
# half the clients fall silent (same connections, half the heartbeats) and
# the window ends before any is evicted (scale_cost.py refuses it otherwise),
# so CPU = a*seconds + b*heartbeats is
# split from the two halves with the count fixed (scripts/scale_cost.py): b
# is the cost of one more heartbeat, a the cost per second of holding the
# connections (ticks, sweeps, kernel work per socket).
# Writes results/scale-cost-DATE.json and the table on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
counts="15000 100000 250000 500000 1000000"
shards_arg=
threads_arg=()   # --threads: the server's (default: one per core)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) counts="15000 100000 250000"; shift ;;
    --counts) counts=$2; shift 2 ;;
    --shards) shards_arg=$2; shift 2 ;;
    --threads) threads_arg=(--threads "$2"); shift 2 ;;
    *) echo "usage: $0 [--quick] [--counts \"N1 N2 ...\"] [--shards N] [--threads N]" >&2; exit 2 ;;
  esac
done
cargo build --release --quiet --bin ringbeat --bin ringbeat-load
stamp=$(date -u +%Y%m%d-%H%M%S)
out=results/scale-cost-$stamp
mkdir -p results
source scripts/lib/loadbox.sh
loadbox_begin scale-cost sysctls
# One shard count for every point: what the largest needs (a shard's direct
# descriptor table is bounded by RLIMIT_NOFILE, ~19,000 here).
largest=$(printf '%s\n' $counts | sort -n | tail -1)
shards=$(( (largest * 105 / 100 + 18999) / 19000 )); [ "$shards" -lt 2 ] && shards=2
# --shards: a fixed count instead (fewer rings than the largest point needs
# fail its ramp; more measure what rings cost).
[ -n "$shards_arg" ] && shards=$shards_arg
printf 'recv_buffers = 256\nsend_chunks = 256\n' > "$out-server.toml"
port=7780
points=()
for n in $counts; do
  wait_sockets_freed scale-cost tw
  port=$((port + 2))
  ./target/release/ringbeat serve --listen 127.0.0.1:$port --shards "$shards" "${threads_arg[@]}" \
    --max-connections $((n * 11 / 10)) --interval 30s --timeout 60s --config "$out-server.toml" \
    --metrics 127.0.0.1:$((port + 1)) 2> "$out-$n-server.log" &
  server=$!; pids+=("$server"); sleep 1
  ramp=$(( n < 50000 ? 10000 : 5000 ))
  ramp_s=$(( (n + ramp - 1) / ramp ))
  from_s=$((ramp_s + 34))       # every client has sent its first PING
  silent_at=$((from_s + 30))    # half fall silent: the heartbeat rate halves
  # Evictions start 60 s after a silent client's last PING, which was up to
  # 33 s (30 s + 10% jitter) before silent_at: from silent_at + 27 s. (The
  # window once ran to silent_at + 55 s, and the closes of the first
  # evictions passed for a cost of holding connections.)
  to_s=$((silent_at + 25))
  echo "scale-cost: $n clients, $shards shards, $((to_s + 3)) s"
  nice -n 10 ./target/release/ringbeat-load --connect 127.0.0.1:$port --clients "$n" --ramp $ramp \
    --interval 30s --timeout 60s --mix healthy=0.5,silent=0.5 --fault-after 0s --fault-at "${silent_at}s" \
    --duration "$((to_s + 3))s" --server-pid "$server" --batch-wait 10ms \
    --json "$out-$n-load.json" 2> "$out-$n-load.log" > /dev/null &
  load=$!; pids+=("$load")
  python3 scripts/scale_cost.py sample "$server" "$load" "http://127.0.0.1:$((port + 1))/metrics" \
    "$out-$n-samples.jsonl" 2 $((to_s + 60))
  wait "$load" || true
  printf '{"from_s": %d, "silent_at_s": %d, "to_s": %d}\n' "$from_s" "$silent_at" "$to_s" > "$out-$n-window.json"
  kill "$server"; wait "$server" 2>/dev/null || true
  points+=("$n")
done
python3 scripts/scale_cost.py report "$out" "$shards" "${points[@]}"
