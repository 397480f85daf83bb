"""The kernel matrix's verdicts (scripts/kernels/table.py) on canned guest
logs: a good run passes, and each broken rule fails its row."""
import json
import unittest

from . import table

LOAD = {"connected": 300, "connect_errors": 0, "heartbeats_answered": 2000,
        "heartbeats_lost": 0, "server_protocol_errors": 0, "silent_total": 33,
        "silent_evicted": 33, "false_evictions": 0,
        "detection_ms": {"early": 0, "late": 0}}
SERVER = ("2026-11-30T18:37:17Z  INFO ringbeat::server: io mode mode=compat: kernel 5.10 "
          "lacks multishot accept (5.19) features=kernel 5.10 io_uring=true")


def log(load=None, takeover=True, rc=0, end=True):
    lines = ["\x1bc\x1b[?7l\x1b[2J@@KERNEL 5.10.0-46-amd64", "@@FEATURES kernel 5.10",
             "@@BEGIN auto", "@@SERVERLOG", SERVER,
             "@@TAKEOVER " + json.dumps({"takeover_ok": takeover, "detail": "x"}),
             "@@LOADRC 0", "@@LOADJSON " + json.dumps(LOAD if load is None else load),
             f"@@SIGTERMRC {rc}"]
    if end:
        lines.append("@@END auto")
    return "\n".join(lines)


def row(text):
    rows = table.parse_log("5.10", text)
    assert len(rows) == 1
    return rows[0]


class Verdicts(unittest.TestCase):
    def test_a_good_run_passes_and_names_the_mode(self):
        r = row(log())
        self.assertTrue(r["ok"])
        self.assertEqual(r["kernel"], "5.10.0-46-amd64")
        self.assertTrue(r["chosen"].startswith("compat: kernel 5.10 lacks"))

    def test_each_broken_rule_fails_the_row(self):
        broken = {
            "early eviction": log(load={**LOAD, "detection_ms": {"early": 1, "late": 0}}),
            "silent client kept": log(load={**LOAD, "silent_evicted": 32}),
            "false eviction": log(load={**LOAD, "false_evictions": 1}),
            "lost heartbeat": log(load={**LOAD, "heartbeats_lost": 1}),
            "takeover": log(takeover=False),
            "sigterm exit": log(rc=1),
            "cut short": log(end=False),
            "no load result": log(load={}),
        }
        for name, text in broken.items():
            with self.subTest(name):
                self.assertFalse(row(text)["ok"])

    def test_a_guest_that_ran_nothing_is_a_failed_row(self):
        r = row("Kernel panic - not syncing: VFS")
        self.assertFalse(r["ok"])
        self.assertIn("Kernel panic", r["why"])


if __name__ == "__main__":
    unittest.main()
