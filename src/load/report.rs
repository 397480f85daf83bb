//! What a run measured: per-worker tallies merged at the end, live progress
//! counters, and the result JSON (schema 2; keys are a contract with the
//! bench and capacity scripts).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::clients::Timing;
use crate::protocol::CloseReason;

/// Measurement slack on the detection bound (see [`Tally::detection`]),
/// before the load generator's own `--batch-wait` is added.
pub const MEASURE_SLACK_NS: u64 = 10_000_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Late-client evictions a worker keeps for refinement by server events.
pub const LATE_KEPT_MAX: usize = 100_000;

/// Re-judges late-client evictions by the server's own eviction times
/// (`evicted_ms`: client id → `ts_ms` of its offline/timeout event, Unix
/// ms): one whose last send completed less than `timeout_ms` before the
/// server evicted it was the server's fault after all (the CLOSE only
/// reached us late). `start_unix_ms` is the run's start on the same clock.
/// Moves those from `late_client_evictions` to `false_evictions`; returns
/// how many moved.
pub fn refine_with_server_events(
    tally: &mut Tally,
    evicted_ms: &std::collections::HashMap<u64, u64>,
    start_unix_ms: u64,
    timeout_ms: u64,
) -> u64 {
    let mut moved = 0;
    for &(id, left_ns) in &tally.late_evicted {
        let left_ms = start_unix_ms + left_ns / 1_000_000;
        if let Some(&ts_ms) = evicted_ms.get(&id) {
            if ts_ms.saturating_sub(left_ms) < timeout_ms {
                moved += 1;
            }
        }
    }
    tally.late_client_evictions -= moved;
    tally.false_evictions += moved;
    moved
}

/// One worker's counts and histograms.
#[derive(Debug)]
pub struct Tally {
    pub connected: u64,
    pub connect_errors: u64,
    /// When the last connect completed, since the run started.
    pub last_connected_ns: u64,
    /// Clients the server answered (WELCOME, or an accepting CONNACK).
    pub welcomed: u64,
    /// When the last of those answers arrived, since the run started.
    pub last_welcomed_ns: u64,
    /// Connect completed → answer arrived, microseconds: the server's
    /// accept, first read and first write, which a bare connect does not
    /// wait for (the kernel completes the handshake before `accept`).
    pub welcome_us: Histogram<u64>,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    pub heartbeats_lost: u64,
    /// Healthy clients' PING → PONG once this worker's ramp is over,
    /// microseconds.
    pub rtt_us: Histogram<u64>,
    /// The same while connections were still being opened.
    pub rtt_ramp_us: Histogram<u64>,
    /// Whether the ramp is over (where RTTs go).
    pub steady: bool,
    /// Silent clients' last frame → CLOSE(TIMEOUT) or EOF, milliseconds.
    pub detection_ms: Histogram<u64>,
    pub detection_within_bound: u64,
    pub detection_late: u64,
    pub detection_early: u64,
    pub silent_total: u64,
    pub silent_evicted: u64,
    /// Healthy clients evicted by the server's fault (see
    /// [`super::clients::attribute`]).
    pub false_evictions: u64,
    /// Healthy clients evicted because the load generator sent late.
    pub late_client_evictions: u64,
    /// Those evictions as (client, last send completed, ns since start),
    /// at most [`LATE_KEPT_MAX`], for [`refine_with_server_events`]. A
    /// worker stores its client index; it turns it into the client id.
    pub late_evicted: Vec<(u64, u64)>,
    /// Late-client evictions past [`LATE_KEPT_MAX`], not refinable.
    pub late_unkept: u64,
    /// How late PINGs were queued against their schedule, microseconds.
    pub send_lag_us: Histogram<u64>,
    pub unexpected_disconnects: u64,
    pub server_protocol_errors: u64,
    /// Receives that ended for lack of buffers (re-armed later).
    pub recv_no_buffers: u64,
    pub closes_by_reason: BTreeMap<&'static str, u64>,
    /// Every connected client, for `--server-events` analysis (empty
    /// without it).
    pub roster: Vec<super::detect::RosterEntry>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            connected: 0,
            connect_errors: 0,
            last_connected_ns: 0,
            welcomed: 0,
            last_welcomed_ns: 0,
            welcome_us: histogram(),
            heartbeats_sent: 0,
            heartbeats_answered: 0,
            heartbeats_lost: 0,
            rtt_us: histogram(),
            rtt_ramp_us: histogram(),
            steady: false,
            detection_ms: histogram(),
            detection_within_bound: 0,
            detection_late: 0,
            detection_early: 0,
            silent_total: 0,
            silent_evicted: 0,
            false_evictions: 0,
            late_client_evictions: 0,
            late_evicted: Vec::new(),
            late_unkept: 0,
            send_lag_us: histogram(),
            unexpected_disconnects: 0,
            server_protocol_errors: 0,
            recv_no_buffers: 0,
            closes_by_reason: BTreeMap::new(),
            roster: Vec::new(),
        }
    }
}

