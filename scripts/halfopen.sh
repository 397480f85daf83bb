#!/usr/bin/env bash
# Half-open peers: clients in a network namespace behind a veth pair; the
# link goes down, so no FIN and no RST ever reaches the server. ringbeat must
# evict every one of them within timeout + tick of its last frame. Then the
# same with only the kernel's TCP keepalive, for comparison.
#
#   bash scripts/halfopen.sh [--clients N]        (default 500; needs root)
#
# Writes results/halfopen-DATE.json. Bounded (about a minute); the namespace
# and everything started here are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=500
while [ $# -gt 0 ]; do
  case "$1" in
    --clients) clients=$2; shift 2 ;;
    *) echo "usage: $0 [--clients N]" >&2; exit 2 ;;
  esac
done
ns=rbhalfopen$$
host_if=rbh$$
ns_if=rbn$$
host_ip=10.199.$(( $$ % 200 )).1
ns_ip=10.199.$(( $$ % 200 )).2
port=7950
interval=1s; timeout=3s; tick=100ms
stamp=$(date -u +%Y%m%d-%H%M%S)
work=$(mktemp -d)
mkdir -p results
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  ip link del "$host_if" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet --bin ringbeat
ip netns add "$ns"
ip link add "$host_if" type veth peer name "$ns_if"
ip link set "$ns_if" netns "$ns"
ip addr add "$host_ip/24" dev "$host_if"; ip link set "$host_if" up
ip netns exec "$ns" ip addr add "$ns_ip/24" dev "$ns_if"
ip netns exec "$ns" ip link set "$ns_if" up
ip netns exec "$ns" ip link set lo up

# Clients: HELLO, then a PING every interval; they never close by themselves.
cat > "$work/clients.py" <<'PY'
import socket, struct, sys, time
host, port, n, interval = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
hdr = lambda k, l: struct.pack(">BBBBI", 0x52, 1, k, 0, l)
socks = []
for i in range(n):
    s = socket.create_connection((host, port))
    s.sendall(hdr(1, 12) + struct.pack(">QI", 10_000 + i, 0))
    s.setblocking(False)
    socks.append(s)
print("ready", flush=True)
deadline = time.time() + 120
while time.time() < deadline:
    for s in socks:
        try:
            s.send(hdr(3, 8) + struct.pack(">Q", 0)); s.recv(4096)
        except OSError:
            pass
    time.sleep(interval)
PY

# run_phase NAME WAIT_S SERVER_FLAGS... : starts a server, connects the
# clients from the namespace, downs the link, and waits up to WAIT_S seconds
# for the server to drop them all.
run_phase() {
  local name=$1 limit_s=$2; shift 2
  local events="$work/$name-events.jsonl"
  ./target/release/ringbeat serve --listen "$host_ip:$port" --events "$events" \
    --shards 2 --tick $tick "$@" 2> "$work/$name-server.log" &
  local server=$!
  pids+=("$server")
  sleep 1
  ip link set "$host_if" up
  ip netns exec "$ns" python3 "$work/clients.py" "$host_ip" "$port" "$clients" 1 > "$work/$name-clients.log" &
  local cl=$!
  pids+=("$cl")
  for _ in $(seq 1 100); do grep -q ready "$work/$name-clients.log" && break; sleep 0.2; done
  sleep 2.5
  local down_ms; down_ms=$(date +%s%3N)
  ip link set "$host_if" down   # from now on nothing reaches the server
  for _ in $(seq 1 $((limit_s * 10))); do
    local n; n=$(grep -c '"offline"' "$events" 2>/dev/null || true)
    [ "${n:-0}" -ge "$clients" ] && break
    sleep 0.1
  done
  kill "$server" "$cl" 2>/dev/null || true
  wait "$server" "$cl" 2>/dev/null || true
  python3 - "$events" "$down_ms" "$clients" "$name" <<'PY' > "$work/$name.json"
import json, sys
events, down_ms, n, name = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
off = [json.loads(l) for l in open(events) if '"offline"' in l]
off = [e for e in off if e["ts_ms"] >= down_ms and e["reason"] != "shutdown"]
after = sorted(e["ts_ms"] - down_ms for e in off)
reasons = {}
for e in off: reasons[e["reason"]] = reasons.get(e["reason"], 0) + 1
print(json.dumps({"phase": name, "clients": n, "dropped": len(off), "reasons": reasons,
  "ms_after_link_down": {"min": after[0] if after else None, "p50": after[len(after)//2] if after else None,
                          "max": after[-1] if after else None}}))
PY
  cat "$work/$name.json"
}

echo "halfopen: $clients clients in netns $ns, interval $interval, timeout $timeout, tick $tick"
run_phase ringbeat 15 --interval $interval --timeout $timeout
# Kernel keepalive alone: idle 1s, 1s between probes, 3 probes, and a
# ringbeat timeout too long to matter.
run_phase keepalive 40 --interval 60s --timeout 600s --tcp-keepalive 1s,1s,3

python3 - "$work/ringbeat.json" "$work/keepalive.json" "results/halfopen-$stamp.json" <<'PY'
import json, sys
rb, ka = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
timeout_ms, tick_ms, interval_ms = 3000, 100, 1000
out = {"tool": "halfopen.sh", "schema": 1, "timeout_ms": timeout_ms, "tick_ms": tick_ms,
       "interval_ms": interval_ms, "ringbeat": rb, "kernel_keepalive_1s_1s_3": ka,
       "kernel_keepalive_linux_defaults_s": 7200 + 9 * 75}
# Every client's last frame arrived at most one interval before the link went
# down, so each must go within timeout + tick after it.
bound = timeout_ms + tick_ms
out["all_evicted"] = rb["dropped"] == rb["clients"] and rb["reasons"].get("timeout", 0) == rb["clients"]
out["within_bound"] = rb["ms_after_link_down"]["max"] is not None and rb["ms_after_link_down"]["max"] <= bound
json.dump(out, open(sys.argv[3], "w"), indent=2)
print(json.dumps(out, indent=2))
print(f"wrote {sys.argv[3]}")
sys.exit(0 if out["all_evicted"] and out["within_bound"] else 1)
PY
