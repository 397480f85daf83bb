//! The engine target's world: two engines behind a recording fake driver,
//! their registries, the inputs the fuzzer picks, and the model the
//! invariants are checked against.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ringbeat::conn_table::{flag, session_id, ConnTable, State, NONE};
use ringbeat::engine::{CloseCause, Engine, EngineConfig, Io};
use ringbeat::events::{Event, EventKind};
use ringbeat::heartbeat::Timing;
use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use ringbeat::registry::{Control, Registry};
use ringbeat::send_pool::QueueError;
use ringbeat::stash::StashPool;
use ringbeat::stats::Stats;

pub const SHARDS: u16 = 2;
/// Slots per shard: few, so slots are reused and ids collide.
pub const SLOTS: u32 = 8;
/// Steps per input, so one input stays fast.
pub const STEPS_MAX: usize = 400;
const MAX_PAYLOAD: u32 = 1024;
/// Client ids 0 (anonymous) to 3: takeovers are frequent.
const IDS: u8 = 4;

/// Records what an engine asked its driver for.
#[derive(Default)]
pub struct FakeIo {
    control: VecDeque<(u16, Control)>,
    events: Vec<Event>,
    /// (slot, generation) of each close request, in order.
    closed: Vec<(u32, u32)>,
    refuse_sends: bool,
}

impl Io for FakeIo {
    fn send(&mut self, _slot: u32, _head: &mut u32, _bytes: &[u8]) -> Result<(), QueueError> {
        if self.refuse_sends {
            return Err(QueueError::SlowConsumer);
        }
        Ok(())
    }
    fn close(&mut self, slot: u32, generation: u32, _abort_send: bool) {
        self.closed.push((slot, generation));
    }
    fn control(&mut self, to: u16, msg: Control) {
        self.control.push_back((to, msg));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// A frame the fuzzer may send; `Raw` covers everything else.
#[derive(Arbitrary, Debug, Clone)]
pub enum Wire {
    Hello { id: u8, interval_ms: u16 },
    Ping,
    Pong,
    Data { len: u8 },
    Close { reason: u8 },
    Welcome,
    Raw(Vec<u8>),
}

/// How the peer goes away.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Gone {
    PeerGone,
    Reset,
    SlowConsumer,
}

/// One input step.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    Open {
        shard: u8,
        slot: u8,
    },
    /// `wire` arrives in two reads, cut after `cut` bytes.
    Recv {
        shard: u8,
        slot: u8,
        wire: Wire,
        cut: u8,
    },
    Tick {
        ticks: u8,
    },
    PeerGone {
        shard: u8,
        slot: u8,
        how: Gone,
    },
    /// The driver finished closing the slot.
    Closed {
        shard: u8,
        slot: u8,
    },
    Deliver {
        from: u8,
    },
    DeliverAll,
    RefuseSends {
        shard: u8,
        on: bool,
    },
    Shutdown {
        shard: u8,
    },
}

fn encode(wire: &Wire) -> Vec<u8> {
    match wire {
        Wire::Hello { id, interval_ms } => {
            protocol::hello_frame(u64::from(id % IDS), u32::from(*interval_ms) * 10).to_vec()
        }
        Wire::Ping => protocol::ping_frame([7; 8]).to_vec(),
        Wire::Pong => protocol::pong_frame([9; 8]).to_vec(),
        Wire::Data { len } => {
            protocol::data_frame(&vec![1; usize::from(*len)], MAX_PAYLOAD).expect("under the limit")
        }
        Wire::Close { reason } => {
            protocol::close_frame(CloseReason::ALL[usize::from(*reason) % 7], "bye")
        }
        Wire::Welcome => protocol::welcome_frame(1, 1000, 3000).to_vec(),
        Wire::Raw(bytes) => bytes.clone(),
    }
}

fn timing() -> Timing {
    Timing {
        tick_ms: 100,
        interval_ms: 1_000,
        timeout_ms: 3_000,
        min_interval_ms: 100,
        max_interval_ms: 60_000,
    }
}

/// What the model knows of one slot.
struct SlotModel {
    state: State,
    generation: u32,
    /// Tick of the last complete frame (or of the open).
    last_seen_tick: u32,
    timeout_ticks: u32,
    /// The model's own reassembly of what the peer sent.
    decoder: Decoder,
    hello_seen: bool,
}

/// Online/offline events seen for one session, and whether it closed.
#[derive(Default, Clone, Copy)]
struct SessionLog {
    online: u32,
    offline: u32,
    closed: bool,
}

pub struct Cluster {
    shards: Vec<(Engine, Registry, FakeIo)>,
    live_total: Arc<AtomicU32>,
    slots: Vec<Vec<SlotModel>>,
    sessions: HashMap<u64, SessionLog>,
    now_tick: u32,
}

