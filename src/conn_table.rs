//! Flat per-shard connection state: one array per field, indexed by slot (the
//! io_uring fixed-file index in fast mode). No per-connection heap objects.
//!
//! Bytes per connection (capacity, not just live entries):
//!
//! | array            | type | bytes |
//! |------------------|------|------:|
//! | `last_seen_tick` | u32  | 4 |
//! | `timeout_ticks`  | u32  | 4 |
//! | `generation`     | u32  | 4 |
//! | `state`          | u8   | 1 |
//! | `flags`          | u16  | 2 |
//! | `client_id`      | u64  | 8 |
//! | `partial`        | u32  | 4 |
//! | `send_head`      | u32  | 4 |
//! | total            |      | 31 |
//!
//! Peer addresses (6 bytes) are kept only when events are wanted.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Most slots one shard may have (session ids carry 22 bits of slot).
pub const SLOTS_MAX: u32 = 1 << 22;
/// "No index" in `partial` and `send_head`.
pub const NONE: u32 = u32::MAX;
/// `timeout_ticks` of a free or closing slot: the sweep never evicts it.
pub const TIMEOUT_NEVER: u32 = u32::MAX;
/// User-space bytes per connection slot, without peer addresses.
pub const BYTES_PER_SLOT: usize = 4 + 4 + 4 + 1 + 2 + 8 + 4 + 4;
/// Extra bytes per slot when peer addresses are kept.
pub const PEER_BYTES_PER_SLOT: usize = 6;

/// Lifecycle of a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Free = 0,
    /// Accepted and live: frames are parsed, the sweep watches it.
    Open = 1,
    /// Being closed: in-flight operations drain, then the descriptor closes.
    Closing = 2,
}

/// Bits of `flags`.
pub mod flag {
    /// A receive is armed (its completion is still to come).
    pub const RECV_ARMED: u16 = 1 << 0;
    /// A send is in flight.
    pub const SEND_INFLIGHT: u16 = 1 << 1;
    /// A server probe PING was sent and no frame has arrived since.
    pub const PROBED: u16 = 1 << 2;
    /// At least one complete frame arrived (HELLO is no longer allowed).
    pub const SEEN_FRAME: u16 = 1 << 3;
    /// An "online" event was emitted (so "offline" will be too).
    pub const ONLINE: u16 = 1 << 4;
    /// This connection holds its `client_id` in the registry (or asked to).
    pub const CLAIMED: u16 = 1 << 5;
    /// The close descriptor op was submitted.
    pub const CLOSE_SUBMITTED: u16 = 1 << 6;
    /// The peer sent CLOSE or EOF, or stopped reading: send it nothing more.
    pub const PEER_DONE: u16 = 1 << 7;
    /// The send in flight is the CLOSE frame (not the reply queue).
    pub const CLOSE_FRAME_INFLIGHT: u16 = 1 << 8;
    /// The receive ended for lack of buffers: input waits in the kernel.
    pub const RECV_STARVED: u16 = 1 << 9;
    /// Counted against its source address's limit (`per_ip`).
    pub const IP_COUNTED: u16 = 1 << 10;
    /// The phi detector suspects it (a `suspect` event was emitted).
    pub const SUSPECTED: u16 = 1 << 11;
    /// Its PROXY protocol header has not arrived yet.
    pub const AWAIT_PROXY: u16 = 1 << 12;
}

/// The per-shard flat arrays.
#[derive(Debug)]
pub struct ConnTable {
    pub last_seen_tick: Vec<u32>,
    pub timeout_ticks: Vec<u32>,
    pub generation: Vec<u32>,
    state: Vec<State>,
    pub flags: Vec<u16>,
    pub client_id: Vec<u64>,
    /// Open: index into the partial-frame stash, or [`NONE`]. Closing: the
    /// CLOSE frame still owed to the peer (see [`ConnTable::close_frame`]).
    pub partial: Vec<u32>,
    /// First queued send chunk, or [`NONE`].
    pub send_head: Vec<u32>,
    peer_ip: Vec<u32>,
    peer_port: Vec<u16>,
    /// One past the highest slot ever opened: the sweep scans `0..high_water`.
    high_water: u32,
    open_count: u32,
}

