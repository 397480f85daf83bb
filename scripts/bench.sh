#!/usr/bin/env bash
# Side-by-side bench: the same load generator, same machine, same run, same
# client count, against each peer:
#   ringbeat (fast io mode), the same with --batch-wait 0 (no batched
#   waits: lower RTT, more wake-ups), ringbeat --io-mode compat (the 5.10 path),
#   a lean hand-written epoll server (bench/peers/epoll.rs), tokio (epoll, one task + one timeout per connection), tokio-uring 0.5,
#   mosquitto (the distribution's package; MQTT keepalive with PINGREQ;
#   installed by scripts/setup.sh --bench, skipped with a note if absent).
#
#   bash scripts/bench.sh [--quick] [--clients N] [--rounds N] [--storms N] [--loopback] [--no-pin]
#
# The load generator is the instrument, and on a small box it shares the
# cores with the server it measures: then a server's RTT tail and storm
# rate say as much about the scheduler as about the server. So by default
# the server runs on the first half of the cores and the load generator on
# the other half (taskset; every peer alike, each sizing its threads to the
# cores it is given), as if the clients were another machine; and the load
# generator runs in a network namespace of its own, reaching the server
# over a veth pair whose ends steer their receive work to their own side's
# cores (scripts/lib/loadbox.sh, loadbox_veth): on loopback the sender's
# core runs the receiver's TCP input, so the client core did the server's
# handshakes. --loopback keeps the pinning over loopback (runs of
# 2026-12-01 before 16:30 UTC); --no-pin shares every core over loopback,
# as runs before 2026-12-01 did.
#
# After every peer's run, the round's connect storms (every client at
# once): --storms per peer (default 7), taken in turns across the peers,
# every peer's server running (storm_round); a round's accept figures are
# the median of its storms. Each turn is two storms: a plain one, whose
# rate on this box is mostly the load generator's connect rate, and a held
# one (ringbeat-load --hold-server): the server is stopped while every
# client connects and says HELLO into its accept queue, then resumed, so
# the time until the last answer is the server's own accept rate. The run
# raises net.core.somaxconn to 65535 (restored at exit) so that every
# peer's accept queue holds the storm: ringbeat and our peers listen with
# 65535 (bench/peers/args.rs); mosquitto's own backlog is smaller, and a
# held storm it cannot queue in full has no figure.
#
# Prints one table with every figure also as a ratio to ringbeat (fast), and
# writes results/bench-DATE.json and .md. Each round runs every peer once
# (each round starting one peer further on); figures are medians over the
# rounds, so that the host's speed drifting during the run (this VM: up to
# 1.7x) lands on every peer alike. Peers that hold one fd per connection are
# capped by RLIMIT_NOFILE, so the client count defaults to 15000 for all
# peers; `--clients 19000` runs every peer at the epoll peers' cap.
# Loopback or its own veth pair only; bounded; kills what it starts.
set -euo pipefail
cd "$(dirname "$0")/.."

clients=15000
run_s=40
rounds=3
storms=7
pin=1
veth=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) run_s=20; rounds=1; storms=1; shift ;;
    --clients) clients=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --storms) storms=$2; shift 2 ;;
    --no-pin) pin=0; veth=0; shift ;;
    --loopback) veth=0; shift ;;
    *) echo "usage: $0 [--quick] [--clients N] [--rounds N] [--storms N] [--loopback] [--no-pin]" >&2; exit 2 ;;
  esac
done
for v in "$clients" "$rounds" "$storms"; do
  [[ $v =~ ^[1-9][0-9]*$ ]] || { echo "bench: '$v' is not a positive whole number" >&2; exit 2; }
done

