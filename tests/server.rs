//! Loopback integration tests: each PROTOCOL.md rule against a real server,
//! in both io modes. Timing is only ever asserted as a lower bound ("never
//! early"); upper bounds get the generous [`common::SLACK`].

mod common;

use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use common::{args, metric, start, stop, timed_args, wait_metric, Got, Peer, MODES};
use ringbeat::config::{IoMode, ServeArgs};
use ringbeat::protocol::{self, CloseReason, OwnedFrame};
use ringbeat::server::Server;

const NORMAL: u16 = 0;
const TIMEOUT: u16 = 1;
const PROTOCOL_ERROR: u16 = 2;
const FRAME_TOO_LARGE: u16 = 3;
const TAKEN_OVER: u16 = 4;
const SHUTDOWN: u16 = 5;
const OVERLOADED: u16 = 6;

fn each_mode(test: fn(IoMode)) {
    for mode in MODES {
        eprintln!("io mode {mode:?}");
        test(mode);
    }
}

/// In each io mode: a server from `make`, the test against its first
/// listener, then a clean stop.
fn each_server(make: fn(IoMode) -> ServeArgs, test: fn(&Server, SocketAddr)) {
    for mode in MODES {
        eprintln!("io mode {mode:?}");
        let server = start(make(mode));
        test(&server, server.local_addrs()[0]);
        stop(server);
    }
}

#[test]
fn close_codes_match_the_protocol_table() {
    let table = [
        (CloseReason::Normal, NORMAL),
        (CloseReason::Timeout, TIMEOUT),
        (CloseReason::ProtocolError, PROTOCOL_ERROR),
        (CloseReason::FrameTooLarge, FRAME_TOO_LARGE),
        (CloseReason::TakenOver, TAKEN_OVER),
        (CloseReason::Shutdown, SHUTDOWN),
        (CloseReason::Overloaded, OVERLOADED),
    ];
    for (reason, code) in table {
        assert_eq!(reason.code(), code);
    }
}

#[test]
fn pongs_echo_pings_in_order() {
    each_server(args, |_, addr| {
        let mut peer = Peer::connect(addr);
        let batch: Vec<u8> = (0..200u64)
            .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
            .collect();
        peer.send(&batch);
        for i in 0..200 {
            peer.expect_pong(i);
        }
    });
}

/// A 10 s interval, so that a HELLO can ask for a shorter one.
fn ten_second_interval(mode: IoMode) -> ServeArgs {
    timed_args(mode, 10_000, 30_000, 100)
}

#[test]
fn hello_is_optional_and_answered_with_welcome() {
    each_server(ten_second_interval, |_, addr| {
        let mut anonymous = Peer::connect(addr);
        anonymous.ping(7);
        anonymous.expect_pong(7);

        let mut named = Peer::connect(addr);
        named.hello(1001, 0);
        let (_, interval_ms, timeout_ms) = named.expect_welcome();
        assert_eq!((interval_ms, timeout_ms), (10_000, 30_000));
        // A requested interval is clamped; the timeout keeps the 1:3 ratio.
        let mut custom = Peer::connect(addr);
        custom.hello(1002, 2_000);
        let (_, interval_ms, timeout_ms) = custom.expect_welcome();
        assert_eq!((interval_ms, timeout_ms), (2_000, 6_000));
        let mut tiny = Peer::connect(addr);
        tiny.hello(1003, 1);
        assert_eq!(tiny.expect_welcome().1, 100);
    });
}

#[test]
fn hello_after_the_first_frame_is_a_protocol_error() {
    each_server(args, |_, addr| {
        let mut late = Peer::connect(addr);
        late.ping(1);
        late.expect_pong(1);
        late.hello(5, 0);
        late.expect_close(PROTOCOL_ERROR);

        let mut twice = Peer::connect(addr);
        twice.hello(6, 0);
        twice.expect_welcome();
        twice.hello(6, 0);
        twice.expect_close(PROTOCOL_ERROR);
    });
}

