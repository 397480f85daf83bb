//! PROTOCOL.md's rules against the sans-IO engine on a simulated clock: no
//! sockets, no sleeps. Several engines with their registries stand in for
//! shards, with the control plane delivered by the test (in any order).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use proptest::prelude::*;
use ringbeat::conn_table::{flag, ConnTable, State};
use ringbeat::engine::{CloseCause, Engine, EngineConfig, Io};
use ringbeat::events::{Event, EventKind};
use ringbeat::heartbeat::Timing;
use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use ringbeat::registry::{Control, Registry};
use ringbeat::send_pool::QueueError;
use ringbeat::stash::StashPool;
use ringbeat::stats::Stats;

const SLOTS: u32 = 64;
const TICK_MS: u32 = 100;

/// Records what the engine asked for.
#[derive(Default)]
struct FakeIo {
    sent: HashMap<u32, Vec<u8>>,
    /// (slot, abort_send) in order.
    closed: Vec<(u32, bool)>,
    control: VecDeque<(u16, Control)>,
    events: Vec<Event>,
    refuse_sends: bool,
}

impl Io for FakeIo {
    fn send(&mut self, slot: u32, _head: &mut u32, bytes: &[u8]) -> Result<(), QueueError> {
        if self.refuse_sends {
            return Err(QueueError::SlowConsumer);
        }
        self.sent.entry(slot).or_default().extend_from_slice(bytes);
        Ok(())
    }
    fn close(&mut self, slot: u32, _generation: u32, abort_send: bool) {
        self.closed.push((slot, abort_send));
    }
    fn control(&mut self, to: u16, msg: Control) {
        self.control.push_back((to, msg));
    }
    fn event(&mut self, event: Event) {
        self.events.push(event);
    }
}

impl FakeIo {
    /// Frames sent to `slot` so far (and forgets them).
    fn frames(&mut self, slot: u32) -> Vec<OwnedFrame> {
        let mut d = Decoder::new(1 << 20);
        d.feed(&self.sent.remove(&slot).unwrap_or_default());
        std::iter::from_fn(|| d.next_frame().unwrap()).collect()
    }
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

fn engine(shard: u16, shards: u16, timing: Timing, probe: bool, max: u32) -> Engine {
    Engine::new(
        EngineConfig {
            shard,
            shards,
            timing,
            max_payload: 1024,
            probe,
            max_connections: max,
            events: true,
        },
        ConnTable::new(SLOTS, true, 1),
        StashPool::new(16),
        Arc::new(AtomicU32::new(0)),
        Stats::new().for_shard(shard),
    )
}

/// One shard on a 10 s / 30 s timing.
fn one() -> (Engine, FakeIo) {
    (
        engine(0, 1, timing(10_000, 30_000), false, 1000),
        FakeIo::default(),
    )
}

fn at_tick(e: &mut Engine, tick: u32) {
    e.set_clock(tick, u64::from(tick) * u64::from(TICK_MS) * 1_000_000);
}

fn close_reason(frames: &[OwnedFrame]) -> Option<u16> {
    frames.iter().find_map(|f| match f {
        OwnedFrame::Close { reason, .. } => Some(*reason),
        _ => None,
    })
}

#[test]
fn hello_is_optional_a_ping_first_is_answered() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    e.on_recv(0, &protocol::ping_frame([5; 8]), &mut io);
    assert_eq!(io.frames(0), [OwnedFrame::Pong([5; 8])]);
    assert_eq!(io.events[0].event, EventKind::Online);
}

#[test]
fn hello_must_be_first_and_only_once() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    e.on_recv(0, &protocol::ping_frame([0; 8]), &mut io);
    e.on_recv(0, &protocol::hello_frame(0, 0), &mut io);
    assert_eq!(
        close_reason(&io.frames(0)),
        Some(CloseReason::ProtocolError.code())
    );

    e.on_open(1, None, &mut io);
    e.on_recv(1, &protocol::hello_frame(0, 0), &mut io);
    e.on_recv(1, &protocol::hello_frame(0, 0), &mut io);
    let frames = io.frames(1);
    assert!(matches!(frames[0], OwnedFrame::Welcome { .. }));
    assert_eq!(
        close_reason(&frames),
        Some(CloseReason::ProtocolError.code())
    );
}

#[test]
fn replies_keep_the_order_of_the_frames_they_answer() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    let mut bytes = protocol::hello_frame(0, 2_000).to_vec();
    for i in 0..5u64 {
        bytes.extend(protocol::ping_frame(i.to_be_bytes()));
    }
    e.on_recv(0, &bytes, &mut io);
    let frames = io.frames(0);
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
    let (mut e, mut io) = one();
    at_tick(&mut e, 0);
    e.on_open(0, None, &mut io);
    e.on_open(1, None, &mut io);
    at_tick(&mut e, 250);
    let ping = protocol::ping_frame([1; 8]);
    e.on_recv(0, &ping[..12], &mut io); // partial
    e.on_recv(1, &ping, &mut io); // complete
    at_tick(&mut e, 301);
    e.on_tick(&mut io);
    assert_eq!(io.closed, [(0, false)], "only the partial one is evicted");
    assert_eq!(
        close_reason(&io.frames(0)),
        Some(CloseReason::Timeout.code())
    );
}

