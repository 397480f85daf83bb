//! PROTOCOL.md's rules and the connection lifecycle against the sans-IO
//! engine on a simulated clock: no sockets, no sleeps. A simulated kernel
//! carries out the engine's commands exactly as the shard does (sends leave
//! or stall, cancels complete, closes free the slot), so what these tests
//! prove is what the real driver does. Several engines stand in for
//! shards, with the mailbox delivered by the test (in any order).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use proptest::prelude::*;
use ringbeat::conn_table::{flag, ConnTable, State};
use ringbeat::engine::{CloseCause, Command, Engine, EngineConfig, TokenCheck, CLOSE_LINGER_MS};
use ringbeat::events::{Event, EventKind};
use ringbeat::heartbeat::Timing;
use ringbeat::mailbox::ShardMsg;
use ringbeat::per_ip::PerIpLimit;
use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use ringbeat::send_pool::{SendPool, GATHER_MAX};
use ringbeat::stash::HelloPool;
use ringbeat::stats::Stats;

const SLOTS: u32 = 64;
const HELLO_POOL: u32 = 4;
const TICK_MS: u32 = 100;

/// What the simulated kernel still owes the engine.
#[derive(Debug)]
enum Done {
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
struct Sim {
    e: Engine,
    stats: Arc<Stats>,
    sends: SendPool,
    /// Bytes each slot's peer has received.
    wire: HashMap<u32, Vec<u8>>,
    /// Completions to hand in (sends wait here while `stalled`).
    done: VecDeque<Done>,
    /// Peers do not read: sends stay in flight.
    stalled: bool,
    /// Slots whose descriptor was closed, in order.
    closed: Vec<u32>,
    events: Vec<Event>,
    /// Messages for other shards: (to, msg).
    outbox: VecDeque<(u16, ShardMsg)>,
}

fn timing(interval_ms: u32, timeout_ms: u32) -> Timing {
    Timing {
        tick_ms: TICK_MS,
        interval_ms,
        timeout_ms,
        min_interval_ms: 100,
        max_interval_ms: 3_600_000,
    }
}

impl Sim {
    fn new(shard: u16, shards: u16, timing: Timing, probe: bool, max: u32) -> Sim {
        Sim::with_pool(shard, shards, timing, probe, max, 256)
    }