release=$(uname -r)
major=${release%%.*}; rest=${release#*.}; minor=${rest%%.*}
if [ "$major" -lt 5 ] || { [ "$major" -eq 5 ] && [ "$minor" -lt 10 ]; }; then
  echo "bench: kernel $release is older than 5.10; ringbeat needs io_uring from 5.10" >&2
  exit 1
fi
bash scripts/setup.sh --bench
cargo build --release --quiet --features peers --bins
features=$(./target/release/ringbeat features)
echo "bench: kernel $release; $features"

source scripts/lib/loadbox.sh
stamp=$(date -u +%Y%m%d-%H%M%S)
out=results/bench-$stamp
mkdir -p results
loadbox_begin bench

interval=1s; timeout=3s; tick=100ms
loadbox_place "$pin" "$veth"
echo "bench: $placement"
# A held storm queues every client in the server's accept queue.
load_sysctl_set bench net.core.somaxconn 65535
peers=()
if echo "$features" | grep -q "fast mode: ready"; then
  peers+=(ringbeat-fast)
  # On one core ringbeat runs its two shards on one thread (a group), and a
  # group does not batch its waits (src/shard/group.rs): --batch-wait 0s
  # would run the very configuration of ringbeat-fast again.
  if [ "$(server_core_count)" -gt 1 ]; then
    peers+=(ringbeat-nobatch)
  else
    echo "bench: the server has one core: ringbeat-nobatch would be ringbeat-fast's configuration; skipping it"
  fi
else
  echo "bench: fast mode unavailable here; skipping it"
fi
# epoll: the lean hand-written epoll server (bench/peers/epoll.rs), the
# strongest non-io_uring baseline; tokio_*: what a user would write.
peers+=(ringbeat-compat epoll tokio_epoll tokio_uring)
mosquitto_bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
if [ -x "$mosquitto_bin" ]; then
  peers+=(mosquitto)
  echo "bench: $("$mosquitto_bin" -h 2>/dev/null | head -1)"
else
  echo "bench: mosquitto not installed (bash scripts/setup.sh --bench); skipping it"
fi

port=7730
# Starts $1's server on port $2, its stderr to $3; sets `server` (its pid)
# and `protocol`.
start_server() {
  local peer=$1 port=$2 log=$3 cmd
  protocol=ringbeat
  local args=(--listen $server_ip:$port --interval $interval --timeout $timeout)
  case $peer in
    ringbeat-fast) cmd=(./target/release/ringbeat serve --io-mode fast --shards 2 --tick $tick "${args[@]}") ;;
    # Fast mode without batched waits: the RTT it buys back, the CPU it costs.
    ringbeat-nobatch) cmd=(./target/release/ringbeat serve --io-mode fast --batch-wait 0s --shards 2 --tick $tick "${args[@]}") ;;
    ringbeat-compat) cmd=(./target/release/ringbeat serve --io-mode compat --shards 2 --tick $tick "${args[@]}") ;;
    epoll) cmd=(./target/release/epoll "${args[@]}") ;;
    tokio_epoll) cmd=(./target/release/tokio_epoll "${args[@]}") ;;
    tokio_uring) cmd=(./target/release/tokio_uring "${args[@]}") ;;
    mosquitto)
      # Clients ask for keepalive 2 s; the broker closes after 1.5 × that = 3 s.
      printf '%s\n' "listener $port $server_ip" "allow_anonymous true" "persistence false" \
        "max_keepalive 65535" "log_dest stderr" "log_type error" "log_type warning" > "$out-mosquitto-$port.conf"
      cmd=("$mosquitto_bin" -c "$out-mosquitto-$port.conf")
      protocol=mqtt ;;
  esac
  "${server_pin[@]}" "${cmd[@]}" 2> "$log" &
  server=$!
  pids+=("$server")
}

# Every client names itself (HELLO, or MQTT's CONNECT) and is answered
# (WELCOME, CONNACK): a storm is timed to the server's answer, not to the
# kernel's handshake.
hello_args() { hello=(); [ "$1" = ringbeat ] && hello=(--hello); return 0; }

