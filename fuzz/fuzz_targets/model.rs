//! The engine target's world: two engines, each with a send pool and a
//! simulated kernel that carries out its commands the way the shard does
//! (tests/engine.rs's `Sim`), except that the fuzzer decides when each
//! completion and each cross-shard message arrives. It also keeps the model
//! the invariants are checked against.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ringbeat::conn_table::{flag, session_id, ConnTable, State};
use ringbeat::engine::{CloseCause, Command, Engine, EngineConfig};
use ringbeat::events::EventKind;
use ringbeat::heartbeat::Timing;
use ringbeat::mailbox::ShardMsg;
use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use ringbeat::send_pool::{SendPool, GATHER_MAX};
use ringbeat::stash::HelloPool;
use ringbeat::stats::Stats;

pub const SHARDS: u16 = 2;
/// Slots per shard: few, so slots are reused and ids collide.
pub const SLOTS: u32 = 8;
/// Steps per input, so one input stays fast.
pub const STEPS_MAX: usize = 400;
const MAX_PAYLOAD: u32 = 1024;
/// Client ids 0 (anonymous) to 3: takeovers are frequent.
const IDS: u8 = 4;
/// A known engine bug, skipped until its fix lands: a WELCOME split across
/// reads is taken for a HELLO (tests/fuzz_regressions.rs, ignored there
/// until then). Set to false with the fix.
const SKIP_SPLIT_WELCOME: bool = false;
const WELCOME_HEAD: [u8; 3] = [protocol::MAGIC, protocol::VERSION, 2];

/// Whether a read would leave the engine a partial WELCOME to assemble:
/// `tail` is what the peer sent before that is not a whole frame yet.
fn splits_welcome(tail: &[u8], rest: &[u8]) -> bool {
    if !tail.is_empty() && rest.starts_with(&WELCOME_HEAD) {
        return true;
    }
    let mut d = Decoder::new(MAX_PAYLOAD);
    d.feed(rest);
    while let Ok(Some(_)) = d.next_frame() {}
    let left = &rest[rest.len() - d.pending()..];
    left.len() >= protocol::HEADER_LEN && left.starts_with(&WELCOME_HEAD)
}

/// A frame the fuzzer may send; `Raw` covers everything else.
#[derive(Arbitrary, Debug, Clone)]
pub enum Wire {
    Hello { id: u8, interval_ms: u16 },
    Ping { times: u8 },
    Pong,
    Data { len: u8 },
    Close { reason: u8 },
    Welcome,
    Raw(Vec<u8>),
}

/// How a receive ends.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RecvEnd {
    Eof,
    Reset,
    NoBuffers,
    Error,
}

/// Why the driver ends a connection.
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
    RecvEnd {
        shard: u8,
        slot: u8,
        how: RecvEnd,
    },
    Close {
        shard: u8,
        slot: u8,
        how: Gone,
    },
    Tick {
        ticks: u8,
    },
    /// The kernel hands in up to `n` completions.
    Complete {
        shard: u8,
        n: u8,
    },
    /// Peers stop (or start) reading: sends stay in flight.
    Stall {
        shard: u8,
        on: bool,
    },
    AfterPass {
        shard: u8,
    },
    Deliver {
        from: u8,
    },
    Settle,
    Shutdown {
        shard: u8,
    },
}

fn encode(wire: &Wire) -> Vec<u8> {
    match wire {
        Wire::Hello { id, interval_ms } => {
            protocol::hello_frame(u64::from(id % IDS), u32::from(*interval_ms) * 10).to_vec()
        }
        Wire::Ping { times } => (0..=times % 64)
            .flat_map(|i| protocol::ping_frame([i; 8]))
            .collect(),
        Wire::Pong => protocol::pong_frame([9; 8]).to_vec(),
        Wire::Data { len } => {
            protocol::data_frame(&vec![1; usize::from(*len)], MAX_PAYLOAD).expect("under the limit")
        }
        Wire::Close { reason } => {
            let all = CloseReason::ALL;
            protocol::close_frame(all[usize::from(*reason) % all.len()], "bye")
        }
        Wire::Welcome => protocol::welcome_frame(1, 1000, 3000).to_vec(),
        Wire::Raw(bytes) => bytes.clone(),
    }
}

