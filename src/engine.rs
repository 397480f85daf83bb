//! The sans-IO shard core: bytes and ticks in, replies, closes, events and
//! control messages out. It owns the flat [`ConnTable`] and the partial-frame
//! stash and applies every rule of PROTOCOL.md; the io_uring driver
//! (`shard`) only moves bytes. Tests drive it with a simulated clock.
//!
//! Frames are parsed in place from the receive buffer; only an incomplete
//! frame's header and fixed payload are copied (to the stash). DATA payload
//! and CLOSE text are skipped, never buffered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::conn_table::{flag, session_id, ConnTable, State, NONE};
use crate::events::{Event, EventKind, OfflineReason};
use crate::heartbeat::{self, Timing, Verdict};
use crate::protocol::{self, CloseReason, Header, Kind, ProtocolError, HEADER_LEN, PING_LEN};
use crate::registry::{Control, Holder};
use crate::send_pool::QueueError;
use crate::stash::{StashPool, KEEP_MAX};
use crate::stats::ShardStats;

/// What the engine asks of its driver.
pub trait Io {
    /// Queues `bytes` on the send queue whose head is `*head`.
    fn send(&mut self, slot: u32, head: &mut u32, bytes: &[u8]) -> Result<(), QueueError>;
    /// The slot entered Closing: drain its operations, then close it.
    /// `abort_send` drops queued bytes (the peer is not reading).
    fn close(&mut self, slot: u32, generation: u32, abort_send: bool);
    /// A control message for shard `to`.
    fn control(&mut self, to: u16, msg: Control);
    fn event(&mut self, event: Event);
}

/// Why the engine ends a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The server decides: send CLOSE(reason) first.
    Server(CloseReason),
    /// The peer sent CLOSE.
    PeerClose,
    /// EOF without CLOSE, or an I/O error.
    PeerGone,
    Reset,
    /// The peer does not read its replies (no CLOSE: it would not be read).
    SlowConsumer,
}

impl CloseCause {
    fn offline_reason(self) -> OfflineReason {
        match self {
            CloseCause::Server(r) => match r {
                CloseReason::Normal => OfflineReason::Normal,
                CloseReason::Timeout => OfflineReason::Timeout,
                CloseReason::ProtocolError => OfflineReason::ProtocolError,
                CloseReason::FrameTooLarge => OfflineReason::FrameTooLarge,
                CloseReason::TakenOver => OfflineReason::TakenOver,
                CloseReason::Shutdown => OfflineReason::Shutdown,
                CloseReason::Overloaded => OfflineReason::Overloaded,
                CloseReason::Unauthorized => OfflineReason::Unauthorized,
                CloseReason::Limited => OfflineReason::Limited,
            },
            CloseCause::PeerClose => OfflineReason::Normal,
            CloseCause::PeerGone => OfflineReason::Closed,
            CloseCause::Reset => OfflineReason::Reset,
            CloseCause::SlowConsumer => OfflineReason::Overloaded,
        }
    }
}

/// Fixed settings of one shard's engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub shard: u16,
    pub shards: u16,
    pub timing: Timing,
    pub max_payload: u32,
    pub probe: bool,
    pub max_connections: u32,
    /// Whether online/offline events are wanted.
    pub events: bool,
}

/// One shard's protocol state.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    pub table: ConnTable,
    stash: StashPool,
    /// Live connections across all shards (for `max_connections`).
    live_total: Arc<AtomicU32>,
    pub stats: ShardStats,
    now_tick: u32,
    /// Monotonic nanoseconds since server start; probe PINGs carry it.
    now_ns: u64,
    verdicts: Vec<(u32, Verdict)>,
}

/// Moves bytes from `src` into `buf[*have..want]`.
fn fill(buf: &mut [u8], have: &mut usize, want: usize, src: &mut &[u8]) {
    let n = want.saturating_sub(*have).min(src.len());
    buf[*have..*have + n].copy_from_slice(&src[..n]);
    *have += n;
    *src = &src[n..];
}

/// Bytes of a frame the server keeps: header plus what it reads of the payload.
fn keep_len(h: Header) -> usize {
    HEADER_LEN
        + match h.kind {
            Kind::Data => 0,
            Kind::Close => 2,
            k => k.fixed_len().expect("fixed kind"),
        }
}

