//! A one-shot HELLO takeover check for the kernel matrix (scripts/kernels.sh),
//! where the guest has no python: two connections say HELLO with the same
//! client_id; the older one must get WELCOME, then CLOSE(TAKEN_OVER), and
//! the newer one WELCOME and a PONG for its PING.
//!
//! ```sh
//! cargo run --release --example takeover_check -- 127.0.0.1:7700
//! ```
//!
//! Prints one JSON line `{"takeover_ok":true|false,"detail":"..."}` and
//! exits 0 when the check passed, 1 otherwise. Every read has a timeout.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};
use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame, DEFAULT_MAX_PAYLOAD};

/// Longest wait for any one frame (TCG guests are slow).
const READ_TIMEOUT_MS: u64 = 10_000;
/// The shared client_id; any non-zero value works.
const CLIENT_ID: u64 = 0x7a6b_0001;

struct Conn {
    stream: TcpStream,
    decoder: Decoder,
}

impl Conn {
    fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))?;
        Ok(Conn {
            stream,
            decoder: Decoder::new(DEFAULT_MAX_PAYLOAD),
        })
    }

    fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).context("send")
    }

    fn next(&mut self) -> anyhow::Result<OwnedFrame> {
        let mut buf = [0u8; 512];
        loop {
            if let Some(frame) = self.decoder.next_frame()? {
                return Ok(frame);
            }
            let n = self.stream.read(&mut buf).context("read")?;
            if n == 0 {
                bail!("connection ended without a frame");
            }
            self.decoder.feed(&buf[..n]);
        }
    }

    fn hello(&mut self) -> anyhow::Result<()> {
        self.send(&protocol::hello_frame(CLIENT_ID, 1_000))?;
        match self.next()? {
            OwnedFrame::Welcome { .. } => Ok(()),
            other => bail!("expected WELCOME, got {other:?}"),
        }
    }
}

fn check(addr: &str) -> anyhow::Result<()> {
    let mut old = Conn::open(addr)?;
    old.hello().context("first HELLO")?;
    let mut new = Conn::open(addr)?;
    new.hello().context("second HELLO")?;
    match old.next().context("older connection")? {
        OwnedFrame::Close { reason, .. } if reason == CloseReason::TakenOver.code() => {}
        other => bail!("older connection: expected CLOSE(TAKEN_OVER), got {other:?}"),
    }
    new.send(&protocol::ping_frame(*b"takeover"))?;
    match new.next().context("newer connection")? {
        OwnedFrame::Pong(p) if &p == b"takeover" => Ok(()),
        other => bail!("newer connection: expected PONG, got {other:?}"),
    }
}

fn main() -> std::process::ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7700".into());
    let (ok, detail) = match check(&addr) {
        Ok(()) => (true, "old got CLOSE(TAKEN_OVER), new got PONG".to_string()),
        Err(e) => (false, format!("{e:#}")),
    };
    println!(
        "{}",
        serde_json::json!({ "takeover_ok": ok, "detail": detail })
    );
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