impl ConnTable {
    /// A table of `capacity` slots. `generation_base` seeds generations so
    /// session ids differ between runs.
    pub fn new(capacity: u32, keep_peers: bool, generation_base: u32) -> ConnTable {
        assert!(capacity > 0 && capacity <= SLOTS_MAX, "capacity {capacity}");
        let n = capacity as usize;
        let peers = if keep_peers { n } else { 0 };
        ConnTable {
            last_seen_tick: vec![0; n],
            timeout_ticks: vec![TIMEOUT_NEVER; n],
            generation: vec![generation_base; n],
            state: vec![State::Free; n],
            flags: vec![0; n],
            client_id: vec![0; n],
            partial: vec![NONE; n],
            send_head: vec![NONE; n],
            peer_ip: vec![0; peers],
            peer_port: vec![0; peers],
            high_water: 0,
            open_count: 0,
        }
    }

    pub fn capacity(&self) -> u32 {
        self.state.len() as u32
    }

    /// Slots in state Open or Closing.
    pub fn open_count(&self) -> u32 {
        self.open_count
    }

    pub fn high_water(&self) -> u32 {
        self.high_water
    }

    pub fn state(&self, slot: u32) -> State {
        self.state[slot as usize]
    }

    /// Bytes this table holds in user space.
    pub fn bytes(&self) -> usize {
        self.state.len() * BYTES_PER_SLOT + self.peer_ip.len() * PEER_BYTES_PER_SLOT
    }

    /// Takes a free slot into use. Returns its new generation.
    pub fn open(
        &mut self,
        slot: u32,
        now_tick: u32,
        timeout_ticks: u32,
        peer: Option<SocketAddr>,
    ) -> u32 {
        let i = slot as usize;
        assert_eq!(self.state[i], State::Free, "open of busy slot {slot}");
        debug_assert!(self.partial[i] == NONE && self.send_head[i] == NONE);
        self.generation[i] = self.generation[i].wrapping_add(1);
        self.state[i] = State::Open;
        self.flags[i] = 0;
        self.last_seen_tick[i] = now_tick;
        self.timeout_ticks[i] = timeout_ticks;
        self.client_id[i] = 0;
        if !self.peer_ip.is_empty() {
            let (ip, port) = match peer {
                Some(SocketAddr::V4(v4)) => (u32::from(*v4.ip()), v4.port()),
                _ => (0, 0),
            };
            self.peer_ip[i] = ip;
            self.peer_port[i] = port;
        }
        self.high_water = self.high_water.max(slot + 1);
        self.open_count += 1;
        self.generation[i]
    }

    /// Open → Closing at `now_tick`, owing the peer the CLOSE frame with
    /// `frame_code` (if any). The caller has released the stash entry.
    ///
    /// A closing slot is never swept, so its `last_seen_tick` holds the
    /// tick its close began (for the linger) and `partial` the CLOSE frame
    /// still owed: reason code in the high half, bytes already sent in the
    /// low half.
    pub fn begin_close(&mut self, slot: u32, now_tick: u32, frame_code: Option<u16>) {
        let i = slot as usize;
        assert_eq!(self.state[i], State::Open, "close of slot {slot} not open");
        assert_eq!(self.partial[i], NONE, "stash entry kept past close");
        self.state[i] = State::Closing;
        self.timeout_ticks[i] = TIMEOUT_NEVER;
        self.last_seen_tick[i] = now_tick;
        self.partial[i] = frame_code.map_or(NONE, |code| u32::from(code) << 16);
    }

    /// A closing slot's owed CLOSE frame: (reason code, bytes already sent).
    pub fn close_frame(&self, slot: u32) -> Option<(u16, usize)> {
        let i = slot as usize;
        debug_assert_eq!(self.state[i], State::Closing);
        let v = self.partial[i];
        (v != NONE).then_some(((v >> 16) as u16, (v & 0xffff) as usize))
    }

    /// `sent` more bytes of the owed CLOSE frame left; `done` when all did.
    pub fn close_frame_sent(&mut self, slot: u32, sent: usize, done: bool) {
        let i = slot as usize;
        let (code, before) = self.close_frame(slot).expect("a CLOSE frame is owed");
        self.partial[i] = if done {
            NONE
        } else {
            (u32::from(code) << 16) | (before + sent) as u32
        };
    }

    /// Forgets the owed CLOSE frame (it will not be sent).
    pub fn drop_close_frame(&mut self, slot: u32) {
        debug_assert_eq!(self.state[slot as usize], State::Closing);
        self.partial[slot as usize] = NONE;
    }

