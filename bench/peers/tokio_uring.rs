//! The peer a user would write with tokio-uring 0.5: one task per
//! connection on an io_uring runtime. tokio-uring has no multishot receive,
//! no buffer rings and no direct descriptors, so each connection owns a
//! buffer and an fd. For the bench suite only.
//!
//!   tokio_uring --listen 127.0.0.1:7721 --interval 10s --timeout 30s

use std::time::Duration;

use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use tokio::time::{timeout_at, Instant};
use tokio_uring::net::{TcpListener, TcpStream};

mod args;

async fn serve(stream: TcpStream, interval: Duration, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::new(1024);
    let mut buf = vec![0u8; 2048];
    let mut deadline = Instant::now() + timeout;
    loop {
        let (res, b) = match timeout_at(deadline, stream.read(buf)).await {
            Err(_) => {
                let close = protocol::close_frame(CloseReason::Timeout, "timeout");
                let _ = stream.write_all(close).await;
                return;
            }
            Ok(r) => r,
        };
        buf = b;
        let n = match res {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.feed(&buf[..n]);
        let mut out = Vec::new();
        let mut end = false;
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    deadline = Instant::now() + timeout;
                    match frame {
                        OwnedFrame::Ping(p) => out.extend_from_slice(&protocol::pong_frame(p)),
                        OwnedFrame::Hello { .. } => {
                            out.extend_from_slice(&protocol::welcome_frame(
                                0,
                                interval.as_millis() as u32,
                                timeout.as_millis() as u32,
                            ))
                        }
                        OwnedFrame::Close { .. } => return,
                        _ => {}
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend(protocol::close_frame(e.close_reason(), "protocol error"));
                    end = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            let (res, _) = stream.write_all(out).await;
            if res.is_err() {
                return;
            }
        }
        if end {
            return;
        }
    }
}

fn main() -> std::io::Result<()> {
    let a = args::PeerArgs::parse_or_exit("tokio_uring");
    tokio_uring::start(async move {
        let listener = TcpListener::from_std(args::std_listener(a.listen)?);
        eprintln!("tokio_uring listening on {}", a.listen);
        loop {
            let (stream, _peer) = listener.accept().await?;
            tokio_uring::spawn(serve(stream, a.interval, a.timeout));
        }
    })
}
