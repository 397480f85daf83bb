//! When a ring's thread should gather completions before handling them, and
//! for how long: a window that adapts to the completion rate and never
//! exceeds the RTT budget.
//!
//! Waiting with a minimum wait (`IORING_FEAT_MIN_TIMEOUT`, kernel 6.12)
//! turns one wake-up per packet into one per window, but the window's timer
//! is itself a wake-up: below a few completions per window it costs more
//! than it saves (measured: a 1 ms window at ~600 completions/s per ring
//! raised CPU by half). And every microsecond of window is a microsecond a
//! PONG may wait. So the window is sized to gather [`FILL_TARGET`]
//! completions at the rate the recent ticks saw, capped by the budget
//! (`--rtt-budget`, itself capped by `--batch-wait`); when even the full
//! budget would gather fewer than [`FILL_MIN`], there is no window and each
//! completion is answered at once. Heavy load so gets short windows (they
//! fill fast), moderate load windows up to the budget, light load none.

/// Completions a window must expect before batching pays.
pub const FILL_MIN: u64 = 4;
/// Completions a window is sized to gather: past this, a longer window
/// only adds latency (the wake-up is already shared this many ways).
pub const FILL_TARGET: u64 = 16;

/// Per-ring completion rate tracker and wait decision. Pure; no I/O.
#[derive(Clone, Debug)]
pub struct BatchWait {
    /// The largest window: the RTT budget (0 = never batch).
    cap_us: u32,
    tick_us: u64,
    completions_this_tick: u64,
    /// Smoothed completions per tick (mean of the last tick and the
    /// previous average), so one odd tick does not flip the decision.
    avg_per_tick: u64,
    window_us: u32,
}

impl BatchWait {
    /// `window_us` is the longest a completion may wait: the RTT budget
    /// (0 = never batch); `tick_us` is how often [`BatchWait::on_tick`] is
    /// called.
    pub fn new(window_us: u32, tick_us: u64) -> BatchWait {
        assert!(tick_us > 0);
        BatchWait {
            cap_us: window_us,
            tick_us,
            completions_this_tick: 0,
            avg_per_tick: 0,
            window_us: 0,
        }
    }

    /// `n` completions were handled.
    pub fn record(&mut self, n: usize) {
        self.completions_this_tick += n as u64;
    }

    /// A tick passed: size the window for the next one from the rate.
    pub fn on_tick(&mut self) {
        let (avg, now) = (self.avg_per_tick, self.completions_this_tick);
        // Rounded towards the new rate, so it is reached, up or down.
        self.avg_per_tick = if now > avg {
            (avg + now).div_ceil(2)
        } else {
            (avg + now) / 2
        };
        self.completions_this_tick = 0;
        self.window_us = window_for(self.avg_per_tick, self.tick_us, self.cap_us);
    }

    /// The minimum wait to ask for now, in microseconds (0 = wait for one).
    pub fn window_us(&self) -> u32 {
        self.window_us
    }
}

/// The window that gathers [`FILL_TARGET`] completions at `per_tick`
/// completions per `tick_us`, at most `cap_us`; 0 when `cap_us` would
/// gather fewer than [`FILL_MIN`].
pub fn window_for(per_tick: u64, tick_us: u64, cap_us: u32) -> u32 {
    let at_cap = per_tick * u64::from(cap_us) / tick_us;
    if cap_us == 0 || at_cap < FILL_MIN {
        return 0;
    }
    let fill_us = (FILL_TARGET * tick_us).div_ceil(per_tick);
    fill_us.min(u64::from(cap_us)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK_US: u64 = 100_000;
    const BUDGET_US: u32 = 2_000;

    /// The window after `ticks` ticks at `per_s` completions a second.
    fn settle(per_s: u64, ticks: usize) -> u32 {
        let mut b = BatchWait::new(BUDGET_US, TICK_US);
        for _ in 0..ticks {
            b.record((per_s * TICK_US / 1_000_000) as usize);
            b.on_tick();
        }
        b.window_us()
    }

    #[test]
    fn light_load_answers_at_once() {
        // 1,000/s: 2 per 2 ms budget, under FILL_MIN.
        assert_eq!(settle(1_000, 20), 0);
        assert_eq!(settle(0, 20), 0);
    }

    #[test]
    fn moderate_load_batches_up_to_the_budget_and_never_past_it() {
        // 4,000/s: 8 per budget, worth a window, and 16 would take 4 ms.
        assert_eq!(settle(4_000, 20), BUDGET_US);
        for per_s in [2_000, 3_000, 5_000, 10_000, 100_000, 10_000_000] {
            assert!(settle(per_s, 20) <= BUDGET_US, "{per_s}/s");
        }
    }

    #[test]
    fn heavy_load_batches_with_windows_that_shrink_as_they_fill_faster() {
        // 16,000/s fills 16 in 1 ms; 160,000/s in 100 µs.
        assert_eq!(settle(16_000, 20), 1_000);
        assert_eq!(settle(160_000, 20), 100);
        assert!(settle(1_000_000, 20) > 0, "a busy ring still batches");
    }

    #[test]
    fn one_quiet_tick_does_not_end_batching_but_a_quiet_spell_does() {
        let mut b = BatchWait::new(BUDGET_US, TICK_US);
        for _ in 0..20 {
            b.record(1_600); // 16,000/s
            b.on_tick();
        }
        assert_eq!(b.window_us(), 1_000);
        b.on_tick();
        assert!(b.window_us() > 0, "smoothed over one idle tick");
        for _ in 0..10 {
            b.on_tick();
        }
        assert_eq!(b.window_us(), 0);
        assert_eq!(b.avg_per_tick, 0, "decays to nothing");
    }

    #[test]
    fn starts_idle_and_a_zero_budget_never_batches() {
        assert_eq!(BatchWait::new(BUDGET_US, TICK_US).window_us(), 0);
        let mut b = BatchWait::new(0, TICK_US);
        b.record(1_000_000);
        b.on_tick();
        assert_eq!(b.window_us(), 0);
    }
}
