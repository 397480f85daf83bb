//! The client machine on a simulated clock: handshake, pings and deadlines,
//! server PINGs, CLOSE reasons, backoff, and properties over random inputs.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::protocol::{welcome_frame, HELLO_FRAME_LEN};

const INTERVAL_MS: u32 = 1_000;
const TIMEOUT_MS: u32 = 3_000;

fn config() -> ClientConfig {
    ClientConfig::new("127.0.0.1:7700")
        .client_id(42)
        .interval(Duration::from_millis(u64::from(INTERVAL_MS)))
        .connect_timeout(Duration::from_millis(5_000))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1_000),
            max_attempts: None,
        })
        .seed(7)
}

fn drain(m: &mut Machine) -> Vec<Output> {
    std::iter::from_fn(|| m.poll_output()).collect()
}

fn events(outputs: &[Output]) -> Vec<ClientEvent> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

fn frames(outputs: &[Output]) -> Vec<OwnedFrame> {
    let mut decoder = Decoder::new(1 << 20);
    for o in outputs {
        if let Output::Transmit(bytes) = o {
            decoder.feed(bytes);
        }
    }
    std::iter::from_fn(|| decoder.next_frame().unwrap()).collect()
}

fn welcome(session: u64) -> Vec<u8> {
    welcome_frame(session, INTERVAL_MS, TIMEOUT_MS).to_vec()
}

/// A machine that is live at t=0 with session 9.
fn live(config: &ClientConfig) -> Machine {
    let mut m = Machine::new(config);
    m.start(0);
    assert_eq!(m.poll_output(), Some(Output::Connect));
    m.connected(0);
    m.received(0, &welcome(9));
    drain(&mut m);
    assert_eq!(m.phase(), Phase::Live);
    m
}

fn ping_seq(f: &OwnedFrame) -> u64 {
    match f {
        OwnedFrame::Ping(p) => u64::from_be_bytes(*p),
        other => panic!("expected PING, got {other:?}"),
    }
}

#[test]
fn handshake_sends_hello_and_adopts_welcome() {
    let mut m = Machine::new(&config());
    m.start(0);
    assert_eq!(drain(&mut m), [Output::Connect]);
    m.connected(10);
    let out = drain(&mut m);
    assert!(matches!(&out[..], [Output::Transmit(b)] if b.len() == HELLO_FRAME_LEN));
    assert_eq!(
        frames(&out),
        [OwnedFrame::Hello {
            client_id: 42,
            interval_ms: INTERVAL_MS,
            token: Vec::new(),
        }]
    );
    assert_eq!(m.poll_timeout(), Some(5_010), "WELCOME deadline");
    // WELCOME with a different interval: the client adopts it.
    m.received(20, &welcome_frame(9, 250, 750));
    let out = drain(&mut m);
    assert_eq!(
        events(&out),
        [ClientEvent::Connected {
            session: 9,
            interval_ms: 250,
            timeout_ms: 750
        }]
    );
    assert_eq!(m.session(), Some(9));
    assert_eq!(m.poll_timeout(), Some(270), "first PING one interval on");
}

#[test]
fn pings_every_interval_and_pong_cancels_deadline() {
    let mut m = live(&config());
    for k in 1..=5u64 {
        let now = k * 1_000;
        assert_eq!(m.poll_timeout(), Some(now));
        m.handle_timeout(now);
        let sent = frames(&drain(&mut m));
        assert_eq!(sent.len(), 1);
        let seq = ping_seq(&sent[0]);
        assert_eq!(m.pings_outstanding(), 1);
        m.received(now + 30, &pong_frame(seq.to_be_bytes()));
        assert_eq!(m.pings_outstanding(), 0);
        assert_eq!(m.last_rtt_ms(), Some(30));
        assert!(drain(&mut m).is_empty());
    }
}

