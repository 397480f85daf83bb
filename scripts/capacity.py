#!/usr/bin/env python3
"""Capacity model and planner for ringbeat.

  capacity.py report --prefix results/capacity-DATE --counts 10000 50000 ...
      fits the measured points, writes PREFIX.json, PREFIX.md, PREFIX-*.svg
  capacity.py plan --model PREFIX.json --clients N --interval S --cores C --ram-gib G
      connections per machine, machines needed with headroom, binding resource

The model is linear: memory = fixed + per_conn * N (server RSS and kernel
socket memory separately); CPU cores = per_heartbeat_s * heartbeats/s, where
heartbeats/s = N / interval. Headroom: plan to 70% of cores and RAM.
"""
import argparse, json, math, pathlib, sys

HEADROOM = 0.7


def fit(xs, ys):
    """Least squares y = a + b x. With a single distinct x (one client count)
    there is no slope to fit: the line goes through the origin (a = 0, b =
    y / x), which overstates the per-unit cost by the fixed part."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if not sxx:
        return 0.0, my / mx if mx else 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def measure(prefix, n):
    r = json.loads(pathlib.Path(f"{prefix}-{n}-load.json").read_text())
    rss0 = int(pathlib.Path(f"{prefix}-{n}-rss0").read_text()) * 1024
    s = r["server"]
    live = max(r["peak_live"], 1)
    steady = s["steady"]
    return {
        "clients": n, "live": live,
        "server_rss_bytes": s["rss_bytes_at_peak_live"],
        "server_user_bytes": s["rss_bytes_at_peak_live"] - rss0,
        "kernel_bytes": s["slab_bytes_delta"],
        "heartbeats_per_s": steady["heartbeats_per_s"],
        "server_cores": steady["server_cores"],
        "false_evictions": r["false_evictions"],
    }


def model(points):
    live = [p["live"] for p in points]
    a_u, b_u = fit(live, [p["server_user_bytes"] for p in points])
    a_k, b_k = fit(live, [p["kernel_bytes"] for p in points])
    hb = [p["heartbeats_per_s"] for p in points]
    a_c, b_c = fit(hb, [p["server_cores"] for p in points])
    return {"user_bytes_fixed": a_u, "user_bytes_per_conn": b_u,
            "kernel_bytes_fixed": a_k, "kernel_bytes_per_conn_pair": b_k,
            # The kernel figure covers both ends of each loopback pair; a
            # server holds one end.
            "kernel_bytes_per_server_conn": b_k / 2,
            "cores_fixed": a_c, "core_s_per_heartbeat": b_c,
            "largest_measured_conns": max(live)}


def plan(m, clients, interval_s, cores, ram_gib):
    per_conn_bytes = m["user_bytes_per_conn"] + m["kernel_bytes_per_server_conn"]
    if per_conn_bytes <= 0:
        sys.exit(f"capacity: the model has {per_conn_bytes:.0f} bytes per connection; "
                 "measure more than one client count, further apart")
    by_ram = HEADROOM * ram_gib * 2**30 / per_conn_bytes
    per_conn_cores = m["core_s_per_heartbeat"] / interval_s
    by_cpu = HEADROOM * cores / per_conn_cores if per_conn_cores > 0 else math.inf
    per_machine = int(min(by_ram, by_cpu))
    # How far past the largest measured count the plan reaches (None for a
    # model written before the field existed).
    largest = m.get("largest_measured_conns")
    return {"connections_per_machine": per_machine,
            "beyond_measured": per_machine / largest if largest else None,
            "machines": max(1, math.ceil(clients / per_machine)),
            "binding_resource": "memory" if by_ram < by_cpu else "cpu",
            "by_ram": int(by_ram), "by_cpu": int(by_cpu) if by_cpu != math.inf else None}


def svg(path, title, xs, ys, line, xlabel, ylabel):
    w, h, pad = 640, 400, 60
    xmax, ymax = max(xs) * 1.1, max(max(ys), line(max(xs) * 1.1)) * 1.1 or 1
    sx = lambda x: pad + x / xmax * (w - 2 * pad)
    sy = lambda y: h - pad - y / ymax * (h - 2 * pad)
    pts = "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="#c33"/>' for x, y in zip(xs, ys))
    fit_line = f'<line x1="{sx(0)}" y1="{sy(line(0)):.1f}" x2="{sx(xmax)}" y2="{sy(line(xmax)):.1f}" stroke="#36c"/>'
    axes = (f'<line x1="{pad}" y1="{h-pad}" x2="{w-pad}" y2="{h-pad}" stroke="black"/>'
            f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h-pad}" stroke="black"/>')
    labels = (f'<text x="{w/2}" y="25" text-anchor="middle" font-size="16">{title}</text>'
              f'<text x="{w/2}" y="{h-15}" text-anchor="middle">{xlabel} (max {xmax:,.0f})</text>'
              f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">{ylabel} (max {ymax:,.3g})</text>')
    pathlib.Path(path).write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
                          f'<rect width="100%" height="100%" fill="white"/>{axes}{fit_line}{pts}{labels}</svg>')


def report(prefix, counts):
    points = [measure(prefix, n) for n in counts]
    m = model(points)
    live = [p["live"] for p in points]
    svg(f"{prefix}-memory.svg", "server user-space memory vs connections", live,
        [p["server_user_bytes"] / 2**20 for p in points],
        lambda x: (m["user_bytes_fixed"] + m["user_bytes_per_conn"] * x) / 2**20, "connections", "MiB")
    hb = [p["heartbeats_per_s"] for p in points]
    svg(f"{prefix}-cpu.svg", "server CPU vs heartbeats/s", hb, [p["server_cores"] for p in points],
        lambda x: m["cores_fixed"] + m["core_s_per_heartbeat"] * x, "heartbeats/s", "cores")
    examples = [(1_000_000, 30, 2, 24), (1_000_000, 30, 16, 64), (10_000_000, 30, 32, 128), (10_000_000, 60, 32, 128)]
    plans = [dict(clients=c, interval_s=i, cores=k, ram_gib=r, **plan(m, c, i, k, r)) for c, i, k, r in examples]
    pathlib.Path(prefix + ".json").write_text(json.dumps(
        {"tool": "capacity.py", "schema": 1, "points": points, "model": m, "plans": plans}, indent=2))
    rows = "\n".join(f"| {p['clients']:,} | {p['live']:,} | {p['server_user_bytes']/max(p['live'],1):.0f} | "
                     f"{p['kernel_bytes']/max(p['live'],1):.0f} | {p['heartbeats_per_s']:,.0f} | {p['server_cores']:.2f} | {p['false_evictions']} |"
                     for p in points)
    prow = "\n".join(f"| {p['clients']:,} | {p['interval_s']} s | {p['cores']} / {p['ram_gib']} GiB | "
                     f"{p['connections_per_machine']:,} | {p['machines']} | {p['binding_resource']} | "
                     f"{p['beyond_measured']:.1f}× |" for p in plans)
    md = f"""# ringbeat capacity report {prefix.split('capacity-')[1]}

