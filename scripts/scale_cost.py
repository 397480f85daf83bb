"""Marginal CPU per heartbeat at several client counts (scale-cost.sh).

sample: every PERIOD s, one JSON line of the server's and the load
        generator's user/system CPU seconds and the server's frames received
        (its Prometheus counter), until the load generator exits (bounded).
report: per client count, splits cpu = a*seconds + b*heartbeats from the
        two halves of the steady window (all clients connected and beating,
        then half of them silent, none evicted yet): b is the change in CPU
        per second over the change in heartbeats per second between the
        halves (the marginal cost of a heartbeat), a what is left at the
        full rate (the cost per second of holding that many connections:
        ticks, sweeps, kernel work per socket), for server and load
        generator, user and system apart. A window in which the server
        evicted anyone is refused. Ratios are against the smallest
        count. (A least-squares fit over the 2 s samples did not separate:
        within a half the rate barely varies, so noise decided the split.)
"""
import json
import os
import sys
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


def cpu(pid):
    """(user_s, sys_s) of a process, or None once it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def counters(url):
    """(frames received, connections evicted): the sums of
    ringbeat_frames_received_total and ringbeat_evicted_total."""
    totals = {"ringbeat_frames_received_total": 0.0, "ringbeat_evicted_total": 0.0}
    with urllib.request.urlopen(url, timeout=2) as r:
        for line in r.read().decode().splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.split()[-1])
    return totals["ringbeat_frames_received_total"], totals["ringbeat_evicted_total"]


def sample(server_pid, load_pid, url, out, period_s, max_s):
    start = time.monotonic()
    with open(out, "w") as f:
        while time.monotonic() - start < max_s:
            s, l = cpu(server_pid), cpu(load_pid)
            if s is None or l is None:
                return
            try:
                n, evicted = counters(url)
            except OSError:
                n, evicted = None, None
            row = {"t": time.monotonic() - start, "server": s, "load": l, "frames": n,
                   "evicted": evicted}
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(period_s)


def inside(samples, lo_s, hi_s):
    """The samples in [lo_s, hi_s] with frame counts."""
    return [s for s in samples if lo_s <= s["t"] <= hi_s and s["frames"] is not None]


def intervals(samples, from_s, to_s):
    """Consecutive sample pairs inside [from_s, to_s]."""
    kept = inside(samples, from_s, to_s)
    return list(zip(kept, kept[1:]))


def mean_rates(samples, lo_s, hi_s):
    """(heartbeats/s, {who_kind: cpu s/s}) between the first and last sample
    in [lo_s, hi_s], or None with fewer than two samples."""
    kept = inside(samples, lo_s, hi_s)
    if len(kept) < 2:
        return None
    a, b = kept[0], kept[-1]
    dt = b["t"] - a["t"]
    cpu = {f"{who}_{name}": (b[who][k] - a[who][k]) / dt
           for who in ("server", "load") for k, name in ((0, "user"), (1, "sys"))}
    return (b["frames"] - a["frames"]) / dt, cpu


# After the half falls silent, PINGs already in flight still land.
SETTLE_S = 5
# scale-cost.sh's silent_at - from_s, for windows written before it
# recorded silent_at_s.
SILENT_AFTER_S = 30


def evicted_in(samples, lo_s, hi_s):
    """Connections the server evicted between the first and last sample in
    [lo_s, hi_s] (0 for samples written before they recorded it)."""
    kept = [s["evicted"] for s in inside(samples, lo_s, hi_s) if s.get("evicted") is not None]
    return kept[-1] - kept[0] if kept else 0


def point(samples, from_s, to_s, silent_at_s=None):
    """Marginal and holding cost at one count; None per figure when the two
    halves' heartbeat rates differ by less than a fifth, or when the server
    evicted anyone inside the window (closing connections costs both ends
    far more than heartbeats: it would pass for a cost of holding them)."""
    if silent_at_s is None:
        silent_at_s = from_s + SILENT_AFTER_S
    full = mean_rates(samples, from_s, silent_at_s)
    half = mean_rates(samples, silent_at_s + SETTLE_S, to_s)
    evicted = evicted_in(samples, from_s, to_s)
    out = {"intervals": len(intervals(samples, from_s, to_s)), "evicted_in_window": evicted}
    if evicted:
        print(f"scale-cost: {evicted:.0f} evictions inside the window {from_s}-{to_s} s: "
              "no split", file=sys.stderr)
    ok = full and half and full[0] - half[0] > 0.2 * full[0] and not evicted
    for k in ("server_user", "server_sys", "load_user", "load_sys"):
        if not ok:
            out[k] = None
            continue
        b = (full[1][k] - half[1][k]) / (full[0] - half[0])
        out[k] = {"fixed_cpu_ms_per_s": (full[1][k] - b * full[0]) * 1e3,
                  "us_per_heartbeat": b * 1e6}
    hb = [b["frames"] - a["frames"] for a, b in intervals(samples, from_s, to_s)]
    out["heartbeats_per_s_full_half"] = [full[0], half[0]] if full and half else None
    out["heartbeats_per_s_range"] = [min(hb, default=0), max(hb, default=0)]
    return out


def report(prefix, counts, shards):
    points = {}
    for n in counts:
        samples = [json.loads(x) for x in open(f"{prefix}-{n}-samples.jsonl")]
        window = json.load(open(f"{prefix}-{n}-window.json"))
        points[n] = point(samples, window["from_s"], window["to_s"], window.get("silent_at_s"))
    base = points[counts[0]]
    for n in counts:
        p = points[n]
        p["ratio_to_first"] = {}
        for k in ("server_user", "server_sys", "load_user", "load_sys"):
            if p[k] and base[k] and base[k]["us_per_heartbeat"] > 0:
                p["ratio_to_first"][k] = p[k]["us_per_heartbeat"] / base[k]["us_per_heartbeat"]
    doc = {"tool": "scale-cost.sh", "schema": 1, "shards": shards, "interval_s": 30,
           "counts": counts, "points": {str(n): points[n] for n in counts}}
    json.dump(doc, open(prefix + ".json", "w"), indent=2)
    # The user/system parts are differences of /proc's 10 ms ticks: noisy
    # alone, even negative; their sum is the figure.
    print("| clients | server µs/hb (u+s) | server user µs/hb | server sys µs/hb | "
          "server holding ms/s (u+s) | load user µs/hb | load sys µs/hb | server (u+s) / first |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        p = points[n]

        def us(k):
            return f"{p[k]['us_per_heartbeat']:.2f}" if p[k] else "n/a"
        fixed = sum(p[k]["fixed_cpu_ms_per_s"] for k in ("server_user", "server_sys") if p[k])
        both = [p[k]["us_per_heartbeat"] for k in ("server_user", "server_sys") if p[k]]
        first = [base[k]["us_per_heartbeat"] for k in ("server_user", "server_sys") if base[k]]
        ratio = f"{sum(both) / sum(first):.2f}" if both and first and sum(first) else "n/a"
        total = f"{sum(both):.2f}" if both else "n/a"
        print(f"| {n:,} | {total} | {us('server_user')} | {us('server_sys')} | {fixed:.1f} | "
              f"{us('load_user')} | {us('load_sys')} | {ratio} |")
    print(f"wrote {prefix}.json")


def main(argv):
    if argv[:1] == ["sample"]:
        server, load, url, out, period, max_s = argv[1:7]
        sample(int(server), int(load), url, out, float(period), float(max_s))
    elif argv[:1] == ["report"]:
        prefix, shards, counts = argv[1], int(argv[2]), [int(x) for x in argv[3:]]
        report(prefix, counts, shards)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