#[test]
fn malformed_headers_close_only_that_connection() {
    each_server(args, |server, addr| {
        let mut bystander = Peer::connect(addr);
        bystander.ping(1);
        bystander.expect_pong(1);

        let ping = protocol::ping_frame([0; 8]);
        let mut cases: Vec<(&str, Vec<u8>, u16)> = Vec::new();
        let mut bad_magic = ping.to_vec();
        bad_magic[0] = b'X';
        cases.push(("magic", bad_magic, PROTOCOL_ERROR));
        let mut bad_version = ping.to_vec();
        bad_version[1] = 2;
        cases.push(("version", bad_version, PROTOCOL_ERROR));
        let mut bad_kind = ping.to_vec();
        bad_kind[2] = 99;
        cases.push(("kind", bad_kind, PROTOCOL_ERROR));
        let mut bad_flags = ping.to_vec();
        bad_flags[3] = 1;
        cases.push(("flags", bad_flags, PROTOCOL_ERROR));
        let short_ping = [0x52, 1, 3, 0, 0, 0, 0, 4, 1, 2, 3, 4];
        cases.push(("fixed size", short_ping.to_vec(), PROTOCOL_ERROR));
        let huge = [0x52, 1, 5, 0, 0, 0x10, 0, 0];
        cases.push(("len over max", huge.to_vec(), FRAME_TOO_LARGE));
        cases.push(("http", b"GET / HTTP/1.1\r\n\r\n".to_vec(), PROTOCOL_ERROR));
        for (name, bytes, reason) in cases {
            eprintln!("case {name}");
            let mut peer = Peer::connect(addr);
            peer.send(&bytes);
            peer.expect_close(reason);
        }
        bystander.ping(2);
        bystander.expect_pong(2);
        assert!(metric(server.stats(), "ringbeat_protocol_errors_total") >= 7);
    });
}

#[test]
fn one_byte_dribble_is_reassembled() {
    each_server(args, |_, addr| {
        let mut peer = Peer::connect(addr);
        let mut bytes = protocol::hello_frame(77, 0).to_vec();
        bytes.extend(protocol::ping_frame(9u64.to_be_bytes()));
        bytes.extend(protocol::data_frame(b"hello", 1024).unwrap());
        bytes.extend(protocol::ping_frame(10u64.to_be_bytes()));
        for b in bytes {
            peer.send(&[b]);
            std::thread::sleep(Duration::from_millis(1));
        }
        peer.expect_welcome();
        peer.expect_pong(9);
        peer.expect_pong(10);
    });
}

/// Short interval/timeout/tick so that eviction is quick to observe.
fn fast_clock(mode: IoMode) -> ServeArgs {
    timed_args(mode, 100, 400, 20)
}

#[test]
fn silent_connection_is_evicted_never_early() {
    each_server(fast_clock, |server, addr| {
        let mut peer = Peer::connect(addr);
        peer.ping(1);
        peer.expect_pong(1);
        let last_frame = Instant::now();
        peer.expect_close(TIMEOUT);
        let silent_for = last_frame.elapsed();
        assert!(
            silent_for >= Duration::from_millis(400),
            "evicted after {silent_for:?}, before the 400ms timeout"
        );
        assert_eq!(wait_metric(server.stats(), "ringbeat_evicted_total", 1), 1);
    });
}