#[test]
fn missed_pong_declares_server_dead_at_the_deadline() {
    let mut m = live(&config());
    m.handle_timeout(1_000);
    drain(&mut m);
    // Default pong timeout is the interval: the deadline is 2_000, which is
    // also when the next ping is due; the deadline wins.
    m.handle_timeout(1_999);
    assert_eq!(m.phase(), Phase::Live);
    m.handle_timeout(2_000);
    let out = drain(&mut m);
    assert_eq!(out[0], Output::Disconnect);
    let ev = events(&out);
    assert_eq!(
        ev[0],
        ClientEvent::Disconnected {
            reason: DisconnectReason::PongTimeout
        }
    );
    let ClientEvent::Reconnecting { attempt, delay_ms } = ev[1] else {
        panic!("{ev:?}")
    };
    assert_eq!(attempt, 1);
    assert!(delay_ms <= 100);
    assert_eq!(m.poll_timeout(), Some(2_000 + delay_ms));
    m.handle_timeout(2_000 + delay_ms);
    assert_eq!(drain(&mut m), [Output::Connect]);
}

#[test]
fn a_later_pong_answers_older_pings() {
    let cfg = config().pong_timeout(Duration::from_millis(2_500));
    let mut m = live(&cfg);
    m.handle_timeout(1_000);
    m.handle_timeout(2_000);
    let sent = frames(&drain(&mut m));
    assert_eq!(m.pings_outstanding(), 2);
    m.received(2_100, &pong_frame(ping_seq(&sent[1]).to_be_bytes()));
    assert_eq!(m.pings_outstanding(), 0);
}

#[test]
fn answers_server_ping_with_same_payload() {
    let mut m = live(&config());
    m.received(5, &ping_frame(*b"probe!!!"));
    assert_eq!(frames(&drain(&mut m)), [OwnedFrame::Pong(*b"probe!!!")]);
}

#[test]
fn frames_split_at_every_byte_are_reassembled() {
    let mut m = Machine::new(&config());
    m.start(0);
    m.connected(0);
    let mut bytes = welcome(3);
    bytes.extend_from_slice(&ping_frame([1; 8]));
    for b in bytes {
        m.received(1, &[b]);
    }
    let out = drain(&mut m);
    assert!(matches!(
        events(&out)[0],
        ClientEvent::Connected { session: 3, .. }
    ));
    assert!(frames(&out).contains(&OwnedFrame::Pong([1; 8])));
}

#[test]
fn data_in_both_directions() {
    let mut m = Machine::new(&config());
    assert_eq!(m.send(b"x"), Err(ClientError::NotConnected));
    let mut m = live(&config());
    m.send(b"hello").unwrap();
    assert_eq!(
        frames(&drain(&mut m)),
        [OwnedFrame::Data(b"hello".to_vec())]
    );
    let big = vec![0u8; 1025];
    assert_eq!(
        m.send(&big),
        Err(ClientError::TooLarge {
            len: 1025,
            max: 1024
        })
    );
    m.received(1, &crate::protocol::data_frame(b"back", 1024).unwrap());
    assert_eq!(
        events(&drain(&mut m)),
        [ClientEvent::Data(b"back".to_vec())]
    );
}

#[test]
fn server_shutdown_reconnects_and_takeover_stops() {
    let mut m = live(&config());
    m.received(5, &close_frame(CloseReason::Shutdown, "bye"));
    let ev = events(&drain(&mut m));
    assert_eq!(
        ev[0],
        ClientEvent::Disconnected {
            reason: DisconnectReason::ServerClosed { reason: 5 }
        }
    );
    assert!(matches!(
        ev[1],
        ClientEvent::Reconnecting { attempt: 1, .. }
    ));

    let mut m = live(&config());
    m.received(5, &close_frame(CloseReason::TakenOver, "newer"));
    let ev = events(&drain(&mut m));
    assert_eq!(
        ev[1],
        ClientEvent::Stopped {
            reason: StopReason::TakenOver
        }
    );
    assert_eq!(m.phase(), Phase::Stopped);
    assert_eq!(m.poll_timeout(), None);

    let mut cfg = config();
    cfg.reconnect_on_takeover = true;
    let mut m = live(&cfg);
    m.received(5, &close_frame(CloseReason::TakenOver, "newer"));
    assert_eq!(m.phase(), Phase::Waiting);
}

