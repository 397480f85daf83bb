//! Partial-frame stash: while a frame is incomplete, the bytes that matter
//! (header and fixed payload, at most [`KEEP_MAX`]) wait here; DATA payload
//! and CLOSE text are skipped, not stored. A fixed pool per shard, sized at
//! start-up; a connection holds an entry only while a frame is incomplete.

use crate::conn_table::NONE;
use crate::protocol::{HEADER_LEN, WELCOME_LEN};

/// Most bytes of a frame the server keeps: header plus the largest fixed
/// payload it reads (WELCOME-sized; HELLO is 12, CLOSE's reason 2).
pub const KEEP_MAX: usize = HEADER_LEN + WELCOME_LEN;

/// One incomplete frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct Partial {
    pub buf: [u8; KEEP_MAX],
    /// Bytes of `buf` filled.
    pub have: u8,
    /// Payload bytes still to skip once `buf` is complete.
    pub skip_left: u32,
    /// Whether `buf` holds a whole header that was validated.
    pub header_ok: bool,
}

/// A fixed pool of [`Partial`] entries with a free list.
#[derive(Debug)]
pub struct StashPool {
    entries: Vec<Partial>,
    free: Vec<u32>,
}

impl StashPool {
    pub fn new(capacity: u32) -> StashPool {
        assert!(capacity > 0 && capacity < NONE);
        StashPool {
            entries: vec![Partial::default(); capacity as usize],
            free: (0..capacity).rev().collect(),
        }
    }

    /// A cleared entry, or `None` when the pool is exhausted.
    pub fn alloc(&mut self) -> Option<u32> {
        let index = self.free.pop()?;
        self.entries[index as usize] = Partial::default();
        Some(index)
    }

    pub fn release(&mut self, index: u32) {
        debug_assert!(
            !self.free.contains(&index),
            "double release of stash {index}"
        );
        self.free.push(index);
    }

    pub fn get_mut(&mut self, index: u32) -> &mut Partial {
        &mut self.entries[index as usize]
    }

    pub fn in_use(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhausts_and_recycles() {
        let mut p = StashPool::new(2);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_ne!(a, b);
        assert!(p.alloc().is_none());
        p.get_mut(a).have = 5;
        p.release(a);
        let c = p.alloc().unwrap();
        assert_eq!(p.get_mut(c).have, 0, "entries come back cleared");
        assert_eq!(p.in_use(), 2);
    }
}
