#!/usr/bin/env bash
# Where the CPU goes: profiles ringbeat-fast and the lean epoll peer one after
# the other in the same run, each under the same load (15K clients, PING
# every 1 s, timeout 3 s), with `perf record -g` for ~20 s of steady state.
#   bash scripts/lib/profile-peers.sh [CLIENTS]
# Writes results/profile-DATE-{ringbeat-fast,epoll}.{data,txt}; the .txt is
# `perf report --no-children` (self time, by symbol) and a by-DSO summary.
set -euo pipefail
cd "$(dirname "$0")/../.."
clients=${1:-15000}
command -v perf > /dev/null || { echo "profile: perf missing (apt-get install linux-perf)" >&2; exit 1; }
cargo build --release --quiet --features peers --bin ringbeat --bin ringbeat-load --bin epoll
source scripts/lib/loadbox.sh
stamp=$(date -u +%Y%m%d-%H%M%S)
out=results/profile-$stamp
mkdir -p results
loadbox_begin profile
port=7790
for peer in ringbeat-fast epoll; do
  wait_sockets_freed profile
  port=$((port + 1))
  args=(--listen 127.0.0.1:$port --interval 1s --timeout 3s)
  case $peer in
    ringbeat-fast) cmd=(./target/release/ringbeat serve --io-mode fast --shards 2 --tick 100ms "${args[@]}") ;;
    epoll) cmd=(./target/release/epoll "${args[@]}") ;;
  esac
  "${cmd[@]}" 2> "$out-$peer.log" &
  server=$!; pids+=("$server"); sleep 1
  ./target/release/ringbeat-load --connect 127.0.0.1:$port --clients "$clients" --ramp 1000000 \
    --interval 1s --timeout 3s --tick 100ms --duration 34s --steady-after 8s --server-pid "$server" \
    --json "$out-$peer-load.json" 2> "$out-$peer-load.log" > /dev/null &
  load=$!; pids+=("$load")
  sleep 10
  echo "profile: $peer: perf record -g for 20 s"
  perf record -g -o "$out-$peer.data" -p "$server" -- sleep 20 2> "$out-$peer-perf.log" || true
  wait "$load" || true
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
  {
    echo "# $peer, $clients clients, 1 s interval: self time by symbol"
    perf report -i "$out-$peer.data" --no-children --percent-limit 0.7 --stdio -g none 2>/dev/null | grep -v '^$'
    echo "# by DSO"
    perf report -i "$out-$peer.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
  } > "$out-$peer.txt"
  head -40 "$out-$peer.txt"
done
echo "wrote $out-*.txt"