impl Cluster {
    pub fn new() -> Cluster {
        let live_total = Arc::new(AtomicU32::new(0));
        let stats = Stats::new();
        let shards = (0..SHARDS)
            .map(|shard| {
                let cfg = EngineConfig {
                    shard,
                    shards: SHARDS,
                    timing: timing(),
                    max_payload: MAX_PAYLOAD,
                    probe: false,
                    // Below the slots of both shards: OVERLOADED is reached.
                    max_connections: SLOTS * u32::from(SHARDS) - 4,
                    events: true,
                };
                let table = ConnTable::new(SLOTS, true, 1);
                let stash = StashPool::new(SLOTS);
                let e = Engine::new(
                    cfg,
                    table,
                    stash,
                    live_total.clone(),
                    stats.for_shard(shard),
                );
                (e, Registry::default(), FakeIo::default())
            })
            .collect();
        let free = || SlotModel {
            state: State::Free,
            generation: 0,
            last_seen_tick: 0,
            timeout_ticks: 0,
            decoder: Decoder::new(MAX_PAYLOAD),
            hello_seen: false,
        };
        Cluster {
            shards,
            live_total,
            slots: (0..SHARDS)
                .map(|_| (0..SLOTS).map(|_| free()).collect())
                .collect(),
            sessions: HashMap::new(),
            now_tick: 0,
        }
    }

    pub fn apply(&mut self, step: Step) {
        let pick = |shard: u8, slot: u8| (usize::from(shard) % 2, u32::from(slot) % SLOTS);
        match step {
            Step::Open { shard, slot } => {
                let (s, slot) = pick(shard, slot);
                self.open(s, slot);
            }
            Step::Recv {
                shard,
                slot,
                wire,
                cut,
            } => {
                let (s, slot) = pick(shard, slot);
                let bytes = encode(&wire);
                let (a, b) = bytes.split_at(usize::from(cut).min(bytes.len()));
                self.recv(s, slot, a);
                self.recv(s, slot, b);
            }
            Step::Tick { ticks } => self.tick(u32::from(ticks)),
            Step::PeerGone { shard, slot, how } => {
                let (s, slot) = pick(shard, slot);
                let cause = match how {
                    Gone::PeerGone => CloseCause::PeerGone,
                    Gone::Reset => CloseCause::Reset,
                    Gone::SlowConsumer => CloseCause::SlowConsumer,
                };
                let (e, _, io) = &mut self.shards[s];
                e.close(slot, cause, io);
            }
            Step::Closed { shard, slot } => {
                let (s, slot) = pick(shard, slot);
                if self.slots[s][slot as usize].state == State::Closing {
                    self.shards[s].0.on_closed(slot);
                    self.slots[s][slot as usize].state = State::Free;
                }
            }
            Step::Deliver { from } => self.deliver_from(usize::from(from) % 2),
            Step::DeliverAll => {
                while self.shards.iter().any(|s| !s.2.control.is_empty()) {
                    self.deliver_from(0);
                    self.deliver_from(1);
                }
            }
            Step::RefuseSends { shard, on } => {
                self.shards[usize::from(shard) % 2].2.refuse_sends = on
            }
            Step::Shutdown { shard } => {
                let (e, _, io) = &mut self.shards[usize::from(shard) % 2];
                e.shutdown(io);
            }
        }
        self.absorb_io();
    }

    fn open(&mut self, s: usize, slot: u32) {
        if self.slots[s][slot as usize].state != State::Free {
            return;
        }
        let (e, _, io) = &mut self.shards[s];
        let generation = e.on_open(slot, None, io);
        let m = &mut self.slots[s][slot as usize];
        *m = SlotModel {
            state: State::Open,
            generation,
            last_seen_tick: self.now_tick,
            timeout_ticks: timing().default_negotiated().timeout_ticks,
            decoder: Decoder::new(MAX_PAYLOAD),
            hello_seen: false,
        };
        let session = session_id(s as u16, slot, generation);
        assert!(self
            .sessions
            .insert(session, SessionLog::default())
            .is_none());
    }

    /// One read: the engine parses it, the model reassembles it alongside.
    fn recv(&mut self, s: usize, slot: u32, bytes: &[u8]) {
        let (e, _, io) = &mut self.shards[s];
        e.on_recv(slot, bytes, io);
        let m = &mut self.slots[s][slot as usize];
        if m.state != State::Open {
            return;
        }
        m.decoder.feed(bytes);
        while let Ok(Some(frame)) = m.decoder.next_frame() {
            m.last_seen_tick = self.now_tick;
            if let OwnedFrame::Hello { interval_ms, .. } = frame {
                if !m.hello_seen {
                    m.timeout_ticks = timing().negotiate(interval_ms).timeout_ticks;
                }
            }
            m.hello_seen = true; // HELLO counts only as the first frame
        }
    }

