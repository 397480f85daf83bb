//! Liveness rules on a tick clock, with no I/O and no clock reads: interval
//! negotiation for HELLO, and the sweep that finds stale and probe-due slots.
//!
//! Time is `now_tick = floor(elapsed / tick)`. A frame stamps its slot with
//! the tick it arrived in; the sweep evicts a slot when
//! `now_tick - last_seen_tick > timeout_ticks`. With the frame at real time
//! `t` in tick `L` and the sweep at real time `T` in tick `n > L + timeout_ticks`,
//! `T - t > n·tick - (L+1)·tick >= timeout`: never early. A sweep at each
//! tick boundary evicts at `(L + timeout_ticks + 1)·tick`, at most
//! `timeout + tick` after the frame: the PROTOCOL.md bound.

use std::time::Duration;

use crate::config::Config;
use crate::conn_table::{flag, ConnTable, State};

/// Timeout of a slot that the sweep must never evict (free or closing).
pub const NEVER: u32 = crate::conn_table::TIMEOUT_NEVER;

/// The server's timing, in ticks and milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    pub tick_ms: u32,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub min_interval_ms: u32,
    pub max_interval_ms: u32,
}

/// What a connection was given: the WELCOME fields and its timeout in ticks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub interval_ms: u32,
    pub timeout_ms: u32,
    pub timeout_ticks: u32,
}

fn ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Timing {
    pub fn from_config(c: &Config) -> Timing {
        Timing {
            tick_ms: ms(c.tick),
            interval_ms: ms(c.interval),
            timeout_ms: ms(c.timeout),
            min_interval_ms: ms(c.min_interval),
            max_interval_ms: ms(c.max_interval),
        }
    }

    /// Ticks in `duration_ms`, rounded up (a timeout never shrinks).
    pub fn ticks(&self, duration_ms: u32) -> u32 {
        duration_ms.div_ceil(self.tick_ms)
    }

    /// The server default, for anonymous connections and HELLO interval 0.
    pub fn default_negotiated(&self) -> Negotiated {
        self.negotiate(0)
    }

    /// Clamps a requested interval to the server's limits (`max_interval_ms`
    /// is the server's interval unless configured higher, so a HELLO may
    /// shorten its interval, never lengthen it); the timeout keeps
    /// the server's timeout/interval ratio and is a whole number of ticks, so
    /// the timeout in WELCOME is exactly what the sweep enforces.
    pub fn negotiate(&self, requested_interval_ms: u32) -> Negotiated {
        let interval_ms = if requested_interval_ms == 0 {
            self.interval_ms
        } else {
            requested_interval_ms.clamp(self.min_interval_ms, self.max_interval_ms)
        };
        let scaled =
            u64::from(interval_ms) * u64::from(self.timeout_ms) / u64::from(self.interval_ms);
        let timeout_ticks = u32::try_from(scaled.div_ceil(u64::from(self.tick_ms)))
            .unwrap_or(u32::MAX / 2)
            .max(1);
        let timeout_ms = timeout_ticks.saturating_mul(self.tick_ms);
        Negotiated {
            interval_ms,
            timeout_ms,
            timeout_ticks,
        }
    }

    /// Whether a slot silent for `age_ticks` with `timeout_ticks` is due a
    /// probe: silent for one (negotiated) interval.
    pub fn probe_due(&self, age_ticks: u32, timeout_ticks: u32) -> bool {
        // age >= timeout_ticks * interval / timeout, in integers.
        u64::from(age_ticks) * u64::from(self.timeout_ms)
            >= u64::from(timeout_ticks) * u64::from(self.interval_ms)
    }
}

/// What the sweep decided for one slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Silent for longer than its timeout.
    Evict,
    /// Silent for an interval: send a server PING (probe mode).
    Probe,
}

