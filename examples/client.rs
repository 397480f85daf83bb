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
//! shows the library's logs. Options (before or after them):
//!
//! - `--token-file FILE`: send the token in FILE (from `ringbeat token`) in
//!   HELLO; the file is read again for every reconnect, so it can be
//!   replaced before the token expires.
//! - `--tls-name NAME` (feature `tls`): connect over TLS, expecting a
//!   certificate for NAME; `--tls-ca PEM` also trusts that CA.
//!
//! ```sh
//! ringbeat token --key k1=hs256:secret --client-id 42 > /tmp/t
//! cargo run --features tls --example client -- 127.0.0.1:7443 42 30s \
//!     --token-file /tmp/t --tls-name localhost --tls-ca cert.pem
//! ```

use std::time::{Duration, Instant};

use ringbeat::client::{Client, ClientConfig, ClientEvent};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let (options, positional): (Vec<String>, Vec<String>) =
        split_options(std::env::args().skip(1))?;
    let mut args = positional.into_iter();
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7700".into());
    let client_id: u64 = args.next().map_or(Ok(0), |s| s.parse())?;
    let run_for = args
        .next()
        .map(|s| humantime::parse_duration(&s))
        .transpose()?;

    let config = configure(ClientConfig::new(server).client_id(client_id), &options)?;
    let client = Client::start(config)?;
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

/// `--name value` pairs (flattened) and the positional arguments.
fn split_options(args: impl Iterator<Item = String>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let (mut options, mut positional) = (Vec::new(), Vec::new());
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        if arg.starts_with("--") {
            let value = args
                .next()
                .ok_or_else(|| anyhow::anyhow!("{arg} needs a value"))?;
            options.extend([arg, value]);
        } else {
            positional.push(arg);
        }
    }
    Ok((options, positional))
}

fn configure(mut config: ClientConfig, options: &[String]) -> anyhow::Result<ClientConfig> {
    #[cfg(feature = "tls")]
    let mut tls: Option<ringbeat::client::tls::TlsConfig> = None;
    for pair in options.chunks(2) {
        let (name, value) = (pair[0].as_str(), pair[1].clone());
        match name {
            "--token-file" => {
                std::fs::metadata(&value)?;
                config = config.token_provider(move || {
                    std::fs::read_to_string(&value)
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_default()
                });
            }
            #[cfg(feature = "tls")]
            "--tls-name" => {
                tls = Some(ringbeat::client::tls::TlsConfig::new(value));
            }
            #[cfg(feature = "tls")]
            "--tls-ca" => {
                let pem = std::fs::read(&value)?;
                let t = tls
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("--tls-ca needs --tls-name first"))?;
                tls = Some(t.extra_roots_pem(pem));
            }
            other => anyhow::bail!("unknown option {other} (TLS options need --features tls)"),
        }
    }
    #[cfg(feature = "tls")]
    if let Some(tls) = tls {
        config = config.tls(tls);
    }
    Ok(config)
}
