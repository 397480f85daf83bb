//! Send chunks: a fixed arena of [`CHUNK_LEN`]-byte chunks per shard and, per
//! connection, a short linked queue of them. Replies (PONG, WELCOME, CLOSE,
//! probe PINGs) are copied in; one gathered send per connection is in flight
//! at a time, covering up to [`GATHER_MAX`] chunks from the queue's head, so
//! bytes leave in order and a peer that pipelines PINGs is drained as fast as
//! it fills its queue.
//!
//! The arena is allocated once and never moves: the ring hands chunk
//! addresses to the kernel (see `ring`). A chunk in flight is never written
//! or freed until its completion.

use crate::conn_table::NONE;

/// Bytes per chunk: a CLOSE with full text (266) fits one chunk.
pub const CHUNK_LEN: usize = 512;
/// Most chunks one connection may have queued: past this the peer is not
/// reading and the connection is closed as a slow consumer.
pub const QUEUE_CHUNKS_MAX: u16 = 32;

/// Most chunks one send gathers (one iovec each).
pub const GATHER_MAX: usize = 8;

/// `(arena offset, length)` of each piece of one gathered send.
pub type Gather = [(usize, usize); GATHER_MAX];

const _: () = assert!(CHUNK_LEN >= crate::protocol::CONTROL_FRAME_MAX);
const _: () = assert!(GATHER_MAX <= QUEUE_CHUNKS_MAX as usize);

#[derive(Clone, Copy, Debug)]
struct Meta {
    next: u32,
    /// Bytes written.
    len: u16,
    /// Bytes already sent (the head chunk after a short write).
    sent: u16,
    /// Valid in a queue's head: its last chunk and its chunk count.
    tail: u32,
    count: u16,
    /// Valid in a queue's head: chunks in the send in flight.
    gathered: u16,
    inflight: bool,
}

const FREE_META: Meta = Meta {
    next: NONE,
    len: 0,
    sent: 0,
    tail: NONE,
    count: 0,
    gathered: 0,
    inflight: false,
};

/// Why bytes could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The connection already has [`QUEUE_CHUNKS_MAX`] chunks queued.
    SlowConsumer,
    /// The shard's arena is empty.
    PoolExhausted,
}

/// The arena and its free list.
#[derive(Debug)]
pub struct SendPool {
    data: Box<[u8]>,
    meta: Vec<Meta>,
    free: Vec<u32>,
}

impl SendPool {
    pub fn new(chunks: u32) -> SendPool {
        assert!(chunks > 0 && chunks < NONE);
        SendPool {
            data: vec![0u8; chunks as usize * CHUNK_LEN].into_boxed_slice(),
            meta: vec![FREE_META; chunks as usize],
            free: (0..chunks).rev().collect(),
        }
    }

    pub fn in_use(&self) -> usize {
        self.meta.len() - self.free.len()
    }

