//! The peer a user would write with tokio (epoll): one task and one timeout
//! per connection, speaking PROTOCOL.md v1 (PING/PONG, HELLO/WELCOME,
//! CLOSE(TIMEOUT) after `--timeout` of silence). For the bench suite only.
//!
//!   tokio_epoll --listen 127.0.0.1:7720 --interval 10s --timeout 30s

use std::net::SocketAddr;
use std::time::Duration;

use ringbeat::protocol::{self, CloseReason, Decoder, OwnedFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout_at, Instant};

mod args;

async fn serve(mut stream: TcpStream, interval: Duration, timeout: Duration) {
    let _ = stream.set_nodelay(true);
    let mut decoder = Decoder::new(1024);
    let mut buf = vec![0u8; 2048];
    let mut deadline = Instant::now() + timeout;
    let mut seen_frame = false;
    loop {
        let n = match timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                let close = protocol::close_frame(CloseReason::Timeout, "timeout");
                let _ = stream.write_all(&close).await;
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
        };
        decoder.feed(&buf[..n]);
        let mut out = Vec::new();
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    deadline = Instant::now() + timeout;
                    match frame {
                        OwnedFrame::Ping(p) => out.extend_from_slice(&protocol::pong_frame(p)),
                        OwnedFrame::Hello { .. } if !seen_frame => {
                            out.extend_from_slice(&protocol::welcome_frame(
                                0,
                                interval.as_millis() as u32,
                                timeout.as_millis() as u32,
                            ))
                        }
                        OwnedFrame::Close { .. } => return,
                        OwnedFrame::Hello { .. } | OwnedFrame::Welcome { .. } => {
                            out.extend(protocol::close_frame(
                                CloseReason::ProtocolError,
                                "protocol error",
                            ));
                            let _ = stream.write_all(&out).await;
                            return;
                        }
                        _ => {}
                    }
                    seen_frame = true;
                }
                Ok(None) => break,
                Err(e) => {
                    out.extend(protocol::close_frame(e.close_reason(), "protocol error"));
                    let _ = stream.write_all(&out).await;
                    return;
                }
            }
        }
        if !out.is_empty() && stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let a = args::PeerArgs::parse_or_exit("tokio_epoll");
    let listener = TcpListener::from_std(args::std_listener(a.listen)?)?;
    eprintln!("tokio_epoll listening on {}", listener.local_addr()?);
    loop {
        let (stream, _peer): (TcpStream, SocketAddr) = listener.accept().await?;
        tokio::spawn(serve(stream, a.interval, a.timeout));
    }
}
