//! Every peer may be hostile: per-slot stash room, token checks at HELLO,
//! the HELLO pool's reclaim, per-address and takeover limits, the ping-rate
//! guard and PROXY v2 headers, on the simulated kernel.

mod sim;

use sim::*;

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
