//! Partial-frame stash: while a frame is incomplete, the bytes that matter
//! wait here; DATA payload and CLOSE text are skipped, not stored.
//!
//! Every slot has room of its own for the largest fixed frame the server
//! keeps ([`KEEP_MAX`]: a header and HELLO's 12 bytes), so no set of
//! connections can exhaust a shared pool and make an honest client's split
//! frame fail (the first version shared `slots/4` entries per shard; a
//! quarter of the connections each sending one byte filled it). That costs
//! [`BYTES_PER_SLOT`] per slot.
//!
//! A HELLO carrying a token (up to 512 bytes, kept only when the server
//! checks tokens) is assembled in a small shared [`HelloPool`]: when it is
//! full, the entry waiting longest is reclaimed. An honest HELLO completes
//! within a round trip, so it is never the oldest; a connection that sits
//! on a half-sent HELLO is.

use crate::conn_table::NONE;
use crate::protocol::{HEADER_LEN, HELLO_LEN, HELLO_MAX_LEN};
use crate::proxy_v2::HEADER_MAX_BYTES;

/// Most bytes of a frame kept per slot: header plus the largest fixed
/// payload the server reads (HELLO's 12; PING/PONG 8, CLOSE's reason 2).
pub const KEEP_MAX: usize = HEADER_LEN + HELLO_LEN;
/// User-space bytes per slot: the kept bytes, their count, bytes to skip.
pub const BYTES_PER_SLOT: usize = KEEP_MAX + 1 + 4;
/// A whole HELLO frame with the largest token.
pub const HELLO_FRAME_MAX: usize = HEADER_LEN + HELLO_MAX_LEN;
/// What a pool entry holds: a whole HELLO or a PROXY v2 header (one byte
/// over its limit, so an oversized one is seen and refused).
pub const ENTRY_MAX: usize = if HELLO_FRAME_MAX > HEADER_MAX_BYTES + 1 {
    HELLO_FRAME_MAX
} else {
    HEADER_MAX_BYTES + 1
};

/// One slot's incomplete frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Partial {
    pub buf: [u8; KEEP_MAX],
    /// Bytes of `buf` filled (0: no frame in progress).
    pub have: u8,
    /// Payload bytes still to skip once the kept part is complete.
    pub skip_left: u32,
}

/// Per-slot partial frames.
#[derive(Debug)]
pub struct Stash {
    partial: Vec<Partial>,
}

impl Stash {
    pub fn new(slots: u32) -> Stash {
        Stash {
            partial: vec![Partial::default(); slots as usize],
        }
    }

    pub fn get(&self, slot: u32) -> Partial {
        self.partial[slot as usize]
    }

    pub fn set(&mut self, slot: u32, p: Partial) {
        self.partial[slot as usize] = p;
    }

    /// Whether `slot` has an incomplete frame.
    pub fn active(&self, slot: u32) -> bool {
        self.partial[slot as usize].have > 0
    }

    pub fn clear(&mut self, slot: u32) {
        self.partial[slot as usize] = Partial::default();
    }

    /// Bytes this stash holds in user space.
    pub fn bytes(&self) -> usize {
        self.partial.len() * BYTES_PER_SLOT
    }
}

/// One HELLO being assembled.
#[derive(Debug)]
struct HelloEntry {
    slot: u32,
    generation: u32,
    since_tick: u32,
    have: u16,
    buf: Box<[u8; ENTRY_MAX]>,
}

/// A bounded pool of HELLO frames being assembled, with reclaim of the
/// longest-waiting entry when full.
#[derive(Debug)]
pub struct HelloPool {
    entries: Vec<HelloEntry>,
    free: Vec<u32>,
}

/// The entry given, and the connection whose entry was reclaimed for it
/// (slot, generation), which the caller must close.
pub type HelloAlloc = (u32, Option<(u32, u32)>);

impl HelloPool {
    pub fn new(capacity: u32) -> HelloPool {
        assert!(capacity > 0 && capacity < NONE);
        let entries = (0..capacity)
            .map(|_| HelloEntry {
                slot: NONE,
                generation: 0,
                since_tick: 0,
                have: 0,
                buf: Box::new([0; ENTRY_MAX]),
            })
            .collect();
        HelloPool {
            entries,
            free: (0..capacity).rev().collect(),
        }
    }

    /// An entry for `slot`, reclaiming the one waiting longest if none is
    /// free.
    pub fn alloc(&mut self, slot: u32, generation: u32, now_tick: u32) -> HelloAlloc {
        let (index, reclaimed) = match self.free.pop() {
            Some(i) => (i, None),
            None => {
                let (i, e) = self
                    .entries
                    .iter()
                    .enumerate()
                    .max_by_key(|(_, e)| now_tick.wrapping_sub(e.since_tick))
                    .expect("capacity > 0");
                (i as u32, Some((e.slot, e.generation)))
            }
        };
        let e = &mut self.entries[index as usize];
        e.slot = slot;
        e.generation = generation;
        e.since_tick = now_tick;
        e.have = 0;
        (index, reclaimed)
    }

    pub fn release(&mut self, index: u32) {
        let e = &mut self.entries[index as usize];
        debug_assert!(e.slot != NONE, "double release of hello {index}");
        e.slot = NONE;
        self.free.push(index);
    }

    /// Whether entry `index` still belongs to (slot, generation): a
    /// reclaimed entry does not.
    pub fn owned_by(&self, index: u32, slot: u32, generation: u32) -> bool {
        let e = &self.entries[index as usize];
        e.slot == slot && e.generation == generation
    }

    /// Appends up to `want - have` bytes from `src`; returns how many it took.
    pub fn fill(&mut self, index: u32, want: usize, src: &[u8]) -> usize {
        let e = &mut self.entries[index as usize];
        let have = usize::from(e.have);
        let n = want.saturating_sub(have).min(src.len());
        e.buf[have..have + n].copy_from_slice(&src[..n]);
        e.have += n as u16;
        n
    }

    pub fn bytes_of(&self, index: u32) -> &[u8] {
        let e = &self.entries[index as usize];
        &e.buf[..usize::from(e.have)]
    }

    pub fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_pool_reclaims_the_entry_waiting_longest() {
        let mut p = HelloPool::new(2);
        let (a, none_a) = p.alloc(10, 1, 5);
        let (b, none_b) = p.alloc(11, 1, 7);
        assert_eq!((none_a, none_b), (None, None));
        assert_ne!(a, b);
        let (c, reclaimed) = p.alloc(12, 1, 9);
        assert_eq!(reclaimed, Some((10, 1)), "slot 10 waited longest");
        assert_eq!(c, a);
        assert!(!p.owned_by(a, 10, 1) && p.owned_by(c, 12, 1));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn fill_stops_at_want() {
        let mut p = HelloPool::new(1);
        let (i, _) = p.alloc(0, 0, 0);
        assert_eq!(p.fill(i, 10, &[1; 8]), 8);
        assert_eq!(p.fill(i, 10, &[2; 8]), 2);
        assert_eq!(p.bytes_of(i).len(), 10);
        p.release(i);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn per_slot_room_within_budget() {
        const _: () = assert!(BYTES_PER_SLOT <= 32);
        let mut s = Stash::new(4);
        assert!(!s.active(3));
        s.set(
            3,
            Partial {
                have: 2,
                ..Partial::default()
            },
        );
        assert!(s.active(3));
        s.clear(3);
        assert!(!s.active(3));
    }
}
