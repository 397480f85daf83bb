//! Reconnect backoff: exponential with full jitter, and the small seeded
//! random source it draws from. No I/O, no clock.
//!
//! Full jitter (the "Exponential Backoff And Jitter" scheme): before retry
//! `attempt` (0-based) wait a uniform random time in
//! `[0, min(cap, base · 2^attempt)]`. When a server restarts under many
//! clients they all lose it at the same instant; drawing the whole delay at
//! random spreads their reconnects evenly over the window instead of
//! stacking them at the same offsets, which is what plain exponential
//! backoff (or "equal jitter" on a small base) does.

use std::time::Duration;

/// Most doublings of `base`: past this the ceiling is `cap` anyway, and the
/// shift below can never overflow.
const DOUBLINGS_MAX: u32 = 62;

/// Reconnect policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first retry's delay.
    pub base: Duration,
    /// Largest ceiling, however many attempts failed.
    pub cap: Duration,
    /// Consecutive failed attempts after which the client gives up; `None`
    /// retries for ever. A session that reached WELCOME resets the count.
    pub max_attempts: Option<u32>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
            max_attempts: None,
        }
    }
}

impl Backoff {
    /// `min(cap, base · 2^attempt)` in milliseconds; saturates, never wraps.
    pub fn ceiling_ms(&self, attempt: u32) -> u64 {
        let base_ms = millis(self.base);
        let cap_ms = millis(self.cap);
        let factor = 1u64 << attempt.min(DOUBLINGS_MAX);
        base_ms.saturating_mul(factor).min(cap_ms)
    }

    /// The delay before retry `attempt`: uniform in `[0, ceiling_ms(attempt)]`.
    pub fn delay_ms(&self, attempt: u32, jitter: &mut Jitter) -> u64 {
        jitter.up_to(self.ceiling_ms(attempt))
    }

    /// True once `failures` consecutive attempts have failed and no more
    /// are allowed.
    pub fn exhausted(&self, failures: u32) -> bool {
        self.max_attempts.is_some_and(|max| failures >= max)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// SplitMix64: tiny, fast, and good enough to spread reconnects. Seeded per
/// client so a fleet does not share one sequence.
#[derive(Clone, Debug)]
pub struct Jitter {
    state: u64,
}

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter { state: seed }
    }

    /// A seed that differs between clients and runs: wall-clock nanoseconds,
    /// the process id, the client id and a per-process counter.
    pub fn seed_from_environment(client_id: u64) -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut mix = Jitter::new(nanos ^ u64::from(std::process::id()) << 32);
        mix.next_u64() ^ client_id.rotate_left(17) ^ count.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, max]` (multiply-shift; bias below 2^-64 · max).
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        ((u128::from(self.next_u64()) * u128::from(max + 1)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(base_ms: u64, cap_ms: u64) -> Backoff {
        Backoff {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_millis(cap_ms),
            max_attempts: None,
        }
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = policy(100, 1000);
        let got: Vec<u64> = (0..6).map(|a| b.ceiling_ms(a)).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling_ms(u32::MAX), 1000);
    }

    #[test]
    fn max_attempts_gives_up() {
        let b = Backoff {
            max_attempts: Some(3),
            ..Backoff::default()
        };
        assert!(!b.exhausted(2));
        assert!(b.exhausted(3));
        assert!(!Backoff::default().exhausted(u32::MAX));
    }

    /// Full jitter is uniform over the window: the mean is half the ceiling
    /// and every tenth of the window gets about a tenth of the draws. Seeded,
    /// so it cannot flake.
    #[test]
    fn delays_are_uniform_over_the_window() {
        let b = policy(1000, 60_000);
        let mut jitter = Jitter::new(42);
        const N: usize = 20_000;
        let mut deciles = [0usize; 10];
        let mut sum = 0u64;
        for _ in 0..N {
            let d = b.delay_ms(0, &mut jitter);
            sum += d;
            deciles[(d as usize * 10 / 1001).min(9)] += 1;
        }
        let mean = sum as f64 / N as f64;
        assert!((mean - 500.0).abs() < 15.0, "mean {mean}");
        for (i, &n) in deciles.iter().enumerate() {
            let share = n as f64 / N as f64;
            assert!((share - 0.1).abs() < 0.015, "decile {i}: {share}");
        }
    }

    #[test]
    fn seeds_from_environment_differ() {
        let a = Jitter::seed_from_environment(1);
        let b = Jitter::seed_from_environment(1);
        assert_ne!(a, b);
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling(
            base_ms in 0u64..100_000,
            cap_ms in 0u64..10_000_000,
            attempt in 0u32..200,
            seed: u64,
        ) {
            let b = policy(base_ms, cap_ms);
            let mut jitter = Jitter::new(seed);
            let ceiling = b.ceiling_ms(attempt);
            prop_assert!(ceiling <= cap_ms);
            prop_assert!(ceiling >= b.ceiling_ms(attempt.saturating_sub(1)));
            for _ in 0..16 {
                prop_assert!(b.delay_ms(attempt, &mut jitter) <= ceiling);
            }
        }

        #[test]
        fn up_to_stays_in_range(max: u64, seed: u64) {
            let mut jitter = Jitter::new(seed);
            for _ in 0..8 {
                prop_assert!(jitter.up_to(max) <= max);
            }
        }
    }
}