## Measured (fast mode, 30 s interval)

| clients | live | server user B/conn | kernel B/conn pair | heartbeats/s | server cores | false evictions |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

## Model ({"least squares" if len(set(live)) > 1 else "one client count: a line through the origin, so per-connection costs include the fixed part"})

- server user-space memory: {m['user_bytes_fixed']/2**20:.1f} MiB + {m['user_bytes_per_conn']:.0f} B per connection
- kernel memory: {m['kernel_bytes_per_conn_pair']:.0f} B per loopback pair, so ~{m['kernel_bytes_per_server_conn']:.0f} B per server connection
- server CPU: {m['core_s_per_heartbeat']*1e6:.1f} µs of one core per heartbeat (+{m['cores_fixed']:.2f} cores fixed)

![memory]({prefix.split('/')[-1]}-memory.svg) ![cpu]({prefix.split('/')[-1]}-cpu.svg)

## Planner (to {int(HEADROOM*100)}% of cores and RAM)

| clients | interval | machine | connections / machine | machines | binding | × largest measured |
|---:|---:|---|---:|---:|---|---:|
{prow}

The last column says how far each plan extrapolates past the largest client
count measured ({max(live):,}). Beyond ~2× the fitted costs are a guess:
measure up to the count you plan for.

`python3 scripts/capacity.py plan --model {prefix}.json --clients N --interval S --cores C --ram-gib G`
"""
    pathlib.Path(prefix + ".md").write_text(md)
    print(md)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("report"); r.add_argument("--prefix", required=True); r.add_argument("--counts", nargs="+", type=int, required=True)
    p = sub.add_parser("plan"); p.add_argument("--model", required=True)
    for k in ("clients", "interval", "cores"): p.add_argument(f"--{k}", type=float, required=True)
    p.add_argument("--ram-gib", type=float, required=True)
    a = ap.parse_args()
    if a.cmd == "report":
        report(a.prefix, a.counts)
    else:
        m = json.loads(pathlib.Path(a.model).read_text())["model"]
        print(json.dumps(plan(m, a.clients, a.interval, a.cores, a.ram_gib), indent=2))


if __name__ == "__main__":
    sys.exit(main())
