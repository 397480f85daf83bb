#!/usr/bin/env bash
# Where the CPU goes: profiles ringbeat-fast and the lean epoll peer one after
# the other in the same run, each under the same load (15K clients, PING
# every 1 s, timeout 3 s), with `perf record -g` for ~20 s of steady state.
#   bash scripts/lib/profile-peers.sh [--loopback] [CLIENTS]
# Placed as scripts/bench.sh places them: the server on the first half of
# the cores, the load generator on the other half in its own namespace over
# a veth pair (--loopback: over loopback). perf records every task on the
# server's cores, so the TCP input that the server's side receives (softirq,
# ksoftirqd) is in its profile, as it is in its CPU figures.
# Writes results/profile-DATE-{ringbeat-fast,epoll}.{data,txt}; the .txt is
# `perf report --no-children`: by command, then self time by symbol and by
# DSO outside the idle task.
set -euo pipefail
cd "$(dirname "$0")/../.."
veth=1
if [ "${1:-}" = --loopback ]; then veth=0; shift; fi
clients=${1:-15000}
command -v perf > /dev/null || { echo "profile: perf missing (apt-get install linux-perf)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "profile: needs 2 cores (server and load generator apart)" >&2; exit 1; }
cargo build --release --quiet --features peers --bin ringbeat --bin ringbeat-load --bin epoll
source scripts/lib/loadbox.sh
stamp=$(date -u +%Y%m%d-%H%M%S)
out=results/profile-$stamp
mkdir -p results
loadbox_begin profile
loadbox_place 1 "$veth"
echo "profile: $placement"
port=7790
for peer in ringbeat-fast epoll; do
  wait_sockets_freed profile alloc
  port=$((port + 1))
  args=(--listen $server_ip:$port --interval 1s --timeout 3s)
  case $peer in
    ringbeat-fast) cmd=(./target/release/ringbeat serve --io-mode fast --shards 2 --tick 100ms "${args[@]}") ;;
    epoll) cmd=(./target/release/epoll "${args[@]}") ;;
  esac
  "${server_pin[@]}" "${cmd[@]}" 2> "$out-$peer.log" &
  server=$!; pids+=("$server"); sleep 1
  "${loadbox_in[@]}" "${load_pin[@]}" ./target/release/ringbeat-load --connect $server_ip:$port "${source_from[@]}" --clients "$clients" --ramp 1000000 \
    --interval 1s --timeout 3s --tick 100ms --duration 34s --steady-after 8s --server-pid "$server" \
    --json "$out-$peer-load.json" 2> "$out-$peer-load.log" > /dev/null &
  load=$!; pids+=("$load")
  sleep 10
  echo "profile: $peer: perf record -g on cpus $server_cpus for 20 s"
  perf record -g -a -C "$server_cpus" -o "$out-$peer.data" -- sleep 20 2> "$out-$peer-perf.log" || true
  wait "$load" || true
  kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
  # The idle task holds most of the core's samples: symbols are given
  # relative to the rest (the server's threads and the softirq work on its
  # cores), and the by-command summary says how much that rest is.
  busy=$(perf report -i "$out-$peer.data" --no-children --sort comm --stdio -g none 2>/dev/null \
    | awk '!/^#/ && NF >= 2 && $2 != "swapper" {print $2}' | paste -sd,)
  {
    echo "# $peer, $clients clients, 1 s interval, cpus $server_cpus: by command (share of all samples)"
    perf report -i "$out-$peer.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
    echo "# self time by symbol, share of the samples outside the idle task"
    perf report -i "$out-$peer.data" --no-children --comms "$busy" --percentage relative --sort comm,sym \
      --percent-limit 0.7 --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
    echo "# by DSO, outside the idle task"
    perf report -i "$out-$peer.data" --no-children --comms "$busy" --percentage relative --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$'
  } > "$out-$peer.txt"
  head -40 "$out-$peer.txt"
done
echo "wrote $out-*.txt"