#[test]
fn every_kind_of_complete_frame_refreshes_liveness() {
    let (mut e, mut io) = one();
    at_tick(&mut e, 0);
    let frames: [Vec<u8>; 4] = [
        protocol::ping_frame([0; 8]).to_vec(),
        protocol::pong_frame([0; 8]).to_vec(),
        protocol::data_frame(b"x", 1024).unwrap(),
        protocol::hello_frame(0, 0).to_vec(),
    ];
    for (slot, _) in frames.iter().enumerate() {
        e.on_open(slot as u32, None, &mut io);
    }
    at_tick(&mut e, 250);
    for (slot, f) in frames.iter().enumerate() {
        e.on_recv(slot as u32, f, &mut io);
    }
    at_tick(&mut e, 549);
    e.on_tick(&mut io);
    assert!(io.closed.is_empty(), "{:?}", io.closed);
}

#[test]
fn evicted_with_close_timeout_sent_before_the_close() {
    let (mut e, mut io) = one();
    at_tick(&mut e, 0);
    e.on_open(3, None, &mut io);
    at_tick(&mut e, 300);
    e.on_tick(&mut io);
    assert!(io.closed.is_empty(), "never at exactly the timeout");
    at_tick(&mut e, 301);
    e.on_tick(&mut io);
    assert_eq!(io.closed, [(3, false)]);
    assert_eq!(
        close_reason(&io.frames(3)),
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
        let mut e = engine(0, 1, timing(timeout_ms / 2, timeout_ms), false, 10);
        let mut io = FakeIo::default();
        e.set_clock(0, 0);
        e.on_open(0, None, &mut io);
        e.set_clock((frame_ns / tick_ns) as u32, frame_ns);
        e.on_recv(0, &protocol::ping_frame([0; 8]), &mut io);
        let mut tick = (frame_ns / tick_ns) as u32 + 1;
        let evicted_ns = loop {
            let now_ns = u64::from(tick) * tick_ns;
            e.set_clock(tick, now_ns);
            e.on_tick(&mut io);
            if !io.closed.is_empty() {
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
    let mut e = engine(0, 1, timing(1_000, 3_000), true, 10);
    let mut io = FakeIo::default();
    at_tick(&mut e, 0);
    e.on_open(0, None, &mut io);
    e.on_recv(0, &protocol::hello_frame(0, 0), &mut io);
    io.frames(0);
    let mut probes = 0;
    for tick in 1..=200 {
        at_tick(&mut e, tick);
        e.on_tick(&mut io);
        for f in io.frames(0) {
            if let OwnedFrame::Ping(p) = f {
                probes += 1;
                e.on_recv(0, &protocol::pong_frame(p), &mut io);
            }
        }
    }
    assert!(io.closed.is_empty(), "a client answering probes stays");
    assert!(probes >= 15, "one probe per quiet interval: {probes}");
}

#[test]
fn without_probes_a_silent_client_gets_no_ping() {
    let (mut e, mut io) = one();
    at_tick(&mut e, 0);
    e.on_open(0, None, &mut io);
    for tick in 1..=300 {
        at_tick(&mut e, tick);
        e.on_tick(&mut io);
    }
    assert!(io.frames(0).is_empty());
}

#[test]
fn a_peer_close_is_not_answered_with_close() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    e.on_recv(
        0,
        &protocol::close_frame(CloseReason::Normal, "bye"),
        &mut io,
    );
    assert_eq!(io.closed.len(), 1);
    assert!(io.frames(0).is_empty());
    assert!(e.table.has(0, flag::PEER_DONE));
}

#[test]
fn every_server_close_carries_its_reason() {
    let (mut e, mut io) = one();
    let cases = [
        (CloseCause::Server(CloseReason::Shutdown), Some(5)),
        (CloseCause::Server(CloseReason::TakenOver), Some(4)),
        (CloseCause::PeerGone, None),
        (CloseCause::Reset, None),
        (CloseCause::SlowConsumer, None),
    ];
    for (slot, (cause, want)) in cases.into_iter().enumerate() {
        let slot = slot as u32;
        e.on_open(slot, None, &mut io);
        e.close(slot, cause, &mut io);
        assert_eq!(close_reason(&io.frames(slot)), want, "{cause:?}");
    }
}

#[test]
fn over_the_connection_limit_gets_overloaded() {
    let mut e = engine(0, 1, timing(10_000, 30_000), false, 2);
    let mut io = FakeIo::default();
    for slot in 0..3 {
        e.on_open(slot, None, &mut io);
    }
    assert_eq!(io.closed, [(2, false)]);
    assert_eq!(
        close_reason(&io.frames(2)),
        Some(CloseReason::Overloaded.code())
    );
}

#[test]
fn a_peer_that_does_not_read_is_closed_without_a_close_frame() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    e.on_recv(0, &protocol::ping_frame([0; 8]), &mut io);
    io.refuse_sends = true;
    e.on_recv(0, &protocol::ping_frame([0; 8]), &mut io);
    assert_eq!(io.closed, [(0, true)], "closed, queued bytes aborted");
    let kinds: Vec<_> = io.events.iter().map(|ev| (ev.event, ev.reason)).collect();
    assert_eq!(
        kinds,
        [
            (EventKind::Online, None),
            (EventKind::Offline, Some("overloaded"))
        ]
    );
}

#[test]
fn a_connection_closed_by_its_first_reply_never_goes_online() {
    let (mut e, mut io) = one();
    e.on_open(0, None, &mut io);
    io.refuse_sends = true;
    e.on_recv(0, &protocol::ping_frame([0; 8]), &mut io);
    assert_eq!(io.closed, [(0, true)]);
    assert!(
        io.events.is_empty(),
        "no online without its offline: {:?}",
        io.events
    );
}

#[test]
fn shutdown_closes_everyone_with_shutdown() {
    let (mut e, mut io) = one();
    for slot in 0..5 {
        e.on_open(slot, None, &mut io);
    }
    e.shutdown(&mut io);
    for slot in 0..5 {
        assert_eq!(
            close_reason(&io.frames(slot)),
            Some(CloseReason::Shutdown.code())
        );
    }
    assert_eq!(io.closed.len(), 5);
}

/// Several shards and their registries; the test delivers control messages.
struct Cluster {
    shards: Vec<(Engine, Registry, FakeIo)>,
}

impl Cluster {
    fn new(n: u16) -> Cluster {
        let shards = (0..n)
            .map(|id| {
                (
                    engine(id, n, timing(10_000, 30_000), false, 1000),
                    Registry::default(),
                    FakeIo::default(),
                )
            })
            .collect();
        Cluster { shards }
    }

    fn pending(&self) -> usize {
        self.shards.iter().map(|s| s.2.control.len()).sum()
    }

    /// Delivers the oldest message queued by shard `from`, if any.
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
        for (e, _, _) in &self.shards {
            for slot in 0..SLOTS {
                if e.table.state(slot) == State::Open && e.table.has(slot, flag::ONLINE) {
                    let id = e.table.client_id[slot as usize];
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
    let (e, _, io) = &mut c.shards[0];
    e.on_open(0, None, io);
    e.on_recv(0, &protocol::hello_frame(9, 0), io);
    c.deliver_all();
    assert!(matches!(
        c.shards[0].2.frames(0)[..],
        [OwnedFrame::Welcome { .. }]
    ));
    let (e, _, io) = &mut c.shards[1];
    e.on_open(5, None, io);
    e.on_recv(5, &protocol::hello_frame(9, 0), io);
    c.deliver_all();
    assert_eq!(
        close_reason(&c.shards[0].2.frames(0)),
        Some(CloseReason::TakenOver.code())
    );
    assert!(matches!(
        c.shards[1].2.frames(5)[..],
        [OwnedFrame::Welcome { .. }]
    ));
}

#[test]
fn anonymous_clients_never_take_each_other_over() {
    let mut c = Cluster::new(2);
    for slot in 0..3 {
        let (e, _, io) = &mut c.shards[0];
        e.on_open(slot, None, io);
        e.on_recv(slot, &protocol::hello_frame(0, 0), io);
    }
    c.deliver_all();
    assert!(c.shards[0].2.closed.is_empty());
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
                    let (e, _, io) = &mut c.shards[shard];
                    if e.table.state(slot) == State::Free {
                        e.on_open(slot, None, io);
                        e.on_recv(slot, &protocol::hello_frame(id, 0), io);
                    }
                }
                Step::Gone { shard, slot } => {
                    let (e, _, io) = &mut c.shards[shard];
                    if e.table.state(slot) == State::Open {
                        e.close(slot, CloseCause::PeerGone, io);
                    }
                    if e.table.state(slot) == State::Closing {
                        e.on_closed(slot);
                    }
                }
                Step::Deliver { shard } => c.deliver_from(shard),
            }
            for (id, n) in c.welcomed_holders() {
                prop_assert!(n <= 1, "client_id {id} held by {n} connections");
            }
        }
    }
}
