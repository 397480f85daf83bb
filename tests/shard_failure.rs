//! A shard whose ring fails stops the whole server, and says so. A server
//! that went on without the shard would keep that shard's clients online
//! in its events while no one served them (and in compat mode keep their
//! sockets open). So: the failed shard's clients are announced offline and
//! their connections end, every other shard's clients get CLOSE(SHUTDOWN),
//! and `join` returns the error naming the shard. Both io modes, a shard
//! on its own thread and shards sharing one (`--threads`).

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{args, start, Peer, MODES, SLACK};
use ringbeat::config::ServeArgs;

const SHUTDOWN: u16 = 5;
const FAILED: u16 = 0;

/// The shard a session id names (its top bits, see engine::session).
fn shard_of(session: u64) -> u16 {
    (session >> 54) as u16 & 0xff
}

/// Waits until the events file holds `want` `online` lines.
fn wait_online(events: &Path, want: usize) {
    let deadline = Instant::now() + SLACK;
    loop {
        let text = std::fs::read_to_string(events).unwrap_or_default();
        let online = text
            .lines()
            .filter(|l| l.contains(r#""event":"online""#))
            .count();
        if online >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{online} of {want} online");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_failed_shard_stops_the_server_and_announces_its_clients_offline() {
    for mode in MODES {
        for (shards, threads) in [(2, 2), (3, 1)] {
            eprintln!("io mode {mode:?}, {shards} shards on {threads} threads");
            let dir = tempfile::tempdir().unwrap();
            let events = dir.path().join("events.jsonl");
            let server = start(ServeArgs {
                shards: Some(shards),
                threads: Some(threads),
                events: Some(events.clone()),
                ..args(mode)
            });
            let addr = server.local_addrs()[0];
            let mut peers = Vec::new();
            for i in 0..64u64 {
                let mut p = Peer::connect(addr);
                p.hello(7_000 + i, 0);
                let (session, _, _) = p.expect_welcome();
                peers.push((p, session));
            }
            let on_failed = peers.iter().filter(|(_, s)| shard_of(*s) == FAILED).count();
            assert!(
                on_failed > 0 && on_failed < peers.len(),
                "clients on the failed shard and on others: {on_failed}"
            );

            // WELCOME answers HELLO at once; `online` follows the home
            // shard's grant. A client not yet online is never announced
            // offline either: fail only once every one is.
            wait_online(&events, peers.len());
            server.inject_shard_failure(FAILED);
            for (p, session) in &mut peers {
                if shard_of(*session) == FAILED {
                    p.expect_end();
                } else {
                    p.expect_close(SHUTDOWN);
                }
            }
            let err = server.join().expect_err("a failed shard fails the server");
            let err = format!("{err:#}");
            assert!(
                err.contains("shard 0") && err.contains("injected"),
                "the error names the shard and the cause: {err}"
            );

            let text = std::fs::read_to_string(&events).unwrap();
            let mut offline: HashMap<u64, String> = HashMap::new();
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                if v["event"] == "offline" {
                    let session = v["session"].as_u64().unwrap();
                    let reason = v["reason"].as_str().unwrap().to_string();
                    let before = offline.insert(session, reason);
                    assert!(before.is_none(), "one offline per session: {line}");
                }
            }
            for (_, session) in &peers {
                assert_eq!(
                    offline.get(session).map(String::as_str),
                    Some("shutdown"),
                    "{mode:?} {shards}/{threads}: session {session:#x} (shard {}) announced offline",
                    shard_of(*session),
                );
            }
        }
    }
}
