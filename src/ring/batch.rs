//! When a ring's thread should gather completions before handling them.
//!
//! Waiting with a minimum wait (`IORING_FEAT_MIN_TIMEOUT`, kernel 6.12)
//! turns one wake-up per packet into one per window, but the window's timer
//! is itself a wake-up: below a few completions per window it costs more
//! than it saves (measured: a 1 ms window at ~600 completions/s per ring
//! raised CPU by half). So the window is used only while the last tick saw
//! enough completions to fill it several times over.

/// Completions a window must expect before batching pays.
pub const FILL_MIN: u64 = 4;

/// Per-ring completion rate tracker and wait decision. Pure; no I/O.
#[derive(Clone, Debug)]
pub struct BatchWait {
    window_us: u32,
    tick_us: u64,
    completions_this_tick: u64,
    busy: bool,
}

impl BatchWait {
    /// `window_us` is the longest a completion may wait (0 = never batch);
    /// `tick_us` is how often [`BatchWait::on_tick`] is called.
    pub fn new(window_us: u32, tick_us: u64) -> BatchWait {
        assert!(tick_us > 0);
        BatchWait {
            window_us,
            tick_us,
            completions_this_tick: 0,
            busy: false,
        }
    }

    /// `n` completions were handled.
    pub fn record(&mut self, n: usize) {
        self.completions_this_tick += n as u64;
    }

    /// A tick passed: decide for the next one from this one's rate.
    pub fn on_tick(&mut self) {
        let expected_per_window =
            self.completions_this_tick * u64::from(self.window_us) / self.tick_us;
        self.busy = self.window_us > 0 && expected_per_window >= FILL_MIN;
        self.completions_this_tick = 0;
    }

    /// The minimum wait to ask for now, in microseconds (0 = wait for one).
    pub fn window_us(&self) -> u32 {
        if self.busy {
            self.window_us
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_only_while_the_rate_fills_the_window() {
        // 10 ms window, 100 ms tick: needs 40 completions a tick.
        let mut b = BatchWait::new(10_000, 100_000);
        assert_eq!(b.window_us(), 0, "idle until a tick says otherwise");
        b.record(39);
        b.on_tick();
        assert_eq!(b.window_us(), 0);
        b.record(40);
        b.on_tick();
        assert_eq!(b.window_us(), 10_000);
        b.on_tick();
        assert_eq!(b.window_us(), 0, "a quiet tick ends batching");
    }

    #[test]
    fn a_zero_window_never_batches() {
        let mut b = BatchWait::new(0, 100_000);
        b.record(1_000_000);
        b.on_tick();
        assert_eq!(b.window_us(), 0);
    }
}