fn hello_token(out: &[Output]) -> Vec<u8> {
    match &frames(out)[..] {
        [OwnedFrame::Hello { token, .. }] => token.clone(),
        other => panic!("expected one HELLO, got {other:?}"),
    }
}

#[test]
fn hello_carries_the_token_and_the_provider_is_called_per_connect() {
    let mut m = Machine::new(&config().token("tok.en.one"));
    m.start(0);
    drain(&mut m);
    m.connected(0);
    assert_eq!(hello_token(&drain(&mut m)), b"tok.en.one");

    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let cfg = config().token_provider(move || {
        let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        format!("fresh-{n}")
    });
    let mut m = Machine::new(&cfg);
    m.start(0);
    drain(&mut m);
    m.connected(0);
    assert_eq!(hello_token(&drain(&mut m)), b"fresh-0");
    m.transport_lost(1, DisconnectReason::Eof);
    drain(&mut m);
    m.handle_timeout(10_000);
    assert_eq!(drain(&mut m), [Output::Connect]);
    m.connected(10_000);
    assert_eq!(hello_token(&drain(&mut m)), b"fresh-1");
    assert!(
        !format!("{cfg:?}").contains("fresh"),
        "Debug never shows a token"
    );
}

#[test]
fn a_token_over_512_bytes_stops_instead_of_sending() {
    let mut m = Machine::new(&config().token("x".repeat(513)));
    m.start(0);
    drain(&mut m);
    m.connected(0);
    let out = drain(&mut m);
    assert!(frames(&out).is_empty(), "nothing sent");
    assert_eq!(
        events(&out),
        [ClientEvent::Stopped {
            reason: StopReason::TokenTooLong { len: 513 }
        }]
    );
}

#[test]
fn unauthorized_stops_without_a_reconnect_loop() {
    // Refused at HELLO (before WELCOME) and after a session alike.
    let mut m = Machine::new(&config().token("bad"));
    m.start(0);
    drain(&mut m);
    m.connected(0);
    drain(&mut m);
    m.received(5, &close_frame(CloseReason::Unauthorized, "no"));
    let out = drain(&mut m);
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(
        events(&out),
        [
            ClientEvent::ConnectFailed {
                reason: DisconnectReason::ServerClosed { reason: 7 }
            },
            ClientEvent::Stopped {
                reason: StopReason::Unauthorized
            }
        ]
    );
    assert_eq!((m.phase(), m.poll_timeout()), (Phase::Stopped, None));
    m.handle_timeout(1_000_000);
    assert!(drain(&mut m).is_empty(), "never tries again");

    let mut m = live(&config());
    m.received(5, &close_frame(CloseReason::Unauthorized, "no"));
    drain(&mut m);
    assert_eq!(m.phase(), Phase::Stopped);
}

#[test]
fn limited_backs_off_and_doubles_the_requested_interval() {
    let mut m = live(&config());
    assert_eq!(m.requested_interval_ms(), INTERVAL_MS);
    m.received(5, &close_frame(CloseReason::Limited, "slow down"));
    let ev = events(&drain(&mut m));
    assert!(
        matches!(ev[1], ClientEvent::Reconnecting { attempt: 2, .. }),
        "counted as a failure, so the backoff grows: {ev:?}"
    );
    assert_eq!(m.requested_interval_ms(), 2 * INTERVAL_MS);
    // Refused again before WELCOME: doubles again, backoff grows again.
    m.handle_timeout(10_000);
    drain(&mut m);
    m.connected(10_000);
    let hello = frames(&drain(&mut m));
    assert!(matches!(
        hello[..],
        [OwnedFrame::Hello { interval_ms, .. }] if interval_ms == 2 * INTERVAL_MS
    ));
    m.received(10_001, &close_frame(CloseReason::Limited, "slow down"));
    let ev = events(&drain(&mut m));
    assert!(
        matches!(ev[1], ClientEvent::Reconnecting { attempt: 3, .. }),
        "{ev:?}"
    );
    assert_eq!(m.requested_interval_ms(), 4 * INTERVAL_MS);
    assert_eq!(m.phase(), Phase::Waiting);
}

