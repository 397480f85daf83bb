//! The close lifecycle the engine owns, on the simulated kernel: every CLOSE
//! frame delivered (none needs send-pool room), the linger, aborts, one
//! offline per online connection, and a late shard that is late, never
//! wrong.

mod sim;

use sim::*;

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
