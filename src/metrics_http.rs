//! `GET /metrics` over plain HTTP/1.1 for Prometheus scrapers. One thread,
//! one request per connection, bounded reads: it cannot stall a shard.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::stats::Stats;

/// Binds `addr` and serves the metrics page from a background thread.
pub fn spawn(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("ringbeat-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &stats) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(local)
}

fn answer(stream: TcpStream, stats: &Stats) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut reader = BufReader::new(stream.try_clone()?).take(8192);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let (status, body, kind) = if request_line.starts_with("GET ") && path == "/metrics" {
        (
            "200 OK",
            stats.render(),
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    } else {
        ("404 Not Found", "try /metrics\n".to_owned(), "text/plain")
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}
