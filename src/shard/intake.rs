//! How many accepted connections one pass hands to the engine.
//!
//! A multishot accept takes the whole accept queue at once: after a
//! stall, or a connect storm that outran the shard, that is thousands of
//! connections in one batch. Each gets a receive armed at once, and each
//! has its HELLO already waiting, so the receives complete together and
//! ask for more buffers than the buffer ring holds (512 per shard by
//! default). All but the first few hundred end with ENOBUFS, wait for
//! buffers to come back, are armed again, and most end with ENOBUFS again,
//! pass after pass. Measured on 2026-12-01 with a held storm of 15,000
//! clients (`ringbeat-load --hold-server`): a shard took 7,416 accepts in
//! one batch, then handled 7,428, 6,921, 6,440, … receive completions in
//! the passes after, most of them failures. It answered 50–60K clients/s,
//! slower than compat mode (single-shot accepts, 16 per listener a pass)
//! at 69–72K/s.
//!
//! So a pass reports at most `per_pass` new connections (half the receive
//! buffers); the rest wait here, in order, for the next passes. Nothing is
//! decided about them meanwhile: the engine has not seen them, so no sweep
//! can evict them, exactly as if they were still in the kernel's accept
//! queue. A shard with connections waiting here does not sleep (its loop
//! asks [`Intake::is_empty`]). A trickle of connections, fewer than
//! `per_pass` a pass, goes straight through.
//!
//! It bounds the burst that a queue of accepted connections brings, not
//! input that arrives together on receives already armed (a stalled
//! box's PINGs, or HELLOs a loaded host delivers after the accepts): that
//! still meets an empty ring and is handled as before, with ENOBUFS
//! counted and the receive armed again once buffers come back.

use std::collections::VecDeque;
use std::net::SocketAddr;

/// An accepted connection: the accept's result (slot or fd) and the peer
/// address when the accept reported one.
pub type Accepted = (i32, Option<SocketAddr>);

/// New connections waiting for a pass that has room for them.
#[derive(Debug)]
pub struct Intake {
    waiting: VecDeque<Accepted>,
    opened_this_pass: u32,
    per_pass: u32,
}

impl Intake {
    /// Up to `per_pass` (≥ 1) connections reported per pass.
    pub fn new(per_pass: u32) -> Intake {
        assert!(per_pass >= 1, "a pass must take at least one connection");
        Intake {
            waiting: VecDeque::new(),
            opened_this_pass: 0,
            per_pass,
        }
    }

    /// The intake for a shard with `recv_buffers` receive buffers: half of
    /// them a pass, so a pass's new receives all find a buffer while the
    /// connections already open still have the other half.
    pub fn for_recv_buffers(recv_buffers: u16) -> Intake {
        Intake::new((u32::from(recv_buffers) / 2).max(1))
    }

    /// A new pass begins: its room is `per_pass` again.
    pub fn next_pass(&mut self) {
        self.opened_this_pass = 0;
    }

    /// A connection was accepted: `Some` if this pass reports it now,
    /// `None` if it waits (behind any that already wait, in order).
    pub fn accepted(&mut self, conn: Accepted) -> Option<Accepted> {
        if self.waiting.is_empty() && self.opened_this_pass < self.per_pass {
            self.opened_this_pass += 1;
            return Some(conn);
        }
        self.waiting.push_back(conn);
        None
    }

    /// The next waiting connection this pass has room for.
    pub fn due(&mut self) -> Option<Accepted> {
        if self.opened_this_pass >= self.per_pass {
            return None;
        }
        let conn = self.waiting.pop_front()?;
        self.opened_this_pass += 1;
        Some(conn)
    }

    /// Every waiting connection, room or not (shutdown: the engine must see
    /// them to close them).
    pub fn take_all(&mut self) -> VecDeque<Accepted> {
        std::mem::take(&mut self.waiting)
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_due(intake: &mut Intake) -> Vec<i32> {
        std::iter::from_fn(|| intake.due())
            .map(|(r, _)| r)
            .collect()
    }

    #[test]
    fn a_trickle_goes_straight_through() {
        let mut intake = Intake::new(4);
        for pass in 0..10 {
            intake.next_pass();
            for i in 0..4 {
                assert_eq!(
                    intake.accepted((pass * 4 + i, None)),
                    Some((pass * 4 + i, None))
                );
            }
        }
        assert!(intake.is_empty());
    }

    #[test]
    fn a_burst_is_reported_per_pass_in_order() {
        let mut intake = Intake::new(3);
        intake.next_pass();
        let now: Vec<_> = (0..8).filter_map(|r| intake.accepted((r, None))).collect();
        assert_eq!(now, vec![(0, None), (1, None), (2, None)]);
        assert_eq!(intake.waiting(), 5);
        assert_eq!(
            drain_due(&mut intake),
            Vec::<i32>::new(),
            "this pass is full"
        );
        intake.next_pass();
        assert_eq!(drain_due(&mut intake), vec![3, 4, 5]);
        intake.next_pass();
        // A connection accepted now waits behind the ones already waiting.
        assert_eq!(intake.accepted((8, None)), None);
        assert_eq!(drain_due(&mut intake), vec![6, 7, 8]);
        assert!(intake.is_empty());
    }

    #[test]
    fn shutdown_takes_every_waiting_connection() {
        let mut intake = Intake::new(1);
        intake.next_pass();
        for r in 0..5 {
            intake.accepted((r, None));
        }
        let all: Vec<_> = intake.take_all().into_iter().map(|(r, _)| r).collect();
        assert_eq!(all, vec![1, 2, 3, 4]);
        assert!(intake.is_empty());
    }

    #[test]
    fn half_the_receive_buffers_a_pass() {
        assert_eq!(Intake::for_recv_buffers(512).per_pass, 256);
        assert_eq!(Intake::for_recv_buffers(16).per_pass, 8);
    }
}
