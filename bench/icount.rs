//! A fixed engine workload for instruction counts (scripts/icount.sh runs it
//! under callgrind, collecting inside one `phase_*` function per run): two
//! engines, `N` connections opened (accept), `M` PINGs each (heartbeat),
//! sweeps over all of them with none stale (sweep entry), then a takeover
//! storm: `N` new connections say HELLO with the ids the first `N` hold, and
//! the control plane is delivered (takeover). No clock, no randomness (the
//! registry's seeded HashMap is kept out of the counts): the same binary and
//! arguments give the same count on any day.
//!
//! ```sh
//! cargo bench --bench icount -- 10000 10 takeover  # N, M, counted phase
//! ```

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use ringbeat::conn_table::ConnTable;
use ringbeat::engine::{Engine, EngineConfig, Io};
use ringbeat::events::Event;
use ringbeat::heartbeat::Timing;
use ringbeat::protocol;
use ringbeat::registry::{Control, Registry};
use ringbeat::send_pool::QueueError;
use ringbeat::stash::StashPool;
use ringbeat::stats::Stats;

const SHARDS: u16 = 2;
/// Sweeps in the sweep phase.
const SWEEPS: u32 = 10;

/// A driver that only counts what it is asked (so its own cost is tiny).
#[derive(Default)]
struct CountingIo {
    sent_bytes: usize,
    closes: usize,
    control: VecDeque<(u16, Control)>,
}

impl Io for CountingIo {
    fn send(&mut self, _slot: u32, _head: &mut u32, bytes: &[u8]) -> Result<(), QueueError> {
        self.sent_bytes += bytes.len();
        Ok(())
    }
    fn close(&mut self, _slot: u32, _generation: u32, _abort_send: bool) {
        self.closes += 1;
    }
    fn control(&mut self, to: u16, msg: Control) {
        self.control.push_back((to, msg));
    }
    fn event(&mut self, _event: Event) {}
}

struct World {
    shards: Vec<(Engine, Registry, CountingIo)>,
    /// Connections per shard in each generation of clients.
    per_shard: u32,
    /// The phase being run is the one counted.
    counting: bool,
}

fn timing() -> Timing {
    Timing {
        tick_ms: 100,
        interval_ms: 10_000,
        timeout_ms: 30_000,
        min_interval_ms: 100,
        max_interval_ms: 3_600_000,
    }
}

impl World {
    fn new(n: u32) -> World {
        let per_shard = n.div_ceil(u32::from(SHARDS));
        let live = Arc::new(AtomicU32::new(0));
        let stats = Stats::new();
        let shards = (0..SHARDS)
            .map(|shard| {
                let cfg = EngineConfig {
                    shard,
                    shards: SHARDS,
                    timing: timing(),
                    max_payload: protocol::DEFAULT_MAX_PAYLOAD,
                    probe: false,
                    max_connections: u32::MAX,
                    events: false,
                };
                // Room for the storm's second generation of clients.
                let table = ConnTable::new(per_shard * 2, false, 1);
                let e = Engine::new(
                    cfg,
                    table,
                    StashPool::new(64),
                    live.clone(),
                    stats.for_shard(shard),
                );
                (e, Registry::default(), CountingIo::default())
            })
            .collect();
        World {
            shards,
            per_shard,
            counting: false,
        }
    }

    fn deliver_all(&mut self) {
        while self.shards.iter().any(|s| !s.2.control.is_empty()) {
            for from in 0..self.shards.len() {
                while let Some((to, msg)) = self.shards[from].2.control.pop_front() {
                    let (engine, registry, io) = &mut self.shards[usize::from(to)];
                    match msg {
                        Control::Claim { .. } | Control::Release { .. } if self.counting => {
                            io.control.extend(registry_step(registry, msg));
                        }
                        Control::Claim { .. } | Control::Release { .. } => {
                            io.control.extend(registry_step_uncounted(registry, msg));
                        }
                        msg => engine.on_control(msg, io),
                    }
                }
            }
        }
    }
}