#[test]
fn limited_before_any_welcome_keeps_asking_for_the_server_default() {
    let mut cfg = config();
    cfg.interval = None;
    let mut m = Machine::new(&cfg);
    m.start(0);
    drain(&mut m);
    m.connected(0);
    drain(&mut m);
    m.received(1, &close_frame(CloseReason::Limited, ""));
    drain(&mut m);
    assert_eq!(m.requested_interval_ms(), 0, "not 1 ms");
    assert_eq!(m.phase(), Phase::Waiting);
}

#[test]
fn failed_attempts_back_off_exponentially_then_give_up() {
    let mut cfg = config();
    cfg.backoff.max_attempts = Some(4);
    let mut m = Machine::new(&cfg);
    m.start(0);
    let mut now = 0;
    let mut ceilings = Vec::new();
    for attempt in 1..=3u32 {
        assert_eq!(drain(&mut m), [Output::Connect]);
        m.connect_failed(
            now,
            DisconnectReason::Io(std::io::ErrorKind::ConnectionRefused),
        );
        let ev = events(&drain(&mut m));
        assert!(matches!(ev[0], ClientEvent::ConnectFailed { .. }));
        let ClientEvent::Reconnecting {
            attempt: a,
            delay_ms,
        } = ev[1]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(a, attempt + 1);
        assert!(delay_ms <= cfg.backoff.ceiling_ms(attempt));
        ceilings.push(cfg.backoff.ceiling_ms(attempt));
        now += delay_ms;
        m.handle_timeout(now);
    }
    assert_eq!(ceilings, [200, 400, 800]);
    // Fourth attempt: the handshake times out; that is the last allowed.
    assert_eq!(drain(&mut m), [Output::Connect]);
    m.connected(now);
    drain(&mut m);
    m.handle_timeout(now + 5_000);
    let ev = events(&drain(&mut m));
    assert_eq!(
        ev,
        [
            ClientEvent::ConnectFailed {
                reason: DisconnectReason::HandshakeTimeout
            },
            ClientEvent::Stopped {
                reason: StopReason::GaveUp { attempts: 4 }
            }
        ]
    );
}

#[test]
fn a_session_resets_the_attempt_count() {
    let mut m = Machine::new(&config());
    m.start(0);
    drain(&mut m);
    m.connect_failed(0, DisconnectReason::Eof);
    m.connect_failed(0, DisconnectReason::Eof); // stale: not connecting
    let ev = events(&drain(&mut m));
    assert_eq!(ev.len(), 2);
    m.handle_timeout(10_000);
    m.connected(10_000);
    m.received(10_000, &welcome(1));
    drain(&mut m);
    m.transport_lost(10_001, DisconnectReason::Eof);
    let ev = events(&drain(&mut m));
    assert!(matches!(
        ev[1],
        ClientEvent::Reconnecting { attempt: 1, .. }
    ));
}

#[test]
fn protocol_error_from_server_sends_close() {
    let mut m = live(&config());
    m.received(1, &[0xFF; 8]);
    let out = drain(&mut m);
    assert!(matches!(
        frames(&out)[..],
        [OwnedFrame::Close { reason: 2, .. }]
    ));
    assert!(matches!(
        events(&out)[0],
        ClientEvent::Disconnected {
            reason: DisconnectReason::Protocol(ProtocolError::BadMagic(0xFF))
        }
    ));
}

