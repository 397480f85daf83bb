//! Shared helpers for loopback integration tests: an in-process server on
//! port 0 and a blocking test peer that speaks PROTOCOL.md.
#![allow(dead_code)]

pub mod child;
pub mod nats;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ringbeat::config::{Config, IoMode, ServeArgs};
use ringbeat::protocol::{self, Decoder, OwnedFrame};
use ringbeat::server::Server;
use ringbeat::stats::Stats;

/// Generous read deadline: these tests share a loaded 2-core box.
pub const SLACK: Duration = Duration::from_secs(10);

/// Both io modes; every loopback test runs in each.
pub const MODES: [IoMode; 2] = [IoMode::Fast, IoMode::Compat];

/// Flags for a small test server on an ephemeral port.
pub fn args(mode: IoMode) -> ServeArgs {
    ServeArgs {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        shards: Some(2),
        max_connections: Some(4096),
        io_mode: Some(mode),
        ..ServeArgs::default()
    }
}

/// [`args`] with the given interval, timeout and tick in milliseconds.
pub fn timed_args(mode: IoMode, interval_ms: u64, timeout_ms: u64, tick_ms: u64) -> ServeArgs {
    ServeArgs {
        interval: Some(Duration::from_millis(interval_ms)),
        timeout: Some(Duration::from_millis(timeout_ms)),
        tick: Some(Duration::from_millis(tick_ms)),
        ..args(mode)
    }
}

pub fn start(args: ServeArgs) -> Server {
    Server::start(Config::resolve(args).expect("valid test config")).expect("server starts")
}

/// Stops the server and checks that every shard ended cleanly.
pub fn stop(server: Server) {
    server.shutdown();
    server.join().expect("shards exit cleanly");
}

/// Reads one counter or gauge from the Prometheus text (0 when absent).
pub fn metric(stats: &Stats, series: &str) -> u64 {
    stats
        .render()
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Polls `metric` until it reaches `want` or the slack runs out.
pub fn wait_metric(stats: &Stats, series: &str, want: u64) -> u64 {
    let deadline = Instant::now() + SLACK;
    loop {
        let got = metric(stats, series);
        if got >= want || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A blocking peer with its own frame decoder.
pub struct Peer {
    pub stream: TcpStream,
    decoder: Decoder,
}

/// What a read ended with.
#[derive(Debug, PartialEq)]
pub enum Got {
    Frame(OwnedFrame),
    Eof,
    Reset,
}

impl Peer {
    pub fn connect(addr: SocketAddr) -> Peer {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(SLACK)).unwrap();
        stream.set_nodelay(true).unwrap();
        Peer {
            stream,
            decoder: Decoder::new(1 << 20),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn ping(&mut self, value: u64) {
        self.send(&protocol::ping_frame(value.to_be_bytes()));
    }

    pub fn hello(&mut self, client_id: u64, interval_ms: u32) {
        self.send(&protocol::hello_frame(client_id, interval_ms));
    }

    /// The next frame, EOF or reset; panics after [`SLACK`] of silence.
    pub fn next(&mut self) -> Got {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(frame) = self
                .decoder
                .next_frame()
                .expect("server sent a valid frame")
            {
                return Got::Frame(frame);
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Got::Eof,
                Ok(n) => self.decoder.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Got::Reset,
                // A socket with SO_RCVTIMEO is not restarted after io_uring
                // task work interrupts the thread; just read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read: {e} (no frame within {SLACK:?})"),
            }
        }
    }

    pub fn expect_frame(&mut self) -> OwnedFrame {
        match self.next() {
            Got::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Expects WELCOME; returns (session, interval_ms, timeout_ms).
    pub fn expect_welcome(&mut self) -> (u64, u32, u32) {
        match self.expect_frame() {
            OwnedFrame::Welcome {
                session,
                interval_ms,
                timeout_ms,
            } => (session, interval_ms, timeout_ms),
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    pub fn expect_pong(&mut self, value: u64) {
        assert_eq!(self.expect_frame(), OwnedFrame::Pong(value.to_be_bytes()));
    }

    /// Expects CLOSE with `reason`, then the end of the stream.
    pub fn expect_close(&mut self, reason: u16) {
        match self.expect_frame() {
            OwnedFrame::Close { reason: got, .. } => assert_eq!(got, reason, "close reason"),
            other => panic!("expected CLOSE({reason}), got {other:?}"),
        }
        self.expect_end();
    }

    /// Expects EOF or reset with no further frame.
    pub fn expect_end(&mut self) {
        match self.next() {
            Got::Eof | Got::Reset => {}
            Got::Frame(f) => panic!("expected end of stream, got {f:?}"),
        }
    }
}
