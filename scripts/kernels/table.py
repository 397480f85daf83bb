#!/usr/bin/env python3
"""Kernel matrix results: turns one guest's serial log into JSON rows
(--series S LOG) and renders the rows as a table (--render ROWS), exiting 1
when any row fails. Used by scripts/kernels.sh."""
import json
import re
import sys

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def parse_log(series, text):
    """One row per mode run in the guest, or one failed row if none ran."""
    lines = [ANSI.sub("", l).rstrip("\r") for l in text.splitlines()]
    # The firmware's screen reset leaves junk in front of the first marker.
    lines = [l[l.find("@@"):] if "@@" in l else l for l in lines]
    kernel = next((l.split(" ", 1)[1] for l in lines if l.startswith("@@KERNEL ")), "?")
    features = next((l.split(" ", 1)[1] for l in lines if l.startswith("@@FEATURES ")), "")
    rows, cur = [], None
    for line in lines:
        if line.startswith("@@BEGIN "):
            cur = {"series": series, "kernel": kernel, "features": features,
                   "requested": line.split()[1], "server_log": []}
        elif cur is None:
            continue
        elif line.startswith("@@END "):
            rows.append(cur)
            cur = None
        elif line.startswith("@@TAKEOVER "):
            cur["takeover"] = safe_json(line.split(" ", 1)[1])
        elif line.startswith("@@LOADJSON "):
            cur["load"] = safe_json(line.split(" ", 1)[1])
        elif line.startswith("@@LOADRC "):
            cur["load_rc"] = int(line.split()[1])
        elif line.startswith("@@SIGTERMRC "):
            cur["sigterm_rc"] = int(line.split()[1])
        elif line.startswith("@@SIGTERM hung"):
            cur["sigterm_hung"] = True
        elif not line.startswith("@@"):
            cur["server_log"].append(line)
    if cur is not None:
        cur["truncated"] = True
        rows.append(cur)
    if not rows:
        tail = [l for l in lines if l.strip()][-5:]
        rows.append({"series": series, "kernel": kernel, "features": features,
                     "requested": "-", "boot_failed": " | ".join(tail)[-300:]})
    return [judge(r) for r in rows]


def safe_json(s):
    try:
        return json.loads(s)
    except ValueError:
        return {"unparsed": s[-300:]}


def judge(r):
    """Adds the verdict columns to a row."""
    if "boot_failed" in r:
        r.update(ok=False, why="guest ran no check: " + r["boot_failed"])
        return r
    chosen = "?"
    for l in r["server_log"]:
        m = re.search(r"io mode mode=(.*?) features=", l)
        if m:
            chosen = m.group(1)
    r["chosen"] = chosen
    load = r.get("load") or {}
    silent = load.get("silent_total", -1)
    det = load.get("detection_ms") or {}
    r["pingpong_ok"] = (load.get("heartbeats_answered", 0) > 0 and load.get("heartbeats_lost", 1) == 0
                        and load.get("server_protocol_errors", 1) == 0)
    r["evictions_ok"] = silent > 0 and load.get("silent_evicted") == silent and det.get("early", 1) == 0
    r["late"] = det.get("late", "?")
    r["false_evictions"] = load.get("false_evictions", "?")
    r["takeover_ok"] = bool((r.get("takeover") or {}).get("takeover_ok"))
    r["sigterm_ok"] = r.get("sigterm_rc") == 0 and not r.get("sigterm_hung")
    r["ok"] = (r["pingpong_ok"] and r["evictions_ok"] and r["false_evictions"] == 0
               and r["takeover_ok"] and r["sigterm_ok"] and load.get("connect_errors", 1) == 0
               and not r.get("truncated"))
    return r


def yes(b):
    return "yes" if b else "**NO**"


def render(rows):
    print("| kernel | --io-mode | mode chosen, why | PING/PONG | silent evicted (early/late) "
          "| false evictions | takeover | SIGTERM exit 0 | row |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "boot_failed" in r:
            print(f"| {r['kernel']} ({r['series']}) | - | {r['why']} | | | | | | **FAIL** |")
            continue
        load = r.get("load") or {}
        ev = f"{load.get('silent_evicted', '?')}/{load.get('silent_total', '?')} " \
             f"({(load.get('detection_ms') or {}).get('early', '?')}/{r['late']})"
        print(f"| {r['kernel']} | {r['requested']} | {r['chosen']} | "
              f"{yes(r['pingpong_ok'])} ({load.get('heartbeats_answered', 0)}) | "
              f"{ev} {yes(r['evictions_ok'])} | {r['false_evictions']} | {yes(r['takeover_ok'])} | "
              f"{yes(r['sigterm_ok'])} | {'pass' if r['ok'] else '**FAIL**'} |")
    seen = set()
    for r in rows:
        if r.get("features") and r["kernel"] not in seen:
            seen.add(r["kernel"])
            print(f"\n- {r['kernel']}: `ringbeat features`: {r['features']}")
    return all(r["ok"] for r in rows)


def main(argv):
    if argv[:1] == ["--series"]:
        with open(argv[2], errors="replace") as f:
            for row in parse_log(argv[1], f.read()):
                print(json.dumps(row))
        return 0
    if argv[:1] == ["--render"]:
        with open(argv[1]) as f:
            rows = [json.loads(l) for l in f if l.strip()]
        return 0 if render(rows) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
