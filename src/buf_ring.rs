//! Receive buffers the kernel picks from: one arena of [`BUF_LEN`]-byte
//! buffers per shard, offered either through a registered buffer ring (fast
//! mode, kernel 5.19+) or through PROVIDE_BUFFERS (compat mode, 5.7+; the
//! SQE is built in `ring`). A buffer belongs to the kernel from the moment it
//! is offered until a completion names it, then to the shard until returned.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::IoUring;

/// Bytes per receive buffer.
pub const BUF_LEN: usize = 2048;
/// The buffer group id ringbeat uses.
pub const BGID: u16 = 7;

/// The arena plus, in fast mode, the registered ring of free entries.
#[derive(Debug)]
pub struct RecvBuffers {
    arena: Box<[u8]>,
    count: u16,
    /// Fast mode: page-aligned array of `count` entries shared with the kernel.
    ring: Option<RingMem>,
    /// Fast mode: our copy of the ring tail.
    tail: u16,
}

#[derive(Debug)]
struct RingMem {
    ptr: *mut BufRingEntry,
    layout: Layout,
}

// SAFETY: the ring memory is owned by exactly one RecvBuffers, which moves
// with its Ring to the shard thread and is never shared between threads.
unsafe impl Send for RingMem {}

impl RecvBuffers {
    /// `count` buffers (a power of two ≤ 32768). With `uring`, registers a
    /// buffer ring and offers every buffer through it (fast mode).
    pub fn new(count: u16, uring: Option<&IoUring>) -> std::io::Result<RecvBuffers> {
        assert!(count.is_power_of_two() && count <= 1 << 15, "count {count}");
        let mut bufs = RecvBuffers {
            arena: vec![0u8; usize::from(count) * BUF_LEN].into_boxed_slice(),
            count,
            ring: None,
            tail: 0,
        };
        if let Some(uring) = uring {
            bufs.register(uring)?;
            for bid in 0..count {
                bufs.push_entry(bid);
            }
            bufs.publish();
        }
        Ok(bufs)
    }

    fn register(&mut self, uring: &IoUring) -> std::io::Result<()> {
        let size = usize::from(self.count) * std::mem::size_of::<BufRingEntry>();
        let layout = Layout::from_size_align(size, 4096).expect("valid layout");
        // SAFETY: layout has non-zero size (count >= 1) and a valid alignment.
        let ptr = unsafe { alloc_zeroed(layout) }.cast::<BufRingEntry>();
        assert!(!ptr.is_null(), "out of memory for buffer ring");
        self.ring = Some(RingMem { ptr, layout });
        // SAFETY: `ptr` points to `count` zeroed, page-aligned entries that
        // live until `self` drops, which happens after the ring is dropped
        // (the shard drops its Ring, which owns both, uring first).
        unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(ptr as u64, self.count, BGID, 0)
        }
    }

    pub fn is_ring(&self) -> bool {
        self.ring.is_some()
    }

    pub fn count(&self) -> u16 {
        self.count
    }

    /// Address of buffer `bid` (for PROVIDE_BUFFERS).
    pub fn addr(&mut self, bid: u16) -> *mut u8 {
        assert!(bid < self.count);
        self.arena[usize::from(bid) * BUF_LEN..].as_mut_ptr()
    }

    /// The first `len` bytes of buffer `bid`, which a completion handed us.
    pub fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.count && len <= BUF_LEN, "bid {bid} len {len}");
        let start = usize::from(bid) * BUF_LEN;
        &self.arena[start..start + len]
    }

    fn push_entry(&mut self, bid: u16) {
        let ring = self.ring.as_ref().expect("fast mode");
        let index = usize::from(self.tail & (self.count - 1));
        let addr = self.arena[usize::from(bid) * BUF_LEN..].as_ptr() as u64;
        // SAFETY: index < count, so the entry lies inside the ring array; the
        // kernel reads only entries between its head and the published tail,
        // and this one is past the published tail until `publish`.
        let entry = unsafe { &mut *ring.ptr.add(index) };
        entry.set_addr(addr);
        entry.set_len(BUF_LEN as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        let ring = self.ring.as_ref().expect("fast mode");
        // SAFETY: `ptr` is the ring base; the tail field is a u16 in the first
        // entry, shared with the kernel, so it is written atomically with
        // release ordering after the entries it publishes.
        let tail = unsafe { &*(BufRingEntry::tail(ring.ptr).cast::<AtomicU16>()) };
        tail.store(self.tail, Ordering::Release);
    }

    /// Gives buffer `bid` back to the kernel (fast mode). Compat mode returns
    /// buffers with a PROVIDE_BUFFERS SQE instead (`Ring::return_buffer`).
    pub fn give_back(&mut self, bid: u16) {
        self.push_entry(bid);
        self.publish();
    }
}

impl Drop for RecvBuffers {
    fn drop(&mut self) {
        if let Some(ring) = self.ring.take() {
            // SAFETY: allocated in `register` with this layout; the kernel
            // no longer uses it because the io_uring instance was dropped
            // before this (see `ring::Ring`'s field order).
            unsafe { dealloc(ring.ptr.cast(), ring.layout) };
        }
    }
}
