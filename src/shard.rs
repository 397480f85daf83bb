//! One shard: a thread with its own io_uring, its own SO_REUSEPORT listeners
//! and the engine for the connections it accepted. This is the I/O driver:
//! it reports completions to the engine and carries out the engine's
//! [`Command`]s as SQEs. It decides nothing about a connection's lifecycle:
//! that is the engine's (see `engine`), so a test against a simulated kernel
//! proves what this driver does.
//!
//! What stays here is the ring's own mechanics: descriptors (fixed slots in
//! fast mode, an fd table in compat mode), accepts, the tick timer, the
//! batched wait, and shutdown's phases.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::engine::{Command, Engine, CLOSE_LINGER_MS};
use crate::events::EventSender;
use crate::mailbox::{Peers, ShardMsg};
use crate::ring::{BatchWait, Completion, Fd, Ring, RingSetup, ACCEPTS_PER_LISTENER};
use crate::stats::Stats;
use crate::user_data::{Op, UserData};
use intake::Intake;

/// How long shutdown may take before the shard exits with connections
/// open: the engine's linger ends every close before this, with slack for
/// a tick and a loaded box.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(CLOSE_LINGER_MS as u64 + 1_000);
/// How long an exiting shard waits for its last completions.
const EXIT_WAIT: Duration = Duration::from_secs(1);
/// Completions a busy shard gathers per wake-up, at most `batch_wait` long.
const BATCH_WANT: usize = 64;
/// Free send chunks below which a pass sends what it queued and takes the
/// chunks back before it handles more completions (`relieve_sends`): more
/// than one completion can need (a receive full of pipelined PINGs queues
/// at most `send_pool::QUEUE_CHUNKS_MAX` chunks).
const SEND_LOW_WATER_CHUNKS: usize = 2 * crate::send_pool::QUEUE_CHUNKS_MAX as usize;

/// Which io_uring features a shard uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoPlan {
    /// Fast: direct descriptors, multishot recv, buffer ring.
    pub fast: bool,
    /// Multishot accept (fast mode when peer addresses are not needed).
    pub multishot_accept: bool,
}

/// Everything a shard thread needs, built by `server`.
pub struct ShardSpec {
    pub id: u16,
    pub plan: IoPlan,
    pub engine: Engine,
    pub ring_setup: RingSetup,
    pub listeners: Vec<socket2::Socket>,
    pub inbox: Receiver<ShardMsg>,
    /// The shard's wake eventfd (owned by `peers`, which outlives the
    /// shard). A grouped shard's is its thread's, which its ring must not
    /// read (see `mailbox::Peers`).
    pub wake_fd: RawFd,
    /// Driven by a `group` thread with other shards.
    pub grouped: bool,
    pub peers: Arc<Peers>,
    pub events: Option<EventSender>,
    /// Cluster mode: claims and events also go to the cluster thread.
    pub cluster: Option<Arc<crate::cluster::ClusterHandle>>,
    pub stats: Arc<Stats>,
    pub start: Instant,
    pub tick: Duration,
    /// See [`crate::config::Config::batch_wait`].
    pub batch_wait_us: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// Shutdown: connections are closing.
    Draining {
        since: Instant,
    },
    /// Every connection closed; waiting for the last completions.
    Exiting {
        since: Instant,
    },
}

/// The running shard.
pub struct Shard {
    spec: ShardSpec,
    ring: Ring,
    /// Compat mode: the raw fd of each slot, and the free slots.
    fds: Vec<i32>,
    free_slots: Vec<u32>,
    /// Commands taken from the engine, being carried out.
    commands: Vec<Command>,
    tick_cancelled: bool,
    /// When the armed tick is due (ns since start): its lag is measured.
    tick_due_ns: u64,
    /// The tick timer fired in this pass: sweep once the pass is done.
    tick_fired: bool,
    /// The wake eventfd fired: the inbox has messages. (Polling the
    /// channel every pass cost 0.6% of a busy shard in the profile.)
    inbox_woken: bool,
    /// The tick this shard last merged its histograms into the shared ones.
    merged_tick: u32,
    batch: Vec<Completion>,
    /// Completions taken mid-pass by `relieve_sends`.
    reaped: Vec<Completion>,
    phase: Phase,
    /// Listeners whose accepts must be re-armed at the next tick (ENFILE).
    accept_paused: Vec<(u32, u32)>,
    /// Unexpected accept failures so far (for log rate limiting).
    accept_failures: u64,
    /// Receive buffers given back in the current pass of the loop.
    buffers_returned: u32,
    /// Accepted connections waiting for a pass with room (a burst).
    intake: Intake,
    wait: BatchWait,
}

