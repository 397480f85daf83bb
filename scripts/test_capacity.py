"""Tests for the capacity model and planner (scripts/capacity.py).

Run by scripts/test.sh: python3 -m unittest discover -s scripts -p 'test_*.py'
The planner is what users size machines with, so its arithmetic is checked
against hand-computed figures, and a report is built from synthetic runs.
"""
import contextlib, io, json, os, pathlib, tempfile, unittest

import capacity


def load_json(n, rss_bytes, slab_bytes, hb_per_s, cores):
    return {"peak_live": n, "false_evictions": 0,
            "server": {"rss_bytes_at_peak_live": rss_bytes, "slab_bytes_delta": slab_bytes,
                       "steady": {"heartbeats_per_s": hb_per_s, "server_cores": cores}}}


class Fit(unittest.TestCase):
    def test_two_points_give_the_exact_line(self):
        a, b = capacity.fit([10, 20], [150, 250])
        self.assertAlmostEqual(a, 50)
        self.assertAlmostEqual(b, 10)

    def test_one_count_goes_through_the_origin(self):
        self.assertEqual(capacity.fit([10_000, 10_000], [1e6, 1e6]), (0.0, 100.0))


class Plan(unittest.TestCase):
    MODEL = {"user_bytes_per_conn": 100, "kernel_bytes_per_server_conn": 4900,
             "core_s_per_heartbeat": 20e-6}

    def test_cpu_binds_when_heartbeats_cost_more_than_ram(self):
        p = capacity.plan(self.MODEL, 1_000_000, 30, 2, 24)
        # CPU: 0.7 * 2 cores / (20 µs / 30 s) = 2.1M; RAM: 0.7 * 24 GiB / 5000 B = 3.6M.
        self.assertAlmostEqual(p["by_cpu"], 2_100_000, delta=1)
        self.assertEqual(p["by_ram"], int(0.7 * 24 * 2**30 / 5000))
        self.assertEqual(p["binding_resource"], "cpu")
        self.assertEqual(p["machines"], 1)

    def test_memory_binds_on_a_small_box_with_a_long_interval(self):
        p = capacity.plan(self.MODEL, 10_000_000, 300, 32, 16)
        self.assertEqual(p["binding_resource"], "memory")
        self.assertEqual(p["machines"], -(-10_000_000 // p["connections_per_machine"]))

    def test_plan_says_how_far_it_extrapolates(self):
        p = capacity.plan({**self.MODEL, "largest_measured_conns": 700_000}, 1_000_000, 30, 2, 24)
        self.assertAlmostEqual(p["beyond_measured"], 3.0, places=3)
        # A model saved before the field existed plans as before.
        self.assertIsNone(capacity.plan(self.MODEL, 1_000_000, 30, 2, 24)["beyond_measured"])

    def test_a_model_without_memory_cost_is_refused(self):
        with self.assertRaises(SystemExit):
            capacity.plan({**self.MODEL, "user_bytes_per_conn": 0, "kernel_bytes_per_server_conn": 0},
                          1, 30, 1, 1)


class Report(unittest.TestCase):
    def test_report_fits_synthetic_runs(self):
        with tempfile.TemporaryDirectory() as d:
            prefix = os.path.join(d, "capacity-20260101-000000")
            for n in (10_000, 20_000):
                run = load_json(n, 8 * 2**20 + 90 * n, 9_000 * n, n / 30, 20e-6 * n / 30)
                pathlib.Path(f"{prefix}-{n}-load.json").write_text(json.dumps(run))
                pathlib.Path(f"{prefix}-{n}-rss0").write_text(str(8 * 1024))
            with contextlib.redirect_stdout(io.StringIO()):
                capacity.report(prefix, [10_000, 20_000])
            m = json.loads(pathlib.Path(prefix + ".json").read_text())["model"]
            self.assertAlmostEqual(m["user_bytes_per_conn"], 90)
            self.assertAlmostEqual(m["kernel_bytes_per_server_conn"], 4_500)
            self.assertAlmostEqual(m["core_s_per_heartbeat"], 20e-6)
            self.assertTrue(os.path.exists(prefix + "-memory.svg"))
            md = pathlib.Path(prefix + ".md").read_text()
            self.assertIn("least squares", md)
            # 1M clients, 30 s, 2 cores / 24 GiB: CPU binds at 0.7 * 2 / (20 µs / 30 s)
            # = 2.1M connections, 105× the 20K measured here.
            self.assertIn("| cpu | 105.0× |", md)


if __name__ == "__main__":
    unittest.main()