    fn with_pool(
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
    fn with(
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
            shard,
            shards,
            timing,
            max_payload: 1024,
            probe,
            max_connections: max,
            shard_limit: SLOTS - 4,
            events: true,
            multishot_recv: true,
            auth: None,
            per_ip: None,
            takeovers_per_min: 0,
            offline_grace_ticks: 0,
            max_ping_rate: 0,
            phi_threshold: None,
            proxy_protocol: false,
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

    fn generation(&self, slot: u32) -> u32 {
        self.e.table().generation[slot as usize]
    }

    fn state(&self, slot: u32) -> State {
        self.e.table().state(slot)
    }

    fn at_tick(&mut self, tick: u32) {
        self.e
            .set_clock(tick, u64::from(tick) * u64::from(TICK_MS) * 1_000_000);
    }

    fn open(&mut self, slot: u32) {
        self.open_from(slot, None);
    }

    fn open_from(&mut self, slot: u32, peer: Option<std::net::SocketAddr>) {
        self.e.on_open(slot, peer, &mut self.sends);
        self.settle();
    }

    fn recv(&mut self, slot: u32, bytes: &[u8]) {
        let g = self.generation(slot);
        self.e.on_recv_data(slot, g, bytes, &mut self.sends);
        self.settle();
    }

    /// The armed receive ends with `result` (0 = EOF, or -errno).
    fn recv_end(&mut self, slot: u32, result: i32) {
        assert!(self.e.table().has(slot, flag::RECV_ARMED));
        let g = self.generation(slot);
        self.e.on_recv_end(slot, g, result, &mut self.sends);
        self.settle();
    }

    fn close(&mut self, slot: u32, cause: CloseCause) {
        self.e.close(slot, cause, &mut self.sends);
        self.settle();
    }

    /// A tick that runs on time.
    fn tick(&mut self, tick: u32) {
        self.tick_late(tick, tick);
    }

    /// A tick due at `due` that runs at `now`.
    fn tick_late(&mut self, now: u32, due: u32) {
        self.at_tick(now);
        self.e.on_tick(due, &mut self.sends);
        self.settle();
    }

    fn shutdown(&mut self) {
        self.e.shutdown(&mut self.sends);
        self.settle();
    }

    /// Carries out commands and hands in completions until nothing moves.
    fn settle(&mut self) {
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

    fn carry_out(&mut self, c: Command) {
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

    fn deliver(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Home(m) => self.e.on_home(m),
            ShardMsg::Holder(m) => self.e.on_holder(m, &mut self.sends),
            ShardMsg::Shutdown => self.e.shutdown(&mut self.sends),
        }
    }

    /// Hands in the oldest completion that can happen now.
    fn complete_one(&mut self) -> bool {
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
    fn unstall(&mut self) {
        self.stalled = false;
        self.settle();
    }

    /// Frames `slot`'s peer received so far (and forgets them).
    fn frames(&mut self, slot: u32) -> Vec<OwnedFrame> {
        let mut d = Decoder::new(1 << 20);
        d.feed(&self.wire.remove(&slot).unwrap_or_default());
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }

    fn metric(&self, series: &str) -> u64 {
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
fn one() -> Sim {
    Sim::new(0, 1, timing(10_000, 30_000), false, 1000)
}

fn close_reason(frames: &[OwnedFrame]) -> Option<u16> {
    frames.iter().find_map(|f| match f {
        OwnedFrame::Close { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn hello_is_optional_a_ping_first_is_answered() {
    let mut s = one();
    s.open(0);
    s.recv(0, &protocol::ping_frame([5; 8]));
    assert_eq!(s.frames(0), [OwnedFrame::Pong([5; 8])]);
    assert_eq!(s.events[0].event, EventKind::Online);
}

#[test]
fn hello_must_be_first_and_only_once() {
    let mut s = one();
    s.open(0);
    s.recv(0, &protocol::ping_frame([0; 8]));
    s.recv(0, &protocol::hello_frame(0, 0));
    assert_eq!(
        close_reason(&s.frames(0)),
        Some(CloseReason::ProtocolError.code())
    );

    s.open(1);
    s.recv(1, &protocol::hello_frame(0, 0));
    s.recv(1, &protocol::hello_frame(0, 0));
    let frames = s.frames(1);
    assert!(matches!(frames[0], OwnedFrame::Welcome { .. }));
    assert_eq!(
        close_reason(&frames),
        Some(CloseReason::ProtocolError.code())
    );
}

#[test]
fn replies_keep_the_order_of_the_frames_they_answer() {
    let mut s = one();
    s.open(0);
    let mut bytes = protocol::hello_frame(0, 2_000).to_vec();
    for i in 0..5u64 {
        bytes.extend(protocol::ping_frame(i.to_be_bytes()));
    }
    s.recv(0, &bytes);
    let frames = s.frames(0);
    assert!(matches!(
        frames[0],
        OwnedFrame::Welcome {
            interval_ms: 2_000,
            timeout_ms: 6_000,
            ..
        }
    ));
    let pongs: Vec<_> = (0..5u64)
        .map(|i| OwnedFrame::Pong(i.to_be_bytes()))
        .collect();
    assert_eq!(frames[1..], pongs[..]);
}

#[test]
fn partial_frames_do_not_refresh_liveness() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    s.open(1);
    s.at_tick(250);
    let ping = protocol::ping_frame([1; 8]);
    s.recv(0, &ping[..12]); // partial
    s.recv(1, &ping); // complete
    s.tick(301);
    assert_eq!(s.closed, [0], "only the partial one is evicted");
    assert_eq!(
        close_reason(&s.frames(0)),
        Some(CloseReason::Timeout.code())
    );
}

#[test]
fn every_kind_of_complete_frame_refreshes_liveness() {
    let mut s = one();
    s.at_tick(0);
    let frames: [Vec<u8>; 4] = [
        protocol::ping_frame([0; 8]).to_vec(),
        protocol::pong_frame([0; 8]).to_vec(),
        protocol::data_frame(b"x", 1024).unwrap(),
        protocol::hello_frame(0, 0).to_vec(),
    ];
    for (slot, _) in frames.iter().enumerate() {
        s.open(slot as u32);
    }
    s.at_tick(250);
    for (slot, f) in frames.iter().enumerate() {
        s.recv(slot as u32, f);
    }
    s.tick(549);
    assert!(s.closed.is_empty(), "{:?}", s.closed);
}

#[test]
fn evicted_with_close_timeout_sent_before_the_close() {
    let mut s = one();
    s.at_tick(0);
    s.open(3);
    s.tick(300);
    assert!(s.closed.is_empty(), "never at exactly the timeout");
    s.tick(301);
    assert_eq!(s.closed, [3]);
    assert_eq!(
        close_reason(&s.frames(3)),
        Some(CloseReason::Timeout.code())
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// A frame at any instant: the sweep (run every tick) evicts never
    /// before `timeout` after it and at most `timeout + tick` after it.
    #[test]
    fn eviction_lies_between_timeout_and_timeout_plus_tick(
        frame_ns in 0u64..10_000_000_000,
        timeout_ticks in 2u32..100,
    ) {
        let tick_ns = u64::from(TICK_MS) * 1_000_000;
        let timeout_ms = timeout_ticks * TICK_MS;
        let mut s = Sim::new(0, 1, timing(timeout_ms / 2, timeout_ms), false, 10);
        s.at_tick(0);
        s.open(0);
        s.e.set_clock((frame_ns / tick_ns) as u32, frame_ns);
        s.recv(0, &protocol::ping_frame([0; 8]));
        let mut tick = (frame_ns / tick_ns) as u32 + 1;
        let evicted_ns = loop {
            let now_ns = u64::from(tick) * tick_ns;
            s.tick(tick);
            if !s.closed.is_empty() {
                break now_ns;
            }
            tick += 1;
        };
        let timeout_ns = u64::from(timeout_ms) * 1_000_000;
        prop_assert!(evicted_ns >= frame_ns + timeout_ns, "early: {evicted_ns} < {frame_ns} + {timeout_ns}");
        prop_assert!(evicted_ns <= frame_ns + timeout_ns + tick_ns, "late: {evicted_ns}");
    }
}

#[test]
fn probes_keep_a_pong_only_client_alive() {
    let mut s = Sim::new(0, 1, timing(1_000, 3_000), true, 10);
    s.at_tick(0);
    s.open(0);
    s.recv(0, &protocol::hello_frame(0, 0));
    s.frames(0);
    let mut probes = 0;
    for tick in 1..=200 {
        s.tick(tick);
        for f in s.frames(0) {
            if let OwnedFrame::Ping(p) = f {
                probes += 1;
                s.recv(0, &protocol::pong_frame(p));
            }
        }
    }
    assert!(s.closed.is_empty(), "a client answering probes stays");
    assert!(probes >= 15, "one probe per quiet interval: {probes}");
}

#[test]
fn without_probes_a_silent_client_gets_no_ping() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    for tick in 1..=300 {
        s.tick(tick);
    }
    assert!(s.frames(0).is_empty());
}

#[test]
fn a_peer_close_is_not_answered_with_close() {
    let mut s = one();
    s.open(0);
    s.recv(0, &protocol::close_frame(CloseReason::Normal, "bye"));
    assert_eq!(s.closed, [0]);
    assert!(s.frames(0).is_empty());
    assert_eq!(s.state(0), State::Free);
}

#[test]
fn every_server_close_carries_its_reason() {
    let mut s = one();
    let cases = [
        (CloseCause::Server(CloseReason::Shutdown), Some(5)),
        (CloseCause::Server(CloseReason::TakenOver), Some(4)),
        (CloseCause::PeerGone, None),
        (CloseCause::Reset, None),
        (CloseCause::SlowConsumer, None),
    ];
    for (slot, (cause, want)) in cases.into_iter().enumerate() {
        let slot = slot as u32;
        s.open(slot);
        s.close(slot, cause);
        assert_eq!(close_reason(&s.frames(slot)), want, "{cause:?}");
    }
}

#[test]
fn over_the_connection_limit_gets_overloaded() {
    let mut s = Sim::new(0, 1, timing(10_000, 30_000), false, 2);
    for slot in 0..3 {
        s.open(slot);
    }
    assert_eq!(s.closed, [2]);
    assert_eq!(
        close_reason(&s.frames(2)),
        Some(CloseReason::Overloaded.code())
    );
}

#[test]
fn a_peer_that_does_not_read_is_paused_then_closed_without_waiting_the_linger() {
    let mut s = Sim::new(0, 1, timing(1_000, 3_000), false, 10);
    s.at_tick(0);
    s.open(0);
    s.recv(0, &protocol::ping_frame([0; 8]));
    s.stalled = true;
    let flood: Vec<u8> = (0..2_000u64)
        .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
        .collect();
    for piece in flood.chunks(2048) {
        s.recv(0, piece);
    }
    assert_eq!(s.state(0), State::Open, "paused, not closed yet");
    assert_eq!(s.metric("ringbeat_recv_paused_total"), 1);
    s.tick(11); // paused for more than one interval
    assert_eq!(
        s.closed,
        [0],
        "closed at once: queued bytes aborted, no linger"
    );
    let kinds: Vec<_> = s.events.iter().map(|ev| (ev.event, ev.reason)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Online, None),
            (EventKind::Offline, Some("overloaded"))
        ]
    );
    s.unstall();
    assert_eq!(
        close_reason(&s.frames(0)),
        None,
        "no CLOSE to a peer that does not read"
    );
    assert_eq!(s.sends.in_use(), 0, "every chunk back in the pool");
}

#[test]
fn a_connection_closed_by_its_first_reply_never_goes_online() {
    // One chunk in the pool, held by a stalled peer's PONG: the next reply
    // cannot be queued. That connection still gets its CLOSE frame.
    let mut s = Sim::with_pool(0, 1, timing(10_000, 30_000), false, 10, 1);
    s.open(1);
    s.stalled = true;
    s.recv(1, &protocol::ping_frame([1; 8]));
    s.open(0);
    s.recv(0, &protocol::ping_frame([0; 8]));
    assert_eq!(s.metric("ringbeat_send_pool_exhausted_total"), 1);
    assert_eq!(s.events.len(), 1, "only slot 1 went online: {:?}", s.events);
    s.unstall();
    assert_eq!(s.closed, [0]);
    assert_eq!(
        close_reason(&s.frames(0)),
        Some(CloseReason::Overloaded.code())
    );
}

#[test]
fn shutdown_closes_everyone_with_shutdown() {
    let mut s = one();
    for slot in 0..5 {
        s.open(slot);
    }
    s.shutdown();
    for slot in 0..5 {
        assert_eq!(
            close_reason(&s.frames(slot)),
            Some(CloseReason::Shutdown.code())
        );
    }
    assert_eq!(s.closed.len(), 5);
}

/// Several shards; the test delivers their mailbox messages.
struct Cluster {
    shards: Vec<Sim>,
}

impl Cluster {
    fn new(n: u16) -> Cluster {
        let shards = (0..n)
            .map(|id| Sim::new(id, n, timing(10_000, 30_000), false, 1000))
            .collect();
        Cluster { shards }
    }

    fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.outbox.len()).sum()
    }

    /// Delivers the oldest message queued by shard `from`, if any.
    fn deliver_from(&mut self, from: usize) {
        let Some((to, msg)) = self.shards[from].outbox.pop_front() else {
            return;
        };
        let target = &mut self.shards[usize::from(to)];
        target.deliver(msg);
        target.settle();
    }

    fn deliver_all(&mut self) {
        while self.pending() > 0 {
            for from in 0..self.shards.len() {
                self.deliver_from(from);
            }
        }
    }

    /// Open connections that were welcomed, per client_id.
    fn welcomed_holders(&self) -> HashMap<u64, usize> {
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

#[test]
fn takeover_across_shards_closes_the_older_with_taken_over() {
    let mut c = Cluster::new(2);
    c.shards[0].open(0);
    c.shards[0].recv(0, &protocol::hello_frame(9, 0));
    c.deliver_all();
    assert!(matches!(
        c.shards[0].frames(0)[..],
        [OwnedFrame::Welcome { .. }]
    ));
    c.shards[1].open(5);
    c.shards[1].recv(5, &protocol::hello_frame(9, 0));
    c.deliver_all();
    assert_eq!(
        close_reason(&c.shards[0].frames(0)),
        Some(CloseReason::TakenOver.code())
    );
    assert!(matches!(
        c.shards[1].frames(5)[..],
        [OwnedFrame::Welcome { .. }]
    ));
}

#[test]
fn anonymous_clients_never_take_each_other_over() {
    let mut c = Cluster::new(2);
    for slot in 0..3 {
        c.shards[0].open(slot);
        c.shards[0].recv(slot, &protocol::hello_frame(0, 0));
    }
    c.deliver_all();
    assert!(c.shards[0].closed.is_empty());
}

#[derive(Clone, Debug)]
enum Step {
    /// A connection on shard `shard`, slot `slot`, says HELLO with `id`.
    Hello { shard: usize, slot: u32, id: u64 },
    /// That connection goes away (EOF).
    Gone { shard: usize, slot: u32 },
    /// Deliver one control message queued by `shard`.
    Deliver { shard: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3usize, 0..6u32, 1..4u64).prop_map(|(shard, slot, id)| Step::Hello { shard, slot, id }),
        (0..3usize, 0..6u32).prop_map(|(shard, slot)| Step::Gone { shard, slot }),
        (0..3usize).prop_map(|shard| Step::Deliver { shard }),
        (0..3usize).prop_map(|shard| Step::Deliver { shard }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Any interleaving of HELLOs, disconnects and control-plane deliveries
    /// across three shards: at every step at most one welcomed, open
    /// connection holds a given client_id.
    #[test]
    fn at_most_one_live_holder_per_client_id(steps in proptest::collection::vec(step(), 1..80)) {
        let mut c = Cluster::new(3);
        for s in steps {
            match s {
                Step::Hello { shard, slot, id } => {
                    let s = &mut c.shards[shard];
                    if s.state(slot) == State::Free {
                        s.open(slot);
                        s.recv(slot, &protocol::hello_frame(id, 0));
                    }
                }
                Step::Gone { shard, slot } => {
                    let s = &mut c.shards[shard];
                    if s.state(slot) == State::Open {
                        s.recv_end(slot, 0);
                    }
                    prop_assert_eq!(s.state(slot), State::Free, "EOF closes at once");
                }
                Step::Deliver { shard } => c.deliver_from(shard),
            }
            for (id, n) in c.welcomed_holders() {
                prop_assert!(n <= 1, "client_id {id} held by {n} connections");
            }
        }
    }
}

#[test]
fn shutdown_delivers_every_close_frame_with_an_exhausted_send_pool() {
    // A one-chunk pool: CLOSE frames must not need it.
    let mut s = Sim::with_pool(0, 1, timing(10_000, 30_000), false, 100, 1);
    for slot in 0..40 {
        s.open(slot);
    }
    s.stalled = true;
    s.recv(0, &protocol::ping_frame([0; 8])); // holds the only chunk
    s.shutdown();
    s.unstall();
    for slot in 0..40 {
        assert_eq!(
            close_reason(&s.frames(slot)),
            Some(CloseReason::Shutdown.code()),
            "slot {slot}"
        );
    }
    assert_eq!(s.closed.len(), 40);
    assert_eq!(s.e.table().open_count(), 0);
    assert_eq!(
        s.metric("ringbeat_close_frames_unsent_total{reason=\"shutdown\"}"),
        0
    );
}

#[test]
fn a_close_frame_waits_for_the_linger_then_is_abandoned_and_counted() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    s.stalled = true; // the peer stops reading
    s.tick(301);
    assert_eq!(s.state(0), State::Closing, "the CLOSE frame is still owed");
    let linger_ticks = CLOSE_LINGER_MS / TICK_MS;
    s.tick(301 + linger_ticks - 1);
    assert!(s.closed.is_empty(), "not before the linger");
    s.tick(301 + linger_ticks);
    assert_eq!(s.closed, [0], "closed at the linger");
    assert_eq!(
        s.metric("ringbeat_close_frames_unsent_total{reason=\"timeout\"}"),
        1
    );
}

#[test]
fn a_reset_peer_is_closed_at_once_without_a_close_frame() {
    let mut s = one();
    s.open(0);
    s.stalled = true;
    s.recv(0, &protocol::ping_frame([0; 8])); // a PONG in flight
    s.recv_end(0, -libc::ECONNRESET);
    assert_eq!(
        s.closed,
        [0],
        "queued bytes aborted: no wait for the linger"
    );
    assert_eq!(s.sends.in_use(), 0);
    assert_eq!(s.metric("ringbeat_closed_total{reason=\"reset\"}"), 1);
}

#[test]
fn every_close_emits_exactly_one_offline_for_an_online_connection() {
    let mut s = one();
    for slot in 0..6 {
        s.open(slot);
        s.recv(slot, &protocol::ping_frame([0; 8]));
    }
    s.recv_end(0, 0);
    s.recv_end(1, -libc::ECONNRESET);
    s.close(2, CloseCause::Server(CloseReason::Timeout));
    s.close(3, CloseCause::SlowConsumer);
    s.recv(4, &protocol::close_frame(CloseReason::Normal, ""));
    s.shutdown();
    s.close(0, CloseCause::Reset); // already closed: nothing more
    let offline: Vec<_> = s
        .events
        .iter()
        .filter(|e| e.event == EventKind::Offline)
        .map(|e| e.reason.unwrap())
        .collect();
    assert_eq!(
        offline,
        [
            "closed",
            "reset",
            "timeout",
            "overloaded",
            "normal",
            "shutdown"
        ]
    );
}

#[test]
fn a_late_sweep_defers_its_evictions_and_counts_it() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    // The tick due at 301 runs 3 s late (the shard was stalled).
    s.tick_late(331, 301);
    assert_eq!(s.state(0), State::Open, "no eviction right after a stall");
    assert_eq!(s.metric("ringbeat_sweeps_deferred_total"), 1);
    s.tick(332);
    assert_eq!(s.closed, [0], "evicted by the next on-time sweep");
}

#[test]
fn a_shard_always_late_still_evicts_after_bounded_deferrals() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    let mut tick = 301;
    while s.closed.is_empty() {
        assert!(tick < 301 + 100 * 20, "never evicted");
        s.tick_late(tick + 20, tick);
        tick += 21;
    }
    assert_eq!(
        s.metric("ringbeat_sweeps_deferred_total"),
        u64::from(ringbeat::engine::SWEEP_DEFER_MAX)
    );
}

#[test]
fn a_receive_starved_of_buffers_is_not_evicted_while_its_input_waits() {
    let mut s = one();
    s.at_tick(0);
    s.open(0);
    s.recv_end(0, -libc::ENOBUFS); // data arrived, no buffer for it
    s.tick(301); // re-arms the receive, then sweeps
    assert_eq!(
        s.state(0),
        State::Open,
        "its frames are still in the kernel"
    );
    assert!(s.e.table().has(0, flag::RECV_ARMED), "re-armed");
    assert_eq!(s.metric("ringbeat_evictions_deferred_total"), 1);
    s.recv(0, &protocol::ping_frame([0; 8])); // the waiting PING
    s.tick(302);
    assert_eq!(s.state(0), State::Open, "refreshed by the PING");
    s.tick(603);
    assert_eq!(s.closed, [0], "evicted once really silent");
}

#[test]
fn past_the_shard_limit_new_connections_get_overloaded() {
    let mut s = Sim::new(0, 1, timing(10_000, 30_000), false, 1000);
    let limit = s.e.config().shard_limit;
    for slot in 0..=limit {
        s.open(slot);
    }
    assert_eq!(s.closed, [limit]);
    assert_eq!(
        close_reason(&s.frames(limit)),
        Some(CloseReason::Overloaded.code())
    );
    assert_eq!(s.metric("ringbeat_overloaded_refusals_total"), 1);
}

#[test]
fn a_half_closed_peer_that_then_goes_is_closed_not_reset() {
    let mut s = one();
    s.open(0);
    s.stalled = true;
    s.recv(0, &protocol::ping_frame([0; 8])); // a PONG in flight
                                              // FIN then RST: the kernel fails the send with EPIPE, before the
                                              // receive reports the EOF.
    let g = s.generation(0);
    let Some(Done::Send { close_frame, .. }) = s.done.pop_front() else {
        panic!("a send in flight")
    };
    s.e.on_send_done(0, g, -libc::EPIPE, close_frame, &mut s.sends);
    s.settle();
    assert_eq!(s.closed, [0]);
    assert_eq!(s.metric(r#"ringbeat_closed_total{reason="closed"}"#), 1);
    assert_eq!(s.metric(r#"ringbeat_closed_total{reason="reset"}"#), 0);
}

/// Accepts the token `ok:<client_id>`; `required` as given.
#[derive(Debug)]
struct FakeAuth {
    required: bool,
}

impl TokenCheck for FakeAuth {
    fn required(&self) -> bool {
        self.required
    }
    fn verify(&self, client_id: u64, token: &[u8], _now_unix_s: u64) -> bool {
        token == format!("ok:{client_id}").as_bytes()
    }
}

fn with_auth(required: bool) -> Sim {
    Sim::with(0, 1, timing(10_000, 30_000), false, 1000, 256, |c| {
        c.auth = Some(Arc::new(FakeAuth { required }));
    })
}

fn hello(id: u64, token: &str) -> Vec<u8> {
    protocol::hello_frame_with_token(id, 0, token.as_bytes()).unwrap()
}

#[test]
fn a_split_frame_is_served_while_a_quarter_of_the_slots_hold_one_byte() {
    let mut s = one();
    for slot in 0..SLOTS / 4 + 8 {
        s.open(slot);
        s.recv(slot, &[0x52]); // one byte of a header, then nothing
    }
    let honest = SLOTS / 4 + 8;
    s.open(honest);
    let ping = protocol::ping_frame([7; 8]);
    s.recv(honest, &ping[..5]);
    s.recv(honest, &ping[5..]);
    assert_eq!(s.frames(honest), [OwnedFrame::Pong([7; 8])]);
    assert_eq!(s.metric("ringbeat_stash_exhausted_total"), 0);
}

#[test]
fn with_auth_required_every_unproven_connection_is_unauthorized() {
    let unauthorized = Some(CloseReason::Unauthorized.code());
    let mut s = with_auth(true);
    let cases: [(&str, Vec<u8>); 5] = [
        ("ping first", protocol::ping_frame([0; 8]).to_vec()),
        ("no token", protocol::hello_frame(42, 0).to_vec()),
        ("bad token", hello(42, "forged")),
        ("another id's token", hello(42, "ok:43")),
        (
            "anonymous without token",
            protocol::hello_frame(0, 0).to_vec(),
        ),
    ];
    for (slot, (what, bytes)) in cases.iter().enumerate() {
        let slot = slot as u32;
        s.open(slot);
        s.recv(slot, bytes);
        assert_eq!(close_reason(&s.frames(slot)), unauthorized, "{what}");
    }
    assert_eq!(s.metric("ringbeat_unauthorized_total"), 5);
    assert!(s.events.is_empty(), "none went online: {:?}", s.events);
    s.open(9);
    s.recv(9, &hello(42, "ok:42"));
    assert!(matches!(s.frames(9)[..], [OwnedFrame::Welcome { .. }]));
}

#[test]
fn with_auth_optional_a_missing_token_passes_a_bad_one_does_not() {
    let mut s = with_auth(false);
    s.open(0);
    s.recv(0, &protocol::hello_frame(42, 0));
    assert!(matches!(s.frames(0)[..], [OwnedFrame::Welcome { .. }]));
    s.open(1);
    s.recv(1, &hello(43, "forged"));
    assert_eq!(
        close_reason(&s.frames(1)),
        Some(CloseReason::Unauthorized.code())
    );
}

#[test]
fn without_auth_a_token_is_skipped_not_read() {
    let mut s = one();
    s.open(0);
    let frame = hello(42, &"x".repeat(512));
    for piece in frame.chunks(7) {
        s.recv(0, piece);
    }
    assert!(matches!(s.frames(0)[..], [OwnedFrame::Welcome { .. }]));
}

#[test]
fn an_attacker_without_a_token_cannot_take_over_a_proven_client() {
    let mut s = with_auth(true);
    s.open(0);
    s.recv(0, &hello(42, "ok:42"));
    s.open(1);
    s.recv(1, &protocol::hello_frame(42, 0));
    assert_eq!(
        close_reason(&s.frames(1)),
        Some(CloseReason::Unauthorized.code())
    );
    s.recv(0, &protocol::ping_frame([1; 8]));
    let frames = s.frames(0);
    assert_eq!(close_reason(&frames), None, "the holder stays");
    assert!(frames.contains(&OwnedFrame::Pong([1; 8])));
}

#[test]
fn split_token_hellos_reclaim_the_longest_waiting_entry_first() {
    let mut s = with_auth(true);
    let frame = hello(7, "ok:7");
    // HELLO_POOL connections sit on half-sent HELLOs, from tick 0 on.
    for slot in 0..HELLO_POOL {
        s.at_tick(slot);
        s.open(slot);
        s.recv(slot, &frame[..10]);
    }
    // An honest client's HELLO arrives in two pieces.
    let honest = HELLO_POOL;
    s.at_tick(50);
    s.open(honest);
    s.recv(honest, &frame[..10]);
    s.recv(honest, &frame[10..]);
    assert!(matches!(s.frames(honest)[..], [OwnedFrame::Welcome { .. }]));
    assert_eq!(
        close_reason(&s.frames(0)),
        Some(CloseReason::Overloaded.code()),
        "slot 0 waited longest"
    );
    assert_eq!(s.metric("ringbeat_stash_exhausted_total"), 1);
    for slot in 1..HELLO_POOL {
        assert_eq!(s.state(slot), State::Open, "slot {slot} kept its entry");
    }
}

#[test]
fn connections_past_the_per_address_limit_are_limited() {
    let mut s = Sim::with(0, 1, timing(10_000, 30_000), false, 1000, 256, |c| {
        c.per_ip = Some(Arc::new(PerIpLimit::new(2)));
    });
    let a = |port| Some(std::net::SocketAddr::from(([10, 0, 0, 1], port)));
    s.open_from(0, a(1));
    s.open_from(1, a(2));
    s.open_from(2, a(3));
    assert_eq!(
        close_reason(&s.frames(2)),
        Some(CloseReason::Limited.code())
    );
    s.open_from(3, Some(std::net::SocketAddr::from(([10, 0, 0, 2], 1))));
    assert_eq!(s.state(3), State::Open, "another address has its own room");
    s.recv_end(0, 0);
    s.open_from(4, a(4));
    assert_eq!(s.state(4), State::Open, "room again after a close");
    assert_eq!(s.metric(r#"ringbeat_limited_total{limit="ip"}"#), 1);
}

#[test]
fn a_takeover_ping_pong_is_bounded_by_the_rate_limit() {
    let mut s = Sim::with(0, 1, timing(10_000, 30_000), false, 1000, 256, |c| {
        c.takeovers_per_min = 60;
    });
    s.at_tick(0);
    let mut limited = 0;
    for slot in 0..40u32 {
        s.open(slot);
        s.recv(slot, &protocol::hello_frame(42, 0));
        if close_reason(&s.frames(slot)) == Some(CloseReason::Limited.code()) {
            limited += 1;
        }
    }
    assert_eq!(
        limited,
        40 - 1 - 10,
        "a burst of 10 takeovers, then none this tick"
    );
    assert_eq!(s.metric(r#"ringbeat_limited_total{limit="takeover"}"#), 29);
    let online = s
        .events
        .iter()
        .filter(|e| e.event == EventKind::Online)
        .count();
    assert_eq!(online, 11, "events bounded too");
    s.at_tick(10); // one second later: one more
    s.open(50);
    s.recv(50, &protocol::hello_frame(42, 0));
    assert!(matches!(s.frames(50)[..], [OwnedFrame::Welcome { .. }]));
}

/// One shard with a 10 s (100-tick) offline grace.
fn with_grace() -> Sim {
    Sim::with(0, 1, timing(1_000, 3_000), false, 1000, 256, |c| {
        c.offline_grace_ticks = 100;
    })
}

fn kinds(s: &Sim) -> Vec<(EventKind, Option<&'static str>)> {
    s.events.iter().map(|e| (e.event, e.reason)).collect()
}

#[test]
fn grace_turns_a_quick_return_into_one_resumed_event() {
    let mut s = with_grace();
    s.at_tick(0);
    s.open(0);
    s.recv(0, &protocol::hello_frame(42, 0));
    let first = s.events[0].session;
    s.recv_end(0, 0); // the phone changes network
    s.tick(50);
    s.open(1);
    s.recv(1, &protocol::hello_frame(42, 0));
    // Past the first grace (tick 100); the new connection's own timeout
    // (tick 81) is held until tick 181.
    for t in 51..=150 {
        s.tick(t);
    }
    assert_eq!(
        kinds(&s),
        [(EventKind::Online, None), (EventKind::Resumed, None)]
    );
    assert_eq!(s.events[1].previous_session, Some(first));
    assert_eq!(s.metric("ringbeat_resumed_total"), 1);
}

#[test]
fn grace_emits_the_offline_when_the_id_does_not_return() {
    let mut s = with_grace();
    s.at_tick(0);
    s.open(0);
    s.recv(0, &protocol::hello_frame(42, 0));
    s.recv_end(0, 0);
    let gone_ms = s.events[0].ts_ms;
    s.tick(100);
    assert_eq!(s.events.len(), 1, "held for the whole grace");
    s.tick(101);
    assert_eq!(
        kinds(&s),
        [
            (EventKind::Online, None),
            (EventKind::Offline, Some("closed"))
        ]
    );
    assert!(
        s.events[1].ts_ms >= gone_ms,
        "keeps the time it went offline"
    );
    // Anonymous, taken over and shut down are never held.
    s.open(1);
    s.recv(1, &protocol::ping_frame([0; 8]));
    s.recv_end(1, 0);
    assert_eq!(s.events.last().unwrap().event, EventKind::Offline);
}

#[test]
fn grace_never_holds_a_takeover_and_shutdown_flushes_what_it_holds() {
    let mut s = with_grace();
    s.open(0);
    s.recv(0, &protocol::hello_frame(42, 0));
    s.open(1);
    s.recv(1, &protocol::hello_frame(42, 0)); // takes 42 over
    s.open(2);
    s.recv(2, &protocol::hello_frame(7, 0));
    s.recv_end(2, 0); // held
    assert_eq!(s.e.held_offline(), 1);
    s.shutdown();
    let offline: Vec<_> = s
        .events
        .iter()
        .filter(|e| e.event == EventKind::Offline)
        .map(|e| (e.client_id, e.reason.unwrap()))
        .collect();
    assert_eq!(
        offline,
        [(42, "taken_over"), (42, "shutdown"), (7, "closed")],
        "no event lost"
    );
}

#[test]
fn grace_works_across_shards() {
    let mut c = Cluster::new(2);
    for s in &mut c.shards {
        *s = Sim::with(
            s.e.config().shard,
            2,
            timing(1_000, 3_000),
            false,
            1000,
            256,
            |c| {
                c.offline_grace_ticks = 100;
            },
        );
    }
    // id 5's home is shard 1; it goes away on shard 0, returns on shard 1.
    c.shards[0].open(0);
    c.shards[0].recv(0, &protocol::hello_frame(5, 0));
    c.deliver_all();
    c.shards[0].recv_end(0, 0);
    c.deliver_all();
    c.shards[1].open(3);
    c.shards[1].recv(3, &protocol::hello_frame(5, 0));
    c.deliver_all();
    let all: Vec<_> = c
        .shards
        .iter()
        .flat_map(|s| s.events.iter())
        .map(|e| e.event)
        .collect();
    assert_eq!(all, [EventKind::Online, EventKind::Resumed]);
}

#[test]
fn the_ping_guard_closes_an_abusive_pinger_and_not_a_normal_one() {
    let mut s = Sim::with(0, 1, timing(1_000, 3_000), false, 1000, 256, |c| {
        c.max_ping_rate = 5;
    });
    s.at_tick(0);
    s.open(0); // pings every 1 s, with a burst of 10 pipelined at the start
    s.open(1); // pings every millisecond
    let burst: Vec<u8> = (0..10u64)
        .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
        .collect();
    s.recv(0, &burst);
    for tick in 0..100u32 {
        s.at_tick(tick);
        if tick % 10 == 0 {
            s.recv(0, &protocol::ping_frame([1; 8]));
        }
        if s.state(1) == State::Open {
            let many: Vec<u8> = (0..100u64)
                .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
                .collect();
            s.recv(1, &many);
        }
    }
    assert_eq!(s.state(0), State::Open, "a normal pinger stays");
    assert_eq!(
        close_reason(&s.frames(1)),
        Some(CloseReason::Limited.code())
    );
    assert_eq!(s.metric(r#"ringbeat_limited_total{limit="ping_rate"}"#), 1);
}

/// interval 1 s (10 ticks), timeout 5 s, phi threshold 8.
fn with_phi() -> Sim {
    Sim::with(0, 1, timing(1_000, 5_000), false, 1000, 256, |c| {
        c.phi_threshold = Some(8.0);
    })
}

fn first_event(s: &Sim, slot_session: u64, kind: EventKind) -> bool {
    s.events
        .iter()
        .any(|e| e.session == slot_session && e.event == kind)
}

#[test]
fn phi_suspects_a_regular_client_soon_after_it_goes_silent_and_before_timeout() {
    let mut s = with_phi();
    s.at_tick(0);
    s.open(0);
    for k in 1..=30u32 {
        s.tick(k * 10);
        s.recv(0, &protocol::ping_frame([0; 8])); // every 10 ticks, exactly
    }
    let session = s.events[0].session;
    let silent_from = 300;
    let mut suspected_at = None;
    for t in silent_from + 1..silent_from + 45 {
        s.tick(t);
        if suspected_at.is_none() && first_event(&s, session, EventKind::Suspect) {
            suspected_at = Some(t - silent_from);
        }
    }
    let after = suspected_at.expect("suspected");
    // Learned: 10 ticks, regular. The prior alone (deviation half the
    // interval) would wait ~36 ticks.
    assert!((11..20).contains(&after), "suspected after {after} ticks");
    assert_eq!(s.state(0), State::Open, "eviction waits for the timeout");
    s.recv(0, &protocol::ping_frame([0; 8]));
    assert_eq!(s.metric("ringbeat_recovered_total"), 1);
    let kinds: Vec<_> = s.events.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [EventKind::Online, EventKind::Suspect, EventKind::Recovered]
    );
}

#[test]
fn phi_does_not_suspect_a_client_within_its_usual_jitter() {
    let mut s = with_phi();
    s.at_tick(0);
    s.open(0);
    // Gaps of 3 and 27 ticks alternate: 27 is usual for this client, though
    // the prior (interval 10) would find it very late.
    let mut t = 0;
    for k in 0..60u32 {
        let gap = if k % 2 == 0 { 3 } else { 27 };
        for tick in t + 1..=t + gap {
            s.tick(tick);
        }
        t += gap;
        s.recv(0, &protocol::ping_frame([0; 8]));
    }
    assert_eq!(
        s.metric("ringbeat_suspected_total"),
        0,
        "no false suspicion"
    );
}

fn with_proxy(tune: impl FnOnce(&mut EngineConfig)) -> Sim {
    Sim::with(0, 1, timing(10_000, 30_000), false, 1000, 256, |c| {
        c.proxy_protocol = true;
        tune(c);
    })
}

fn proxy_header(source: &str) -> Vec<u8> {
    ringbeat::proxy_v2::encode(
        source.parse().unwrap(),
        "10.9.9.9:7700".parse().unwrap(),
        b"",
    )
}

#[test]
fn a_proxy_header_names_the_client_even_split_byte_by_byte() {
    let mut s = with_proxy(|_| {});
    let balancer = Some(std::net::SocketAddr::from(([10, 9, 9, 1], 5555)));
    let mut bytes = proxy_header("203.0.113.7:4242");
    bytes.extend(protocol::hello_frame(42, 0));
    s.open_from(0, balancer);
    for b in &bytes {
        s.recv(0, std::slice::from_ref(b));
    }
    assert!(matches!(s.frames(0)[..], [OwnedFrame::Welcome { .. }]));
    assert_eq!(s.events[0].peer.as_deref(), Some("203.0.113.7:4242"));
    s.open_from(1, balancer);
    let mut whole = proxy_header("203.0.113.8:1");
    whole.extend(protocol::ping_frame([3; 8]));
    s.recv(1, &whole);
    assert_eq!(s.frames(1), [OwnedFrame::Pong([3; 8])]);
    assert_eq!(s.metric("ringbeat_proxied_total"), 2);
}

#[test]
fn a_connection_without_a_valid_proxy_header_is_refused_and_counted() {
    let mut s = with_proxy(|_| {});
    s.open(0);
    s.recv(0, &protocol::ping_frame([0; 8])); // no header at all
    assert_eq!(
        close_reason(&s.frames(0)),
        Some(CloseReason::ProtocolError.code())
    );
    s.open(1);
    s.recv(1, b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"); // version 1
    assert_eq!(s.state(1), State::Free);
    assert_eq!(s.metric("ringbeat_proxy_refused_total"), 2);
    assert!(s.events.is_empty());
}

#[test]
fn behind_a_proxy_the_per_address_limit_counts_the_real_address() {
    let mut s = with_proxy(|c| c.per_ip = Some(Arc::new(PerIpLimit::new(1))));
    let balancer = Some(std::net::SocketAddr::from(([10, 9, 9, 1], 5555)));
    for (slot, src) in ["198.51.100.1:1", "198.51.100.2:1", "198.51.100.1:2"]
        .iter()
        .enumerate()
    {
        s.open_from(slot as u32, balancer);
        s.recv(slot as u32, &proxy_header(src));
    }
    assert_eq!(s.state(0), State::Open);
    assert_eq!(s.state(1), State::Open, "one balancer, many clients");
    assert_eq!(
        close_reason(&s.frames(2)),
        Some(CloseReason::Limited.code()),
        "the second from .1"
    );
}