#[test]
fn close_says_goodbye_and_stops() {
    let mut m = live(&config());
    m.close(3);
    let out = drain(&mut m);
    assert!(matches!(
        frames(&out)[..],
        [OwnedFrame::Close { reason: 0, .. }]
    ));
    assert!(out.contains(&Output::Disconnect));
    assert_eq!(
        events(&out),
        [
            ClientEvent::Disconnected {
                reason: DisconnectReason::Local
            },
            ClientEvent::Stopped {
                reason: StopReason::Closed
            }
        ]
    );
    assert_eq!(m.send(b"x"), Err(ClientError::Stopped));
    // A connect that completes after close is dropped.
    m.connected(4);
    assert_eq!(drain(&mut m), [Output::Disconnect]);
}

/// A simulated server: answers each PING after `latency_ms` unless the PING
/// was sent at or after `silent_at_ms`. Returns when the client declared
/// the server dead.
fn run_until_dead(
    interval_ms: u32,
    pong_timeout_ms: u64,
    latency_ms: u64,
    silent_at_ms: u64,
) -> u64 {
    let cfg = config().pong_timeout(Duration::from_millis(pong_timeout_ms));
    let mut m = Machine::new(&cfg);
    m.start(0);
    m.connected(0);
    m.received(0, &welcome_frame(1, interval_ms, interval_ms * 3));
    drain(&mut m);
    let mut pongs: VecDeque<(u64, u64)> = VecDeque::new(); // (due, seq)
    let limit = silent_at_ms + u64::from(interval_ms) + pong_timeout_ms + 1;
    let mut now = 0;
    loop {
        let timer = m.poll_timeout().expect("live has a timer");
        let next = pongs.front().map_or(timer, |&(due, _)| due.min(timer));
        assert!(next >= now, "time runs forward");
        now = next;
        assert!(now <= limit, "not declared dead by {limit}");
        if let Some(&(due, seq)) = pongs.front() {
            if due == now {
                pongs.pop_front();
                m.received(now, &pong_frame(seq.to_be_bytes()));
            }
        }
        m.handle_timeout(now);
        for out in drain(&mut m) {
            match out {
                Output::Transmit(bytes) if now < silent_at_ms => {
                    let mut d = Decoder::new(1024);
                    d.feed(&bytes);
                    if let Some(OwnedFrame::Ping(p)) = d.next_frame().unwrap() {
                        pongs.push_back((now + latency_ms, u64::from_be_bytes(p)));
                    }
                }
                Output::Event(ClientEvent::Disconnected { reason }) => {
                    assert_eq!(reason, DisconnectReason::PongTimeout);
                    return now;
                }
                _ => {}
            }
        }
    }
}

#[test]
fn dead_server_is_declared_within_interval_plus_pong_timeout() {
    let dead_at = run_until_dead(1_000, 1_500, 40, 10_500);
    assert!((12_000..=13_000).contains(&dead_at), "{dead_at}");
}

#[derive(Clone, Debug)]
enum Input {
    Advance(u64),
    Connected,
    ConnectFailed,
    Bytes(Vec<u8>),
    Welcome,
    Pong,
    Lost,
    Send(usize),
    Close,
}

fn any_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        4 => (0u64..3_000).prop_map(Input::Advance),
        2 => Just(Input::Connected),
        1 => Just(Input::ConnectFailed),
        1 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Input::Bytes),
        2 => Just(Input::Welcome),
        3 => Just(Input::Pong),
        1 => Just(Input::Lost),
        1 => (0usize..1_100).prop_map(Input::Send),
        1 => Just(Input::Close),
    ]
}

/// Checks what one batch of outputs may say, given what came before.
#[derive(Default)]
struct Observer {
    live: bool,
    stopped: bool,
    last_ping: Option<u64>,
}

