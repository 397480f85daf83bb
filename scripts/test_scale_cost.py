"""The scale-cost fit separates the fixed cost per second from the marginal
cost per heartbeat, and refuses a fit it cannot make."""
import unittest

import scale_cost


class Fit(unittest.TestCase):
    def test_recovers_fixed_and_marginal_costs(self):
        # 5 ms/s fixed, 3 µs per heartbeat; the rate halves half-way.
        rows = [(2.0, hb, 2.0 * 0.005 + hb * 3e-6) for hb in (20000, 20400, 19800, 10000, 10300, 9900)]
        a, b = scale_cost.fit(rows)
        self.assertAlmostEqual(a, 0.005, places=6)
        self.assertAlmostEqual(b, 3e-6, places=9)

    def test_a_constant_rate_cannot_tell_fixed_from_marginal(self):
        rows = [(2.0, 20000, 0.07)] * 5
        self.assertIsNone(scale_cost.fit(rows))

    def test_point_uses_only_the_window(self):
        samples = [{"t": t, "server": (t * 0.01, 0.0), "load": (0.0, 0.0), "frames": t * 1000.0}
                   for t in range(0, 20, 2)]
        p = scale_cost.point(samples, 4, 10)
        self.assertEqual(p["intervals"], 3)
        self.assertEqual(p["heartbeats_per_s_mean"], 1000.0)


if __name__ == "__main__":
    unittest.main()