impl Tally {
    pub fn count_close(&mut self, code: u16) {
        let name = CloseReason::from_code(code).map_or("unknown", |r| r.name());
        self.count_close_name(name);
    }

    pub fn count_close_name(&mut self, name: &'static str) {
        *self.closes_by_reason.entry(name).or_default() += 1;
    }

    /// A silent client was detected `silent_ns` after its last frame. The
    /// server promises timeout ≤ detection ≤ timeout + tick; measured from
    /// this side that also holds two loopback trips and both event loops'
    /// wake-up, which [`MEASURE_SLACK_NS`] allows for (late ones are counted,
    /// not hidden: see `max`).
    pub fn detection(&mut self, silent_ns: u64, timing: &Timing) {
        let _ = self.detection_ms.record((silent_ns / 1_000_000).max(1));
        let bound = timing.server_timeout_ns + timing.server_tick_ns + timing.slack_ns;
        if silent_ns < timing.server_timeout_ns {
            self.detection_early += 1;
        } else if silent_ns <= bound {
            self.detection_within_bound += 1;
        } else {
            self.detection_late += 1;
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        self.connected += other.connected;
        self.connect_errors += other.connect_errors;
        self.last_connected_ns = self.last_connected_ns.max(other.last_connected_ns);
        self.welcomed += other.welcomed;
        self.last_welcomed_ns = self.last_welcomed_ns.max(other.last_welcomed_ns);
        let _ = self.welcome_us.add(&other.welcome_us);
        self.heartbeats_sent += other.heartbeats_sent;
        self.heartbeats_answered += other.heartbeats_answered;
        self.heartbeats_lost += other.heartbeats_lost;
        let _ = self.rtt_us.add(&other.rtt_us);
        let _ = self.rtt_ramp_us.add(&other.rtt_ramp_us);
        let _ = self.detection_ms.add(&other.detection_ms);
        self.detection_within_bound += other.detection_within_bound;
        self.detection_late += other.detection_late;
        self.detection_early += other.detection_early;
        self.silent_total += other.silent_total;
        self.silent_evicted += other.silent_evicted;
        self.false_evictions += other.false_evictions;
        self.late_client_evictions += other.late_client_evictions;
        self.late_evicted.extend_from_slice(&other.late_evicted);
        self.late_unkept += other.late_unkept;
        let _ = self.send_lag_us.add(&other.send_lag_us);
        self.unexpected_disconnects += other.unexpected_disconnects;
        self.server_protocol_errors += other.server_protocol_errors;
        self.recv_no_buffers += other.recv_no_buffers;
        for (k, v) in &other.closes_by_reason {
            *self.closes_by_reason.entry(k).or_default() += v;
        }
        self.roster.extend_from_slice(&other.roster);
    }

    /// Records one RTT where it belongs (ramp or steady state).
    pub fn rtt(&mut self, rtt_us: u64) {
        let h = if self.steady {
            &mut self.rtt_us
        } else {
            &mut self.rtt_ramp_us
        };
        let _ = h.record(rtt_us.max(1));
    }

    /// The server answered a client's HELLO (or CONNECT) at `now_ns`,
    /// `wait_ns` after its connect completed.
    pub fn welcomed(&mut self, now_ns: u64, wait_ns: u64) {
        self.welcomed += 1;
        self.last_welcomed_ns = self.last_welcomed_ns.max(now_ns);
        let _ = self.welcome_us.record((wait_ns / 1_000).max(1));
    }

    /// Answered clients per second of the time the last answer took: the
    /// rate at which the server accepted and served a storm of connects.
    pub fn welcome_json(&self) -> Value {
        let h = &self.welcome_us;
        json!({
            "count": self.welcomed,
            "rate_per_s": self.welcomed as f64 / (self.last_welcomed_ns as f64 / 1e9).max(1e-3),
            "wait_us_p50": h.value_at_quantile(0.5),
            "wait_us_p99": h.value_at_quantile(0.99),
            "wait_us_max": h.max(),
        })
    }

    /// A PING went out `lag_ns` after its scheduled time.
    pub fn send_lag(&mut self, lag_ns: u64) {
        let _ = self.send_lag_us.record((lag_ns / 1_000).max(1));
    }

    pub fn send_lag_json(&self) -> Value {
        let h = &self.send_lag_us;
        json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "max": h.max(),
        })
    }

    pub fn rtt_json(&self, ramp: bool) -> Value {
        let h = if ramp {
            &self.rtt_ramp_us
        } else {
            &self.rtt_us
        };
        json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        })
    }

    pub fn detection_json(&self, timing: &Timing) -> Value {
        let h = &self.detection_ms;
        json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "max": h.max(),
            "timeout_ms": timing.server_timeout_ns / 1_000_000,
            "tick_ms": timing.server_tick_ns / 1_000_000,
            "slack_ms": timing.slack_ns / 1_000_000,
            "within_bound": self.detection_within_bound,
            "late": self.detection_late,
            "early": self.detection_early,
        })
    }
}

