//! Inputs the fuzzer (fuzz/, scripts/fuzz.sh) found, replayed against the
//! engine directly. A test stays `#[ignore]` only while its fix is pending
//! in a file another change owns; the fuzz target skips that input until
//! then (fuzz/fuzz_targets/model.rs, `SKIP_SPLIT_WELCOME`).

use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use ringbeat::conn_table::{ConnTable, State};
use ringbeat::engine::{Engine, EngineConfig};
use ringbeat::heartbeat::Timing;
use ringbeat::protocol;
use ringbeat::send_pool::SendPool;
use ringbeat::stash::HelloPool;
use ringbeat::stats::Stats;

fn engine() -> Engine {
    let timing = Timing {
        tick_ms: 100,
        interval_ms: 1_000,
        timeout_ms: 3_000,
        min_interval_ms: 100,
        max_interval_ms: 60_000,
    };
    let cfg = EngineConfig {
        max_connections: 100,
        shard_limit: 6,
        ..EngineConfig::new(0, 1, timing, 8)
    };
    let stats = Stats::new().for_shard(0);
    let table = ConnTable::new(8, false, 1);
    Engine::new(
        cfg,
        table,
        HelloPool::new(4),
        Arc::new(AtomicU32::new(0)),
        stats,
    )
}

/// Found by the engine target on 2026-11-30 (22 s from an empty corpus): a
/// WELCOME (server-to-client only) whose first byte arrives in one read and
/// the rest in the next is longer than the stash keeps, so it is assembled
/// in the HELLO pool and handed on as a HELLO: a debug build panics
/// (`feed_hello`'s assertion), a release build takes the WELCOME's session
/// and interval for a HELLO's client_id and interval instead of closing
/// with PROTOCOL_ERROR. Fix (src/engine/input.rs, `keep_len`): keep nothing
/// of a WELCOME's payload (`Kind::Welcome => 0`), as for DATA.
#[test]
fn a_welcome_split_across_reads_is_a_protocol_error_not_a_hello() {
    let mut e = engine();
    let mut sends = SendPool::new(64);
    let generation = e.on_open(0, None, &mut sends);
    let welcome = protocol::welcome_frame(7, 1_000, 3_000);
    e.on_recv_data(0, generation, &welcome[..1], &mut sends);
    e.on_recv_data(0, generation, &welcome[1..], &mut sends);
    assert_ne!(
        e.table().state(0),
        State::Open,
        "still open after a WELCOME"
    );
    assert_eq!(
        e.stats.protocol_errors.get(),
        1,
        "closed as a protocol error"
    );
}

/// The same WELCOME in one read: the in-place parse already closes it.
#[test]
fn a_welcome_in_one_read_is_a_protocol_error() {
    let mut e = engine();
    let mut sends = SendPool::new(64);
    let generation = e.on_open(0, None, &mut sends);
    e.on_recv_data(
        0,
        generation,
        &protocol::welcome_frame(7, 1_000, 3_000),
        &mut sends,
    );
    assert_ne!(e.table().state(0), State::Open);
    assert_eq!(
        e.stats.protocol_errors.get(),
        1,
        "closed as a protocol error"
    );
}
