//! Backpressure for peers that send faster than they read. When a
//! connection's reply queue passes [`HIGH_WATER_CHUNKS`], the engine stops
//! handling its input: bytes that arrive are copied aside (the receive buffer
//! goes straight back to the kernel, so other connections never starve) and
//! a multishot receive is cancelled. Once the queue drains below
//! [`LOW_WATER_CHUNKS`] the held bytes are handled in order and the receive
//! is re-armed. A peer that stays paused for a whole interval, or that makes
//! the shard hold more than [`HELD_BYTES_MAX`], does not read its replies
//! and is closed as overloaded.
//!
//! Paused connections are rare (a well-behaved client never has more than a
//! few PINGs outstanding), so they live in a small map keyed by slot rather
//! than in the flat per-connection arrays.

use std::collections::HashMap;

use super::{CloseCause, Command, Engine};
use crate::buf_ring::BUF_LEN;
use crate::conn_table::flag;
use crate::send_pool::{SendPool, QUEUE_CHUNKS_MAX};

/// Queue length (chunks) at which input stops being handled. Handling one
/// [`BUF_LEN`] slice of input yields at most a few chunks of replies, so it
/// cannot overflow [`QUEUE_CHUNKS_MAX`] from here.
pub const HIGH_WATER_CHUNKS: u16 = QUEUE_CHUNKS_MAX - 8;
/// Queue length at which held input is handled again.
pub const LOW_WATER_CHUNKS: u16 = 8;
/// Most bytes one shard holds for all its paused connections.
pub const HELD_BYTES_MAX: usize = 8 << 20;

const _: () = assert!(LOW_WATER_CHUNKS < HIGH_WATER_CHUNKS);

/// One paused connection's input.
#[derive(Debug)]
struct Held {
    since_tick: u32,
    bytes: Vec<u8>,
    /// Bytes of `bytes` already handled.
    consumed: usize,
}

/// Paused connections by slot, and the bytes they hold.
#[derive(Debug, Default)]
pub(super) struct Paused {
    by_slot: HashMap<u32, Held>,
    held_bytes: usize,
}

impl Paused {
    pub(super) fn contains(&self, slot: u32) -> bool {
        self.by_slot.contains_key(&slot)
    }
}

impl Engine {
    fn queued_chunks(&self, slot: u32, sends: &SendPool) -> u16 {
        sends.queued_chunks(self.table.send_head[slot as usize])
    }

    /// Whether input for `slot` must be held instead of handled.
    pub(super) fn should_hold(&self, slot: u32, sends: &SendPool) -> bool {
        self.paused.contains(slot) || self.queued_chunks(slot, sends) >= HIGH_WATER_CHUNKS
    }

    /// Copies `data` aside for `slot`, pausing it if it was not paused.
    /// Closes it as overloaded when the shard would hold too much.
    pub(super) fn hold(&mut self, slot: u32, data: &[u8], sends: &mut SendPool) {
        if self.paused.held_bytes + data.len() > HELD_BYTES_MAX {
            return self.close(slot, CloseCause::SlowConsumer, sends);
        }
        let newly_paused = !self.paused.contains(slot);
        if newly_paused {
            self.stats.recv_paused.inc();
        }
        let now_tick = self.now_tick;
        let held = self.paused.by_slot.entry(slot).or_insert_with(|| Held {
            since_tick: now_tick,
            bytes: Vec::new(),
            consumed: 0,
        });
        held.bytes.extend_from_slice(data);
        self.paused.held_bytes += data.len();
        let armed = self.table.has(slot, flag::RECV_ARMED);
        if newly_paused && armed && self.cfg.multishot_recv {
            let generation = self.table.generation[slot as usize];
            self.push(Command::CancelRecv { slot, generation });
        }
    }

    /// After a send completed: handles held input once the queue drained,
    /// and re-arms the receive when nothing is held any more.
    pub(super) fn maybe_resume(&mut self, slot: u32, sends: &mut SendPool) {
        if !self.paused.contains(slot) || self.queued_chunks(slot, sends) >= LOW_WATER_CHUNKS {
            return;
        }
        let mut held = self.paused.by_slot.remove(&slot).expect("checked above");
        while held.consumed < held.bytes.len()
            && self.is_open(slot)
            && self.queued_chunks(slot, sends) < HIGH_WATER_CHUNKS
        {
            let end = held.bytes.len().min(held.consumed + BUF_LEN);
            self.parse_input(slot, &held.bytes[held.consumed..end], sends);
            self.paused.held_bytes -= end - held.consumed;
            held.consumed = end;
        }
        if !self.is_open(slot) {
            self.paused.held_bytes -= held.bytes.len() - held.consumed;
            return;
        }
        if held.consumed < held.bytes.len() || self.queued_chunks(slot, sends) >= HIGH_WATER_CHUNKS
        {
            self.paused.by_slot.insert(slot, held);
            return;
        }
        if !self.table.has(slot, flag::RECV_ARMED) {
            self.arm_recv(slot);
        }
    }

    /// Forgets `slot`'s pause and what it held.
    pub(super) fn unpause(&mut self, slot: u32) {
        if let Some(held) = self.paused.by_slot.remove(&slot) {
            self.paused.held_bytes -= held.bytes.len() - held.consumed;
        }
    }

    /// Once a tick: a connection paused for a whole interval is not reading
    /// its replies; close it as overloaded.
    pub(super) fn expire_paused(&mut self, sends: &mut SendPool) {
        if self.paused.by_slot.is_empty() {
            return;
        }
        let timing = self.cfg.timing;
        let limit_ticks = timing.ticks(timing.interval_ms).max(1);
        let now_tick = self.now_tick;
        let stuck: Vec<u32> = self
            .paused
            .by_slot
            .iter()
            .filter(|(_, h)| now_tick.wrapping_sub(h.since_tick) > limit_ticks)
            .map(|(&slot, _)| slot)
            .collect();
        for slot in stuck {
            self.close(slot, CloseCause::SlowConsumer, sends);
            self.unpause(slot);
        }
    }
}
