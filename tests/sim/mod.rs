//! The simulated kernel the engine tests drive: it carries out the engine's
//! commands exactly as the shard does (sends leave or stall, cancels
//! complete, closes free the slot), so what the tests prove is what the
//! real driver does. Several engines stand in for shards, with the mailbox
//! delivered by the test (in any order). No sockets, no sleeps.
#![allow(dead_code, unused_imports)]

pub use std::collections::{HashMap, VecDeque};
pub use std::sync::atomic::AtomicU32;
pub use std::sync::Arc;

pub use proptest::prelude::*;
pub use ringbeat::conn_table::{flag, ConnTable, State};
pub use ringbeat::engine::{
    CloseCause, Command, Engine, EngineConfig, TokenCheck, CLOSE_LINGER_MS,
};
pub use ringbeat::events::{Event, EventKind};
pub use ringbeat::heartbeat::Timing;
pub use ringbeat::mailbox::ShardMsg;
pub use ringbeat::per_ip::PerIpLimit;
pub use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
pub use ringbeat::send_pool::{SendPool, GATHER_MAX};
pub use ringbeat::stash::HelloPool;
pub use ringbeat::stats::Stats;

pub const SLOTS: u32 = 64;
pub const HELLO_POOL: u32 = 4;
pub const TICK_MS: u32 = 100;

/// What the simulated kernel still owes the engine.
#[derive(Debug)]
pub enum Done {
    Send {
        slot: u32,
        generation: u32,
        bytes: Vec<u8>,
        close_frame: bool,
    },
    RecvCancelled {
        slot: u32,
        generation: u32,
    },
    Closed {
        slot: u32,
        generation: u32,
    },
}

/// One shard: its engine, its send pool and a simulated kernel.
pub struct Sim {
    pub e: Engine,
    pub stats: Arc<Stats>,
    pub sends: SendPool,
    /// Bytes each slot's peer has received.
    pub wire: HashMap<u32, Vec<u8>>,
    /// Completions to hand in (sends wait here while `stalled`).
    pub done: VecDeque<Done>,
    /// Peers do not read: sends stay in flight.
    pub stalled: bool,
    /// Slots whose descriptor was closed, in order.
    pub closed: Vec<u32>,
    pub events: Vec<Event>,
    /// Messages for other shards: (to, msg).
    pub outbox: VecDeque<(u16, ShardMsg)>,
}

pub fn timing(interval_ms: u32, timeout_ms: u32) -> Timing {
    Timing {
        tick_ms: TICK_MS,
        interval_ms,
        timeout_ms,
        min_interval_ms: 100,
        max_interval_ms: 3_600_000,
    }
}

impl Sim {
    pub fn new(shard: u16, shards: u16, timing: Timing, probe: bool, max: u32) -> Sim {
        Sim::with_pool(shard, shards, timing, probe, max, 256)
    }

    pub fn with_pool(
        shard: u16,
        shards: u16,
        timing: Timing,
        probe: bool,
        max: u32,
        chunks: u32,
    ) -> Sim {
        Sim::with(shard, shards, timing, probe, max, chunks, |_| {})
    }

    #[allow(clippy::too_many_arguments)]
    pub fn with(
        shard: u16,
        shards: u16,
        timing: Timing,
        probe: bool,
        max: u32,
        chunks: u32,
        tune: impl FnOnce(&mut EngineConfig),
    ) -> Sim {
        let stats = Arc::new(Stats::new());
        let mut cfg = EngineConfig {
            probe,
            max_connections: max,
            shard_limit: SLOTS - 4,
            events: true,
            ..EngineConfig::new(shard, shards, timing, SLOTS)
        };
        tune(&mut cfg);
        let e = Engine::new(
            cfg,
            ConnTable::new(SLOTS, true, 1),
            HelloPool::new(HELLO_POOL),
            Arc::new(AtomicU32::new(0)),
            stats.for_shard(shard),
        );
        Sim {
            e,
            stats,
            sends: SendPool::new(chunks),
            wire: HashMap::new(),
            done: VecDeque::new(),
            stalled: false,
            closed: Vec::new(),
            events: Vec::new(),
            outbox: VecDeque::new(),
        }
    }