    fn tick(&mut self, ticks: u32) {
        self.now_tick += ticks;
        let now_ns = u64::from(self.now_tick) * 100_000_000;
        for s in 0..usize::from(SHARDS) {
            let (e, _, io) = &mut self.shards[s];
            e.set_clock(self.now_tick, now_ns);
            e.on_tick(io);
            // Every close a sweep makes (no probes here) is an eviction.
            for &(slot, generation) in &io.closed {
                let m = &self.slots[s][slot as usize];
                assert_eq!(m.generation, generation);
                let age = self.now_tick - m.last_seen_tick;
                assert!(
                    age > m.timeout_ticks,
                    "shard {s} slot {slot} evicted at age {age} ticks, timeout {}",
                    m.timeout_ticks
                );
            }
            self.absorb_io();
            for (slot, m) in self.slots[s].iter().enumerate() {
                if m.state == State::Open {
                    let age = self.now_tick - m.last_seen_tick;
                    assert!(age <= m.timeout_ticks, "slot {slot} missed: age {age}");
                }
            }
        }
    }

    /// Delivers the oldest control message queued by shard `from`.
    fn deliver_from(&mut self, from: usize) {
        let Some((to, msg)) = self.shards[from].2.control.pop_front() else {
            return;
        };
        let (engine, registry, io) = &mut self.shards[usize::from(to)];
        match msg {
            Control::Claim { client_id, holder } => {
                let routed = registry.claim(client_id, holder);
                io.control.push_back(routed);
            }
            Control::Release { client_id, holder } => registry.release(client_id, holder),
            msg => engine.on_control(msg, io),
        }
    }
}

impl Cluster {
    /// Takes in what the engines emitted: events, then close requests.
    fn absorb_io(&mut self) {
        for s in 0..usize::from(SHARDS) {
            for ev in std::mem::take(&mut self.shards[s].2.events) {
                let log = self
                    .sessions
                    .get_mut(&ev.session)
                    .expect("event of a known session");
                assert!(!log.closed, "event after the close: {ev:?}");
                match ev.event {
                    EventKind::Online => {
                        assert_eq!((log.online, log.offline), (0, 0), "second online: {ev:?}");
                        log.online = 1;
                    }
                    EventKind::Offline => {
                        assert_eq!((log.online, log.offline), (1, 0), "offline: {ev:?}");
                        log.offline = 1;
                    }
                }
            }
            for (slot, generation) in std::mem::take(&mut self.shards[s].2.closed) {
                let m = &mut self.slots[s][slot as usize];
                assert_eq!(m.state, State::Open, "close of slot {slot} not open");
                assert_eq!(m.generation, generation, "close of a stale generation");
                m.state = State::Closing;
                let log = self
                    .sessions
                    .get_mut(&session_id(s as u16, slot, generation));
                let log = log.expect("close of a known session");
                assert!(!log.closed, "slot {slot} closed twice");
                log.closed = true;
                assert_eq!(log.offline, log.online, "a close without its offline event");
            }
        }
    }

    /// The invariants that hold between any two steps.
    pub fn check(&self) {
        let mut holders: HashMap<u64, u32> = HashMap::new();
        let mut live = 0;
        for (s, (e, _, _)) in self.shards.iter().enumerate() {
            let mut open = 0;
            for slot in 0..SLOTS {
                let m = &self.slots[s][slot as usize];
                let state = e.table.state(slot);
                assert_eq!(state, m.state, "shard {s} slot {slot}");
                let i = slot as usize;
                if state == State::Free {
                    assert_eq!(e.table.flags[i], 0, "free slot {slot} has flags");
                    assert_eq!(
                        e.table.partial[i], NONE,
                        "free slot {slot} holds a stash entry"
                    );
                    continue;
                }
                open += 1;
                assert_eq!(e.table.generation[i], m.generation);
                let log = self.sessions[&session_id(s as u16, slot, m.generation)];
                if state == State::Open {
                    assert_eq!(log.offline, 0, "offline event for an open slot {slot}");
                    assert_eq!(e.table.has(slot, flag::ONLINE), log.online == 1);
                    let id = e.table.client_id[i];
                    if id != 0 && e.table.has(slot, flag::ONLINE) {
                        *holders.entry(id).or_default() += 1;
                    }
                }
            }
            assert_eq!(e.table.open_count(), open, "shard {s} open count");
            live += open;
        }
        assert_eq!(self.live_total.load(Ordering::Relaxed), live, "live total");
        for (id, n) in holders {
            assert!(n <= 1, "client_id {id} has {n} live holders");
        }
    }
}