    /// Free chunks in the arena.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Chunks queued behind `head` (0 for an empty queue).
    pub fn queued_chunks(&self, head: u32) -> u16 {
        if head == NONE {
            0
        } else {
            self.meta[head as usize].count
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        let c = self.free.pop()?;
        self.meta[c as usize] = FREE_META;
        Some(c)
    }

    /// Appends `bytes` to the queue whose head is `*head` (NONE = empty).
    /// On error nothing is queued.
    pub fn queue(&mut self, head: &mut u32, bytes: &[u8]) -> Result<(), QueueError> {
        let room = if *head == NONE {
            0
        } else {
            let tail = self.meta[*head as usize].tail;
            let t = self.meta[tail as usize];
            if t.inflight {
                0
            } else {
                CHUNK_LEN - usize::from(t.len)
            }
        };
        let need_chunks = bytes.len().saturating_sub(room).div_ceil(CHUNK_LEN);
        let count = if *head == NONE {
            0
        } else {
            self.meta[*head as usize].count
        };
        if usize::from(count) + need_chunks > usize::from(QUEUE_CHUNKS_MAX) {
            return Err(QueueError::SlowConsumer);
        }
        if need_chunks > self.free.len() {
            return Err(QueueError::PoolExhausted);
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            let tail = self.writable_tail(head);
            let t = &mut self.meta[tail as usize];
            let n = rest.len().min(CHUNK_LEN - usize::from(t.len));
            let at = tail as usize * CHUNK_LEN + usize::from(t.len);
            t.len += n as u16;
            self.data[at..at + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(())
    }

    /// The queue's tail if it has room and is not in flight, else a new
    /// chunk linked after it. The caller checked that chunks are available.
    fn writable_tail(&mut self, head: &mut u32) -> u32 {
        if *head != NONE {
            let tail = self.meta[*head as usize].tail;
            let t = self.meta[tail as usize];
            if !t.inflight && usize::from(t.len) < CHUNK_LEN {
                return tail;
            }
        }
        let c = self.alloc().expect("chunks reserved by caller");
        if *head == NONE {
            *head = c;
            self.meta[c as usize].count = 1;
        } else {
            let h = *head as usize;
            let tail = self.meta[h].tail;
            self.meta[tail as usize].next = c;
            self.meta[h].count += 1;
        }
        self.meta[*head as usize].tail = c;
        c
    }

    /// Gathers the unsent bytes of up to [`GATHER_MAX`] chunks from the
    /// queue's head into `pieces` and marks them in flight. Returns how many
    /// pieces; 0 if the queue is empty.
    pub fn start_send(&mut self, head: u32, pieces: &mut Gather) -> usize {
        if head == NONE {
            return 0;
        }
        assert_eq!(
            self.meta[head as usize].gathered, 0,
            "second send of {head}"
        );
        let mut n = 0;
        let mut c = head;
        while c != NONE && n < GATHER_MAX {
            let m = &mut self.meta[c as usize];
            assert!(!m.inflight, "chunk {c} already in flight");
            debug_assert!(m.sent < m.len);
            m.inflight = true;
            let at = c as usize * CHUNK_LEN + usize::from(m.sent);
            pieces[n] = (at, usize::from(m.len - m.sent));
            n += 1;
            c = m.next;
        }
        self.meta[head as usize].gathered = n as u16;
        n
    }

    /// Records that `sent` bytes of the in-flight send left. Frees the chunks
    /// fully sent and returns whether more is queued.
    pub fn complete_send(&mut self, head: &mut u32, sent: usize) -> bool {
        let gathered = self.release_inflight(*head);
        let mut left = sent;
        let mut c = *head;
        for _ in 0..gathered {
            let m = &mut self.meta[c as usize];
            let n = left.min(usize::from(m.len - m.sent));
            m.sent += n as u16;
            left -= n;
            c = m.next;
        }
        assert_eq!(left, 0, "kernel reported more bytes than were sent");
        while *head != NONE {
            let m = self.meta[*head as usize];
            if m.sent < m.len {
                break;
            }
            self.free.push(*head);
            *head = m.next;
            if m.next != NONE {
                self.meta[m.next as usize].tail = m.tail;
                self.meta[m.next as usize].count = m.count - 1;
            }
        }
        *head != NONE
    }

    /// Clears the in-flight marks of the send from `head`; returns its
    /// chunk count.
    fn release_inflight(&mut self, head: u32) -> u16 {
        let gathered = std::mem::take(&mut self.meta[head as usize].gathered);
        assert!(gathered > 0, "completion for queue {head} not in flight");
        let mut c = head;
        for _ in 0..gathered {
            let m = &mut self.meta[c as usize];
            assert!(m.inflight);
            m.inflight = false;
            c = m.next;
        }
        gathered
    }

    /// The in-flight send failed: nothing more of this queue will be sent.
    pub fn complete_send_failed(&mut self, head: &mut u32) {
        self.release_inflight(*head);
        self.drop_queue(head);
    }

    /// Frees a whole queue; its head must not be in flight.
    pub fn drop_queue(&mut self, head: &mut u32) {
        let mut c = *head;
        while c != NONE {
            let m = self.meta[c as usize];
            assert!(!m.inflight, "drop of in-flight chunk {c}");
            self.free.push(c);
            c = m.next;
        }
        *head = NONE;
    }

    /// Bytes of the arena (`ring` takes addresses from here).
    pub fn arena(&self) -> &[u8] {
        &self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(pool: &mut SendPool, head: u32) -> Vec<u8> {
        let mut pieces = [(0, 0); GATHER_MAX];
        let n = pool.start_send(head, &mut pieces);
        let mut out = Vec::new();
        for &(at, len) in &pieces[..n] {
            out.extend_from_slice(&pool.arena()[at..at + len]);
        }
        out
    }

    fn drain(pool: &mut SendPool, head: &mut u32) -> Vec<u8> {
        let mut out = Vec::new();
        while *head != NONE {
            let sent = gather(pool, *head);
            pool.complete_send(head, sent.len());
            out.extend(sent);
        }
        out
    }

    #[test]
    fn bytes_leave_in_order_across_chunks() {
        let mut pool = SendPool::new(8);
        let mut head = NONE;
        let a: Vec<u8> = (0..700u32).map(|i| i as u8).collect();
        pool.queue(&mut head, &a).unwrap();
        pool.queue(&mut head, b"tail").unwrap();
        let mut want = a.clone();
        want.extend_from_slice(b"tail");
        assert_eq!(drain(&mut pool, &mut head), want);
        assert_eq!(head, NONE);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn inflight_chunk_is_never_written() {
        let mut pool = SendPool::new(4);
        let mut head = NONE;
        pool.queue(&mut head, b"one").unwrap();
        assert_eq!(gather(&mut pool, head), b"one");
        pool.queue(&mut head, b"two").unwrap();
        assert_eq!(pool.in_use(), 2);
        // A short write: one byte left, then the rest.
        assert!(pool.complete_send(&mut head, 2));
        assert_eq!(drain(&mut pool, &mut head), b"etwo");
    }

    #[test]
    fn one_send_gathers_several_chunks_and_resumes_after_a_short_write() {
        let mut pool = SendPool::new(32);
        let mut head = NONE;
        let all: Vec<u8> = (0..CHUNK_LEN * 10).map(|i| (i % 251) as u8).collect();
        pool.queue(&mut head, &all).unwrap();
        let first = gather(&mut pool, head);
        assert_eq!(first.len(), CHUNK_LEN * GATHER_MAX);
        // The kernel took 1.5 chunks: the rest resumes mid-chunk.
        assert!(pool.complete_send(&mut head, CHUNK_LEN * 3 / 2));
        let mut out = all[..CHUNK_LEN * 3 / 2].to_vec();
        out.extend(drain(&mut pool, &mut head));
        assert_eq!(out, all);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn a_failed_send_frees_the_queue() {
        let mut pool = SendPool::new(8);
        let mut head = NONE;
        pool.queue(&mut head, &[1; CHUNK_LEN * 3]).unwrap();
        gather(&mut pool, head);
        pool.complete_send_failed(&mut head);
        assert_eq!((head, pool.in_use()), (NONE, 0));
    }

    #[test]
    fn slow_consumer_and_exhaustion_are_reported() {
        let mut pool = SendPool::new(40);
        let mut head = NONE;
        let big = vec![0u8; CHUNK_LEN * usize::from(QUEUE_CHUNKS_MAX)];
        pool.queue(&mut head, &big).unwrap();
        assert_eq!(pool.queue(&mut head, b"x"), Err(QueueError::SlowConsumer));
        let mut other = NONE;
        let rest = vec![0u8; CHUNK_LEN * 9];
        assert_eq!(
            pool.queue(&mut other, &rest),
            Err(QueueError::PoolExhausted)
        );
        assert_eq!(other, NONE, "nothing queued on error");
        pool.drop_queue(&mut head);
        assert_eq!(pool.in_use(), 0);
    }
}