    pub fn generation(&self, slot: u32) -> u32 {
        self.e.table().generation[slot as usize]
    }

    pub fn state(&self, slot: u32) -> State {
        self.e.table().state(slot)
    }

    pub fn at_tick(&mut self, tick: u32) {
        self.e
            .set_clock(tick, u64::from(tick) * u64::from(TICK_MS) * 1_000_000);
    }

    pub fn open(&mut self, slot: u32) {
        self.open_from(slot, None);
    }

    pub fn open_from(&mut self, slot: u32, peer: Option<std::net::SocketAddr>) {
        self.e.on_open(slot, peer, &mut self.sends);
        self.settle();
    }

    pub fn recv(&mut self, slot: u32, bytes: &[u8]) {
        let g = self.generation(slot);
        self.e.on_recv_data(slot, g, bytes, &mut self.sends);
        self.settle();
    }

    /// The armed receive ends with `result` (0 = EOF, or -errno).
    pub fn recv_end(&mut self, slot: u32, result: i32) {
        assert!(self.e.table().has(slot, flag::RECV_ARMED));
        let g = self.generation(slot);
        self.e.on_recv_end(slot, g, result, &mut self.sends);
        self.settle();
    }

    pub fn close(&mut self, slot: u32, cause: CloseCause) {
        self.e.close(slot, cause, &mut self.sends);
        self.settle();
    }

    /// A tick that runs on time.
    pub fn tick(&mut self, tick: u32) {
        self.tick_late(tick, tick);
    }

    /// A tick due at `due` that runs at `now`.
    pub fn tick_late(&mut self, now: u32, due: u32) {
        self.at_tick(now);
        self.e.on_tick(due, &mut self.sends);
        self.settle();
    }

    pub fn shutdown(&mut self) {
        self.e.shutdown(&mut self.sends);
        self.settle();
    }

    /// Carries out commands and hands in completions until nothing moves.
    pub fn settle(&mut self) {
        loop {
            let mut commands = Vec::new();
            self.e.take_commands(&mut commands, &mut self.sends);
            let moved = !commands.is_empty();
            for c in commands {
                self.carry_out(c);
            }
            if !moved && !self.complete_one() {
                return;
            }
        }
    }

    pub fn carry_out(&mut self, c: Command) {
        match c {
            Command::ArmRecv { .. } => {}
            Command::Send {
                slot,
                generation,
                head,
            } => {
                let mut pieces = [(0, 0); GATHER_MAX];
                let n = self.sends.start_send(head, &mut pieces);
                let arena = self.sends.arena();
                let bytes = pieces[..n]
                    .iter()
                    .flat_map(|&(at, len)| arena[at..at + len].to_vec())
                    .collect();
                self.done.push_back(Done::Send {
                    slot,
                    generation,
                    bytes,
                    close_frame: false,
                });
            }
            Command::SendClose {
                slot,
                generation,
                bytes,
            } => self.done.push_back(Done::Send {
                slot,
                generation,
                bytes: bytes.to_vec(),
                close_frame: true,
            }),
            Command::CancelRecv { slot, generation } => self
                .done
                .push_back(Done::RecvCancelled { slot, generation }),
            Command::CancelSend {
                slot, generation, ..
            } => self.cancel_send(slot, generation),
            Command::CloseFd { slot, generation } => {
                self.done.push_back(Done::Closed { slot, generation })
            }
            Command::Message { to, msg } if to == self.e.config().shard => self.deliver(msg),
            Command::Message { to, msg } => self.outbox.push_back((to, msg)),
            Command::Event(ev) => self.events.push(ev),
        }
    }

