//! PROTOCOL.md's rules against the sans-IO engine on a simulated clock and
//! a simulated kernel (`sim`): frames, liveness, eviction bounds, probes,
//! closes and takeover across shards.

mod sim;

use sim::*;

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

/// Records the kick tickets the engine answers.
#[derive(Debug, Default)]
struct Acks(std::sync::Mutex<Vec<u64>>);

impl ringbeat::engine::KickAck for Acks {
    fn kicked(&self, ticket: u64) {
        self.0.lock().unwrap().push(ticket);
    }
}

#[test]
fn a_cluster_kick_is_answered_only_once_the_holder_is_closed() {
    use ringbeat::mailbox::ToHome;
    let acks = Arc::new(Acks::default());
    let shards = (0..2)
        .map(|id| {
            let ack = acks.clone() as Arc<dyn ringbeat::engine::KickAck>;
            Sim::with(id, 2, timing(10_000, 30_000), false, 1000, 256, |c| {
                c.kick_ack = Some(ack)
            })
        })
        .collect();
    let mut c = Cluster { shards };
    // An id whose home is shard 1, held on shard 0: the eviction crosses.
    let id = (1..)
        .find(|&id| ringbeat::registry::home_shard(id, 2) == 1)
        .unwrap();
    c.shards[0].open(0);
    c.shards[0].recv(0, &protocol::hello_frame(id, 0));
    c.deliver_all();
    c.shards[1].deliver(ShardMsg::Home(ToHome::Kick {
        client_id: id,
        ticket: 7,
    }));
    c.shards[1].settle();
    assert!(
        acks.0.lock().unwrap().is_empty(),
        "answered before the holder's close"
    );
    c.deliver_all();
    assert_eq!(
        close_reason(&c.shards[0].frames(0)),
        Some(CloseReason::TakenOver.code())
    );
    assert_eq!(*acks.0.lock().unwrap(), [7]);
    // No holder: nothing to wait for.
    c.shards[1].deliver(ShardMsg::Home(ToHome::Kick {
        client_id: id,
        ticket: 8,
    }));
    assert_eq!(*acks.0.lock().unwrap(), [7, 8]);
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