pub fn timing() -> Timing {
    Timing {
        tick_ms: 100,
        interval_ms: 1_000,
        timeout_ms: 3_000,
        min_interval_ms: 100,
        max_interval_ms: 60_000,
    }
}

/// What the simulated kernel still owes the engine.
#[derive(Debug)]
enum Done {
    Send {
        slot: u32,
        generation: u32,
        len: i32,
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

/// What the model knows of one slot.
pub struct SlotModel {
    pub busy: bool,
    pub generation: u32,
    /// Tick of the last complete frame the peer sent (or of the open).
    pub last_seen_tick: u32,
    pub timeout_ticks: u32,
    /// The model's own reassembly of what the peer sent.
    decoder: Decoder,
    /// What the peer sent that is not a whole frame yet.
    tail: Vec<u8>,
    seen_frame: bool,
}

impl SlotModel {
    fn free() -> SlotModel {
        SlotModel {
            busy: false,
            generation: 0,
            last_seen_tick: 0,
            timeout_ticks: 0,
            decoder: Decoder::new(MAX_PAYLOAD),
            tail: Vec::new(),
            seen_frame: false,
        }
    }
}

/// Online/offline events of one session, and whether its slot was freed.
#[derive(Default, Clone, Copy, Debug)]
pub struct SessionLog {
    pub online: u32,
    pub offline: u32,
    pub freed: bool,
}

/// One shard: its engine, send pool, simulated kernel and model.
pub struct Shard {
    pub e: Engine,
    sends: SendPool,
    done: VecDeque<Done>,
    stalled: bool,
    pub outbox: VecDeque<(u16, ShardMsg)>,
    pub slots: Vec<SlotModel>,
}

impl Shard {
    fn new(shard: u16, live_total: Arc<AtomicU32>, stats: &Stats) -> Shard {
        let cfg = EngineConfig {
            max_payload: MAX_PAYLOAD,
            // Below the slots of both shards: OVERLOADED is reached.
            max_connections: SLOTS * u32::from(SHARDS) - 4,
            shard_limit: SLOTS - 2,
            events: true,
            ..EngineConfig::new(shard, SHARDS, timing(), SLOTS)
        };
        let table = ConnTable::new(SLOTS, true, 1);
        let e = Engine::new(
            cfg,
            table,
            HelloPool::new(4),
            live_total,
            stats.for_shard(shard),
        );
        Shard {
            e,
            // Small: full queues, pauses and slow consumers happen.
            sends: SendPool::new(64),
            done: VecDeque::new(),
            stalled: false,
            outbox: VecDeque::new(),
            slots: (0..SLOTS).map(|_| SlotModel::free()).collect(),
        }
    }

    pub fn id(&self) -> u16 {
        self.e.config().shard
    }

    /// Carries out the engine's commands until it has none left.
    fn pump(&mut self, log: &mut Sessions) {
        loop {
            let mut commands = Vec::new();
            self.e.take_commands(&mut commands, &mut self.sends);
            if commands.is_empty() {
                return;
            }
            for c in commands {
                self.carry_out(c, log);
            }
        }
    }

    fn carry_out(&mut self, c: Command, log: &mut Sessions) {
        match c {
            Command::ArmRecv { .. } => {}
            Command::Send {
                slot,
                generation,
                head,
            } => {
                let mut pieces = [(0, 0); GATHER_MAX];
                let n = self.sends.start_send(head, &mut pieces);
                let len = pieces[..n].iter().map(|&(_, len)| len).sum::<usize>() as i32;
                self.done.push_back(Done::Send {
                    slot,
                    generation,
                    len,
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
                len: bytes.len() as i32,
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
            Command::Message { to, msg } if to == self.id() => self.deliver(msg),
            Command::Message { to, msg } => self.outbox.push_back((to, msg)),
            Command::Event(ev) => log.event(&ev.event, ev.session),
        }
    }

    fn cancel_send(&mut self, slot: u32, generation: u32) {
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
    fn complete_one(&mut self, log: &mut Sessions) -> bool {
        let stalled = self.stalled;
        let ready = self
            .done
            .iter()
            .position(|d| !(stalled && matches!(d, Done::Send { .. })));
        let Some(d) = ready.and_then(|i| self.done.remove(i)) else {
            return false;
        };
        match d {
            Done::Send {
                slot,
                generation,
                len,
                close_frame,
            } => self
                .e
                .on_send_done(slot, generation, len, close_frame, &mut self.sends),
            Done::RecvCancelled { slot, generation } => {
                self.e
                    .on_recv_end(slot, generation, -libc::ECANCELED, &mut self.sends)
            }
            Done::Closed { slot, generation } => {
                self.e.on_closed(slot, generation);
                let m = &mut self.slots[slot as usize];
                assert!(
                    m.busy && m.generation == generation,
                    "close of a stale slot"
                );
                m.busy = false;
                log.freed(session_id(self.id(), slot, generation));
            }
        }
        self.pump(log);
        true
    }
}

/// Every session's events.
#[derive(Default)]
pub struct Sessions(pub HashMap<u64, SessionLog>);

impl Sessions {
    fn event(&mut self, kind: &EventKind, session: u64) {
        let log = self.0.get_mut(&session).expect("event of a known session");
        assert!(!log.freed, "event after the slot was freed");
        match kind {
            EventKind::Online | EventKind::Resumed => {
                assert_eq!((log.online, log.offline), (0, 0), "second online");
                log.online = 1;
            }
            EventKind::Offline => {
                assert_eq!((log.online, log.offline), (1, 0), "offline without online");
                log.offline = 1;
            }
            _ => {}
        }
    }

    fn freed(&mut self, session: u64) {
        let log = self.0.get_mut(&session).expect("freed a known session");
        assert!(!log.freed, "freed twice");
        assert_eq!(log.offline, log.online, "freed without its offline event");
        log.freed = true;
    }
}

pub struct Cluster {
    pub shards: Vec<Shard>,
    pub live_total: Arc<AtomicU32>,
    pub sessions: Sessions,
    pub now_tick: u32,
}

impl Cluster {
    pub fn new() -> Cluster {
        let live_total = Arc::new(AtomicU32::new(0));
        let stats = Stats::new();
        Cluster {
            shards: (0..SHARDS)
                .map(|s| Shard::new(s, live_total.clone(), &stats))
                .collect(),
            live_total,
            sessions: Sessions::default(),
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
            Step::RecvEnd { shard, slot, how } => {
                let (s, slot) = pick(shard, slot);
                self.recv_end(s, slot, how);
            }
            Step::Close { shard, slot, how } => {
                let (s, slot) = pick(shard, slot);
                let cause = match how {
                    Gone::PeerGone => CloseCause::PeerGone,
                    Gone::Reset => CloseCause::Reset,
                    Gone::SlowConsumer => CloseCause::SlowConsumer,
                };
                let sh = &mut self.shards[s];
                sh.e.close(slot, cause, &mut sh.sends);
                sh.pump(&mut self.sessions);
            }
            Step::Tick { ticks } => self.tick(u32::from(ticks)),
            Step::Complete { shard, n } => {
                let sh = &mut self.shards[usize::from(shard) % 2];
                for _ in 0..n % 16 {
                    if !sh.complete_one(&mut self.sessions) {
                        break;
                    }
                }
            }
            Step::Stall { shard, on } => self.shards[usize::from(shard) % 2].stalled = on,
            Step::AfterPass { shard } => {
                let sh = &mut self.shards[usize::from(shard) % 2];
                sh.e.after_pass(true);
                sh.pump(&mut self.sessions);
            }
            Step::Deliver { from } => self.deliver_from(usize::from(from) % 2),
            Step::Settle => self.settle(),
            Step::Shutdown { shard } => {
                let sh = &mut self.shards[usize::from(shard) % 2];
                sh.e.shutdown(&mut sh.sends);
                sh.pump(&mut self.sessions);
            }
        }
    }

    fn open(&mut self, s: usize, slot: u32) {
        let sh = &mut self.shards[s];
        if sh.slots[slot as usize].busy {
            return;
        }
        let session_of = |g| session_id(s as u16, slot, g);
        let generation = sh.e.table().generation[slot as usize].wrapping_add(1);
        // Registered first: the open may close it at once (OVERLOADED).
        let fresh = self
            .sessions
            .0
            .insert(session_of(generation), SessionLog::default());
        assert!(fresh.is_none(), "session id reused");
        let got = sh.e.on_open(slot, None, &mut sh.sends);
        assert_eq!(got, generation, "generations count up");
        sh.slots[slot as usize] = SlotModel {
            busy: true,
            generation,
            last_seen_tick: self.now_tick,
            timeout_ticks: timing().default_negotiated().timeout_ticks,
            ..SlotModel::free()
        };
        sh.pump(&mut self.sessions);
    }

    /// One read, as the kernel delivers it: only while a receive is armed.
    /// The model reassembles the same bytes alongside.
    fn recv(&mut self, s: usize, slot: u32, bytes: &[u8]) {
        let sh = &mut self.shards[s];
        let t = sh.e.table();
        if bytes.is_empty() || t.state(slot) != State::Open || !t.has(slot, flag::RECV_ARMED) {
            return;
        }
        let g = t.generation[slot as usize];
        let m = &mut sh.slots[slot as usize];
        let rest = [&m.tail[..], bytes].concat();
        if SKIP_SPLIT_WELCOME && splits_welcome(&m.tail, &rest) {
            return;
        }
        sh.e.on_recv_data(slot, g, bytes, &mut sh.sends);
        m.decoder.feed(bytes);
        while let Ok(Some(frame)) = m.decoder.next_frame() {
            m.last_seen_tick = self.now_tick;
            if let OwnedFrame::Hello { interval_ms, .. } = frame {
                if !m.seen_frame {
                    m.timeout_ticks = timing().negotiate(interval_ms).timeout_ticks;
                }
            }
            m.seen_frame = true; // HELLO counts only as the first frame
        }
        m.tail = rest[rest.len() - m.decoder.pending().min(rest.len())..].to_vec();
        sh.pump(&mut self.sessions);
    }

    fn recv_end(&mut self, s: usize, slot: u32, how: RecvEnd) {
        let sh = &mut self.shards[s];
        let t = sh.e.table();
        if t.state(slot) == State::Free || !t.has(slot, flag::RECV_ARMED) {
            return;
        }
        let g = t.generation[slot as usize];
        let result = match how {
            RecvEnd::Eof => 0,
            RecvEnd::Reset => -libc::ECONNRESET,
            RecvEnd::NoBuffers => -libc::ENOBUFS,
            RecvEnd::Error => -libc::EIO,
        };
        sh.e.on_recv_end(slot, g, result, &mut sh.sends);
        sh.pump(&mut self.sessions);
    }

    /// Time moves on; each shard's sweep runs on time.
    fn tick(&mut self, ticks: u32) {
        self.now_tick += ticks;
        let now_ns = u64::from(self.now_tick) * 100_000_000;
        for sh in &mut self.shards {
            let open: Vec<u32> = (0..SLOTS)
                .filter(|&slot| sh.e.table().state(slot) == State::Open)
                .collect();
            let evicted = sh.e.stats.evicted.get();
            let deferred = sh.e.stats.evictions_deferred.get();
            sh.e.set_clock(self.now_tick, now_ns);
            sh.e.on_tick(self.now_tick, &mut sh.sends);
            sh.pump(&mut self.sessions);
            let t = sh.e.table();
            let mut evictions = 0;
            for slot in open {
                // A close by the sweep with no peer_done is an eviction (a
                // paused connection expires as a slow consumer: peer done).
                if t.state(slot) == State::Open || t.has(slot, flag::PEER_DONE) {
                    continue;
                }
                evictions += 1;
                let m = &sh.slots[slot as usize];
                let age = self.now_tick - m.last_seen_tick;
                assert!(
                    age > m.timeout_ticks,
                    "shard {} slot {slot} evicted at age {age} ticks, timeout {}",
                    sh.id(),
                    m.timeout_ticks
                );
            }
            assert_eq!(
                sh.e.stats.evicted.get() - evicted,
                evictions,
                "evictions counted"
            );
            if sh.e.stats.evictions_deferred.get() != deferred {
                continue; // input waiting (held or starved): looked at next tick
            }
            // None missed: every open slot is within its own timeout.
            for slot in 0..SLOTS {
                if t.state(slot) == State::Open && !t.has(slot, flag::RECV_STARVED) {
                    let age = self.now_tick - t.last_seen_tick[slot as usize];
                    assert!(age <= t.timeout_ticks[slot as usize], "slot {slot} missed");
                }
            }
        }
    }

    /// Delivers the oldest message queued by shard `from`.
    fn deliver_from(&mut self, from: usize) {
        let Some((to, msg)) = self.shards[from].outbox.pop_front() else {
            return;
        };
        let sh = &mut self.shards[usize::from(to)];
        sh.deliver(msg);
        sh.pump(&mut self.sessions);
    }

    /// Everything in flight arrives (sends too, unless stalled).
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for s in 0..self.shards.len() {
                moved |= !self.shards[s].outbox.is_empty();
                self.deliver_from(s);
                moved |= self.shards[s].complete_one(&mut self.sessions);
            }
            if !moved {
                return;
            }
        }
        panic!("the cluster never settles");
    }
}

impl Cluster {
    /// The invariants that hold between any two steps.
    pub fn check(&self) {
        let mut holders: HashMap<u64, u32> = HashMap::new();
        let mut live = 0;
        for sh in &self.shards {
            let t = sh.e.table();
            let mut busy = 0;
            for slot in 0..SLOTS {
                let m = &sh.slots[slot as usize];
                let i = slot as usize;
                let state = t.state(slot);
                assert_eq!(
                    state == State::Free,
                    !m.busy,
                    "shard {} slot {slot}",
                    sh.id()
                );
                if state == State::Free {
                    assert_eq!(t.flags[i], 0, "free slot {slot} has flags");
                    continue;
                }
                busy += 1;
                assert_eq!(t.generation[i], m.generation);
                let log = self.sessions.0[&session_id(sh.id(), slot, m.generation)];
                if state == State::Open {
                    assert_eq!(log.offline, 0, "offline event for open slot {slot}");
                    assert_eq!(t.has(slot, flag::ONLINE), log.online == 1, "slot {slot}");
                    let id = t.client_id[i];
                    if id != 0 && t.has(slot, flag::ONLINE) {
                        *holders.entry(id).or_default() += 1;
                    }
                } else {
                    assert_eq!(
                        log.offline, log.online,
                        "closing slot {slot} without offline"
                    );
                }
            }
            assert_eq!(t.open_count(), busy, "shard {} open count", sh.id());
            live += busy;
        }
        assert_eq!(self.live_total.load(Ordering::Relaxed), live, "live total");
        for (id, n) in holders {
            assert!(n <= 1, "client_id {id} has {n} live holders");
        }
    }
}
