"""The scale-cost split separates the cost of holding the connections from
the marginal cost per heartbeat, and refuses a split it cannot make."""
import unittest

import scale_cost


def run(marginal_s, holding_s_per_s, rate_full, rate_half, silent_at=40, to=100):
    """2 s samples: `rate_full` heartbeats/s until `silent_at`, then
    `rate_half`; server system CPU = holding + marginal per heartbeat."""
    samples, frames, cpu = [], 0.0, 0.0
    for t in range(0, to + 1, 2):
        samples.append({"t": float(t), "server": (0.0, cpu), "load": (0.0, 0.0), "frames": frames})
        rate = rate_full if t < silent_at else rate_half
        frames += 2 * rate
        cpu += 2 * (holding_s_per_s + marginal_s * rate)
    return samples


class Split(unittest.TestCase):
    def test_recovers_holding_and_marginal_costs(self):
        # 5 ms/s to hold the connections, 3 µs per heartbeat; the rate halves.
        p = scale_cost.point(run(3e-6, 0.005, 20000, 10000), 10, 100, 40)
        self.assertAlmostEqual(p["server_sys"]["us_per_heartbeat"], 3.0, places=6)
        self.assertAlmostEqual(p["server_sys"]["fixed_cpu_ms_per_s"], 5.0, places=6)
        self.assertEqual(p["heartbeats_per_s_full_half"], [20000.0, 10000.0])

    def test_a_constant_rate_cannot_tell_holding_from_marginal(self):
        p = scale_cost.point(run(3e-6, 0.005, 20000, 20000), 10, 100, 40)
        self.assertIsNone(p["server_sys"])

    def test_point_uses_only_the_window(self):
        # Outside the window the cost is different; inside, 1 µs and 2 ms/s.
        samples = run(1e-6, 0.002, 20000, 10000)
        samples += [{"t": 200.0, "server": (0.0, 1e6), "load": (0.0, 0.0), "frames": 1.0}]
        p = scale_cost.point(samples, 10, 100, 40)
        self.assertAlmostEqual(p["server_sys"]["us_per_heartbeat"], 1.0, places=6)
        self.assertEqual(p["intervals"], 45)


if __name__ == "__main__":
    unittest.main()

class Evictions(unittest.TestCase):
    def test_a_window_with_evictions_is_refused(self):
        # Evictions' closes cost both ends far more than heartbeats: inside
        # the window they would pass for a cost of holding connections.
        samples = run(3e-6, 0.005, 20000, 10000)
        for s in samples:
            s["evicted"] = 0.0 if s["t"] < 80 else 5000.0
        p = scale_cost.point(samples, 10, 100, 40)
        self.assertEqual(p["evicted_in_window"], 5000.0)
        self.assertIsNone(p["server_sys"])
        # Evictions after the window do not matter.
        p = scale_cost.point(samples, 10, 78, 40)
        self.assertEqual(p["evicted_in_window"], 0)
        self.assertAlmostEqual(p["server_sys"]["us_per_heartbeat"], 3.0, places=6)