impl Shard {
    /// Builds the shard's ring; call on the shard's own thread.
    pub fn new(spec: ShardSpec) -> std::io::Result<Shard> {
        let capacity = spec.engine.table().capacity();
        let compat = !spec.plan.fast;
        let ring = Ring::new(spec.ring_setup)?;
        Ok(Shard {
            ring,
            fds: if compat {
                vec![-1; capacity as usize]
            } else {
                Vec::new()
            },
            free_slots: if compat {
                (0..capacity).rev().collect()
            } else {
                Vec::new()
            },
            commands: Vec::new(),
            tick_cancelled: false,
            tick_due_ns: 0,
            tick_fired: false,
            inbox_woken: false,
            merged_tick: 0,
            batch: Vec::new(),
            reaped: Vec::new(),
            phase: Phase::Running,
            accept_paused: Vec::new(),
            accept_failures: 0,
            buffers_returned: 0,
            intake: Intake::for_recv_buffers(spec.ring_setup.recv_buffers),
            wait: BatchWait::new(spec.batch_wait_us, spec.tick.as_micros() as u64),
            spec,
        })
    }

    fn fd(&self, slot: u32) -> Fd {
        if self.spec.plan.fast {
            Fd::Fixed(slot)
        } else {
            Fd::Raw(self.fds[slot as usize])
        }
    }

    /// Runs until shutdown completes, on a thread of its own. An error
    /// stops the whole server (see `Shard::fail`).
    pub fn run(mut self) -> std::io::Result<()> {
        let result = self.serve();
        result.map_err(|e| {
            self.fail(&e);
            let id = self.spec.id;
            std::io::Error::new(e.kind(), format!("shard {id}: {e}"))
        })
    }

    fn serve(&mut self) -> std::io::Result<()> {
        self.start()?;
        loop {
            // Connections waiting for intake need a pass, not a wake-up.
            let cqes = if self.intake.is_empty() {
                let window_us = self.batch_window_us();
                self.ring.submit_and_wait_batched(BATCH_WANT, window_us)?
            } else {
                self.ring.reap_ready()?
            };
            self.batch.clear();
            self.batch.extend_from_slice(cqes);
            if self.pass()? {
                return Ok(());
            }
        }
    }

    /// Arms what runs for the shard's life: accepts, tick, inbox.
    fn start(&mut self) -> std::io::Result<()> {
        self.arm_all_accepts()?;
        self.arm_tick()?;
        if self.spec.grouped {
            return Ok(());
        }
        self.ring.wake_read(self.spec.wake_fd)
    }

    /// One pass of a thread that drives several rings (`group`): submits,
    /// takes what is ready without sleeping, handles it. `Ok(true)` once
    /// the shard has exited.
    fn pass_ready(&mut self) -> std::io::Result<bool> {
        let cqes = self.ring.reap_ready()?;
        self.batch.clear();
        self.batch.extend_from_slice(cqes);
        self.pass()
    }

    /// Handles the completions in `self.batch`, then the tick, the inbox
    /// and the engine's commands. `Ok(true)` once the shard has exited.
    fn pass(&mut self) -> std::io::Result<bool> {
        self.wait.record(self.batch.len());
        self.buffers_returned = 0;
        self.intake.next_pass();
        self.set_clock();
        self.handle_batch()?;
        let ticked = std::mem::take(&mut self.tick_fired);
        if ticked {
            self.before_sweep()?;
            self.on_tick()?;
        }
        self.open_due()?;
        let returned = self.buffers_returned > 0;
        self.spec.engine.after_pass(returned);
        // Every message is followed by a write to the wake eventfd; the
        // tick is a safety net.
        if std::mem::take(&mut self.inbox_woken) || ticked {
            self.drain_inbox()?;
        }
        self.carry_out()?;
        self.check_exit()
    }

