//! Loopback tests of shards driven in groups (`--threads` below
//! `--shards`): one thread and one eventfd for several rings. Every rule
//! that holds for a shard on its own thread must hold here: each ring's
//! completions are taken (none waits for another ring's traffic), ticks
//! evict on time and never early, takeovers cross shards of one thread,
//! and shutdown closes every connection with CLOSE(SHUTDOWN).

mod common;

use std::time::{Duration, Instant};

use common::{args, start, stop, timed_args, wait_metric, Peer, MODES};
use ringbeat::config::{IoMode, ServeArgs};

const TIMEOUT: u16 = 1;
const TAKEN_OVER: u16 = 4;
const SHUTDOWN: u16 = 5;

/// `shards` shards on `threads` threads.
fn grouped(mode: IoMode, shards: usize, threads: usize) -> ServeArgs {
    ServeArgs {
        shards: Some(shards),
        threads: Some(threads),
        max_takeovers_per_min: Some(0),
        ..args(mode)
    }
}

/// The shard a session id names (its top bits, see engine::session).
fn shard_of(session: u64) -> usize {
    (session >> 54) as usize & 0xff
}

#[test]
fn every_ring_of_a_group_is_served() {
    for mode in MODES {
        for (shards, threads) in [(4, 1), (5, 2), (3, 2)] {
            eprintln!("io mode {mode:?}, {shards} shards on {threads} threads");
            let server = start(grouped(mode, shards, threads));
            let addr = server.local_addrs()[0];
            let mut seen = vec![false; shards];
            let mut peers: Vec<Peer> = (0..48).map(|_| Peer::connect(addr)).collect();
            for (i, p) in peers.iter_mut().enumerate() {
                p.hello(1_000 + i as u64, 0);

                let (session, _, _) = p.expect_welcome();

                seen[shard_of(session)] = true;
            }
            // One PING at a time: a PONG must not wait for another ring's
            // traffic to wake the thread.
            for round in 0..3u64 {
                for p in &mut peers {
                    p.ping(round);
                    p.expect_pong(round);
                }
            }
            assert!(seen.iter().all(|&s| s), "every shard accepted: {seen:?}");
            stop(server);
        }
    }
}

#[test]
fn a_grouped_shard_evicts_on_its_tick_and_never_early() {
    for mode in MODES {
        let server = start(ServeArgs {
            shards: Some(3),
            threads: Some(1),
            ..timed_args(mode, 100, 400, 20)
        });
        let addr = server.local_addrs()[0];
        let mut peers: Vec<Peer> = (0..12).map(|_| Peer::connect(addr)).collect();
        for p in &mut peers {
            p.ping(1);
            p.expect_pong(1);
        }
        let last_frame = Instant::now();
        for p in &mut peers {
            p.expect_close(TIMEOUT);
            let silent_for = last_frame.elapsed();
            assert!(
                silent_for >= Duration::from_millis(400),
                "evicted after {silent_for:?}, before the 400ms timeout"
            );
        }
        assert_eq!(
            wait_metric(server.stats(), "ringbeat_evicted_total", 12),
            12
        );
        stop(server);
    }
}

#[test]
fn takeover_crosses_shards_of_one_thread() {
    for mode in MODES {
        let server = start(grouped(mode, 4, 1));
        let addr = server.local_addrs()[0];
        let mut holder: Option<Peer> = None;
        let mut seen = [false; 4];
        for _ in 0..16 {
            let mut peer = Peer::connect(addr);
            peer.hello(4242, 0);
            let (session, _, _) = peer.expect_welcome();
            seen[shard_of(session)] = true;
            if let Some(mut old) = holder.take() {
                old.expect_close(TAKEN_OVER);
            }
            holder = Some(peer);
        }
        eprintln!("shards seen: {seen:?}");
        assert!(
            seen.iter().filter(|&&s| s).count() > 1,
            "took over across shards"
        );
        stop(server);
    }
}

#[test]
fn shutdown_of_a_group_closes_every_connection() {
    for mode in MODES {
        let server = start(grouped(mode, 5, 2));
        let addr = server.local_addrs()[0];
        let mut peers: Vec<Peer> = (0..30).map(|_| Peer::connect(addr)).collect();
        for p in &mut peers {
            p.ping(7);
            p.expect_pong(7);
        }
        server.shutdown();
        for p in &mut peers {
            p.expect_close(SHUTDOWN);
        }
        server.join().expect("every group exits cleanly");
    }
}
