//! Send chunks: a fixed arena of [`CHUNK_LEN`]-byte chunks per shard and, per
//! connection, a short linked queue of them. Replies (PONG, WELCOME, CLOSE,
//! probe PINGs) are copied in; one SEND per connection is in flight at a time,
//! always from the queue's head chunk, so bytes leave in order.
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

const _: () = assert!(CHUNK_LEN >= crate::protocol::CONTROL_FRAME_MAX);

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
    inflight: bool,
}

const FREE_META: Meta = Meta {
    next: NONE,
    len: 0,
    sent: 0,
    tail: NONE,
    count: 0,
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

    pub fn capacity(&self) -> usize {
        self.meta.len()
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

    /// The unsent bytes of the head chunk, to be sent next; marks it in
    /// flight. `None` if the queue is empty.
    pub fn start_send(&mut self, head: u32) -> Option<(u32, std::ops::Range<usize>)> {
        if head == NONE {
            return None;
        }
        let m = &mut self.meta[head as usize];
        assert!(!m.inflight, "second send from chunk {head}");
        debug_assert!(m.sent < m.len);
        m.inflight = true;
        let base = head as usize * CHUNK_LEN;
        Some((head, base + usize::from(m.sent)..base + usize::from(m.len)))
    }

    /// Records that `sent` bytes of the in-flight head left. Frees the head
    /// when it is fully sent and returns whether more is queued.
    pub fn complete_send(&mut self, head: &mut u32, sent: usize) -> bool {
        let h = *head as usize;
        let m = &mut self.meta[h];
        assert!(m.inflight, "completion for chunk {h} not in flight");
        m.inflight = false;
        m.sent += sent as u16;
        assert!(m.sent <= m.len);
        if m.sent < m.len {
            return true;
        }
        let (next, tail, count) = (m.next, m.tail, m.count);
        self.free.push(*head);
        *head = next;
        if next != NONE {
            self.meta[next as usize].tail = tail;
            self.meta[next as usize].count = count - 1;
        }
        next != NONE
    }

    /// The in-flight send failed: nothing more of this queue will be sent.
    pub fn complete_send_failed(&mut self, head: &mut u32) {
        let h = *head as usize;
        assert!(self.meta[h].inflight, "failure for chunk {h} not in flight");
        self.meta[h].inflight = false;
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

    fn drain(pool: &mut SendPool, head: &mut u32) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some((_, range)) = pool.start_send(*head) {
            out.extend_from_slice(&pool.arena()[range.clone()]);
            pool.complete_send(head, range.len());
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
        let (_, r) = pool.start_send(head).unwrap();
        pool.queue(&mut head, b"two").unwrap();
        assert_eq!(&pool.arena()[r.clone()], b"one");
        assert_eq!(pool.in_use(), 2);
        // A short write: one byte left, then the rest.
        assert!(pool.complete_send(&mut head, 2));
        assert_eq!(drain(&mut pool, &mut head), b"etwo");
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