    fn handle_batch(&mut self) -> std::io::Result<()> {
        let low_water = SEND_LOW_WATER_CHUNKS.min(self.ring.sends.capacity() / 4);
        let mut relief = true;
        let mut i = 0;
        // `relieve_sends` may append to the batch.
        while i < self.batch.len() {
            if relief && self.ring.sends.available() < low_water {
                relief = self.relieve_sends(low_water)?;
            }
            let cqe = self.batch[i];
            self.on_completion(cqe)?;
            i += 1;
        }
        Ok(())
    }

    /// A burst (a connect storm, the backlog of a stalled box) can queue
    /// more replies in one pass than the shard has send chunks, and past
    /// that every reply would close its connection with CLOSE(OVERLOADED)
    /// though nothing is wrong but timing. So before the chunks run out:
    /// carry out the engine's commands (its queued sends reach the kernel,
    /// which takes TCP sends at once), take what completed, hand in the send
    /// completions (they free the chunks) and keep the rest after this batch,
    /// in order. Whether it freed enough to be worth doing again this pass
    /// (a peer that does not read keeps its chunks; the per-connection
    /// queue limit ends it).
    fn relieve_sends(&mut self, low_water: usize) -> std::io::Result<bool> {
        self.spec.stats.send_pool_reliefs.inc();
        self.carry_out()?;
        let mut reaped = std::mem::take(&mut self.reaped);
        reaped.clear();
        reaped.extend_from_slice(self.ring.reap_ready()?);
        for &cqe in &reaped {
            let op = UserData::decode(cqe.user_data).map(|ud| ud.op);
            if matches!(op, Some(Op::Send | Op::CloseFrame)) {
                self.on_completion(cqe)?;
            } else {
                self.batch.push(cqe);
            }
        }
        self.reaped = reaped;
        Ok(self.ring.sends.available() >= low_water)
    }

    /// The sweep must see every frame that reached the kernel in time: run
    /// the task work still pending (completions of data already received)
    /// and hand those completions in first. A tick's evictions so never
    /// race the completions of the same wake-up.
    fn before_sweep(&mut self) -> std::io::Result<()> {
        self.batch.clear();
        let cqes = self.ring.reap_ready()?;
        self.batch.extend_from_slice(cqes);
        self.handle_batch()
    }

    /// How long this wait may gather completions: the batch window, cut
    /// short at the next tick so the sweep is never held back by it.
    fn batch_window_us(&self) -> u32 {
        let window_us = self.wait.window_us();
        if window_us == 0 {
            return 0;
        }
        let tick_ns = self.spec.tick.as_nanos() as u64;
        let now_ns = self.spec.start.elapsed().as_nanos() as u64;
        let until_tick_us = (tick_ns - now_ns % tick_ns) / 1_000;
        window_us.min(until_tick_us as u32)
    }

    fn set_clock(&mut self) {
        let now_ns = self.spec.start.elapsed().as_nanos() as u64;
        let tick_ns = self.spec.tick.as_nanos() as u64;
        self.spec
            .engine
            .set_clock((now_ns / tick_ns) as u32, now_ns);
        if self.spec.engine.config().auth.is_some() {
            // Token expiry is wall-clock time (one vDSO read a pass).
            let unix_s = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.spec.engine.set_unix_time(unix_s);
        }
    }

    fn arm_all_accepts(&mut self) -> std::io::Result<()> {
        for index in 0..self.spec.listeners.len() as u32 {
            self.arm_accepts(index)?;
        }
        Ok(())
    }

    fn arm_accepts(&mut self, index: u32) -> std::io::Result<()> {
        let fd = self.spec.listeners[index as usize].as_raw_fd();
        let plan = self.spec.plan;
        if plan.multishot_accept {
            return self.ring.accept_multi(fd, index, true);
        }
        for addr in 0..ACCEPTS_PER_LISTENER {
            self.ring.accept(fd, index, addr, plan.fast)?;
        }
        Ok(())
    }