    /// The tick a closing slot's close began.
    pub fn closing_since_tick(&self, slot: u32) -> u32 {
        debug_assert_eq!(self.state[slot as usize], State::Closing);
        self.last_seen_tick[slot as usize]
    }

    /// Closing → Free. The caller has released the stash and send queue.
    pub fn free(&mut self, slot: u32) {
        let i = slot as usize;
        assert_eq!(
            self.state[i],
            State::Closing,
            "free of slot {slot} not closing"
        );
        assert!(self.partial[i] == NONE && self.send_head[i] == NONE);
        self.state[i] = State::Free;
        self.flags[i] = 0;
        self.open_count -= 1;
        // Let the sweep stop early once the top slots are free.
        while self.high_water > 0 && self.state[self.high_water as usize - 1] == State::Free {
            self.high_water -= 1;
        }
    }

    pub fn is_current(&self, slot: u32, generation: u32) -> bool {
        (slot as usize) < self.state.len()
            && self.state[slot as usize] != State::Free
            && self.generation[slot as usize] == generation
    }

    pub fn has(&self, slot: u32, bit: u16) -> bool {
        self.flags[slot as usize] & bit != 0
    }

    pub fn set(&mut self, slot: u32, bit: u16) {
        self.flags[slot as usize] |= bit;
    }

    pub fn clear(&mut self, slot: u32, bit: u16) {
        self.flags[slot as usize] &= !bit;
    }

    /// Sets the peer address (from a PROXY header), if peers are kept.
    pub fn set_peer(&mut self, slot: u32, peer: SocketAddr) {
        let i = slot as usize;
        if !self.peer_ip.is_empty() {
            let (ip, port) = match peer {
                SocketAddr::V4(v4) => (u32::from(*v4.ip()), v4.port()),
                SocketAddr::V6(_) => (0, 0),
            };
            self.peer_ip[i] = ip;
            self.peer_port[i] = port;
        }
    }

    /// The peer address, if peers are kept (IPv4 only; IPv6 peers read as
    /// unspecified).
    pub fn peer(&self, slot: u32) -> Option<SocketAddr> {
        let i = slot as usize;
        (!self.peer_ip.is_empty()).then(|| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(self.peer_ip[i]),
                self.peer_port[i],
            ))
        })
    }
}

/// A session id names one connection for its lifetime: shard (10 bits),
/// slot (22 bits), generation (32 bits). Derived, so it costs no storage.
pub fn session_id(shard: u16, slot: u32, generation: u32) -> u64 {
    debug_assert!(shard < 1 << 10 && slot < SLOTS_MAX);
    (u64::from(shard) << 54) | (u64::from(slot) << 32) | u64::from(generation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_and_high_water() {
        let mut t = ConnTable::new(8, true, 0);
        let g = t.open(3, 10, 300, Some("127.0.0.9:4000".parse().unwrap()));
        assert_eq!(g, 1);
        assert!(t.is_current(3, 1));
        assert_eq!(t.high_water(), 4);
        assert_eq!(t.peer(3), Some("127.0.0.9:4000".parse().unwrap()));
        t.begin_close(3, 12, Some(5));
        assert!(t.is_current(3, 1));
        assert_eq!(t.close_frame(3), Some((5, 0)));
        t.close_frame_sent(3, 4, false);
        assert_eq!(t.close_frame(3), Some((5, 4)));
        assert_eq!(t.closing_since_tick(3), 12);
        t.close_frame_sent(3, 6, true);
        assert_eq!(t.close_frame(3), None);
        t.free(3);
        assert!(!t.is_current(3, 1));
        assert_eq!(t.high_water(), 0);
        assert_eq!(t.open(3, 11, 300, None), 2, "generation advances on reuse");
    }

    #[test]
    fn bytes_per_slot_within_budget() {
        const _: () = assert!(BYTES_PER_SLOT <= 32);
        let t = ConnTable::new(1000, false, 0);
        assert_eq!(t.bytes(), 1000 * BYTES_PER_SLOT);
    }

    #[test]
    fn sessions_differ_by_each_part() {
        let a = session_id(1, 2, 3);
        assert_ne!(a, session_id(0, 2, 3));
        assert_ne!(a, session_id(1, 3, 3));
        assert_ne!(a, session_id(1, 2, 4));
    }

    #[test]
    #[should_panic(expected = "open of busy slot")]
    fn double_open_is_a_crash() {
        let mut t = ConnTable::new(2, false, 0);
        t.open(0, 0, 1, None);
        t.open(0, 0, 1, None);
    }
}