const _: () = assert!(HEADER_LEN + protocol::WELCOME_LEN <= KEEP_MAX);

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        table: ConnTable,
        stash: StashPool,
        live_total: Arc<AtomicU32>,
        stats: ShardStats,
    ) -> Engine {
        Engine {
            cfg,
            table,
            stash,
            live_total,
            stats,
            now_tick: 0,
            now_ns: 0,
            verdicts: Vec::new(),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The driver sets the clock before handing in each batch of completions.
    pub fn set_clock(&mut self, now_tick: u32, now_ns: u64) {
        self.now_tick = now_tick;
        self.now_ns = now_ns;
    }

    pub fn now_tick(&self) -> u32 {
        self.now_tick
    }

    fn holder(&self, slot: u32) -> Holder {
        Holder {
            shard: self.cfg.shard,
            slot,
            generation: self.table.generation[slot as usize],
        }
    }

    fn session(&self, slot: u32) -> u64 {
        session_id(self.cfg.shard, slot, self.table.generation[slot as usize])
    }

    /// A new connection in `slot`. Returns its generation. At the global
    /// limit it is opened and at once closed with CLOSE(OVERLOADED).
    pub fn on_open(&mut self, slot: u32, peer: Option<SocketAddr>, io: &mut impl Io) -> u32 {
        let timeout_ticks = self.cfg.timing.default_negotiated().timeout_ticks;
        let generation = self.table.open(slot, self.now_tick, timeout_ticks, peer);
        self.stats.accepted.inc();
        self.stats.shard_connections.inc();
        self.stats.connections.inc();
        let live = self.live_total.fetch_add(1, Ordering::Relaxed) + 1;
        if live > self.cfg.max_connections {
            self.close(slot, CloseCause::Server(CloseReason::Overloaded), io);
        }
        generation
    }

    /// Received bytes for `slot`. Stops at the first protocol error.
    pub fn on_recv(&mut self, slot: u32, data: &[u8], io: &mut impl Io) {
        if self.table.state(slot) != State::Open {
            return;
        }
        let mut rest = data;
        if self.table.partial[slot as usize] != NONE {
            match self.feed_partial(slot, rest, io) {
                Some(r) => rest = r,
                None => return,
            }
        }
        while rest.len() >= HEADER_LEN && self.table.state(slot) == State::Open {
            let head: &[u8; HEADER_LEN] = rest[..HEADER_LEN].try_into().expect("8 bytes");
            let header = match protocol::parse_header(head, self.cfg.max_payload) {
                Ok(h) => h,
                Err(e) => return self.protocol_error(slot, e, io),
            };
            if rest.len() < header.frame_len() {
                break;
            }
            let payload = &rest[HEADER_LEN..keep_len(header)];
            rest = &rest[header.frame_len()..];
            self.on_frame(slot, header.kind, payload, io);
        }
        if !rest.is_empty() && self.table.state(slot) == State::Open {
            self.start_partial(slot, rest, io);
        }
    }

    /// Copies the start of an incomplete frame into a stash entry.
    fn start_partial(&mut self, slot: u32, bytes: &[u8], io: &mut impl Io) {
        let Some(index) = self.stash.alloc() else {
            self.stats.stash_exhausted.inc();
            return self.close(slot, CloseCause::Server(CloseReason::Overloaded), io);
        };
        self.table.partial[slot as usize] = index;
        let rest = self.feed_partial(slot, bytes, io);
        debug_assert!(
            rest.is_none_or(|r| r.is_empty()),
            "a whole frame was left for the stash"
        );
    }

    /// Feeds bytes to the slot's incomplete frame. Returns the bytes after
    /// it once it completes, or `None` if all were consumed (or the
    /// connection closed).
    fn feed_partial<'a>(
        &mut self,
        slot: u32,
        mut bytes: &'a [u8],
        io: &mut impl Io,
    ) -> Option<&'a [u8]> {
        let index = self.table.partial[slot as usize];
        let mut p = *self.stash.get_mut(index);
        let mut have = usize::from(p.have);
        fill(&mut p.buf, &mut have, HEADER_LEN, &mut bytes);
        p.have = have as u8;
        if have < HEADER_LEN {
            *self.stash.get_mut(index) = p;
            return None;
        }
        let head: &[u8; HEADER_LEN] = p.buf[..HEADER_LEN].try_into().expect("8 bytes");
        let header = match protocol::parse_header(head, self.cfg.max_payload) {
            Ok(h) => h,
            Err(e) => {
                self.protocol_error(slot, e, io);
                return None;
            }
        };
        if !p.header_ok {
            p.header_ok = true;
            p.skip_left = (header.frame_len() - keep_len(header)) as u32;
        }
        fill(&mut p.buf, &mut have, keep_len(header), &mut bytes);
        p.have = have as u8;
        let skip = (p.skip_left as usize).min(bytes.len());
        p.skip_left -= skip as u32;
        bytes = &bytes[skip..];
        if have < keep_len(header) || p.skip_left > 0 {
            *self.stash.get_mut(index) = p;
            return None;
        }
        self.release_partial(slot);
        self.on_frame(slot, header.kind, &p.buf[HEADER_LEN..keep_len(header)], io);
        (self.table.state(slot) == State::Open).then_some(bytes)
    }

    fn release_partial(&mut self, slot: u32) {
        let index = std::mem::replace(&mut self.table.partial[slot as usize], NONE);
        if index != NONE {
            self.stash.release(index);
        }
    }

    /// One complete, valid frame. `payload` is what the server keeps of it.
    fn on_frame(&mut self, slot: u32, kind: Kind, payload: &[u8], io: &mut impl Io) {
        let first = !self.table.has(slot, flag::SEEN_FRAME);
        self.stats.frame(kind);
        let i = slot as usize;
        self.table.last_seen_tick[i] = self.now_tick;
        self.table.clear(slot, flag::PROBED);
        self.table.set(slot, flag::SEEN_FRAME);
        match kind {
            Kind::Hello if first => return self.on_hello(slot, payload, io),
            Kind::Hello => return self.protocol_error(slot, ProtocolError::UnexpectedHello, io),
            Kind::Welcome => {
                return self.protocol_error(slot, ProtocolError::WrongDirection(kind), io)
            }
            Kind::Ping => {
                let echo: [u8; PING_LEN] = payload.try_into().expect("fixed length");
                self.reply(slot, &protocol::pong_frame(echo), io);
            }
            Kind::Pong => self.on_pong(payload),
            Kind::Data => {}
            Kind::Close => return self.close(slot, CloseCause::PeerClose, io),
        }
        // The reply may have closed it (a peer that does not read): then it
        // never goes online, so no offline event follows either.
        if first && self.table.state(slot) == State::Open {
            self.go_online(slot, io);
        }
    }

    fn on_hello(&mut self, slot: u32, payload: &[u8], io: &mut impl Io) {
        let client_id = u64::from_be_bytes(payload[..8].try_into().expect("12 bytes"));
        let requested_ms = u32::from_be_bytes(payload[8..12].try_into().expect("12 bytes"));
        let n = self.cfg.timing.negotiate(requested_ms);
        self.table.timeout_ticks[slot as usize] = n.timeout_ticks;
        let welcome = protocol::welcome_frame(self.session(slot), n.interval_ms, n.timeout_ms);
        self.reply(slot, &welcome, io);
        if self.table.state(slot) != State::Open {
            return;
        }
        if client_id == 0 {
            return self.go_online(slot, io);
        }
        self.table.client_id[slot as usize] = client_id;
        self.table.set(slot, flag::CLAIMED);
        let home = crate::registry::home_shard(client_id, usize::from(self.cfg.shards));
        io.control(
            home,
            Control::Claim {
                client_id,
                holder: self.holder(slot),
            },
        );
    }

    fn on_pong(&mut self, payload: &[u8]) {
        let sent_ns = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
        if let Some(rtt_ns) = self.now_ns.checked_sub(sent_ns) {
            if rtt_ns < 3_600_000_000_000 {
                let _ = self.stats.rtt_us.record((rtt_ns / 1000).max(1));
            }
        }
    }

    fn go_online(&mut self, slot: u32, io: &mut impl Io) {
        self.table.set(slot, flag::ONLINE);
        if self.cfg.events {
            let peer = self.table.peer(slot);
            let id = self.table.client_id[slot as usize];
            io.event(Event::new(EventKind::Online, self.session(slot), id, peer));
        }
    }

    /// Queues a reply; a peer that does not read, or an empty pool, ends it.
    fn reply(&mut self, slot: u32, bytes: &[u8], io: &mut impl Io) {
        if self.table.has(slot, flag::PEER_DONE) {
            return;
        }
        match io.send(slot, &mut self.table.send_head[slot as usize], bytes) {
            Ok(()) => {}
            Err(QueueError::SlowConsumer) => self.close(slot, CloseCause::SlowConsumer, io),
            Err(QueueError::PoolExhausted) => {
                self.stats.send_pool_exhausted.inc();
                self.close(slot, CloseCause::SlowConsumer, io);
            }
        }
    }

    fn protocol_error(&mut self, slot: u32, e: ProtocolError, io: &mut impl Io) {
        tracing::debug!(shard = self.cfg.shard, slot, error = %e, "protocol error");
        self.stats.protocol_errors.inc();
        self.close(slot, CloseCause::Server(e.close_reason()), io);
    }

    /// Ends an open connection: CLOSE frame (if the cause sends one),
    /// registry release, offline event, counters; then the driver drains.
    pub fn close(&mut self, slot: u32, cause: CloseCause, io: &mut impl Io) {
        if self.table.state(slot) != State::Open {
            return;
        }
        if let CloseCause::Server(reason) = cause {
            let mut buf = [0u8; protocol::CONTROL_FRAME_MAX];
            let n = protocol::encode_close(reason.code(), reason.text(), &mut buf);
            if !self.table.has(slot, flag::PEER_DONE) {
                let head = &mut self.table.send_head[slot as usize];
                let _ = io.send(slot, head, &buf[..n]); // best effort
            }
        }
        if matches!(
            cause,
            CloseCause::PeerClose | CloseCause::PeerGone | CloseCause::Reset
        ) {
            self.table.set(slot, flag::PEER_DONE);
        }
        self.release_partial(slot);
        let reason = cause.offline_reason();
        self.stats.closed(reason);
        if self.table.has(slot, flag::CLAIMED) {
            let client_id = self.table.client_id[slot as usize];
            let home = crate::registry::home_shard(client_id, usize::from(self.cfg.shards));
            io.control(
                home,
                Control::Release {
                    client_id,
                    holder: self.holder(slot),
                },
            );
        }
        if self.table.has(slot, flag::ONLINE) && self.cfg.events {
            let mut ev = Event::new(
                EventKind::Offline,
                self.session(slot),
                self.table.client_id[slot as usize],
                self.table.peer(slot),
            );
            ev.reason = Some(reason.name());
            io.event(ev);
        }
        self.table.begin_close(slot);
        let abort = matches!(cause, CloseCause::SlowConsumer | CloseCause::Reset);
        io.close(slot, self.table.generation[slot as usize], abort);
    }

    /// The driver finished closing `slot`: it is free for reuse.
    pub fn on_closed(&mut self, slot: u32) {
        self.table.free(slot);
        self.stats.shard_connections.dec();
        self.stats.connections.dec();
        self.live_total.fetch_sub(1, Ordering::Relaxed);
    }

    /// One sweep: evict the stale, probe the quiet. Records its duration
    /// only when the driver passes one (the engine reads no clock).
    pub fn on_tick(&mut self, io: &mut impl Io) {
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        heartbeat::sweep(
            &self.table,
            self.now_tick,
            &self.cfg.timing,
            self.cfg.probe,
            &mut verdicts,
        );
        for &(slot, verdict) in &verdicts {
            match verdict {
                Verdict::Evict => {
                    self.stats.evicted.inc();
                    self.close(slot, CloseCause::Server(CloseReason::Timeout), io);
                }
                Verdict::Probe => {
                    self.table.set(slot, flag::PROBED);
                    self.stats.probes_sent.inc();
                    let ping = protocol::ping_frame(self.now_ns.to_be_bytes());
                    self.reply(slot, &ping, io);
                }
            }
        }
        self.verdicts = verdicts;
    }

    /// A control message from the plane.
    pub fn on_control(&mut self, msg: Control, io: &mut impl Io) {
        match msg {
            Control::Evict {
                client_id,
                old,
                new,
            } => {
                if self.table.is_current(old.slot, old.generation) {
                    // The registry already names `new`: no release for `old`.
                    self.table.clear(old.slot, flag::CLAIMED);
                    self.close(old.slot, CloseCause::Server(CloseReason::TakenOver), io);
                }
                io.control(
                    new.shard,
                    Control::Granted {
                        client_id,
                        holder: new,
                    },
                );
            }
            Control::Granted { holder, .. } => {
                let slot = holder.slot;
                if self.table.is_current(slot, holder.generation)
                    && self.table.state(slot) == State::Open
                    && !self.table.has(slot, flag::ONLINE)
                {
                    self.go_online(slot, io);
                }
            }
            Control::Claim { .. } | Control::Release { .. } | Control::Shutdown => {
                unreachable!("handled by the shard")
            }
        }
    }

    /// Closes every open connection with CLOSE(SHUTDOWN).
    pub fn shutdown(&mut self, io: &mut impl Io) {
        for slot in 0..self.table.high_water() {
            if self.table.state(slot) == State::Open {
                self.close(slot, CloseCause::Server(CloseReason::Shutdown), io);
            }
        }
    }
}
