#!/usr/bin/env bash
# Detection quality: the same client population (regular, jittery, bursty,
# silent, flapping) against three release servers in turn on loopback —
# `--detector fixed`, `--detector phi`, `--detector phi --offline-grace 10s` —
# judged by ringbeat-load from each server's events file. Prints one table:
# silent clients' time to suspect and to evict (p50/p99, from their last
# PING), live clients' false suspicions per 1,000 client-hours, flappers'
# offline/online pairs against `resumed` events.
#
#   bash scripts/detection.sh [--quick] [--clients N]
#
# Default: 3,000 clients, faults at 60 s, 85 s a phase (about 5 min);
# --quick: 2,000 clients, faults at 20 s, 40 s a phase (about 2.5 min).
# Writes results/detection-DATE.json. Everything started here is stopped on
# exit (scripts/lib/loadbox.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/loadbox.sh

clients=3000; fault_at=60; duration=85
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) clients=2000; fault_at=20; duration=40; shift ;;
    --clients) clients=$2; shift 2 ;;
    *) echo "usage: $0 [--quick] [--clients N]" >&2; exit 2 ;;
  esac
done
# Silent clients are evicted at fault_at + 5 s; with a 10 s grace their
# offline is written 10 s later: the phase must outlast that.
[ $((fault_at + 5 + 10 + 3)) -le "$duration" ] || { echo "detection: duration too short" >&2; exit 2; }
port=7970
interval=1s; timeout=5s; tick=100ms
# The population, shares of all clients: 10% silent (after fault_at),
# 30% jittery (normal, SD 300 ms), 10% bursty (5% of PINGs start a pause of
# up to 2.5 s, then the held PINGs go at once), 10% flapping (close at
# fault_at, HELLO again with the same id 2 s later); the rest regular (±2%).
population=(--clients "$clients" --ramp 2000 --hello --interval $interval --timeout $timeout
  --tick $tick --jitter 2 --mix silent=0.1 --jitter-ms 300,0.3
  --delay-episodes 0.1,2500ms,0.05 --flap 0.1,2s --fault-at "${fault_at}s"
  --duration "${duration}s")
stamp=$(date -u +%Y%m%d-%H%M%S)
work=$(mktemp -d)
mkdir -p results
loadbox_begin detection
trap 'loadbox_end; rm -rf "$work"' EXIT

nice -n 10 cargo build --release --quiet --bin ringbeat --bin ringbeat-load

# phase NAME SERVER_FLAGS...: one server, the whole population, the report.
phase() {
  local name=$1; shift
  local events="$work/$name-events.jsonl"
  ./target/release/ringbeat serve --listen 127.0.0.1:$port --shards 2 \
    --interval $interval --timeout $timeout --tick $tick --events "$events" "$@" \
    2> "$work/$name-server.log" &
  local server=$!
  pids+=("$server")
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break
    sleep 0.1
  done
  echo "detection: phase $name ($*), $clients clients, ${duration}s"
  local rc=0
  nice -n 10 ./target/release/ringbeat-load --connect 127.0.0.1:$port "${population[@]}" \
    --server-events "$events" --json "$work/$name.json" > /dev/null 2> "$work/$name-load.log" || rc=$?
  tail -n 1 "$work/$name-load.log"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  [ -s "$work/$name.json" ] || { echo "detection: $name wrote no result (rc $rc)" >&2; cat "$work/$name-load.log" >&2; exit 1; }
}

phase fixed --detector fixed
phase phi --detector phi
phase phi-grace --detector phi --offline-grace 10s

python3 - "$work" "results/detection-$stamp.json" "$(uname -r)" <<'PY'
import json, sys, time
work, out, kernel = sys.argv[1], sys.argv[2], sys.argv[3]
names = ["fixed", "phi", "phi-grace"]
flags = {"fixed": "--detector fixed", "phi": "--detector phi",
         "phi-grace": "--detector phi --offline-grace 10s"}
runs = {n: json.load(open(f"{work}/{n}.json")) for n in names}
def ms(h, k):
    return "-" if h[k] is None else f"{h[k] / 1000:.2f}"
print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, kernel {kernel}, "
      f"{runs['fixed']['args']['clients']} clients, interval 1 s, timeout 5 s, tick 100 ms")
print("| server | silent suspected | suspect p50 / p99 (s) | evicted | evict p50 / p99 (s) "
      "| false suspicions / 1,000 client-h (live client-h) | flapper reconnects | offline/online pairs | resumed |")
print("|---|---|---|---|---|---|---|---|---|")
for n in names:
    q = runs[n]["detection_quality"]
    s, l, f = q["silent"], q["live"], q["flap"]
    su, ev = s["time_to_suspect_ms"], s["time_to_evict_ms"]
    print(f"| {n} | {s['suspected']}/{s['clients']} | {ms(su, 'p50')} / {ms(su, 'p99')} "
          f"| {s['evicted']}/{s['clients']} | {ms(ev, 'p50')} / {ms(ev, 'p99')} "
          f"| {l['false_suspicions_per_1000_client_hours']:.0f} ({l['false_suspicions']} in {l['client_hours']:.1f} h) "
          f"| {f['reconnects']} | {f['offline_online_pairs']} | {f['resumed']} |")
print("\nfalse suspicions by profile (count / client-hours):")
for n in names:
    by = runs[n]["detection_quality"]["live"]["by_profile"]
    print(f"  {n}: " + ", ".join(f"{k} {v['false_suspicions']}/{v['client_hours']:.1f}h" for k, v in sorted(by.items())))
summary = {"tool": "detection.sh", "schema": 1, "kernel": kernel,
           "phases": {n: {"server_flags": flags[n], "load": runs[n]} for n in names}}
json.dump(summary, open(out, "w"), indent=2)
print(f"\nwrote {out}")
PY
