//! Flags shared by the bench peers.

use std::net::SocketAddr;
use std::time::Duration;

/// Every peer's listen backlog, as ringbeat's (src/server.rs); the kernel
/// caps it at net.core.somaxconn. A held storm (`ringbeat-load
/// --hold-server`) queues every client in the accept queue, and a smaller
/// backlog would have the kernel drop SYNs the clients then retry seconds
/// later: the figure would time the retries, not the server.
pub const LISTEN_BACKLOG: i32 = 65_535;

/// A non-blocking listener on `addr` with SO_REUSEADDR and
/// [`LISTEN_BACKLOG`] (for the tokio peers, whose own `bind` listens with
/// 1024).
#[allow(dead_code)] // the epoll peer builds its own, per thread
pub fn std_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(LISTEN_BACKLOG)?;
    Ok(s.into())
}

pub struct PeerArgs {
    pub listen: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
}

impl PeerArgs {
    /// `--listen ADDR --interval DUR --timeout DUR`; exits 2 on bad input.
    pub fn parse_or_exit(name: &str) -> PeerArgs {
        let mut a = PeerArgs {
            listen: "127.0.0.1:7720".parse().unwrap(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        };
        let argv: Vec<String> = std::env::args().skip(1).collect();
        for pair in argv.chunks(2) {
            let (flag, value) = (
                pair[0].as_str(),
                pair.get(1).map(String::as_str).unwrap_or(""),
            );
            let ok = match flag {
                "--listen" => value.parse().map(|v| a.listen = v).is_ok(),
                "--interval" => humantime::parse_duration(value)
                    .map(|v| a.interval = v)
                    .is_ok(),
                "--timeout" => humantime::parse_duration(value)
                    .map(|v| a.timeout = v)
                    .is_ok(),
                _ => false,
            };
            if !ok {
                eprintln!("{name}: bad flag {flag} {value:?} (use --listen ADDR --interval DUR --timeout DUR)");
                std::process::exit(2);
            }
        }
        a
    }
}
