#!/usr/bin/env python3
"""Opens N TCP connections to a ringbeat server and holds them, sending one
PING per connection every --interval seconds. Used by scripts/scale.sh to
show one server process holding more connections than RLIMIT_NOFILE.

Bounded: exits after --duration seconds. Loopback only."""
import argparse, selectors, socket, struct, sys, time

PING = struct.pack(">BBBBI", 0x52, 1, 3, 0, 8)

def main():
    p = argparse.ArgumentParser()
    p.add_argument("--connect", required=True, help="host:port")
    p.add_argument("--source", required=True, help="source IP in 127.0.0.0/8")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--interval", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=600.0)
    a = p.parse_args()
    host, port = a.connect.rsplit(":", 1)
    assert host.startswith("127.") and a.source.startswith("127."), "loopback only"
    socks = []
    for i in range(a.count):
        s = socket.socket()
        s.bind((a.source, 0))
        s.connect((host, int(port)))
        s.setblocking(False)
        socks.append(s)
    print(f"ready {len(socks)}", flush=True)
    deadline = time.time() + a.duration
    n = 0
    while time.time() < deadline:
        for s in socks:
            n += 1
            try:
                s.send(PING + n.to_bytes(8, "big"))
                s.recv(4096)
            except BlockingIOError:
                pass
            except OSError as e:
                print(f"lost a connection: {e}", file=sys.stderr)
                return 1
        time.sleep(min(a.interval, max(0.0, deadline - time.time())))
    return 0

if __name__ == "__main__":
    sys.exit(main())