    fn arm_tick(&mut self) -> std::io::Result<()> {
        let tick_ns = self.spec.tick.as_nanos() as u64;
        let now_ns = self.spec.start.elapsed().as_nanos() as u64;
        let next = (now_ns / tick_ns + 1) * tick_ns;
        self.tick_due_ns = next;
        self.ring
            .tick_after(Duration::from_nanos(next - now_ns + 1))
    }

    fn on_completion(&mut self, cqe: Completion) -> std::io::Result<()> {
        let Some(ud) = UserData::decode(cqe.user_data) else {
            panic!("completion with foreign user_data {:#x}", cqe.user_data);
        };
        let sends = &mut self.ring.sends;
        let engine = &mut self.spec.engine;
        match ud.op {
            Op::AcceptMulti => return self.on_accept(cqe, ud.slot, None),
            Op::Accept => return self.on_accept(cqe, ud.slot >> 8, Some(ud.slot & 0xff)),
            Op::Recv => return self.on_recv(cqe, ud),
            Op::Send | Op::CloseFrame => {
                let close_frame = ud.op == Op::CloseFrame;
                engine.on_send_done(ud.slot, ud.generation, cqe.result, close_frame, sends);
            }
            Op::Close => self.on_close_done(cqe, ud),
            Op::Tick => self.tick_fired = true,
            Op::Wake => return self.on_wake(cqe),
            Op::Cancel => {}
            Op::Connect => unreachable!("the server never connects"),
            Op::ProvideBuffers => {
                if cqe.result < 0 {
                    tracing::error!(errno = -cqe.result, "PROVIDE_BUFFERS failed");
                }
            }
        }
        Ok(())
    }

    fn on_accept(&mut self, cqe: Completion, index: u32, addr: Option<u32>) -> std::io::Result<()> {
        let rearm = self.phase == Phase::Running && (addr.is_some() || !cqe.more());
        if cqe.result < 0 {
            return self.on_accept_error(cqe.result, index, addr, rearm);
        }
        let peer = addr.and_then(|a| self.ring.accept_peer(index, a));
        if self.phase != Phase::Running {
            self.open_conn(cqe.result, peer)?;
        } else if let Some((result, peer)) = self.intake.accepted((cqe.result, peer)) {
            self.open_conn(result, peer)?;
        } else {
            self.spec.stats.accepts_paced.inc();
        }
        if rearm {
            let fd = self.spec.listeners[index as usize].as_raw_fd();
            match addr {
                Some(a) => self.ring.accept(fd, index, a, self.spec.plan.fast)?,
                None => self.ring.accept_multi(fd, index, true)?,
            }
        }
        Ok(())
    }

    fn on_accept_error(
        &mut self,
        errno: i32,
        index: u32,
        addr: Option<u32>,
        rearm: bool,
    ) -> std::io::Result<()> {
        match -errno {
            libc::ECANCELED => return Ok(()),
            e => {
                self.spec.stats.io_errors.inc();
                self.accept_failures += 1;
                // A persistent failure repeats every tick: log 1st, 2nd, 4th…
                if self.accept_failures.is_power_of_two() {
                    tracing::warn!(
                        shard = self.spec.id,
                        errno = e,
                        failures = self.accept_failures,
                        "accept failed (ENFILE/EMFILE: descriptors ran out below the \
                         connection limit); retrying next tick"
                    );
                }
            }
        }
        if rearm {
            self.accept_paused.push((index, addr.unwrap_or(u32::MAX)));
        }
        Ok(())
    }

    /// Hands the engine the waiting connections this pass has room for.
    fn open_due(&mut self) -> std::io::Result<()> {
        while let Some((result, peer)) = self.intake.due() {
            self.open_conn(result, peer)?;
        }
        Ok(())
    }

