//! Detection beyond a fixed timeout, on the simulated clock: offline grace
//! (one `resumed` instead of offline + online) and phi accrual suspicion.

mod sim;

use sim::*;

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
