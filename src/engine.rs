//! The sans-IO shard core: completions and ticks in, commands out. It is
//! the only writer of the flat [`ConnTable`], the partial-frame stash, the
//! shard's share of the `client_id` registry and the held input of paused
//! connections, and it owns every lifecycle (open, hello, pause, close,
//! drain, linger, shutdown), timed in ticks. The io_uring driver (`shard`)
//! reports what completed and carries out the [`Command`]s handed to it, the
//! way quinn-proto's `Connection` hands out transmits. Tests drive it with a
//! simulated clock and a simulated kernel.
//!
//! Frames are parsed in place from the receive buffer; only an incomplete
//! frame's header and fixed payload are copied (to the stash, see `input`).
//! DATA payload and CLOSE text are skipped, never buffered.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::conn_table::{flag, session_id, ConnTable, State, NONE};
use crate::events::OfflineReason;
use crate::heartbeat::{self, Timing, Verdict};
use crate::mailbox::{Holder, ShardMsg};
use crate::per_ip::PerIpLimit;
use crate::protocol::{self, CloseReason, Kind, ProtocolError, PING_LEN};
use crate::registry::Registry;
use crate::send_pool::{QueueError, SendPool};
use crate::stash::{HelloPool, Stash};
use crate::stats::ShardStats;

mod claim;
mod close;
mod command;
mod grace;
mod guard;
mod input;
mod kick;
mod pause;
mod phi;
mod proxy;

pub use close::{CLOSE_LINGER_MS, SWEEP_DEFER_MAX};
pub use command::Command;
pub use kick::{KickAck, KICK_WAITS_MAX};
pub use pause::{HELD_BYTES_MAX, HIGH_WATER_CHUNKS, LOW_WATER_CHUNKS};
pub use phi::sigmas_for;

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

    /// The peer will not read anything more from us.
    fn peer_done(self) -> bool {
        matches!(
            self,
            CloseCause::PeerClose | CloseCause::PeerGone | CloseCause::Reset
        )
    }

    /// Queued bytes are dropped, not flushed: the peer is not reading.
    fn abort_send(self) -> bool {
        matches!(self, CloseCause::SlowConsumer | CloseCause::Reset)
    }
}

/// Checks HELLO tokens (PROTOCOL.md, Authentication; implemented by
/// `auth::Authenticator`). The engine passes the wall clock it was given.
pub trait TokenCheck: Send + Sync + std::fmt::Debug {
    /// Whether every connection must prove its `client_id`.
    fn required(&self) -> bool;
    /// Whether `token` proves `client_id` at `now_unix_s`.
    fn verify(&self, client_id: u64, token: &[u8], now_unix_s: u64) -> bool;
}

/// Fixed settings of one shard's engine.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub shard: u16,
    pub shards: u16,
    pub timing: Timing,
    pub max_payload: u32,
    pub probe: bool,
    /// Live connections across all shards past which new ones are refused.
    pub max_connections: u32,
    /// Open or closing slots of this shard past which new connections are
    /// refused: the table's capacity less a reserve, so a refusal always
    /// has a slot to be answered from.
    pub shard_limit: u32,
    /// Whether online/offline events are wanted.
    pub events: bool,
    /// Receives are multishot (fast mode): a paused one must be cancelled.
    pub multishot_recv: bool,
    /// HELLO tokens are read and checked (`--auth`).
    pub auth: Option<Arc<dyn TokenCheck>>,
    /// Cluster mode: told when a kick's eviction is decided.
    pub kick_ack: Option<Arc<dyn KickAck>>,
    /// Connections per source address (`--max-conns-per-ip`).
    pub per_ip: Option<Arc<PerIpLimit>>,
    /// Takeovers of one `client_id` allowed per minute (burst
    /// [`crate::registry::TAKEOVER_BURST`]).
    pub takeovers_per_min: u32,
    /// How long an `offline` is held for a returning id (0: not held).
    pub offline_grace_ticks: u32,
    /// PINGs a second one connection may keep sending (0: no limit).
    pub max_ping_rate: u32,
    /// `Some(threshold)`: the phi accrual detector emits `suspect` events.
    pub phi_threshold: Option<f64>,
    /// Every connection starts with a PROXY protocol v2 header.
    pub proxy_protocol: bool,
}

