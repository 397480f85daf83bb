#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/seeds/TARGET/) from the
frames the protocol tests use (src/protocol.rs tests, PROTOCOL.md examples).
Run by scripts/fuzz.sh; the seeds are committed so a run is reproducible."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
HELLO, WELCOME, PING, PONG, DATA, CLOSE = 1, 2, 3, 4, 5, 6


def frame(kind, payload, magic=0x52, version=1, flags=0, length=None):
    n = len(payload) if length is None else length
    return bytes([magic, version, kind, flags]) + struct.pack(">I", n) + payload


GOOD = [
    frame(PING, b"\x01" * 8),
    frame(PONG, b"pongpong"),
    frame(HELLO, struct.pack(">QI", 42, 1000)),
    frame(WELCOME, struct.pack(">QII", 7, 1000, 3000)),
    frame(DATA, b"hello, world"),
    frame(DATA, b""),
    frame(CLOSE, struct.pack(">H", 1) + b"timeout"),
    frame(CLOSE, struct.pack(">H", 4)),
]
BAD = [
    frame(PING, b"\x01" * 8, magic=0x53),
    frame(PING, b"\x01" * 8, version=2),
    frame(PING, b"\x01" * 8, flags=1),
    frame(9, b""),
    frame(PING, b"\x01" * 7),
    frame(CLOSE, b"\x00"),
    frame(DATA, b"", length=1 << 20),
    b"GARBAGE!",
]


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    stream = b"".join(GOOD)
    for i, f in enumerate(GOOD + BAD):
        # max_payload selector 1 (the default 1024), no cuts.
        write("decoder", f"frame{i:02}", bytes([1, 0]) + f)
    write("decoder", "stream-whole", bytes([1, 0]) + stream)
    write("decoder", "stream-cut", bytes([1, 5, 1, 7, 8, 3, 20]) + stream)
    write("decoder", "stream-bad-tail", bytes([0, 2, 9, 4]) + stream + BAD[0])
    write("decoder", "stream-partial", bytes([2, 1, 3]) + stream[:-5])


if __name__ == "__main__":
    main()
