//! A minimal ringbeat client: connects, says hello with DATA, prints every
//! event, and keeps the session alive (PING every interval, reconnect with
//! backoff) until the time is up or Ctrl-C.
//!
//! ```sh
//! cargo run --release -- serve &
//! cargo run --example client -- 127.0.0.1:7700 42 30s
//! ```
//!
//! Arguments: server address (default `127.0.0.1:7700`), client id (default
//! 0, anonymous), how long to run (default: for ever). `RUST_LOG=debug`
//! shows the library's logs.

use std::time::{Duration, Instant};

use ringbeat::client::{Client, ClientConfig, ClientEvent};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7700".into());
    let client_id: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let run_for = args
        .next()
        .map(|s| humantime::parse_duration(&s))
        .transpose()?;

    let client = Client::start(ClientConfig::new(server).client_id(client_id))?;
    let started = Instant::now();
    loop {
        let left = run_for.map_or(Duration::from_secs(3600), |d| {
            d.saturating_sub(started.elapsed())
        });
        if left.is_zero() {
            break;
        }
        let Ok(event) = client.events().recv_timeout(left) else {
            continue;
        };
        println!("{event:?}");
        match event {
            ClientEvent::Connected { .. } => client.send(b"hello from the example")?,
            ClientEvent::Stopped { .. } => return Ok(()),
            _ => {}
        }
    }
    client.close();
    println!("closed");
    Ok(())
}
