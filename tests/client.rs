//! The client library against the real server on loopback: a server that
//! goes silent (a proxy stops forwarding) or is killed (SIGKILL) is noticed
//! within the client's deadline and the client comes back when the server
//! does; a second client with the same id takes over; and when a server
//! restarts under 1,000 clients their reconnects are spread out.
//!
//! Timing asserts are upper bounds with generous slack (a loaded 2-core CI
//! box), or statistics over many clients, never a tight wall-clock figure.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::SLACK;
use crossbeam_channel::Receiver;
use ringbeat::client::{Backoff, Client, ClientConfig, ClientEvent, DisconnectReason, StopReason};
use ringbeat::config::IoMode;
use ringbeat::protocol::CloseReason;

const BIN: &str = env!("CARGO_BIN_EXE_ringbeat");
const INTERVAL: Duration = Duration::from_millis(200);
const PONG_TIMEOUT: Duration = Duration::from_millis(1_000);

fn quick_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_millis(400),
        max_attempts: None,
    }
}

fn client_config(server: SocketAddr, client_id: u64) -> ClientConfig {
    ClientConfig::new(server.to_string())
        .client_id(client_id)
        .interval(INTERVAL)
        .pong_timeout(PONG_TIMEOUT)
        .connect_timeout(Duration::from_secs(1))
        .backoff(quick_backoff())
}

/// Waits for the first event that `want` accepts; panics after `within`.
fn wait_for(
    events: &Receiver<ClientEvent>,
    within: Duration,
    what: &str,
    want: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(e) if want(&e) => return e,
            Ok(e) => seen.push(e),
            Err(_) => panic!("no {what} within {within:?}; saw {seen:?}"),
        }
    }
}

fn wait_connected(events: &Receiver<ClientEvent>) -> u64 {
    match wait_for(events, SLACK, "Connected", |e| {
        matches!(e, ClientEvent::Connected { .. })
    }) {
        ClientEvent::Connected { session, .. } => session,
        _ => unreachable!(),
    }
}

fn wait_disconnected(events: &Receiver<ClientEvent>) -> DisconnectReason {
    match wait_for(events, SLACK, "Disconnected", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    }) {
        ClientEvent::Disconnected { reason } => reason,
        _ => unreachable!(),
    }
}