    pub fn cancel_send(&mut self, slot: u32, generation: u32) {
        let at = self.done.iter().position(|d| {
            matches!(d, Done::Send { slot: s, generation: g, .. } if *s == slot && *g == generation)
        });
        if let Some(Done::Send { close_frame, .. }) = at.and_then(|i| self.done.remove(i)) {
            let r = -libc::ECANCELED;
            self.e
                .on_send_done(slot, generation, r, close_frame, &mut self.sends);
        }
    }

    pub fn deliver(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Home(m) => self.e.on_home(m),
            ShardMsg::Holder(m) => self.e.on_holder(m, &mut self.sends),
            ShardMsg::Shutdown => self.e.shutdown(&mut self.sends),
            ShardMsg::Fail => panic!("the engine never sends Fail (a driver-test message)"),
        }
    }

    /// Hands in the oldest completion that can happen now.
    pub fn complete_one(&mut self) -> bool {
        let ready = self
            .done
            .iter()
            .position(|d| !(self.stalled && matches!(d, Done::Send { .. })));
        let Some(d) = ready.and_then(|i| self.done.remove(i)) else {
            return false;
        };
        match d {
            Done::Send {
                slot,
                generation,
                bytes,
                close_frame,
            } => {
                self.wire.entry(slot).or_default().extend_from_slice(&bytes);
                let n = bytes.len() as i32;
                self.e
                    .on_send_done(slot, generation, n, close_frame, &mut self.sends);
            }
            Done::RecvCancelled { slot, generation } => {
                self.e
                    .on_recv_end(slot, generation, -libc::ECANCELED, &mut self.sends)
            }
            Done::Closed { slot, generation } => {
                self.closed.push(slot);
                self.e.on_closed(slot, generation);
            }
        }
        true
    }

    /// The peer starts reading again.
    pub fn unstall(&mut self) {
        self.stalled = false;
        self.settle();
    }

    /// Frames `slot`'s peer received so far (and forgets them).
    pub fn frames(&mut self, slot: u32) -> Vec<OwnedFrame> {
        let mut d = Decoder::new(1 << 20);
        d.feed(&self.wire.remove(&slot).unwrap_or_default());
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    pub fn metric(&self, series: &str) -> u64 {
        self.stats
            .render()
            .lines()
            .find_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                (name == series).then(|| value.parse::<f64>().ok())?
            })
            .map_or(0, |v| v as u64)
    }
}

/// One shard on a 10 s / 30 s timing.
pub fn one() -> Sim {
    Sim::new(0, 1, timing(10_000, 30_000), false, 1000)
}

pub fn close_reason(frames: &[OwnedFrame]) -> Option<u16> {
    frames.iter().find_map(|f| match f {
        OwnedFrame::Close { reason, .. } => Some(*reason),
        _ => None,
    })
}

/// Several shards; the test delivers their mailbox messages.
pub struct Cluster {
    pub shards: Vec<Sim>,
}

impl Cluster {
    pub fn new(n: u16) -> Cluster {
        let shards = (0..n)
            .map(|id| Sim::new(id, n, timing(10_000, 30_000), false, 1000))
            .collect();
        Cluster { shards }
    }

    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.outbox.len()).sum()
    }

    /// Delivers the oldest message queued by shard `from`, if any.
    pub fn deliver_from(&mut self, from: usize) {
        let Some((to, msg)) = self.shards[from].outbox.pop_front() else {
            return;
        };
        let target = &mut self.shards[usize::from(to)];
        target.deliver(msg);
        target.settle();
    }

    pub fn deliver_all(&mut self) {
        while self.pending() > 0 {
            for from in 0..self.shards.len() {
                self.deliver_from(from);
            }
        }
    }

    /// Open connections that were welcomed, per client_id.
    pub fn welcomed_holders(&self) -> HashMap<u64, usize> {
        let mut count = HashMap::new();
        for s in &self.shards {
            let t = s.e.table();
            for slot in 0..SLOTS {
                if t.state(slot) == State::Open && t.has(slot, flag::ONLINE) {
                    let id = t.client_id[slot as usize];
                    if id != 0 {
                        *count.entry(id).or_default() += 1;
                    }
                }
            }
        }
        count
    }
}
