//! The close lifecycle, in ticks: Open → Closing (receive cancelled, replies
//! flushed, then the CLOSE frame) → the descriptor closed → Free. The CLOSE
//! frame lives in static memory, so it never waits for send-pool room; it is
//! owed unless the peer closed or reset first, or stops reading for the
//! whole linger, and every one that could not be written is counted.
//!
//! Also here: the sweep's deferral rules, so a shard that is behind is
//! late, never wrong.

use std::sync::atomic::Ordering;

use super::{CloseCause, Command, Engine};
use crate::conn_table::{flag, State, NONE};
use crate::events::{Event, EventKind, OfflineReason};
use crate::mailbox::{HeldOffline, ShardMsg, ToHome};
use crate::protocol;
use crate::send_pool::SendPool;

/// How long a closing connection may take to flush its replies and CLOSE
/// frame before they are abandoned (and counted).
pub const CLOSE_LINGER_MS: u32 = 2_000;
/// A tick that runs this much later than due means the shard was stalled:
/// input that reached the kernel may not have been seen yet.
const LATE_MS_MAX: u32 = 1_000;
/// Most sweeps in a row whose evictions are deferred because the shard ran
/// late; then it evicts anyway, so a shard that is always behind still
/// evicts (later, never earlier).
pub const SWEEP_DEFER_MAX: u32 = 10;

impl Engine {
    /// Ends an open connection: registry release, offline event, counters;
    /// then it drains (see module docs).
    pub fn close(&mut self, slot: u32, cause: CloseCause, sends: &mut SendPool) {
        if !self.is_open(slot) {
            return;
        }
        if cause.peer_done() || cause.abort_send() {
            self.table.set(slot, flag::PEER_DONE);
        }
        self.release_partial(slot);
        self.unpause(slot);
        self.uncount_source(slot);
        let reason = cause.offline_reason();
        self.stats.closed(reason);
        let announce = self.table.has(slot, flag::ONLINE) && self.cfg.events;
        let graced = announce && self.graced(slot, reason);
        if self.table.has(slot, flag::CLAIMED) {
            let client_id = self.table.client_id[slot as usize];
            let home = crate::registry::home_shard(client_id, usize::from(self.cfg.shards));
            let holder = self.holder(slot);
            let offline = graced.then(|| HeldOffline {
                session: self.session(slot),
                reason,
                peer: self.table.peer(slot),
                ts_ms: Event::now_ms(),
            });
            let release = ToHome::Release {
                client_id,
                holder,
                offline,
            };
            self.message(home, ShardMsg::Home(release));
        }
        if announce && !graced {
            let mut ev = Event::new(
                EventKind::Offline,
                self.session(slot),
                self.table.client_id[slot as usize],
                self.table.peer(slot),
            );
            ev.reason = Some(reason.name());
            self.push(Command::Event(ev));
        }
        let frame = match cause {
            CloseCause::Server(r) if !self.table.has(slot, flag::PEER_DONE) => Some(r.code()),
            _ => None,
        };
        self.table.begin_close(slot, self.now_tick, frame);
        let generation = self.table.generation[slot as usize];
        self.closing.push((slot, generation));
        if self.table.has(slot, flag::RECV_ARMED) {
            self.push(Command::CancelRecv { slot, generation });
        }
        if self.table.has(slot, flag::PEER_DONE) {
            self.cancel_send(slot);
        }
        self.try_finish_close(slot, sends);
    }

    /// Whether this close's `offline` is held for the offline grace: an id
    /// that may come back, gone for a reason it may come back from.
    fn graced(&self, slot: u32, reason: OfflineReason) -> bool {
        self.cfg.offline_grace_ticks > 0
            && self.table.has(slot, flag::CLAIMED)
            && !matches!(reason, OfflineReason::TakenOver | OfflineReason::Shutdown)
    }

    fn cancel_send(&mut self, slot: u32) {
        if self.table.has(slot, flag::SEND_INFLIGHT) {
            let generation = self.table.generation[slot as usize];
            let close_frame = self.table.has(slot, flag::CLOSE_FRAME_INFLIGHT);
            self.push(Command::CancelSend {
                slot,
                generation,
                close_frame,
            });
        }
    }

    /// Moves a closing slot along: send what is queued, then the CLOSE
    /// frame, then close the descriptor once nothing is in flight.
    pub(super) fn try_finish_close(&mut self, slot: u32, sends: &mut SendPool) {
        debug_assert_eq!(self.table.state(slot), State::Closing);
        let busy = flag::RECV_ARMED | flag::SEND_INFLIGHT | flag::CLOSE_SUBMITTED;
        if self.table.has(slot, busy) {
            return;
        }
        let generation = self.table.generation[slot as usize];
        if !self.table.has(slot, flag::PEER_DONE) {
            let head = self.table.send_head[slot as usize];
            if head != NONE {
                self.table.set(slot, flag::SEND_INFLIGHT);
                return self.push(Command::Send {
                    slot,
                    generation,
                    head,
                });
            }
            if let Some((code, sent)) = self.table.close_frame(slot) {
                let bytes = protocol::static_close_frame(code);
                assert!(sent < bytes.len(), "CLOSE frame {code} already sent");
                self.table
                    .set(slot, flag::SEND_INFLIGHT | flag::CLOSE_FRAME_INFLIGHT);
                return self.push(Command::SendClose {
                    slot,
                    generation,
                    bytes: &bytes[sent..],
                });
            }
        }
        sends.drop_queue(&mut self.table.send_head[slot as usize]);
        if let Some((code, _)) = self.table.close_frame(slot) {
            self.stats.close_frame_unsent(code);
            self.table.drop_close_frame(slot);
        }
        self.table.set(slot, flag::CLOSE_SUBMITTED);
        self.push(Command::CloseFd { slot, generation });
    }