#[test]
fn partial_frames_do_not_refresh_liveness() {
    each_server(fast_clock, |_, addr| {
        let mut peer = Peer::connect(addr);
        peer.ping(1);
        peer.expect_pong(1);
        let last_frame = Instant::now();
        // One byte of a PING every 50ms: bytes keep arriving, but the frame
        // would complete only after 800ms, twice the timeout.
        let frame = protocol::ping_frame([0; 8]);
        let writer = peer.stream.try_clone().unwrap();
        let dribbler = std::thread::spawn(move || {
            let mut w = writer;
            for b in frame {
                if std::io::Write::write_all(&mut w, &[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        peer.expect_close(TIMEOUT);
        assert!(last_frame.elapsed() >= Duration::from_millis(400));
        dribbler.join().unwrap();
    });
}

/// A 100 ms interval against a 1.5 s timeout.
fn tenth_second_interval(mode: IoMode) -> ServeArgs {
    timed_args(mode, 100, 1500, 20)
}

#[test]
fn every_complete_frame_keeps_a_connection_alive() {
    each_server(tenth_second_interval, |server, addr| {
        let mut peer = Peer::connect(addr);
        // DATA and PONG frames only (no PING) for four timeouts' worth.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            peer.send(&protocol::data_frame(b"x", 1024).unwrap());
            peer.send(&protocol::pong_frame([0; 8]));
            std::thread::sleep(Duration::from_millis(100));
        }
        peer.ping(3);
        peer.expect_pong(3);
        assert_eq!(metric(server.stats(), "ringbeat_evicted_total"), 0);
    });
}

/// The server sends probe PINGs every 300 ms.
fn probing(mode: IoMode) -> ServeArgs {
    ServeArgs {
        probe: true,
        ..timed_args(mode, 300, 1500, 20)
    }
}

#[test]
fn probes_keep_a_pong_only_client_alive() {
    each_server(probing, |server, addr| {
        let mut peer = Peer::connect(addr);
        peer.hello(0, 0);
        peer.expect_welcome();
        let until = Instant::now() + Duration::from_secs(5);
        let mut probes = 0;
        while Instant::now() < until {
            match peer.expect_frame() {
                OwnedFrame::Ping(p) => {
                    probes += 1;
                    peer.send(&protocol::pong_frame(p));
                }
                other => panic!("expected a probe PING, got {other:?}"),
            }
        }
        assert!(probes >= 2, "only {probes} probes in 5s");
        assert_eq!(metric(server.stats(), "ringbeat_evicted_total"), 0);
    });
}

#[test]
fn peer_close_is_not_answered_with_close() {
    each_server(args, |server, addr| {
        let mut peer = Peer::connect(addr);
        peer.ping(1);
        peer.expect_pong(1);
        peer.send(&protocol::close_frame(CloseReason::Normal, "bye"));
        peer.stream.shutdown(Shutdown::Write).unwrap();
        peer.expect_end();
        let series = r#"ringbeat_closed_total{reason="normal"}"#;
        assert_eq!(wait_metric(server.stats(), series, 1), 1);
    });
}

#[test]
fn reset_in_mid_frame_is_counted_and_harmless() {
    each_server(args, |server, addr| {
        let mut bystander = Peer::connect(addr);
        let mut peer = Peer::connect(addr);
        peer.send(&protocol::ping_frame([1; 8])[..5]);
        std::thread::sleep(Duration::from_millis(50));
        let sock = socket2::SockRef::from(&peer.stream);
        sock.set_linger(Some(Duration::ZERO)).unwrap();
        drop(peer);
        let series = r#"ringbeat_closed_total{reason="reset"}"#;
        assert_eq!(wait_metric(server.stats(), series, 1), 1);
        bystander.ping(2);
        bystander.expect_pong(2);
    });
}

#[test]
fn a_mebibyte_of_pings_is_answered_in_full() {
    each_server(args, |_, addr| {
        let mut peer = Peer::connect(addr);
        const FRAMES: u64 = (1 << 20) / 16;
        let writer = peer.stream.try_clone().unwrap();
        let flood = std::thread::spawn(move || {
            let mut w = writer;
            let bytes: Vec<u8> = (0..FRAMES)
                .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
                .collect();
            std::io::Write::write_all(&mut w, &bytes).unwrap();
        });
        for i in 0..FRAMES {
            peer.expect_pong(i);
        }
        flood.join().unwrap();
    });
}

/// Held input past one 500 ms interval means the peer is not reading; the
/// 20 s timeout never fires first.
fn long_timeout(mode: IoMode) -> ServeArgs {
    timed_args(mode, 500, 20_000, 100)
}

#[test]
fn a_peer_that_never_reads_is_closed_as_overloaded() {
    each_server(long_timeout, |server, addr| {
        let mut bystander = Peer::connect(addr);
        let peer = Peer::connect(addr);
        peer.stream
            .set_write_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let chunk: Vec<u8> = (0..4096u64)
            .flat_map(|i| protocol::ping_frame(i.to_be_bytes()))
            .collect();
        let mut w = &peer.stream;
        // Bounded: at most 256 MiB of PINGs; the server gives up long before.
        for _ in 0..4096 {
            if std::io::Write::write_all(&mut w, &chunk).is_err() {
                break;
            }
            if metric(
                server.stats(),
                r#"ringbeat_closed_total{reason="overloaded"}"#,
            ) > 0
            {
                break;
            }
        }
        let series = r#"ringbeat_closed_total{reason="overloaded"}"#;
        assert_eq!(wait_metric(server.stats(), series, 1), 1);
        let decided = Instant::now();
        // Its queued bytes are dropped (abort), not flushed for the 2 s
        // linger: the slot is free well before.
        while metric(server.stats(), "ringbeat_connections") > 1 {
            assert!(decided.elapsed() < Duration::from_secs(1), "slot held");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(metric(server.stats(), "ringbeat_recv_paused_total") >= 1);
        bystander.ping(5);
        bystander.expect_pong(5);
    });
}

/// Takeovers without the rate limit (it has its own test).
fn unlimited_takeovers(mode: IoMode) -> ServeArgs {
    ServeArgs {
        max_takeovers_per_min: Some(0),
        ..args(mode)
    }
}

#[test]
fn takeover_closes_the_older_connection_on_any_shard() {
    each_server(unlimited_takeovers, |_, addr| {
        let mut shards_seen = [false; 2];
        let mut holder: Option<Peer> = None;
        for _ in 0..12 {
            let mut peer = Peer::connect(addr);
            peer.hello(4242, 0);
            let (session, _, _) = peer.expect_welcome();
            shards_seen[(session >> 54) as usize & 1] = true;
            if let Some(mut old) = holder.take() {
                old.expect_close(TAKEN_OVER);
            }
            holder = Some(peer);
        }
        // Anonymous clients never take each other over.
        let mut a = Peer::connect(addr);
        let mut b = Peer::connect(addr);
        a.hello(0, 0);
        b.hello(0, 0);
        let _ = (a.expect_frame(), b.expect_frame());
        a.ping(1);
        a.expect_pong(1);
        eprintln!("shards seen: {shards_seen:?}");
    });
}

/// Room for three connections.
fn three_connections_max(mode: IoMode) -> ServeArgs {
    ServeArgs {
        max_connections: Some(3),
        ..args(mode)
    }
}

#[test]
fn connections_over_the_limit_get_overloaded() {
    each_server(three_connections_max, |_, addr| {
        let mut held: Vec<Peer> = (0..3).map(|_| Peer::connect(addr)).collect();
        for (i, p) in held.iter_mut().enumerate() {
            p.ping(i as u64);
            p.expect_pong(i as u64);
        }
        let mut extra = Peer::connect(addr);
        extra.expect_close(OVERLOADED);
    });
}

#[test]
fn shutdown_sends_close_shutdown_to_everyone() {
    each_mode(|mode| {
        let server = start(args(mode));
        let addr = server.local_addrs()[0];
        let mut peers: Vec<Peer> = (0..20).map(|_| Peer::connect(addr)).collect();
        for p in &mut peers {
            p.ping(1);
            p.expect_pong(1);
        }
        server.shutdown();
        for p in &mut peers {
            p.expect_close(SHUTDOWN);
        }
        server.join().expect("clean exit");
    });
}

#[test]
fn events_report_online_and_offline() {
    use ringbeat::events::EventKind;
    each_mode(|mode| {
        let config = ringbeat::config::Config::resolve(args(mode)).unwrap();
        let (server, events) = ringbeat::server::Server::start_with_events(config).unwrap();
        let mut peer = Peer::connect(server.local_addrs()[0]);
        peer.hello(99, 0);
        peer.expect_welcome();
        let online = events.recv_timeout(common::SLACK).expect("online event");
        assert_eq!((online.event, online.client_id), (EventKind::Online, 99));
        assert!(online.peer.is_some());
        peer.send(&[0xff; 8]);
        peer.expect_close(PROTOCOL_ERROR);
        let offline = events.recv_timeout(common::SLACK).expect("offline event");
        assert_eq!(offline.event, EventKind::Offline);
        assert_eq!(offline.reason, Some("protocol_error"));
        assert_eq!(offline.session, online.session);
        let _ = Got::Eof;
        stop(server);
    });
}

#[test]
fn a_half_close_is_reported_as_closed_not_reset() {
    use ringbeat::events::EventKind;
    each_mode(|mode| {
        let config = ringbeat::config::Config::resolve(args(mode)).unwrap();
        let (server, events) = ringbeat::server::Server::start_with_events(config).unwrap();
        let addr = server.local_addrs()[0];
        const N: usize = 2_000;
        for i in 0..N as u64 {
            let mut peer = Peer::connect(addr);
            peer.ping(i);
            if i % 2 == 0 {
                // Half-close, read to the end.
                peer.expect_pong(i);
                peer.stream.shutdown(Shutdown::Write).unwrap();
                peer.expect_end();
            } else {
                // Half-close and go at once, the PONG maybe unread (the
                // kernel may then answer it with a reset).
                peer.stream.shutdown(Shutdown::Write).unwrap();
            }
        }
        let mut reasons = std::collections::HashMap::new();
        for _ in 0..2 * N {
            let ev = events.recv_timeout(common::SLACK).expect("event");
            if ev.event == EventKind::Offline {
                *reasons.entry(ev.reason.unwrap()).or_insert(0) += 1;
            }
        }
        assert_eq!(reasons.get("closed"), Some(&N), "{mode:?}: {reasons:?}");
        stop(server);
    });
}

/// One takeover of an id per minute after the burst of 10.
fn slow_takeovers(mode: IoMode) -> ServeArgs {
    ServeArgs {
        max_takeovers_per_min: Some(1),
        ..args(mode)
    }
}

#[test]
fn takeovers_past_the_rate_limit_get_limited_and_the_holder_stays() {
    each_server(slow_takeovers, |server, addr| {
        let mut holder = Peer::connect(addr);
        holder.hello(77, 0);
        holder.expect_welcome();
        for _ in 0..10 {
            let mut p = Peer::connect(addr);
            p.hello(77, 0);
            p.expect_welcome();
            holder.expect_close(TAKEN_OVER);
            holder = p;
        }
        for _ in 0..20 {
            let mut p = Peer::connect(addr);
            p.hello(77, 0);
            p.expect_welcome();
            p.expect_close(CloseReason::Limited.code());
        }
        let series = r#"ringbeat_limited_total{limit="takeover"}"#;
        assert_eq!(metric(server.stats(), series), 20);
        holder.ping(2);
        holder.expect_pong(2);
    });
}

/// A small server: 200 connections.
fn two_hundred_max(mode: IoMode) -> ServeArgs {
    ServeArgs {
        max_connections: Some(200),
        ..args(mode)
    }
}

#[test]
fn a_split_frame_is_served_while_most_connections_hold_one_byte() {
    each_server(two_hundred_max, |server, addr| {
        // Three quarters of capacity each send one byte of a header.
        let attackers: Vec<Peer> = (0..150)
            .map(|_| {
                let mut p = Peer::connect(addr);
                p.send(&[0x52]);
                p
            })
            .collect();
        let mut honest = Peer::connect(addr);
        let ping = protocol::ping_frame(9u64.to_be_bytes());
        honest.send(&ping[..3]);
        std::thread::sleep(Duration::from_millis(50)); // two segments
        honest.send(&ping[3..]);
        honest.expect_pong(9);
        assert_eq!(metric(server.stats(), "ringbeat_stash_exhausted_total"), 0);
        drop(attackers);
    });
}

/// At most five connections per address.
fn five_per_address(mode: IoMode) -> ServeArgs {
    ServeArgs {
        max_conns_per_ip: Some(5),
        ..args(mode)
    }
}

#[test]
fn connections_past_the_per_address_limit_get_limited() {
    each_server(five_per_address, |server, addr| {
        let mut held: Vec<Peer> = (0..5u64)
            .map(|i| {
                let mut p = Peer::connect(addr);
                p.ping(i);
                p.expect_pong(i);
                p
            })
            .collect();
        let mut sixth = Peer::connect(addr);
        sixth.expect_close(CloseReason::Limited.code());
        let series = r#"ringbeat_limited_total{limit="ip"}"#;
        assert_eq!(metric(server.stats(), series), 1);
        held.pop(); // one closes: room again
        let mut again = Peer::connect(addr);
        let mut ok = false;
        for i in 0..50 {
            again.ping(i);
            if let Got::Frame(OwnedFrame::Pong(_)) = again.next() {
                ok = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
            again = Peer::connect(addr);
        }
        assert!(ok, "a slot came free after a close");
    });
}