/// A TCP proxy that can black-hole traffic: while frozen it reads and
/// drops every byte in both directions, as a dead path or a hung server
/// would, without the FIN or RST a killed process gives.
struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let frozen = Arc::new(AtomicBool::new(false));
        let f = frozen.clone();
        // Ends with the test process; each pump ends with its connection.
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let f = f.clone();
                    std::thread::spawn(move || pump(from, to, &f));
                }
            }
        });
        Proxy { addr, frozen }
    }

    fn freeze(&self, on: bool) {
        self.frozen.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, frozen: &AtomicBool) {
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) if frozen.load(Ordering::SeqCst) => {}
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[test]
fn silent_server_is_declared_dead_within_the_deadline_then_reconnected() {
    let server = common::start(common::timed_args(IoMode::Auto, 200, 2_000, 20));
    let proxy = Proxy::start(server.local_addrs()[0]);
    let client = Client::start(client_config(proxy.addr, 1)).unwrap();
    let first = wait_connected(client.events());
    std::thread::sleep(INTERVAL * 3); // a few PING/PONG rounds

    proxy.freeze(true);
    let frozen_at = Instant::now();
    let reason = wait_disconnected(client.events());
    let noticed = frozen_at.elapsed();
    assert_eq!(reason, DisconnectReason::PongTimeout);
    // Deadline: the next PING is at most one interval away, then its PONG
    // has PONG_TIMEOUT. Slack for the loaded box on top.
    let deadline = INTERVAL + PONG_TIMEOUT;
    assert!(
        noticed <= deadline + Duration::from_secs(5),
        "noticed after {noticed:?}; deadline {deadline:?}"
    );
    assert!(
        noticed >= PONG_TIMEOUT / 2,
        "declared dead after only {noticed:?}"
    );
    // While the path is dead, attempts fail their handshake and back off.
    wait_for(client.events(), SLACK, "a failed attempt", |e| {
        matches!(
            e,
            ClientEvent::ConnectFailed {
                reason: DisconnectReason::HandshakeTimeout
            }
        )
    });
    proxy.freeze(false);
    let second = wait_connected(client.events());
    assert_ne!(first, second, "a new session");
    assert!(client.is_connected());
    client.send(b"back").unwrap();
    client.close();
    common::stop(server);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn_server(port: u16) -> Child {
    Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--shards", "1", "--interval", "200ms", "--timeout", "2s"])
        .args(["--tick", "20ms"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ringbeat serve")
}

#[test]
fn killed_server_is_noticed_and_client_reconnects_when_it_is_back() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = spawn_server(port);
    // The client may start before the server listens: it backs off and retries.
    let client = Client::start(client_config(addr, 2)).unwrap();
    let first = wait_connected(client.events());

    child.kill().unwrap(); // SIGKILL: the kernel closes its sockets
    child.wait().unwrap();
    let killed_at = Instant::now();
    let reason = wait_disconnected(client.events());
    let noticed = killed_at.elapsed();
    assert!(
        noticed <= INTERVAL + PONG_TIMEOUT + Duration::from_secs(5),
        "noticed after {noticed:?} ({reason})"
    );
    // Refused, or — in fast mode, until the kernel has torn the dead
    // process's io_uring down — accepted into a listener nobody serves, so
    // the handshake times out. Either way the client backs off and retries.
    wait_for(client.events(), SLACK, "a failed attempt", |e| {
        matches!(e, ClientEvent::ConnectFailed { .. })
    });

    let mut child = spawn_server(port);
    let second = match wait_for(client.events(), SLACK * 3, "Connected", |e| {
        matches!(e, ClientEvent::Connected { .. })
    }) {
        ClientEvent::Connected { session, .. } => session,
        _ => unreachable!(),
    };
    assert_ne!(first, second);
    client.close();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn same_client_id_takes_over_and_the_old_client_stops() {
    let server = common::start(common::timed_args(IoMode::Auto, 200, 2_000, 20));
    let addr = server.local_addrs()[0];
    let old = Client::start(client_config(addr, 77)).unwrap();
    wait_connected(old.events());
    let new = Client::start(client_config(addr, 77)).unwrap();
    wait_connected(new.events());

    let reason = wait_disconnected(old.events());
    assert_eq!(reason.close_reason(), Some(CloseReason::TakenOver));
    let stopped = wait_for(old.events(), SLACK, "Stopped", |e| {
        matches!(e, ClientEvent::Stopped { .. })
    });
    assert_eq!(
        stopped,
        ClientEvent::Stopped {
            reason: StopReason::TakenOver
        }
    );
    // The old client does not come back to flap with the new one.
    assert!(old.events().recv_timeout(INTERVAL * 5).is_err());
    assert!(new.is_connected());
    assert!(new.events().try_recv().is_err(), "the new session is quiet");
    new.send(b"still here").unwrap();
    new.close();
    common::stop(server);
}

/// Full jitter spreads the reconnects of a fleet that lost its server at
/// the same instant. Measured: when each client's new session began. A
/// herd (no jitter) puts nearly all of them in the first few milliseconds;
/// full jitter spreads them evenly over the first backoff window.
#[cfg(feature = "async-client")]
#[test]
fn server_restart_under_1000_clients_spreads_reconnects() {
    use ringbeat::client::AsyncClient;
    use ringbeat::config::ServeArgs;

    const CLIENTS: usize = 1_000;
    const BASE: Duration = Duration::from_millis(2_000);
    let single_shard = |args: ServeArgs| ServeArgs {
        shards: Some(1),
        max_connections: Some(4 * CLIENTS as u32),
        ..args
    };
    let server = common::start(single_shard(common::timed_args(
        IoMode::Auto,
        2_000,
        10_000,
        50,
    )));
    let addr = server.local_addrs()[0];
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    let (back_tx, back_rx) = crossbeam_channel::unbounded();
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let config = ClientConfig::new(addr.to_string())
            .client_id(1_000 + i as u64)
            .pong_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(5))
            .backoff(Backoff {
                base: BASE,
                cap: BASE * 4,
                max_attempts: None,
            });
        let (ready_tx, back_tx) = (ready_tx.clone(), back_tx.clone());
        tasks.push(rt.spawn(async move {
            let mut client = AsyncClient::start(config);
            let mut sessions = 0;
            while let Some(event) = client.next_event().await {
                if let ClientEvent::Connected { .. } = event {
                    sessions += 1;
                    let tx = if sessions == 1 { &ready_tx } else { &back_tx };
                    let _ = tx.send(Instant::now());
                    if sessions == 2 {
                        break;
                    }
                }
            }
            client.close().await;
        }));
    }
    for _ in 0..CLIENTS {
        ready_rx
            .recv_timeout(SLACK * 2)
            .expect("every client connects");
    }

    // The new server is up and serving before the old one goes (both on
    // the port through SO_REUSEPORT, as in a rolling restart), so what is
    // measured is when the clients come back, not how long a server takes
    // to start: connections that arrive during a start-up gap wait in the
    // backlog and are welcomed as one burst whatever the clients do.
    let server2 = common::start(single_shard(ServeArgs {
        listen: vec![addr],
        ..common::timed_args(IoMode::Auto, 2_000, 10_000, 50)
    }));
    let deadline = Instant::now() + SLACK;
    while common::metric(server2.stats(), "ringbeat_accepted_total") == 0 {
        assert!(Instant::now() < deadline, "the new server never accepted");
        let mut probe = common::Peer::connect(addr); // lands on either server
        probe.hello(0, 0);
        probe.expect_welcome();
    }
    let restart_at = Instant::now();
    common::stop(server);
    let mut back_ms: Vec<f64> = (0..CLIENTS)
        .map(|_| {
            let at = back_rx
                .recv_timeout(SLACK * 2)
                .expect("every client is back");
            at.duration_since(restart_at).as_secs_f64() * 1e3
        })
        .collect();
    back_ms.sort_by(f64::total_cmp);
    let spread = Spread::of(&back_ms, BASE.as_secs_f64() * 1e3 / 10.0);
    eprintln!("reconnects after restart: {spread:?}");
    let base_ms = BASE.as_secs_f64() * 1e3;
    // Uniform over [0, BASE] gives p90 - p10 = 0.8·BASE and about 10% in
    // any BASE/10 window (a bit more: attempts that hit the restart gap are
    // refused and retry later); a herd gives ~0 and ~100%. The bounds leave
    // room for a stalled, loaded box.
    assert!(
        spread.p90_minus_p10_ms >= 0.35 * base_ms,
        "reconnects bunched: {spread:?}"
    );
    assert!(
        spread.busiest_window_share <= 0.3,
        "a thundering herd: {spread:?}"
    );
    for t in tasks {
        rt.block_on(t).unwrap();
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    common::stop(server2);
}

/// How spread out sorted reconnect times are. Some fields are only for
/// the printed summary.
#[allow(dead_code)]
#[derive(Debug)]
struct Spread {
    first_ms: f64,
    median_ms: f64,
    last_ms: f64,
    p90_minus_p10_ms: f64,
    /// Largest share of all reconnects inside any window of `window_ms`.
    busiest_window_share: f64,
    window_ms: f64,
}

impl Spread {
    fn of(sorted_ms: &[f64], window_ms: f64) -> Spread {
        let n = sorted_ms.len();
        let at = |q: f64| sorted_ms[((n - 1) as f64 * q).round() as usize];
        let mut busiest = 0;
        let mut j = 0;
        for i in 0..n {
            while j < n && sorted_ms[j] < sorted_ms[i] + window_ms {
                j += 1;
            }
            busiest = busiest.max(j - i);
        }
        Spread {
            first_ms: sorted_ms[0],
            median_ms: at(0.5),
            last_ms: sorted_ms[n - 1],
            p90_minus_p10_ms: at(0.9) - at(0.1),
            busiest_window_share: busiest as f64 / n as f64,
            window_ms,
        }
    }
}

#[test]
fn spread_statistic_tells_a_herd_from_jitter() {
    let herd: Vec<f64> = (0..1000).map(|i| 50.0 + i as f64 * 0.01).collect();
    let s = Spread::of(&herd, 150.0);
    assert!(s.p90_minus_p10_ms < 10.0 && s.busiest_window_share > 0.99);
    let uniform: Vec<f64> = (0..1000).map(|i| i as f64 * 1.5).collect();
    let s = Spread::of(&uniform, 150.0);
    assert!((s.p90_minus_p10_ms - 1200.0).abs() < 5.0);
    assert!((s.busiest_window_share - 0.1).abs() < 0.01);
}

/// Revision 2 on the wire: a HELLO carrying a 512-byte token is a valid
/// frame to a server without auth (it ignores the token), in both io modes;
/// the session then runs as usual. PINGs after the HELLO prove the engine
/// skipped exactly the token's bytes.
#[test]
fn a_server_without_auth_accepts_and_ignores_a_hello_token() {
    for mode in common::MODES {
        if ringbeat::ring::Features::probe().fast_mode_ready().is_err() && mode == IoMode::Fast {
            continue;
        }
        let server = common::start(common::timed_args(mode, 200, 2_000, 20));
        let addr = server.local_addrs()[0];
        let client = Client::start(client_config(addr, 77).token("t".repeat(512))).unwrap();
        wait_connected(client.events());
        // Several intervals of PING/PONG: no PongTimeout, no protocol error.
        std::thread::sleep(INTERVAL * 5);
        assert!(client.is_connected(), "{mode:?}");
        client.close();
        common::stop(server);
    }
}
