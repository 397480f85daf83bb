//! Ping-rate guard (`--max-ping-rate N`): a connection may send N PINGs a
//! second on average, with a burst of `2N + 8` (pipelined PINGs keep
//! working); one that keeps exceeding it empties its bucket and is closed
//! with CLOSE(LIMITED), counted — gRPC's `too_many_pings`. Off by default.
//!
//! State: 8 bytes per slot (a token bucket in thousandths of a PING and the
//! tick it was last filled), allocated only when the guard is on.

use super::{CloseCause, Engine};
use crate::protocol::CloseReason;
use crate::send_pool::SendPool;

/// A PING's cost in bucket units.
const PING_COST: u32 = 1_000;

/// Per-slot token buckets.
#[derive(Debug)]
pub(super) struct PingGuard {
    /// Bucket fill, in thousandths of a PING.
    tokens: Vec<u32>,
    refilled_tick: Vec<u32>,
    /// Units added per tick: N PINGs a second.
    per_tick: u32,
    capacity: u32,
}

impl PingGuard {
    pub(super) fn new(slots: u32, pings_per_s: u32, tick_ms: u32) -> PingGuard {
        assert!(pings_per_s > 0 && tick_ms > 0);
        PingGuard {
            tokens: vec![0; slots as usize],
            refilled_tick: vec![0; slots as usize],
            per_tick: pings_per_s.saturating_mul(tick_ms),
            capacity: (2 * pings_per_s + 8).saturating_mul(PING_COST),
        }
    }

    /// A new connection starts with a full bucket.
    pub(super) fn open(&mut self, slot: u32, now_tick: u32) {
        self.tokens[slot as usize] = self.capacity;
        self.refilled_tick[slot as usize] = now_tick;
    }

    /// Takes one PING from the bucket; false when it is empty.
    fn take(&mut self, slot: u32, now_tick: u32) -> bool {
        let i = slot as usize;
        let elapsed = now_tick.wrapping_sub(self.refilled_tick[i]);
        let earned = elapsed.saturating_mul(self.per_tick);
        self.tokens[i] = self.tokens[i].saturating_add(earned).min(self.capacity);
        self.refilled_tick[i] = now_tick;
        if self.tokens[i] < PING_COST {
            return false;
        }
        self.tokens[i] -= PING_COST;
        true
    }
}

impl Engine {
    /// Whether a PING on `slot` is within the rate; closes it if not.
    pub(super) fn ping_allowed(&mut self, slot: u32, sends: &mut SendPool) -> bool {
        let now_tick = self.now_tick;
        let Some(guard) = &mut self.ping_guard else {
            return true;
        };
        if guard.take(slot, now_tick) {
            return true;
        }
        self.stats.limited_ping.inc();
        self.close(slot, CloseCause::Server(CloseReason::Limited), sends);
        false
    }
}
