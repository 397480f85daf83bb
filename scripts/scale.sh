#!/usr/bin/env bash
# One server process holding more connections than RLIMIT_NOFILE allows
# file descriptors: direct descriptors put each socket in a ring's fixed-file
# table instead. Prints RSS per connection and the sweep time per entry, and
# writes results/scale-DATE.json.
#
#   bash scripts/scale.sh [--connections N] [--shards S]   (default 60000, 4)
#
# Bounded: the holders exit after 10 minutes at most; everything started here
# is killed on exit. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

connections=60000
shards=4
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) connections=$2; shift 2 ;;
    --shards) shards=$2; shift 2 ;;
    *) echo "usage: $0 [--connections N] [--shards S]" >&2; exit 2 ;;
  esac
done
per_holder=15000
holders=$(( (connections + per_holder - 1) / per_holder ))
port=${RINGBEAT_SCALE_PORT:-7790}
metrics_port=$((port + 1))

cargo build --release --quiet --bin ringbeat
source scripts/lib/loadbox.sh
loadbox_begin scale

echo "nofile: soft $(ulimit -Sn) hard $(ulimit -Hn); target $connections connections, $shards shards"
./target/release/ringbeat serve --listen 127.0.0.1:$port --metrics 127.0.0.1:$metrics_port \
  --shards "$shards" --io-mode fast --interval 60s --timeout 300s --tick 100ms \
  2> results/scale-server.log &
server=$!
pids+=("$server")
sleep 1
kill -0 "$server" || { cat results/scale-server.log; exit 1; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
fds() { ls "/proc/$1/fd" | wc -l; }
metric() { curl -s "127.0.0.1:$metrics_port/metrics" | awk -v n="$1" '$1==n {print $2}'; }

rss0=$(rss_kb "$server"); slab0=$(slab_kb)
remaining=$connections
for i in $(seq 1 "$holders"); do
  n=$(( remaining < per_holder ? remaining : per_holder ))
  remaining=$(( remaining - n ))
  python3 scripts/hold_conns.py --connect 127.0.0.1:$port --source "127.0.0.$((i + 1))" \
    --count "$n" --interval 30 --duration 600 > "results/scale-holder-$i.log" &
  pids+=("$!")
done
for i in $(seq 1 "$holders"); do
  for _ in $(seq 1 600); do grep -q ready "results/scale-holder-$i.log" 2>/dev/null && break; sleep 0.5; done
done
for _ in $(seq 1 120); do
  live=$(metric ringbeat_connections); [ "${live:-0}" -ge "$connections" ] && break; sleep 0.5
done
# Sweep cost in steady state: the sum and count of sweeps over 5 s at full load.
sum0=$(metric ringbeat_sweep_duration_seconds_sum); count0=$(metric ringbeat_sweep_duration_seconds_count)
sleep 5
sum1=$(metric ringbeat_sweep_duration_seconds_sum); count1=$(metric ringbeat_sweep_duration_seconds_count)
sweep_sum=$(python3 -c "print($sum1 - $sum0)"); sweep_count=$(python3 -c "print($count1 - $count0)")
live=$(metric ringbeat_connections)
rss1=$(rss_kb "$server"); slab1=$(slab_kb); server_fds=$(fds "$server")

python3 - "$connections" "$live" "$rss0" "$rss1" "$slab0" "$slab1" "$server_fds" \
  "$sweep_sum" "$sweep_count" "$shards" <<'PY'
import json, sys, time, datetime
target, live, rss0, rss1, slab0, slab1, fds, ssum, scount, shards = sys.argv[1:]
live, rss0, rss1, slab0, slab1, fds, shards = map(int, (live, rss0, rss1, slab0, slab1, fds, shards))
ssum, scount = float(ssum or 0), float(scount or 1)
sweep_ns = ssum / scount * 1e9
# Each shard's sweep walks its table up to the highest slot in use, about
# live / shards entries once the ramp is done.
per_shard_entries = live / shards
out = {
    "tool": "scale.sh", "schema": 1,
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    "connections_target": int(target), "connections_live": live,
    "server_open_fds": fds, "shards": shards,
    "server_rss_bytes_idle": rss0 * 1024, "server_rss_bytes_loaded": rss1 * 1024,
    "server_rss_bytes_per_connection": (rss1 - rss0) * 1024 / max(live, 1),
    "kernel_slab_bytes_per_connection_pair": (slab1 - slab0) * 1024 / max(live, 1),
    "sweep_ns_mean": sweep_ns,
    "sweep_ns_per_entry": sweep_ns / max(per_shard_entries, 1),
}
name = time.strftime("results/scale-%Y%m%d-%H%M%S.json")
json.dump(out, open(name, "w"), indent=2)
print(json.dumps(out, indent=2))
print(f"wrote {name}")
if live < int(target):
    sys.exit(f"only {live} of {target} connections live")
if live <= 20000:
    sys.exit("did not exceed RLIMIT_NOFILE")
PY