# The round's connect storms (every client at once), --storms per peer,
# taken in turns: every peer's server runs (idle between its storms), and
# storm k goes to each peer in turn, starting one peer further on each
# time. A storm lasts half a second; the same build's storms spread 21-35K
# per s over the veth pair (2026-12-01), and this host drifts for minutes
# at a time, so a peer's storms taken back to back shared its luck; taken
# in turns, the drift lands on every peer alike. A round's accept figures
# are the median of its storms.
storm_round() {
  local round=$1 peer i k n=${#peers[@]}
  local -a spid sport sproto
  for i in "${!peers[@]}"; do
    port=$((port + 1))
    start_server "${peers[$i]}" $port "$out-${peers[$i]}-r$round-storms.log"
    spid[$i]=$server; sport[$i]=$port; sproto[$i]=$protocol
  done
  sleep 1
  echo "bench: round $round/$rounds: $storms storms per peer, in turns"
  for storm in $(seq "$storms"); do
    for k in $(seq 0 $((n - 1))); do
      i=$(( (k + storm - 1 + round - 1) % n )); peer=${peers[$i]}
      # The last storm's sockets closed, so the host's teardown of them is
      # not this one's cost.
      if [ ${#loadbox_in[@]} -gt 0 ]; then wait_sockets_freed bench alloc; else wait_sockets_freed bench; fi
      hello_args "${sproto[$i]}"
      "${loadbox_in[@]}" "${load_pin[@]}" ./target/release/ringbeat-load --connect $server_ip:${sport[$i]} "${source_from[@]}" --clients "$clients" --ramp 1000000 --protocol ${sproto[$i]} "${hello[@]}" \
        --interval $interval --timeout $timeout --tick $tick --duration 2s --server-pid "${spid[$i]}" \
        --json "$out-$peer-r$round-storm$storm.json" 2>> "$out-$peer-r$round-storms-load.log" > /dev/null || true
      sleep 1
      if [ ${#loadbox_in[@]} -gt 0 ]; then wait_sockets_freed bench alloc; else wait_sockets_freed bench; fi
      # The held storm: the load generator stops the server (SIGSTOP) until
      # every client is queued, at most half the run, then resumes it.
      "${loadbox_in[@]}" "${load_pin[@]}" ./target/release/ringbeat-load --connect $server_ip:${sport[$i]} "${source_from[@]}" --clients "$clients" --ramp 1000000 --protocol ${sproto[$i]} "${hello[@]}" \
        --interval $interval --timeout $timeout --tick $tick --duration 3s --server-pid "${spid[$i]}" --hold-server \
        --json "$out-$peer-r$round-held$storm.json" 2>> "$out-$peer-r$round-storms-load.log" > /dev/null || true
      sleep 1
    done
  done
  for i in "${!peers[@]}"; do kill -CONT "${spid[$i]}" 2>/dev/null || true; kill "${spid[$i]}" 2>/dev/null || true; wait "${spid[$i]}" 2>/dev/null || true; done
}

for round in $(seq "$rounds"); do
shift_by=$(( (round - 1) % ${#peers[@]} ))
for peer in "${peers[@]:shift_by}" "${peers[@]:0:shift_by}"; do
  # This peer's kernel bytes are its own (over veth the load generator's
  # sockets are in its namespace: count every namespace's).
  if [ ${#loadbox_in[@]} -gt 0 ]; then wait_sockets_freed bench alloc; else wait_sockets_freed bench; fi
  port=$((port + 1))
  start_server "$peer" $port "$out-$peer-r$round.log"
  sleep 1
  rss0=$(awk '/^VmRSS/ {print $2}' "/proc/$server/status")
  echo "bench: round $round/$rounds: $peer: $clients clients, interval $interval, ${run_s}s"
  hello_args "$protocol"
  "${loadbox_in[@]}" "${load_pin[@]}" ./target/release/ringbeat-load --connect $server_ip:$port "${source_from[@]}" --clients "$clients" --ramp 1000000 --protocol $protocol "${hello[@]}" \
    --interval $interval --timeout $timeout --tick $tick --mix silent=0.05 --fault-after 3s \
    --duration "${run_s}s" --steady-after 8s --server-pid "$server" --json "$out-$peer-r$round-load.json" \
    2> "$out-$peer-r$round-load.log" > /dev/null || true
  echo "$rss0" > "$out-$peer-r$round-rss0"
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
done
storm_round "$round"
done

PLACEMENT="$placement" python3 - "$out" "$clients" "$release" "$features" "$rounds" "${peers[@]}" <<'PY'
import json, os, statistics, sys
out, clients, release, features, rounds, peers = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6:]

def measure(p, rnd):
    r = json.load(open(f"{out}-{p}-r{rnd}-load.json"))
    rss0 = int(open(f"{out}-{p}-r{rnd}-rss0").read()) * 1024
    s = r["server"]
    # Server CPU over the steady window (from 8 s: connects, first PINGs and
    # evictions done, teardown not yet begun), per heartbeat answered in it.
    steady = s["steady"]
    cpu = steady["server_cpu_s"]
    answered = max(steady["heartbeats_answered"], 1)
    live = max(r["peak_live"], 1)
    storms = storms_of(p, rnd, "storm")
    held_runs = storms_of(p, rnd, "held")
    held = [s["storm"] for s in held_runs]
    return {
        "connected": r["connected"],
        "server_rss_bytes_per_conn": (s["rss_bytes_at_peak_live"] - rss0) / live,
        "kernel_bytes_per_conn_pair": s["slab_bytes_delta"] / live,
        "server_cpu_s_per_million_heartbeats": cpu / answered * 1e6,
        "heartbeats_per_s_per_core": answered / max(cpu, 1e-9),
        "detection_ms_p50": r["detection_ms"]["p50"],
        "detection_ms_p99": r["detection_ms"]["p99"],
        "detection_ms_max": r["detection_ms"]["max"],
        "silent_evicted": r["silent_evicted"], "silent_total": r["silent_total"],
        "false_evictions": r["false_evictions"],
        # Evictions the load generator caused by sending late (load schema 2+).
        "late_client_evictions": r.get("late_client_evictions", 0),
        "rtt_us_p99": r["rtt_us"]["p99"],
        # The connect storm (every client at once): on loopback the kernel
        # completes each handshake in the connecting thread before any
        # accept, so this rate is mostly the load generator's, and the CPU
        # the server leaves it; the server's own cost of accepting and
        # answering a client is the next figure (docs/BENCH.md).
        # Medians over the round's storms (storm_round).
        "accept_rate_per_s": storm_median(storms, lambda s: s["welcome"]["rate_per_s"]),
        # None when some client was never answered within the run.
        "accept_server_us_per_client": storm_median(storms, lambda s: (s["storm"] or {}).get("server_cpu_us_per_client")),
        "accept_answer_ms_p99": storm_median(storms, lambda s: s["welcome"]["wait_us_p99"] / 1000),
        "accept_rate_per_s_storms": [s["welcome"]["rate_per_s"] for s in storms],
        # Held storms (ringbeat-load --hold-server): timed from the server's
        # resume to the last answer, every client already queued. None when
        # some held storm did not queue every client (the peer's accept
        # queue) or was not answered in full.
        "held_answered_per_s": storm_median(held, lambda s: held_figure(s, "answered_per_s")),
        "held_server_us_per_client": storm_median(held, lambda s: held_figure(s, "server_cpu_us_per_client")),
        "held_answered_per_s_storms": [held_figure(s, "answered_per_s") for s in held],
        # By turn, for comparing peers turn by turn: a storm that left no
        # record is missing here rather than shifting the turns after it.
        "held_answered_per_s_by_turn": {str(s["turn"]): held_figure(s["storm"], "answered_per_s") for s in held_runs},
    }

def held_figure(storm, key):
    if not storm or not (storm.get("held") or {}).get("complete"):
        return None
    return storm[key]

def storms_of(p, rnd, kind):
    """The round's storms of `p` (storm_round) of `kind`: "storm" (plain)
    or "held", in the order taken, each with its "turn" (storm k of every
    peer is turn k); the run's own opening storm is not one of them."""
    d = os.path.dirname(out) or "."
    prefix = os.path.basename(f"{out}-{p}-r{rnd}-{kind}")
    numbered = {int(f[len(prefix):-5]): f for f in os.listdir(d)
                if f.startswith(prefix) and f[len(prefix):-5].isdigit() and f.endswith(".json")}
    return [dict(json.load(open(os.path.join(d, numbered[k]))), turn=k) for k in sorted(numbered)]

def storm_median(storms, fig):
    values = [fig(s) for s in storms]
    # No storm on record (its server did not start) or one not answered in full.
    if not values or any(v is None for v in values):
        return None
    return statistics.median(values)

def combine(runs):
    """Medians over the rounds; the worst detection and the eviction counts
    over all of them; the CPU spread kept."""
    def median(values):
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None
    row = {k: median(r[k] for r in runs) for k in runs[0] if not isinstance(runs[0][k], (list, dict))}
    # A round whose run connected fewer clients (refused, capped) has its
    # figures over those: the table says so.
    row["connected_min"] = min(r["connected"] for r in runs)
    row["detection_ms_max"] = max(r["detection_ms_max"] for r in runs)
    for k in ("connected", "silent_evicted", "silent_total", "false_evictions", "late_client_evictions"):
        row[k] = sum(r[k] for r in runs)
    cpu = [r["server_cpu_s_per_million_heartbeats"] for r in runs]
    row["server_cpu_s_per_million_heartbeats_range"] = [min(cpu), max(cpu)]
    row["silent_evicted"] = f'{row["silent_evicted"]}/{row.pop("silent_total")}'
    row["rounds"] = runs
    return row

rows = {p: combine([measure(p, i) for i in range(1, rounds + 1)]) for p in peers}
base = rows[peers[0]]
figs = [("clients connected, fewest in a round", "connected_min", "{:,}"),
        ("server RSS bytes/conn", "server_rss_bytes_per_conn", "{:.0f}"),
        ("kernel bytes/conn (both ends)", "kernel_bytes_per_conn_pair", "{:.0f}"),
        ("server CPU-s per 1M heartbeats (steady)", "server_cpu_s_per_million_heartbeats", "{:.1f}"),
        ("server CPU-s per 1M heartbeats, min–max over rounds", "server_cpu_s_per_million_heartbeats_range",
         "{0[0]:.1f}–{0[1]:.1f}"),
        ("heartbeats/s per core (extrapolated)", "heartbeats_per_s_per_core", "{:,.0f}"),
        ("detection p50 ms", "detection_ms_p50", "{:.0f}"), ("detection p99 ms", "detection_ms_p99", "{:.0f}"),
        ("detection max ms (worst round)", "detection_ms_max", "{:.0f}"), ("RTT p99 µs", "rtt_us_p99", "{:.0f}"),
        ("plain storm: answered/s (bound by the load generator here; see BENCH.md)", "accept_rate_per_s", "{:,.0f}"),
        ("plain storm: server CPU µs per client", "accept_server_us_per_client", "{:.1f}"),
        ("plain storm: connect → answer p99 ms", "accept_answer_ms_p99", "{:.1f}"),
        ("accept rate/s: held storm answered from the resume (the server's own)", "held_answered_per_s", "{:,.0f}"),
        ("held storm: server CPU µs per client", "held_server_us_per_client", "{:.1f}"),
        ("false evictions (server's fault)", "false_evictions", "{}"),
        ("late-client evictions (load generator's fault)", "late_client_evictions", "{}"), ("silent evicted", "silent_evicted", "{}")]
lines = [f"# bench {out.split('bench-')[1]}", "",
         f"kernel {release}; {features}", "", "Placement: " + os.environ.get("PLACEMENT", "?") + ".", "",
         f"{clients} clients per peer, each saying HELLO (MQTT: CONNECT) at once, then PING every 1s (±10%), timeout 3s, 5% silent. Ratios are peer / {peers[0]}.",
         f"{rounds} round(s), each running every peer in turn; figures are medians over the rounds, evictions are totals.",
         "mosquitto speaks MQTT: CONNECT keepalive 2 s (it closes after 1.5 × keepalive = 3 s), PINGREQ as the PING.", "",
         "| figure | " + " | ".join(peers) + " |", "|---|" + "---|" * len(peers)]
for label, key, fmt in figs:
    cells = []
    for p in peers:
        v = rows[p][key]
        cell = "n/a" if v is None else fmt.format(v)
        if isinstance(v, (int, float)) and isinstance(base[key], (int, float)) and base[key] and p != peers[0]:
            cell += f" ({v / base[key]:.2f}×)"
        cells.append(cell)
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
# Per round, ringbeat-fast against the lean epoll peer and the best other
# server (issue 18's bars), and against ringbeat's own other modes.
def rate(v):
    return "n/a" if v is None else f"{v:,.0f}"

def best(m, key, names):
    known = [m[p][key] for p in names if m[p][key] is not None]
    return max(known) if known else None

def beats(fast, rivals, vs_epoll=False):
    """Whether fast's held rate is at least each rival's. A rival without
    a figure (mosquitto's accept queue cannot hold a storm) is passed,
    except the epoll peer: without its figure the bar is not met."""
    if fast is None or (vs_epoll and None in rivals):
        return False
    return all(r is None or fast >= r for r in rivals)

def issue18_bars(rows, peers, rounds):
    """Per round, whether ringbeat-fast met issue 18's bars against the lean
    epoll peer and every other server (ringbeat's own modes are not
    peers), and in how many of the round's turns its held storm was
    answered faster than theirs in the same turn."""
    servers = [p for p in peers if not p.startswith("ringbeat-")]
    bars = []
    for i in range(1, rounds + 1):
        m = {p: rows[p]["rounds"][i - 1] for p in peers}
        f, e = m["ringbeat-fast"], m["epoll"]
        # Every turn any peer took; a peer's missing storm is no figure.
        by_turn = [m[p]["held_answered_per_s_by_turn"] for p in ["ringbeat-fast"] + servers]
        numbers = sorted({int(k) for t in by_turn for k in t})
        turns = [[t.get(str(k)) for t in by_turn] for k in numbers]
        vs_epoll = 1 + servers.index("epoll")
        bars.append({"round": i,
                     "cpu_below_epoll": f["server_cpu_s_per_million_heartbeats"] < e["server_cpu_s_per_million_heartbeats"],
                     "rtt_within_1_5x": f["rtt_us_p99"] <= 1.5 * e["rtt_us_p99"],
                     "accept_at_least_epoll": beats(f["held_answered_per_s"], [e["held_answered_per_s"]], vs_epoll=True),
                     "accept_at_least_every_server": beats(f["held_answered_per_s"], [e["held_answered_per_s"]], vs_epoll=True)
                     and beats(f["held_answered_per_s"], [m[p]["held_answered_per_s"] for p in servers]),
                     "turns": len(turns),
                     "turns_won_vs_epoll": sum(beats(t[0], [t[vs_epoll]], vs_epoll=True) for t in turns),
                     "turns_won_vs_servers": sum(beats(t[0], [t[vs_epoll]], vs_epoll=True) and beats(t[0], t[1:]) for t in turns)})
    return bars

if "ringbeat-fast" in peers and "epoll" in peers:
    lines += ["", "| round | CPU-s/1M hb: fast, epoll | RTT p99 fast / epoll | plain storm answered/s: fast, epoll, best other server | held storm answered/s: fast, epoll, best other server | ringbeat's other modes (plain; held) |", "|---|---|---|---|---|---|"]
    servers = [p for p in peers if not p.startswith("ringbeat-")]
    for i in range(1, rounds + 1):
        m = {p: rows[p]["rounds"][i - 1] for p in peers}
        f, e = m["ringbeat-fast"], m["epoll"]
        own = ", ".join(f"{p[len('ringbeat-'):]} {rate(m[p]['accept_rate_per_s'])}; {rate(m[p]['held_answered_per_s'])}"
                        for p in peers if p.startswith("ringbeat-") and p != "ringbeat-fast")
        lines.append(f"| {i} | {f['server_cpu_s_per_million_heartbeats']:.2f}, {e['server_cpu_s_per_million_heartbeats']:.2f} "
                     f"| {f['rtt_us_p99'] / max(e['rtt_us_p99'], 1):.2f}× "
                     f"| {rate(f['accept_rate_per_s'])}, {rate(e['accept_rate_per_s'])}, {rate(best(m, 'accept_rate_per_s', servers))} "
                     f"| {rate(f['held_answered_per_s'])}, {rate(e['held_answered_per_s'])}, {rate(best(m, 'held_answered_per_s', servers))} | {own} |")
bars = issue18_bars(rows, peers, rounds) if "ringbeat-fast" in peers and "epoll" in peers else None
if bars:
    lines += ["", "Issue 18's bars per round (held storm: the accept rate; turns: storms of one turn compared pairwise)", "",
              "| round | CPU below epoll | RTT p99 ≤ 1.5× epoll | accept ≥ epoll | accept ≥ every other server | held turns won vs epoll | vs every other server |",
              "|---|---|---|---|---|---|---|"]
    for b in bars:
        yes = lambda v: "yes" if v else "**no**"
        lines.append(f"| {b['round']} | {yes(b['cpu_below_epoll'])} | {yes(b['rtt_within_1_5x'])} | {yes(b['accept_at_least_epoll'])} "
                     f"| {yes(b['accept_at_least_every_server'])} | {b['turns_won_vs_epoll']}/{b['turns']} | {b['turns_won_vs_servers']}/{b['turns']} |")
md = "\n".join(lines) + "\n"
json.dump({"tool": "bench.sh", "schema": 5, "issue18_bars": bars, "kernel": release, "features": features, "placement": os.environ.get("PLACEMENT"),
           "clients": clients, "rounds": rounds, "baseline": peers[0], "peers": rows}, open(out + ".json", "w"), indent=2)
open(out + ".md", "w").write(md)
print(md)
print(f"wrote {out}.json and {out}.md")
PY