impl EngineConfig {
    /// Shard `shard` of `shards` on `timing` with `slots` slots: default
    /// payload limit, no events, multishot receives, and every optional
    /// feature off (auth, limits, grace, phi, PROXY). Callers set what they
    /// need with struct update syntax.
    pub fn new(shard: u16, shards: u16, timing: Timing, slots: u32) -> EngineConfig {
        EngineConfig {
            shard,
            shards,
            timing,
            max_payload: protocol::DEFAULT_MAX_PAYLOAD,
            probe: false,
            max_connections: u32::MAX,
            shard_limit: slots,
            events: false,
            multishot_recv: true,
            auth: None,
            kick_ack: None,
            per_ip: None,
            takeovers_per_min: 0,
            offline_grace_ticks: 0,
            max_ping_rate: 0,
            phi_threshold: None,
            proxy_protocol: false,
        }
    }
}

/// One shard's protocol state.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    table: ConnTable,
    stash: Stash,
    hellos: HelloPool,
    registry: Registry,
    /// Cluster kicks waiting for their eviction: (client_id, ticket), at
    /// most [`KICK_WAITS_MAX`] (past it the oldest is answered at once).
    kick_waits: Vec<(u64, u64)>,
    grace: grace::Grace,
    ping_guard: Option<guard::PingGuard>,
    phi: Option<phi::Phi>,
    paused: pause::Paused,
    /// Live connections across all shards (for `max_connections`).
    live_total: Arc<AtomicU32>,
    pub stats: ShardStats,
    now_tick: u32,
    /// Monotonic nanoseconds since server start; probe PINGs carry it.
    now_ns: u64,
    /// Wall clock, for token expiry only.
    now_unix_s: u64,
    verdicts: Vec<(u32, Verdict)>,
    commands: Vec<Command>,
    /// Slots with replies queued since the last [`Engine::take_commands`].
    dirty: Vec<u32>,
    /// Closing slots, for the linger: (slot, generation).
    closing: Vec<(u32, u32)>,
    /// Receives that ended for lack of buffers: (slot, generation).
    starved: Vec<(u32, u32)>,
    /// Sweeps in a row whose evictions were deferred (the shard was late).
    deferred_in_row: u32,
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        table: ConnTable,
        hellos: HelloPool,
        live_total: Arc<AtomicU32>,
        stats: ShardStats,
    ) -> Engine {
        assert!(cfg.shard_limit <= table.capacity());
        let refill_ticks = match cfg.takeovers_per_min {
            0 => u32::MAX,
            n => cfg.timing.ticks(60_000 / n).max(1),
        };
        let ping_guard = (cfg.max_ping_rate > 0).then(|| {
            guard::PingGuard::new(table.capacity(), cfg.max_ping_rate, cfg.timing.tick_ms)
        });
        let phi = cfg
            .phi_threshold
            .map(|t| phi::Phi::new(table.capacity(), t));
        Engine {
            cfg,
            stash: Stash::new(table.capacity()),
            table,
            hellos,
            registry: Registry::new(refill_ticks),
            kick_waits: Vec::new(),
            grace: grace::Grace::default(),
            ping_guard,
            phi,
            paused: pause::Paused::default(),
            live_total,
            stats,
            now_tick: 0,
            now_ns: 0,
            now_unix_s: 0,
            verdicts: Vec::new(),
            commands: Vec::new(),
            dirty: Vec::new(),
            closing: Vec::new(),
            starved: Vec::new(),
            deferred_in_row: 0,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// The connection table (read-only: only the engine writes it).
    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    /// The shard's share of the `client_id` registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The driver sets the clock before handing in each batch of completions.
    pub fn set_clock(&mut self, now_tick: u32, now_ns: u64) {
        self.now_tick = now_tick;
        self.now_ns = now_ns;
    }

    /// The wall clock (seconds since the epoch), for token expiry.
    pub fn set_unix_time(&mut self, now_unix_s: u64) {
        self.now_unix_s = now_unix_s;
    }

    pub fn now_tick(&self) -> u32 {
        self.now_tick
    }

    /// Hands the driver everything asked of it since the last call, in
    /// order, starting the sends of connections with queued replies.
    pub fn take_commands(&mut self, out: &mut Vec<Command>, sends: &mut SendPool) {
        // Keep the buffer: taking it allocated a new one for the next
        // reply (about a fifth of a heartbeat's instructions, callgrind).
        let mut dirty = std::mem::take(&mut self.dirty);
        for &slot in &dirty {
            match self.table.state(slot) {
                State::Open => self.start_send(slot),
                State::Closing => self.try_finish_close(slot, sends),
                State::Free => {}
            }
        }
        dirty.clear();
        dirty.append(&mut self.dirty);
        self.dirty = dirty;
        debug_assert!(
            self.commands.len() <= 8 * self.table.capacity() as usize + 1024,
            "command queue unbounded"
        );
        out.append(&mut self.commands);
    }

    fn push(&mut self, command: Command) {
        self.commands.push(command);
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

    fn is_open(&self, slot: u32) -> bool {
        self.table.state(slot) == State::Open
    }

    fn arm_recv(&mut self, slot: u32) {
        debug_assert!(!self.table.has(slot, flag::RECV_ARMED));
        self.table.set(slot, flag::RECV_ARMED);
        let generation = self.table.generation[slot as usize];
        self.push(Command::ArmRecv { slot, generation });
    }

    /// Starts a send of an open slot's queue unless one is in flight.
    fn start_send(&mut self, slot: u32) {
        let head = self.table.send_head[slot as usize];
        if head == NONE || self.table.has(slot, flag::SEND_INFLIGHT | flag::PEER_DONE) {
            return;
        }
        self.table.set(slot, flag::SEND_INFLIGHT);
        let generation = self.table.generation[slot as usize];
        self.push(Command::Send {
            slot,
            generation,
            head,
        });
    }

    /// A new connection in `slot`. Returns its generation. Past a limit it
    /// is opened and at once closed with CLOSE(OVERLOADED).
    pub fn on_open(&mut self, slot: u32, peer: Option<SocketAddr>, sends: &mut SendPool) -> u32 {
        let timeout_ticks = self.cfg.timing.default_negotiated().timeout_ticks;
        let generation = self.table.open(slot, self.now_tick, timeout_ticks, peer);
        if let Some(guard) = &mut self.ping_guard {
            guard.open(slot, self.now_tick);
        }
        if let Some(phi) = &mut self.phi {
            phi.start(slot, self.cfg.timing.ticks(self.cfg.timing.interval_ms));
        }
        self.stats.accepted.inc();
        self.stats.shard_connections.inc();
        self.stats.connections.inc();
        let live = self.live_total.fetch_add(1, Ordering::Relaxed) + 1;
        if live > self.cfg.max_connections || self.table.open_count() > self.cfg.shard_limit {
            self.stats.refused_overloaded.inc();
            self.close(slot, CloseCause::Server(CloseReason::Overloaded), sends);
        } else if self.cfg.proxy_protocol {
            // Counted by address once the header names the real one.
            self.table.set(slot, flag::AWAIT_PROXY);
            self.arm_recv(slot);
        } else if !self.count_source(slot, peer) {
            self.stats.limited_ip.inc();
            self.close(slot, CloseCause::Server(CloseReason::Limited), sends);
        } else {
            self.arm_recv(slot);
        }
        generation
    }

    /// Counts the connection against its address's limit (IPv4 sources;
    /// IPv6 ones are not limited). False when the address is at its limit.
    pub(super) fn count_source(&mut self, slot: u32, peer: Option<SocketAddr>) -> bool {
        let (Some(limit), Some(SocketAddr::V4(v4))) = (&self.cfg.per_ip, peer) else {
            return true;
        };
        if !limit.try_acquire((*v4.ip()).into()) {
            return false;
        }
        self.table.set(slot, flag::IP_COUNTED);
        true
    }

    /// Releases what [`Engine::count_source`] counted for a closing slot.
    fn uncount_source(&mut self, slot: u32) {
        if !self.table.has(slot, flag::IP_COUNTED) {
            return;
        }
        self.table.clear(slot, flag::IP_COUNTED);
        if let (Some(limit), Some(peer)) = (&self.cfg.per_ip, self.table.peer(slot)) {
            limit.release(peer.ip());
        }
    }

    /// Bytes a receive delivered for `slot`. Stops at the first protocol
    /// error; held aside while the peer is not reading its replies.
    pub fn on_recv_data(&mut self, slot: u32, generation: u32, data: &[u8], sends: &mut SendPool) {
        if !self.table.is_current(slot, generation) || !self.is_open(slot) {
            return;
        }
        // The input a starved receive was waiting for has arrived.
        self.table.clear(slot, flag::RECV_STARVED);
        if self.should_hold(slot, sends) {
            return self.hold(slot, data, sends);
        }
        self.parse_input(slot, data, sends);
    }

    /// A receive ended (its last completion): `result` is the byte count of
    /// that completion, 0 for EOF, or `-errno`.
    pub fn on_recv_end(&mut self, slot: u32, generation: u32, result: i32, sends: &mut SendPool) {
        if !self.table.is_current(slot, generation) {
            return;
        }
        self.table
            .clear(slot, flag::RECV_ARMED | flag::RECV_STARVED);
        if !self.is_open(slot) {
            return self.try_finish_close(slot, sends);
        }
        match result {
            // Still open (data, or a cancel by a pause that may have ended):
            // go on unless input is held.
            r if r > 0 || r == -libc::ECANCELED => {
                if !self.paused.contains(slot) {
                    self.arm_recv(slot);
                }
            }
            r if r == -libc::ENOBUFS => {
                // Re-arming now would spin: the kernel has data and still
                // no buffer. Wait until buffers come back (`after_pass`).
                self.stats.recv_no_buffers.inc();
                self.table.set(slot, flag::RECV_STARVED);
                self.starved.push((slot, generation));
            }
            0 => self.close(slot, CloseCause::PeerGone, sends),
            r if r == -libc::ECONNRESET => self.close(slot, CloseCause::Reset, sends),
            // After the peer's FIN a reset reads as EPIPE: it had closed.
            r if r == -libc::EPIPE => self.close(slot, CloseCause::PeerGone, sends),
            r => {
                self.stats.io_errors.inc();
                tracing::debug!(slot, errno = -r, "recv failed");
                self.close(slot, CloseCause::PeerGone, sends);
            }
        }
    }

    /// End of one pass over a batch of completions: receives starved of
    /// buffers go again once buffers came back in this pass (with none
    /// back they would fail at once; then they wait for the tick).
    pub fn after_pass(&mut self, buffers_returned: bool) {
        if buffers_returned && !self.starved.is_empty() {
            self.rearm_starved();
        }
    }

    /// Re-arms receives that ended for lack of buffers. They stay marked
    /// starved until the re-armed receive reports: their input is still in
    /// the kernel, so the sweep must not evict them meanwhile.
    fn rearm_starved(&mut self) {
        for (slot, generation) in std::mem::take(&mut self.starved) {
            if !self.table.is_current(slot, generation) {
                continue;
            }
            let idle = !self.table.has(slot, flag::RECV_ARMED) && !self.paused.contains(slot);
            if self.is_open(slot) && idle {
                self.arm_recv(slot);
            } else {
                self.table.clear(slot, flag::RECV_STARVED);
            }
        }
    }

    /// One complete, valid frame. `payload` is what the server keeps of it.
    fn on_frame(&mut self, slot: u32, kind: Kind, payload: &[u8], sends: &mut SendPool) {
        let first = !self.table.has(slot, flag::SEEN_FRAME);
        self.stats.frame(kind);
        self.phi_frame(slot);
        self.table.last_seen_tick[slot as usize] = self.now_tick;
        self.table.clear(slot, flag::PROBED);
        self.table.set(slot, flag::SEEN_FRAME);
        if first && kind != Kind::Hello && self.cfg.auth.as_ref().is_some_and(|a| a.required()) {
            self.stats.unauthorized.inc();
            return self.close(slot, CloseCause::Server(CloseReason::Unauthorized), sends);
        }
        match kind {
            Kind::Hello if first => return self.on_hello(slot, payload, sends),
            Kind::Hello => return self.protocol_error(slot, ProtocolError::UnexpectedHello, sends),
            Kind::Welcome => {
                return self.protocol_error(slot, ProtocolError::WrongDirection(kind), sends)
            }
            Kind::Ping if !self.ping_allowed(slot, sends) => return,
            Kind::Ping => {
                let echo: [u8; PING_LEN] = payload.try_into().expect("fixed length");
                self.reply(slot, &protocol::pong_frame(echo), sends);
            }
            Kind::Pong => self.on_pong(payload),
            Kind::Data => {}
            Kind::Close => return self.close(slot, CloseCause::PeerClose, sends),
        }
        // The reply may have closed it (a peer that does not read): then it
        // never goes online, so no offline event follows either.
        if first && self.is_open(slot) {
            self.go_online(slot);
        }
    }

    fn on_pong(&mut self, payload: &[u8]) {
        let sent_ns = u64::from_be_bytes(payload.try_into().expect("8 bytes"));
        if let Some(rtt_ns) = self.now_ns.checked_sub(sent_ns) {
            if rtt_ns < 3_600_000_000_000 {
                let _ = self.stats.rtt_us.record((rtt_ns / 1000).max(1));
            }
        }
    }

    fn message(&mut self, to: u16, msg: ShardMsg) {
        self.push(Command::Message { to, msg });
    }

    /// Queues a reply; a peer that does not read, or an empty pool, ends it.
    fn reply(&mut self, slot: u32, bytes: &[u8], sends: &mut SendPool) {
        if self.table.has(slot, flag::PEER_DONE) {
            return;
        }
        match sends.queue(&mut self.table.send_head[slot as usize], bytes) {
            Ok(()) => self.dirty.push(slot),
            Err(QueueError::SlowConsumer) => self.close(slot, CloseCause::SlowConsumer, sends),
            Err(QueueError::PoolExhausted) => {
                // The shard, not this peer, ran short: tell it (the CLOSE
                // frame needs no pool) rather than drop it silently.
                self.stats.send_pool_exhausted.inc();
                self.close(slot, CloseCause::Server(CloseReason::Overloaded), sends);
            }
        }
    }

    fn protocol_error(&mut self, slot: u32, e: ProtocolError, sends: &mut SendPool) {
        tracing::debug!(shard = self.cfg.shard, slot, error = %e, "protocol error");
        self.stats.protocol_errors.inc();
        self.close(slot, CloseCause::Server(e.close_reason()), sends);
    }

    /// One tick: closes that lingered too long give up, paused peers that
    /// never read are closed, starved receives go again, then the sweep
    /// evicts the stale and probes the quiet. `due_tick` is the tick this
    /// sweep was due at: a shard running late defers its evictions (see
    /// [`SWEEP_DEFER_MAX`]).
    pub fn on_tick(&mut self, due_tick: u32, sends: &mut SendPool) {
        self.expire_lingering(sends);
        self.expire_paused(sends);
        if !self.grace.is_empty() {
            self.release_expired_offline();
        }
        self.rearm_starved();
        let mut verdicts = std::mem::take(&mut self.verdicts);
        verdicts.clear();
        heartbeat::sweep(
            &self.table,
            self.now_tick,
            &self.cfg.timing,
            self.cfg.probe,
            &mut verdicts,
        );
        let defer = self.defer_evictions(due_tick);
        for &(slot, verdict) in &verdicts {
            match verdict {
                Verdict::Evict if defer || self.input_waiting(slot) => {}
                Verdict::Evict => {
                    self.stats.evicted.inc();
                    self.close(slot, CloseCause::Server(CloseReason::Timeout), sends);
                }
                Verdict::Probe => {
                    self.table.set(slot, flag::PROBED);
                    self.stats.probes_sent.inc();
                    let ping = protocol::ping_frame(self.now_ns.to_be_bytes());
                    self.reply(slot, &ping, sends);
                }
            }
        }
        self.verdicts = verdicts;
        self.phi_sweep();
    }

    /// Closes every open connection with CLOSE(SHUTDOWN) and emits every
    /// `offline` held for the grace.
    pub fn shutdown(&mut self, sends: &mut SendPool) {
        for slot in 0..self.table.high_water() {
            if self.is_open(slot) {
                self.close(slot, CloseCause::Server(CloseReason::Shutdown), sends);
            }
        }
        self.flush_held_offline();
    }

    /// `offline` events held for the grace on this (home) shard.
    pub fn held_offline(&self) -> usize {
        self.grace.len()
    }
}
