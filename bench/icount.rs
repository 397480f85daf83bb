//! A fixed engine workload for instruction counts (scripts/icount.sh runs it
//! under callgrind, collecting inside one `phase_*` function per run): two
//! engines, `N` connections opened (accept), `M` PINGs each (heartbeat),
//! sweeps over all of them with none stale (sweep entry), then a takeover
//! storm: `N` new connections say HELLO with the ids the first `N` hold, and
//! the control plane is delivered (takeover). Each shard's kernel is
//! simulated and completes every command at once. No clock, and the only
//! randomness is std's HashMap seed, which scripts/icount.sh pins: the same
//! binary and arguments give the same count on any day.
//!
//! ```sh
//! cargo bench --bench icount -- 10000 10   # N, M; prints what it did
//! ```

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use ringbeat::conn_table::ConnTable;
use ringbeat::engine::{Command, Engine, EngineConfig};
use ringbeat::heartbeat::Timing;
use ringbeat::mailbox::ShardMsg;
use ringbeat::protocol;
use ringbeat::send_pool::{SendPool, GATHER_MAX};
use ringbeat::stash::HelloPool;
use ringbeat::stats::Stats;

const SHARDS: u16 = 2;
/// Sweeps in the sweep phase.
const SWEEPS: u32 = 10;

/// One shard: the engine, its send pool, and a kernel that completes every
/// command at once (sends leave whole, cancels and closes complete).
struct Shard {
    e: Engine,
    sends: SendPool,
    outbox: VecDeque<(u16, ShardMsg)>,
    commands: Vec<Command>,
    sent_bytes: usize,
    closes: usize,
}

impl Shard {
    /// Carries out commands until the engine has none left.
    fn pump(&mut self) {
        // Reused, so the harness allocates nothing per operation.
        let mut commands = std::mem::take(&mut self.commands);
        loop {
            self.e.take_commands(&mut commands, &mut self.sends);
            if commands.is_empty() {
                break;
            }
            for c in commands.drain(..) {
                self.carry_out(c);
            }
        }
        self.commands = commands;
    }

    fn carry_out(&mut self, c: Command) {
        match c {
            Command::Send {
                slot,
                generation,
                head,
            } => {
                let mut pieces = [(0, 0); GATHER_MAX];
                let n = self.sends.start_send(head, &mut pieces);
                let len: usize = pieces[..n].iter().map(|&(_, len)| len).sum();
                self.sent_bytes += len;
                let sends = &mut self.sends;
                self.e
                    .on_send_done(slot, generation, len as i32, false, sends);
            }
            Command::SendClose {
                slot,
                generation,
                bytes,
            } => {
                self.sent_bytes += bytes.len();
                let sends = &mut self.sends;
                self.e
                    .on_send_done(slot, generation, bytes.len() as i32, true, sends);
            }
            Command::CancelRecv { slot, generation } => {
                let sends = &mut self.sends;
                self.e
                    .on_recv_end(slot, generation, -libc::ECANCELED, sends);
            }
            Command::CloseFd { slot, generation } => {
                self.closes += 1;
                self.e.on_closed(slot, generation);
            }
            Command::Message { to, msg } if to == self.e.config().shard => self.deliver(msg),
            Command::Message { to, msg } => self.outbox.push_back((to, msg)),
            Command::ArmRecv { .. } | Command::CancelSend { .. } | Command::Event(_) => {}
        }
    }

    fn deliver(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Home(m) => self.e.on_home(m),
            ShardMsg::Holder(m) => self.e.on_holder(m, &mut self.sends),
            ShardMsg::Shutdown => self.e.shutdown(&mut self.sends),
            ShardMsg::Fail => panic!("the engine never sends Fail (a driver-test message)"),
        }
    }
}