    /// A new descriptor: take a slot and tell the engine.
    fn open_conn(&mut self, result: i32, peer: Option<SocketAddr>) -> std::io::Result<()> {
        let slot = if self.spec.plan.fast {
            result as u32
        } else {
            let Some(slot) = self.free_slots.pop() else {
                // The engine refuses past its shard limit, below the table's
                // capacity, so this means the limit is misconfigured.
                self.spec.stats.io_errors.inc();
                tracing::error!(shard = self.spec.id, "no free slot for fd {result}");
                return self.ring.close(Fd::Raw(result), 0, 0);
            };
            self.fds[slot as usize] = result;
            slot
        };
        self.spec.engine.on_open(slot, peer, &mut self.ring.sends);
        Ok(())
    }

    fn on_recv(&mut self, cqe: Completion, ud: UserData) -> std::io::Result<()> {
        let bid = cqe.buffer_id();
        let engine = &mut self.spec.engine;
        if cqe.result > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            let data = self.ring.recv.data(bid, cqe.result as usize);
            engine.on_recv_data(ud.slot, ud.generation, data, &mut self.ring.sends);
        }
        if let Some(bid) = bid {
            self.ring.return_buffer(bid)?;
            self.buffers_returned += 1;
        }
        if !cqe.more() {
            let sends = &mut self.ring.sends;
            engine.on_recv_end(ud.slot, ud.generation, cqe.result, sends);
        }
        Ok(())
    }

    fn on_close_done(&mut self, cqe: Completion, ud: UserData) {
        if cqe.result < 0 {
            tracing::debug!(slot = ud.slot, errno = -cqe.result, "close failed");
        }
        let compat = !self.spec.plan.fast;
        if ud.generation == 0 && compat && !self.spec.engine.table().is_current(ud.slot, 0) {
            return; // an fd we could not take a slot for
        }
        self.spec.engine.on_closed(ud.slot, ud.generation);
        if compat {
            self.fds[ud.slot as usize] = -1;
            self.free_slots.push(ud.slot);
        }
    }

    fn on_tick(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let now_ns = self.spec.start.elapsed().as_nanos() as u64;
        let lag_ns = now_ns.saturating_sub(self.tick_due_ns);
        let tick_ns = self.spec.tick.as_nanos() as u64;
        let due_tick = (self.tick_due_ns / tick_ns) as u32;
        let engine = &mut self.spec.engine;
        let _ = engine.stats.tick_lag_ns.record(lag_ns.max(1));
        engine.on_tick(due_tick, &mut self.ring.sends);
        let sweep_ns = started.elapsed().as_nanos() as u64;
        let _ = engine.stats.sweep_ns.record(sweep_ns.max(1));
        // Merging histograms walks every bucket: once a second per shard,
        // not once a tick (at 56 shards the per-tick merge took a quarter
        // of a lightly loaded server's CPU samples). Counters are atomics
        // and always current.
        let merge_every_ticks = (1_000_000_000 / tick_ns).max(1) as u32;
        if due_tick.wrapping_sub(self.merged_tick) >= merge_every_ticks {
            self.merged_tick = due_tick;
            self.spec.stats.absorb(&mut engine.stats);
        }
        for (index, addr) in std::mem::take(&mut self.accept_paused) {
            if self.phase != Phase::Running {
                break;
            }
            let fd = self.spec.listeners[index as usize].as_raw_fd();
            if addr == u32::MAX {
                self.ring.accept_multi(fd, index, true)?;
            } else {
                self.ring.accept(fd, index, addr, self.spec.plan.fast)?;
            }
        }
        self.wait.on_tick();
        if !self.tick_cancelled {
            self.arm_tick()?;
        }
        Ok(())
    }

    fn on_wake(&mut self, cqe: Completion) -> std::io::Result<()> {
        self.inbox_woken = true;
        if cqe.result < 0 && cqe.result != -libc::ECANCELED {
            tracing::warn!(errno = -cqe.result, "wake read failed");
        }
        if !matches!(self.phase, Phase::Exiting { .. }) {
            self.ring.wake_read(self.spec.wake_fd)?;
        }
        Ok(())
    }
}

mod commands;
pub mod group;
mod intake;
