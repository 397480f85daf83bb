//! Presence: prints who comes online and goes offline, from the server's
//! event stream, with a running count of who is online.
//!
//! Two ways to get the stream:
//!
//! ```sh
//! # tail the JSON-lines file of a running server
//! ringbeat serve --events /tmp/ringbeat-events.jsonl &
//! cargo run --example presence -- /tmp/ringbeat-events.jsonl
//!
//! # or run a server in this process and read its event channel
//! cargo run --example presence -- --serve 127.0.0.1:7700
//! ```
//!
//! Then connect clients (`cargo run --example client -- 127.0.0.1:7700 42`)
//! and stop them, kill them, or start a second one with the same id.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::time::Duration;

use anyhow::Context;
use ringbeat::config::{Config, ServeArgs};
use ringbeat::server::Server;

/// Who is online: sessions (a client_id may hold one at a time).
#[derive(Default)]
struct Presence {
    online: HashSet<u64>,
}

impl Presence {
    /// Prints one event line (the `--events` JSON object).
    fn show(&mut self, event: &serde_json::Value) {
        let session = event["session"].as_u64().unwrap_or(0);
        let who = match event["client_id"].as_u64() {
            Some(0) | None => format!("anonymous session {session}"),
            Some(id) => format!("client {id}"),
        };
        let peer = event["peer"].as_str().unwrap_or("?");
        match event["event"].as_str() {
            Some("online") => {
                self.online.insert(session);
                println!("+ {who} online from {peer}  [{} online]", self.online.len());
            }
            Some("offline") => {
                self.online.remove(&session);
                let reason = event["reason"].as_str().unwrap_or("?");
                println!("- {who} offline: {reason}  [{} online]", self.online.len());
            }
            _ => println!("? {event}"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, addr] if flag == "--serve" => serve(addr),
        [path] => tail(path),
        _ => anyhow::bail!("usage: presence EVENTS_FILE | presence --serve ADDR"),
    }
}

/// Runs a server in-process and prints its events from the channel.
fn serve(addr: &str) -> anyhow::Result<()> {
    let config = Config::resolve(ServeArgs {
        listen: vec![addr.parse().context("listen address")?],
        ..ServeArgs::default()
    })?;
    let (server, events) = Server::start_with_events(config)?;
    println!("serving on {:?}; Ctrl-C to stop", server.local_addrs());
    let mut presence = Presence::default();
    for event in events {
        presence.show(&serde_json::to_value(&event)?);
    }
    server.join()
}

/// Follows a JSON-lines events file from its end, like `tail -f`.
fn tail(path: &str) -> anyhow::Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    file.seek(SeekFrom::End(0))?;
    let mut reader = BufReader::new(file);
    let mut presence = Presence::default();
    let mut line = String::new();
    println!("following {path}; Ctrl-C to stop");
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        if !line.ends_with('\n') {
            // A half-written line: wait for the rest.
            reader.seek_relative(-(line.len() as i64))?;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        match serde_json::from_str::<serde_json::Value>(&line) {
            Ok(event) => presence.show(&event),
            Err(e) => eprintln!("skipping a bad line ({e}): {}", line.trim_end()),
        }
    }
}