struct World {
    shards: Vec<Shard>,
    /// Connections per shard in each generation of clients.
    per_shard: u32,
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
        // Room for the storm's second generation of clients, and a reserve.
        let slots = per_shard * 2 + 16;
        let shards = (0..SHARDS)
            .map(|shard| {
                let cfg = EngineConfig {
                    shard_limit: slots - 8,
                    ..EngineConfig::new(shard, SHARDS, timing(), slots)
                };
                let table = ConnTable::new(slots, false, 1);
                let e = Engine::new(
                    cfg,
                    table,
                    HelloPool::new(64),
                    live.clone(),
                    stats.for_shard(shard),
                );
                Shard {
                    e,
                    sends: SendPool::new(4096),
                    outbox: VecDeque::new(),
                    commands: Vec::with_capacity(64),
                    sent_bytes: 0,
                    closes: 0,
                }
            })
            .collect();
        World { shards, per_shard }
    }

    /// Delivers every cross-shard message until none is left.
    fn deliver_all(&mut self) {
        while self.shards.iter().any(|s| !s.outbox.is_empty()) {
            for from in 0..self.shards.len() {
                while let Some((to, msg)) = self.shards[from].outbox.pop_front() {
                    let target = &mut self.shards[usize::from(to)];
                    target.deliver(msg);
                    target.pump();
                }
            }
        }
    }
}

/// `N` accepts, each followed by HELLO with its client id (1..=N).
#[inline(never)]
fn phase_accept(w: &mut World) {
    let per_shard = w.per_shard;
    for (s, sh) in w.shards.iter_mut().enumerate() {
        for slot in 0..per_shard {
            let g = sh.e.on_open(slot, None, &mut sh.sends);
            let id = u64::from(slot) * u64::from(SHARDS) + s as u64 + 1;
            sh.e.on_recv_data(slot, g, &protocol::hello_frame(id, 0), &mut sh.sends);
            sh.pump();
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
        for sh in &mut w.shards {
            for slot in 0..per_shard {
                let g = sh.e.table().generation[slot as usize];
                sh.e.on_recv_data(slot, g, &ping, &mut sh.sends);
                sh.pump();
            }
        }
    }
}

/// Sweeps with every connection fresh: the steady-state cost per entry.
#[inline(never)]
fn phase_sweep(w: &mut World) {
    for tick in 1..=SWEEPS {
        for sh in &mut w.shards {
            sh.e.set_clock(tick, u64::from(tick) * 100_000_000);
            sh.e.on_tick(tick, &mut sh.sends);
            sh.pump();
        }
    }
}

/// `N` new connections take over the `N` ids; the plane is delivered.
#[inline(never)]
fn phase_takeover(w: &mut World) {
    let per_shard = w.per_shard;
    for (s, sh) in w.shards.iter_mut().enumerate() {
        for i in 0..per_shard {
            let slot = per_shard + i;
            let g = sh.e.on_open(slot, None, &mut sh.sends);
            // Ids of the other shard's clients: every takeover crosses shards.
            let id = u64::from(i) * u64::from(SHARDS) + (1 - s as u64) + 1;
            sh.e.on_recv_data(slot, g, &protocol::hello_frame(id, 0), &mut sh.sends);
            sh.pump();
        }
    }
    w.deliver_all();
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let n: u32 = args.next().map_or(10_000, |a| a.parse().expect("N"));
    let m: u32 = args.next().map_or(10, |a| a.parse().expect("M"));
    let mut w = World::new(n);
    phase_accept(&mut w);
    phase_heartbeat(&mut w, m);
    phase_sweep(&mut w);
    phase_takeover(&mut w);
    let closes: usize = w.shards.iter().map(|s| s.closes).sum();
    let sent: usize = w.shards.iter().map(|s| s.sent_bytes).sum();
    let conns = w.per_shard * u32::from(SHARDS);
    assert_eq!(closes, conns as usize, "every old holder was taken over");
    println!(
        "icount workload: {conns} accepts, {} heartbeats, {} sweep entries, {conns} takeovers; {} bytes sent",
        u64::from(conns) * u64::from(m),
        u64::from(conns) * u64::from(SWEEPS),
        black_box(sent)
    );
}
