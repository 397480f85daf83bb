//! Flags shared by the bench peers.

use std::net::SocketAddr;
use std::time::Duration;

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