/// Live counters a worker publishes for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub connected: AtomicU64,
    /// Clients the server answered (WELCOME or an accepting CONNACK).
    pub welcomed: AtomicU64,
    pub live: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_answered: AtomicU64,
    pub errors: AtomicU64,
}

/// A snapshot of every worker's progress, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSum {
    pub connected: u64,
    pub welcomed: u64,
    pub live: u64,
    pub heartbeats_sent: u64,
    pub heartbeats_answered: u64,
    pub errors: u64,
}

impl ProgressSum {
    pub fn of(workers: &[std::sync::Arc<Progress>]) -> ProgressSum {
        let mut s = ProgressSum::default();
        for p in workers {
            s.connected += p.connected.load(Ordering::Relaxed);
            s.welcomed += p.welcomed.load(Ordering::Relaxed);
            s.live += p.live.load(Ordering::Relaxed);
            s.heartbeats_sent += p.heartbeats_sent.load(Ordering::Relaxed);
            s.heartbeats_answered += p.heartbeats_answered.load(Ordering::Relaxed);
            s.errors += p.errors.load(Ordering::Relaxed);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_events_move_late_client_evictions_the_server_made_early() {
        let mut t = Tally {
            late_client_evictions: 3,
            // Ids 7, 8, 9 last sent at 1 s, 1 s, 1 s after the start.
            late_evicted: vec![(7, 1_000_000_000), (8, 1_000_000_000), (9, 1_000_000_000)],
            ..Tally::default()
        };
        let start_ms = 1_700_000_000_000;
        // The server evicted 7 at 3.999 s (under the 3 s timeout after the
        // send: its fault), 8 at 4.0 s (a timeout after: not), 9 never logged.
        let evicted = [(7, start_ms + 3_999), (8, start_ms + 4_000)]
            .into_iter()
            .collect();
        assert_eq!(
            refine_with_server_events(&mut t, &evicted, start_ms, 3_000),
            1
        );
        assert_eq!((t.false_evictions, t.late_client_evictions), (1, 2));
    }

    #[test]
    fn detection_is_judged_against_timeout_and_tick() {
        let timing = Timing {
            interval_ns: 1_000_000_000,
            jitter: 0.0,
            fault_after_ns: 0,
            fault_not_before_ns: 0,
            server_timeout_ns: 3_000_000_000,
            server_tick_ns: 100_000_000,
            slack_ns: MEASURE_SLACK_NS,
            model: Default::default(),
        };
        let mut t = Tally::default();
        for ms in [2_999, 3_000, 3_110, 3_111] {
            t.detection(ms * 1_000_000, &timing);
        }
        assert_eq!(
            (
                t.detection_early,
                t.detection_within_bound,
                t.detection_late
            ),
            (1, 2, 1)
        );
        let mut all = Tally::default();
        all.merge(&t);
        all.merge(&t);
        assert_eq!(all.detection_ms.len(), 8);
        assert_eq!(all.detection_json(&timing)["late"], 2);
    }
}