/// The home shard's registry work. scripts/icount.sh leaves it out of the
/// counts: its HashMap has a random seed, so its count varies run to run.
#[inline(never)]
fn registry_step(registry: &mut Registry, msg: Control) -> Option<(u16, Control)> {
    route(registry, msg)
}

#[inline(always)]
fn route(registry: &mut Registry, msg: Control) -> Option<(u16, Control)> {
    match msg {
        Control::Claim { client_id, holder } => Some(registry.claim(client_id, holder)),
        Control::Release { client_id, holder } => {
            registry.release(client_id, holder);
            None
        }
        _ => unreachable!("engine messages go to the engine"),
    }
}

/// [`registry_step`] outside the phase being counted (the callgrind toggle
/// on `registry_step` would turn collection on there).
#[inline(never)]
fn registry_step_uncounted(registry: &mut Registry, msg: Control) -> Option<(u16, Control)> {
    // A body unlike registry_step's, so the two are never merged into one.
    route(black_box(registry), msg)
}

/// `N` accepts, each followed by HELLO with its client id (1..=N).
#[inline(never)]
fn phase_accept(w: &mut World) {
    let per_shard = w.per_shard;
    for (s, (e, _, io)) in w.shards.iter_mut().enumerate() {
        for slot in 0..per_shard {
            e.on_open(slot, None, io);
            let id = u64::from(slot) * u64::from(SHARDS) + s as u64 + 1;
            e.on_recv(slot, &protocol::hello_frame(id, 0), io);
        }
    }
    w.deliver_all();
}

/// `M` PINGs on each connection, one read each, as they arrive.
#[inline(never)]
fn phase_heartbeat(w: &mut World, m: u32) {
    let per_shard = w.per_shard;
    for round in 0..m {
        let ping = protocol::ping_frame(u64::from(round).to_be_bytes());
        for (e, _, io) in &mut w.shards {
            for slot in 0..per_shard {
                e.on_recv(slot, &ping, io);
            }
        }
    }
}

/// Sweeps with every connection fresh: the steady-state cost per entry.
#[inline(never)]
fn phase_sweep(w: &mut World) {
    for tick in 1..=SWEEPS {
        for (e, _, io) in &mut w.shards {
            e.set_clock(tick, u64::from(tick) * 100_000_000);
            e.on_tick(io);
        }
    }
}

/// `N` new connections take over the `N` ids; the plane is delivered.
#[inline(never)]
fn phase_takeover(w: &mut World) {
    let per_shard = w.per_shard;
    for (s, (e, _, io)) in w.shards.iter_mut().enumerate() {
        for i in 0..per_shard {
            let slot = per_shard + i;
            e.on_open(slot, None, io);
            // Ids of the other shard's clients: every takeover crosses shards.
            let id = u64::from(i) * u64::from(SHARDS) + (1 - s as u64) + 1;
            e.on_recv(slot, &protocol::hello_frame(id, 0), io);
        }
    }
    w.deliver_all();
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let n: u32 = args.next().map_or(10_000, |a| a.parse().expect("N"));
    let m: u32 = args.next().map_or(10, |a| a.parse().expect("M"));
    // The phase scripts/icount.sh counts (its registry work is left out).
    let counted = args.next().unwrap_or_default();
    let mut w = World::new(n);
    w.counting = counted == "accept";
    phase_accept(&mut w);
    w.counting = counted == "heartbeat";
    phase_heartbeat(&mut w, m);
    w.counting = counted == "sweep";
    phase_sweep(&mut w);
    w.counting = counted == "takeover";
    phase_takeover(&mut w);
    let closes: usize = w.shards.iter().map(|s| s.2.closes).sum();
    let sent: usize = w.shards.iter().map(|s| s.2.sent_bytes).sum();
    let conns = w.per_shard * u32::from(SHARDS);
    assert_eq!(closes, conns as usize, "every old holder was taken over");
    println!(
        "icount workload: {conns} accepts, {} heartbeats, {} sweep entries, {conns} takeovers; {} bytes sent",
        u64::from(conns) * u64::from(m),
        u64::from(conns) * u64::from(SWEEPS),
        black_box(sent)
    );
}