/// Scans the last-seen array once and appends a verdict for every slot that
/// needs one. Free and closing slots carry timeout [`NEVER`] and are skipped
/// without a state read.
pub fn sweep(
    table: &ConnTable,
    now_tick: u32,
    timing: &Timing,
    probe: bool,
    out: &mut Vec<(u32, Verdict)>,
) {
    let n = table.high_water() as usize;
    let last_seen = &table.last_seen_tick[..n];
    let timeouts = &table.timeout_ticks[..n];
    for (slot, (&seen, &timeout)) in last_seen.iter().zip(timeouts).enumerate() {
        let age = now_tick.wrapping_sub(seen);
        if age > timeout && timeout != NEVER {
            debug_assert_eq!(table.state(slot as u32), State::Open);
            out.push((slot as u32, Verdict::Evict));
        } else if probe
            && timeout != NEVER
            && age > 0
            && timing.probe_due(age, timeout)
            && !table.has(slot as u32, flag::PROBED)
        {
            out.push((slot as u32, Verdict::Probe));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            tick_ms: 100,
            interval_ms: 10_000,
            timeout_ms: 30_000,
            min_interval_ms: 1_000,
            max_interval_ms: 60_000,
        }
    }

    #[test]
    fn by_default_a_hello_can_shorten_but_not_lengthen_its_interval() {
        let t = Timing::from_config(&Config::default());
        let server = t.default_negotiated();
        assert_eq!(
            t.negotiate(u32::MAX),
            server,
            "0xFFFFFFFF gets the server's"
        );
        assert_eq!(t.negotiate(t.interval_ms + 1), server);
        let short = t.negotiate(2_000);
        assert_eq!(short.interval_ms, 2_000);
        assert!(short.timeout_ms < server.timeout_ms);
    }

    fn table_with(slots: &[(u32, u32)]) -> ConnTable {
        let mut t = ConnTable::new(64, false, 0);
        for &(slot, seen) in slots {
            t.open(
                slot,
                seen,
                timing().default_negotiated().timeout_ticks,
                None,
            );
        }
        t
    }

    fn verdicts(t: &ConnTable, now: u32, probe: bool) -> Vec<(u32, Verdict)> {
        let mut out = Vec::new();
        sweep(t, now, &timing(), probe, &mut out);
        out
    }

    #[test]
    fn negotiation_clamps_and_keeps_ratio() {
        let t = timing();
        assert_eq!(
            t.negotiate(0),
            Negotiated {
                interval_ms: 10_000,
                timeout_ms: 30_000,
                timeout_ticks: 300
            }
        );
        assert_eq!(t.negotiate(2_000).timeout_ms, 6_000);
        assert_eq!(t.negotiate(5).interval_ms, 1_000, "clamped to min");
        assert_eq!(t.negotiate(u32::MAX).interval_ms, 60_000, "clamped to max");
        // 1234 ms * 3 = 3702 ms, rounded up to whole ticks.
        let n = t.negotiate(1_234);
        assert_eq!((n.timeout_ticks, n.timeout_ms), (38, 3_800));
    }

    #[test]
    fn never_evicted_before_timeout() {
        // Seen at tick 10 (real time anywhere in [1.0 s, 1.1 s)).
        let t = table_with(&[(0, 10)]);
        assert!(
            verdicts(&t, 10 + 300, false).is_empty(),
            "age == timeout: keep"
        );
        assert_eq!(verdicts(&t, 10 + 301, false), vec![(0, Verdict::Evict)]);
    }

    #[test]
    fn evicted_within_timeout_plus_tick_across_wraparound() {
        let start = u32::MAX - 5;
        let t = table_with(&[(3, start)]);
        assert!(verdicts(&t, start.wrapping_add(300), false).is_empty());
        assert_eq!(
            verdicts(&t, start.wrapping_add(301), false),
            vec![(3, Verdict::Evict)]
        );
    }

    #[test]
    fn free_and_closing_slots_are_skipped() {
        let mut t = table_with(&[(0, 0), (1, 0)]);
        t.begin_close(1, 0, None);
        assert_eq!(t.timeout_ticks[1], NEVER);
        assert_eq!(verdicts(&t, 1_000, false), vec![(0, Verdict::Evict)]);
    }

    #[test]
    fn probe_after_one_interval_once() {
        let mut t = table_with(&[(0, 0)]);
        assert!(verdicts(&t, 99, true).is_empty());
        assert_eq!(verdicts(&t, 100, true), vec![(0, Verdict::Probe)]);
        t.set(0, flag::PROBED);
        assert!(verdicts(&t, 150, true).is_empty(), "one probe per silence");
        assert!(
            verdicts(&t, 150, false).is_empty(),
            "no probes unless enabled"
        );
    }
}