    /// A send completed: `result` bytes left, or `-errno`. `close_frame`:
    /// it was the CLOSE frame.
    pub fn on_send_done(
        &mut self,
        slot: u32,
        generation: u32,
        result: i32,
        close_frame: bool,
        sends: &mut SendPool,
    ) {
        assert!(
            self.table.is_current(slot, generation) && self.table.has(slot, flag::SEND_INFLIGHT),
            "send completion for slot {slot} with no send in flight"
        );
        self.table
            .clear(slot, flag::SEND_INFLIGHT | flag::CLOSE_FRAME_INFLIGHT);
        if result < 0 {
            return self.on_send_failed(slot, result, close_frame, sends);
        }
        if close_frame {
            let (code, sent) = self.table.close_frame(slot).expect("a CLOSE frame is owed");
            let done = sent + result as usize >= protocol::static_close_frame(code).len();
            self.table.close_frame_sent(slot, result as usize, done);
        } else if sends.complete_send(&mut self.table.send_head[slot as usize], result as usize) {
            self.dirty.push(slot);
        }
        match self.table.state(slot) {
            State::Open => self.maybe_resume(slot, sends),
            _ => self.try_finish_close(slot, sends),
        }
    }

    fn on_send_failed(&mut self, slot: u32, errno: i32, close_frame: bool, sends: &mut SendPool) {
        if !close_frame {
            sends.complete_send_failed(&mut self.table.send_head[slot as usize]);
        }
        self.table.set(slot, flag::PEER_DONE);
        let cause = match -errno {
            libc::ECONNRESET => CloseCause::Reset,
            // The peer half-closed (FIN: CLOSE_WAIT) and then went; the
            // kernel reports that as EPIPE, and it is a close, not a reset.
            libc::EPIPE => CloseCause::PeerGone,
            // Our own cancel (linger over, or the peer went first).
            libc::ECANCELED => CloseCause::PeerGone,
            e => {
                self.stats.io_errors.inc();
                tracing::debug!(slot, errno = e, "send failed");
                CloseCause::PeerGone
            }
        };
        match self.table.state(slot) {
            State::Open => self.close(slot, cause, sends),
            _ => self.try_finish_close(slot, sends),
        }
    }

    /// The descriptor's close completed: the slot is free for reuse.
    pub fn on_closed(&mut self, slot: u32, generation: u32) {
        assert!(
            self.table.is_current(slot, generation) && self.table.has(slot, flag::CLOSE_SUBMITTED),
            "close completion for slot {slot} not closing"
        );
        self.table.free(slot);
        self.stats.shard_connections.dec();
        self.stats.connections.dec();
        self.live_total.fetch_sub(1, Ordering::Relaxed);
    }

    /// Closing slots that did not flush within the linger give up their
    /// queued bytes and CLOSE frame (counted when they close).
    pub(super) fn expire_lingering(&mut self, sends: &mut SendPool) {
        let linger_ticks = self.cfg.timing.ticks(CLOSE_LINGER_MS).max(1);
        let mut closing = std::mem::take(&mut self.closing);
        closing.retain(|&(slot, generation)| {
            let table = &self.table;
            if !table.is_current(slot, generation) || table.has(slot, flag::CLOSE_SUBMITTED) {
                return false;
            }
            let age = self.now_tick.wrapping_sub(table.closing_since_tick(slot));
            if age >= linger_ticks && !table.has(slot, flag::PEER_DONE) {
                self.table.set(slot, flag::PEER_DONE);
                self.cancel_send(slot);
                self.try_finish_close(slot, sends);
            }
            true
        });
        closing.append(&mut self.closing);
        self.closing = closing;
    }

    /// Whether this sweep's evictions wait a tick: the tick ran so late
    /// (`due_tick` against now) that the shard was stalled, and it has not
    /// deferred [`SWEEP_DEFER_MAX`] times in a row yet. Counted whether or
    /// not a connection was stale this time: the rule was in force.
    pub(super) fn defer_evictions(&mut self, due_tick: u32) -> bool {
        let late_ticks = self.now_tick.saturating_sub(due_tick);
        let late = late_ticks > self.cfg.timing.ticks(LATE_MS_MAX).max(2);
        if !late {
            self.deferred_in_row = 0;
            return false;
        }
        if self.deferred_in_row >= SWEEP_DEFER_MAX {
            return false;
        }
        self.deferred_in_row += 1;
        self.stats.sweeps_deferred.inc();
        true
    }

    /// A stale slot whose input is waiting (in the kernel for a buffer, or
    /// held while its replies drain) is not evicted: its frames may be
    /// there. Counted; it is looked at again next tick.
    pub(super) fn input_waiting(&self, slot: u32) -> bool {
        let waiting = self.table.has(slot, flag::RECV_STARVED) || self.paused.contains(slot);
        if waiting {
            self.stats.evictions_deferred.inc();
        }
        waiting
    }
}