impl Observer {
    fn check(&mut self, out: &Output) {
        assert!(!self.stopped, "output after Stopped: {out:?}");
        match out {
            Output::Event(ClientEvent::Connected { .. }) => {
                assert!(!self.live, "Connected twice");
                self.live = true;
            }
            Output::Event(ClientEvent::Disconnected { .. }) => {
                assert!(self.live, "Disconnected without Connected");
                self.live = false;
            }
            Output::Event(ClientEvent::ConnectFailed { .. }) => assert!(!self.live),
            Output::Event(ClientEvent::Stopped { .. }) => self.stopped = true,
            Output::Transmit(bytes) => {
                let mut d = Decoder::new(1 << 20);
                d.feed(bytes);
                if let Some(OwnedFrame::Ping(p)) = d.next_frame().unwrap() {
                    self.last_ping = Some(u64::from_be_bytes(p));
                }
            }
            _ => {}
        }
    }
}

proptest! {
    /// A server that answers every PING within the deadline is never
    /// declared dead; one that falls silent is, within
    /// `[silent + pong_timeout, silent + interval + pong_timeout]`.
    #[test]
    fn dead_server_detection_bounds(
        interval_ms in 100u32..5_000,
        pong_timeout_ms in 50u64..10_000,
        latency_frac in 0.0f64..1.0,
        silent_at_ms in 0u64..60_000,
    ) {
        // The machine clamps the deadline to this many intervals.
        let pong_timeout_ms = pong_timeout_ms.min(u64::from(interval_ms) * PINGS_OUTSTANDING_MAX);
        let latency_ms = ((pong_timeout_ms - 1) as f64 * latency_frac) as u64;
        let dead_at = run_until_dead(interval_ms, pong_timeout_ms, latency_ms, silent_at_ms);
        prop_assert!(dead_at >= silent_at_ms + pong_timeout_ms, "early: {}", dead_at);
        prop_assert!(dead_at <= silent_at_ms + u64::from(interval_ms) + pong_timeout_ms);
    }

    /// Whatever happens, in whatever order: no panic, events stay well
    /// formed, timers never lie in the past, pings stay bounded.
    #[test]
    fn random_inputs_keep_invariants(
        inputs in proptest::collection::vec(any_input(), 1..120),
        seed: u64,
    ) {
        let mut m = Machine::new(&config().seed(seed));
        let mut obs = Observer::default();
        let mut now = 0u64;
        m.start(now);
        for input in inputs {
            match input {
                Input::Advance(ms) => now += ms,
                // Drivers report a connect only after Output::Connect.
                Input::Connected if m.phase() == Phase::Connecting => m.connected(now),
                Input::Connected => {}
                Input::ConnectFailed => m.connect_failed(now, DisconnectReason::Eof),
                Input::Bytes(b) => m.received(now, &b),
                Input::Welcome => m.received(now, &welcome(5)),
                Input::Pong => {
                    let seq = obs.last_ping.unwrap_or(0);
                    m.received(now, &pong_frame(seq.to_be_bytes()));
                }
                Input::Lost => m.transport_lost(now, DisconnectReason::Eof),
                Input::Send(n) => {
                    let r = m.send(&vec![1; n]);
                    prop_assert_eq!(r.is_ok(), m.phase() == Phase::Live && n <= 1024);
                }
                Input::Close => m.close(now),
            }
            m.handle_timeout(now);
            if let Some(t) = m.poll_timeout() {
                prop_assert!(t > now, "timer {} not after now {}", t, now);
            }
            prop_assert!(m.pings_outstanding() as u64 <= PINGS_OUTSTANDING_MAX + 1);
            while let Some(out) = m.poll_output() {
                obs.check(&out);
            }
            prop_assert_eq!(obs.live, m.phase() == Phase::Live);
            prop_assert_eq!(obs.stopped, m.phase() == Phase::Stopped);
        }
    }
}
