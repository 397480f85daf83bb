//! One shard: a thread with its own io_uring, its own SO_REUSEPORT listeners
//! and the engine for the connections it accepted. This is the I/O driver:
//! it turns completions into engine calls and engine requests into SQEs.
//!
//! A connection's slot goes Free → Open (accept) → Closing (engine decides)
//! → Free (the CLOSE op completed). A Closing slot first drains: its receive
//! is cancelled, queued replies (e.g. the CLOSE frame) are sent unless the
//! peer is gone, then the descriptor is closed. Completions carry the slot's
//! generation; one that does not match is stale and only its buffer is kept.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::conn_table::{flag, State};
use crate::engine::{CloseCause, Engine, Io};
use crate::events::{Event, EventSender};
use crate::registry::{Control, Registry};
use crate::ring::{BatchWait, Completion, Fd, Ring, RingSetup, ACCEPTS_PER_LISTENER};
use crate::send_pool::{QueueError, SendPool};
use crate::server::Peers;
use crate::stats::Stats;
use crate::user_data::{Op, UserData};

/// How long a closing connection may take to flush its CLOSE frame.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// How long shutdown may take before in-flight sends are abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Completions a busy shard gathers per wake-up, at most `batch_wait` long.
const BATCH_WANT: usize = 64;

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
    pub control_rx: Receiver<Control>,
    /// The shard's wake eventfd (owned by `peers`, which outlives the shard).
    pub wake_fd: RawFd,
    pub peers: Arc<Peers>,
    pub events: Option<EventSender>,
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

/// The requests the engine made while handling one completion.
struct DriverIo<'a> {
    sends: &'a mut SendPool,
    dirty: &'a mut Vec<u32>,
    closing: &'a mut Vec<(u32, u32)>,
    control: &'a mut Vec<(u16, Control)>,
    events: Option<&'a EventSender>,
}

impl Io for DriverIo<'_> {
    fn send(&mut self, slot: u32, head: &mut u32, bytes: &[u8]) -> Result<(), QueueError> {
        self.sends.queue(head, bytes)?;
        self.dirty.push(slot);
        Ok(())
    }

    fn close(&mut self, slot: u32, generation: u32, _abort_send: bool) {
        self.closing.push((slot, generation));
    }

    fn control(&mut self, to: u16, msg: Control) {
        self.control.push((to, msg));
    }

    fn event(&mut self, event: Event) {
        if let Some(tx) = self.events {
            tx.send(event);
        }
    }
}

/// The running shard.
pub struct Shard {
    spec: ShardSpec,
    ring: Ring,
    registry: Registry,
    /// Compat mode: the raw fd of each slot, and the free slots.
    fds: Vec<i32>,
    free_slots: Vec<u32>,
    dirty: Vec<u32>,
    /// Slots whose close the engine began this iteration.
    closing_new: Vec<(u32, u32)>,
    /// Closing slots not yet closed: (slot, generation, since).
    lingering: Vec<(u32, u32, Instant)>,
    /// Slots that may be ready for their CLOSE op.
    to_check: Vec<u32>,
    tick_cancelled: bool,
    /// When the armed tick is due (ns since start): its lag is measured.
    tick_due_ns: u64,
    control_out: Vec<(u16, Control)>,
    batch: Vec<Completion>,
    phase: Phase,
    /// Listeners whose accepts must be re-armed at the next tick (ENFILE).
    accept_paused: Vec<(u32, u32)>,
    /// Connections whose input is held until their replies drain.
    paused: pause::Paused,
    /// Unexpected accept failures so far (for log rate limiting).
    accept_failures: u64,
    /// Receives that ended for lack of buffers, re-armed at the next tick.
    starved: Vec<(u32, u32)>,
    /// Receive buffers given back in the current pass of the loop.
    buffers_returned: u32,
    wait: BatchWait,
}

impl Shard {
    /// Builds the shard's ring; call on the shard's own thread.
    pub fn new(spec: ShardSpec) -> std::io::Result<Shard> {
        let capacity = spec.engine.table.capacity();
        let compat = !spec.plan.fast;
        let ring = Ring::new(spec.ring_setup)?;
        Ok(Shard {
            ring,
            registry: Registry::default(),
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
            dirty: Vec::new(),
            closing_new: Vec::new(),
            lingering: Vec::new(),
            to_check: Vec::new(),
            tick_cancelled: false,
            tick_due_ns: 0,
            control_out: Vec::new(),
            batch: Vec::new(),
            phase: Phase::Running,
            accept_paused: Vec::new(),
            paused: pause::Paused::default(),
            accept_failures: 0,
            starved: Vec::new(),
            buffers_returned: 0,
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

    /// Runs until shutdown completes.
    pub fn run(mut self) -> std::io::Result<()> {
        self.arm_all_accepts()?;
        self.arm_tick()?;
        self.ring.wake_read(self.spec.wake_fd)?;
        loop {
            self.batch.clear();
            let window_us = self.batch_window_us();
            let cqes = self.ring.submit_and_wait_batched(BATCH_WANT, window_us)?;
            self.batch.extend_from_slice(cqes);
            self.wait.record(self.batch.len());
            self.buffers_returned = 0;
            self.set_clock();
            for i in 0..self.batch.len() {
                let cqe = self.batch[i];
                self.on_completion(cqe)?;
            }
            // Buffers came back in this pass, so receives that ran out can
            // go again now instead of a tick later. (With none back they
            // would fail at once: that waits for the tick.)
            if self.buffers_returned > 0 && !self.starved.is_empty() {
                self.rearm_starved()?;
            }
            self.drain_control()?;
            self.flush()?;
            if self.check_exit()? {
                return Ok(());
            }
        }
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

    /// Splits the borrow of `self` into the engine and its Io.
    fn split_engine(&mut self) -> (&mut Engine, DriverIo<'_>) {
        split(
            &mut self.spec.engine,
            &mut self.ring.sends,
            &mut self.dirty,
            &mut self.closing_new,
            &mut self.control_out,
            self.spec.events.as_ref(),
        )
    }

    fn with_engine<R>(&mut self, f: impl FnOnce(&mut Engine, &mut DriverIo<'_>) -> R) -> R {
        let (engine, mut io) = self.split_engine();
        f(engine, &mut io)
    }

    fn on_completion(&mut self, cqe: Completion) -> std::io::Result<()> {
        let Some(ud) = UserData::decode(cqe.user_data) else {
            panic!("completion with foreign user_data {:#x}", cqe.user_data);
        };
        match ud.op {
            Op::AcceptMulti => self.on_accept(cqe, ud.slot, None),
            Op::Accept => self.on_accept(cqe, ud.slot >> 8, Some(ud.slot & 0xff)),
            Op::Recv => self.on_recv(cqe, ud),
            Op::Send => self.on_send(cqe, ud),
            Op::Close => self.on_close_done(cqe, ud),
            Op::Tick => self.on_tick(),
            Op::Wake => self.on_wake(cqe),
            Op::Cancel => Ok(()),
            Op::Connect => unreachable!("the server never connects"),
            Op::ProvideBuffers => {
                if cqe.result < 0 {
                    tracing::error!(errno = -cqe.result, "PROVIDE_BUFFERS failed");
                }
                Ok(())
            }
        }
    }

    fn on_accept(&mut self, cqe: Completion, index: u32, addr: Option<u32>) -> std::io::Result<()> {
        let rearm = self.phase == Phase::Running && (addr.is_some() || !cqe.more());
        if cqe.result < 0 {
            return self.on_accept_error(cqe.result, index, addr, rearm);
        }
        let peer = addr.and_then(|a| self.ring.accept_peer(index, a));
        self.open_conn(cqe.result, peer)?;
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
            libc::ENFILE | libc::EMFILE | libc::ENOMEM => {
                tracing::warn!(
                    shard = self.spec.id,
                    errno = -errno,
                    "accept: no free slot; pausing accepts for a tick"
                );
            }
            e => {
                self.spec.stats.io_errors.inc();
                self.accept_failures += 1;
                // A persistent failure repeats every tick: log 1st, 2nd, 4th…
                if self.accept_failures.is_power_of_two() {
                    tracing::warn!(
                        shard = self.spec.id,
                        errno = e,
                        failures = self.accept_failures,
                        "accept failed; retrying next tick"
                    );
                }
            }
        }
        if rearm {
            self.accept_paused.push((index, addr.unwrap_or(u32::MAX)));
        }
        Ok(())
    }

    /// A new descriptor: take a slot, tell the engine, arm the receive.
    fn open_conn(&mut self, result: i32, peer: Option<SocketAddr>) -> std::io::Result<()> {
        let slot = if self.spec.plan.fast {
            result as u32
        } else {
            let Some(slot) = self.free_slots.pop() else {
                tracing::warn!(
                    shard = self.spec.id,
                    "no free slot for fd {result}; closing it"
                );
                return self.ring.close(Fd::Raw(result), 0, 0);
            };
            self.fds[slot as usize] = result;
            slot
        };
        let generation = self.with_engine(|e, io| e.on_open(slot, peer, io));
        if self.spec.engine.table.state(slot) == State::Open {
            self.arm_recv(slot, generation)?;
        }
        Ok(())
    }

    fn arm_recv(&mut self, slot: u32, generation: u32) -> std::io::Result<()> {
        let fd = self.fd(slot);
        self.ring.recv(fd, slot, generation, self.spec.plan.fast)?;
        self.spec.engine.table.set(slot, flag::RECV_ARMED);
        Ok(())
    }

    fn on_recv(&mut self, cqe: Completion, ud: UserData) -> std::io::Result<()> {
        let bid = cqe.buffer_id();
        let current = self.spec.engine.table.is_current(ud.slot, ud.generation);
        if current && cqe.result > 0 {
            let bid = bid.expect("a receive with data names its buffer");
            let len = cqe.result as usize;
            if self.should_hold(ud.slot) {
                let data = self.ring.recv.data(bid, len).to_vec();
                self.hold(ud.slot, ud.generation, &data)?;
            } else {
                let data = self.ring.recv.data(bid, len);
                let (engine, mut io) = split(
                    &mut self.spec.engine,
                    &mut self.ring.sends,
                    &mut self.dirty,
                    &mut self.closing_new,
                    &mut self.control_out,
                    self.spec.events.as_ref(),
                );
                engine.on_recv(ud.slot, data, &mut io);
            }
        }
        if let Some(bid) = bid {
            self.ring.return_buffer(bid)?;
            self.buffers_returned += 1;
        }
        if !current || cqe.more() {
            return Ok(());
        }
        let slot = ud.slot;
        self.spec.engine.table.clear(slot, flag::RECV_ARMED);
        self.to_check.push(slot);
        let open = self.spec.engine.table.state(slot) == State::Open;
        match cqe.result {
            r if r > 0 => {
                if open && !self.paused.contains(slot) {
                    self.arm_recv(slot, ud.generation)?;
                }
            }
            r if r == -libc::ENOBUFS => {
                // Re-arming now would spin: the kernel has data and still no
                // buffer. Wait until buffers have come back (see `run`).
                self.spec.stats.recv_no_buffers.inc();
                self.starved.push((slot, ud.generation));
            }
            0 => self.with_engine(|e, io| e.close(slot, CloseCause::PeerGone, io)),
            r if r == -libc::ECONNRESET => {
                self.with_engine(|e, io| e.close(slot, CloseCause::Reset, io))
            }
            // Cancelled by a pause that may already have ended (its resume
            // saw the receive still armed): re-arm unless still paused.
            r if r == -libc::ECANCELED => {
                if open && !self.paused.contains(slot) {
                    self.arm_recv(slot, ud.generation)?;
                }
            }
            r => {
                if open {
                    self.spec.stats.io_errors.inc();
                    tracing::debug!(slot, errno = -r, "recv failed");
                }
                self.with_engine(|e, io| e.close(slot, CloseCause::PeerGone, io));
            }
        }
        Ok(())
    }

    fn rearm_starved(&mut self) -> std::io::Result<()> {
        for (slot, generation) in std::mem::take(&mut self.starved) {
            let table = &self.spec.engine.table;
            let open = table.is_current(slot, generation) && table.state(slot) == State::Open;
            if open && !table.has(slot, flag::RECV_ARMED) && !self.paused.contains(slot) {
                self.arm_recv(slot, generation)?;
            }
        }
        Ok(())
    }

    fn on_send(&mut self, cqe: Completion, ud: UserData) -> std::io::Result<()> {
        let slot = ud.slot;
        let table = &mut self.spec.engine.table;
        assert!(
            table.is_current(slot, ud.generation),
            "send completion for stale slot {slot}"
        );
        table.clear(slot, flag::SEND_INFLIGHT);
        self.to_check.push(slot);
        let head = &mut table.send_head[slot as usize];
        if cqe.result >= 0 {
            if self.ring.sends.complete_send(head, cqe.result as usize) {
                self.dirty.push(slot);
            }
            return self.maybe_resume(slot);
        }
        self.ring.sends.complete_send_failed(head);
        let cause = match -cqe.result {
            libc::ECONNRESET | libc::EPIPE => CloseCause::Reset,
            libc::ECANCELED => return Ok(()),
            _ => CloseCause::PeerGone,
        };
        table.set(slot, flag::PEER_DONE);
        self.with_engine(|e, io| e.close(slot, cause, io));
        Ok(())
    }

    fn on_close_done(&mut self, cqe: Completion, ud: UserData) -> std::io::Result<()> {
        if cqe.result < 0 {
            tracing::debug!(slot = ud.slot, errno = -cqe.result, "close failed");
        }
        if ud.generation == 0
            && !self.spec.plan.fast
            && !self.spec.engine.table.is_current(ud.slot, 0)
        {
            return Ok(()); // an fd we could not take a slot for
        }
        let slot = ud.slot;
        self.release(slot);
        let head = &mut self.spec.engine.table.send_head[slot as usize];
        self.ring.sends.drop_queue(head);
        self.spec.engine.on_closed(slot);
        if !self.spec.plan.fast {
            self.fds[slot as usize] = -1;
            self.free_slots.push(slot);
        }
        Ok(())
    }

    fn on_tick(&mut self) -> std::io::Result<()> {
        let started = Instant::now();
        let now_ns = self.spec.start.elapsed().as_nanos() as u64;
        let lag_ns = now_ns.saturating_sub(self.tick_due_ns);
        let _ = self.spec.engine.stats.tick_lag_ns.record(lag_ns.max(1));
        self.with_engine(|e, io| e.on_tick(io));
        let sweep_ns = started.elapsed().as_nanos() as u64;
        let _ = self.spec.engine.stats.sweep_ns.record(sweep_ns.max(1));
        self.spec.stats.absorb(&mut self.spec.engine.stats);
        if let Some(tx) = &self.spec.events {
            self.spec.stats.events_dropped.set(tx.dropped() as i64);
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
        self.expire_lingering();
        self.expire_paused();
        self.rearm_starved()?;
        if !self.tick_cancelled {
            self.arm_tick()?;
        }
        Ok(())
    }

    fn on_wake(&mut self, cqe: Completion) -> std::io::Result<()> {
        if cqe.result < 0 && cqe.result != -libc::ECANCELED {
            tracing::warn!(errno = -cqe.result, "wake read failed");
        }
        if !matches!(self.phase, Phase::Exiting { .. }) {
            self.ring.wake_read(self.spec.wake_fd)?;
        }
        Ok(())
    }
}

/// Borrows the engine and a [`DriverIo`] from disjoint fields.
fn split<'a>(
    engine: &'a mut Engine,
    sends: &'a mut SendPool,
    dirty: &'a mut Vec<u32>,
    closing: &'a mut Vec<(u32, u32)>,
    control: &'a mut Vec<(u16, Control)>,
    events: Option<&'a EventSender>,
) -> (&'a mut Engine, DriverIo<'a>) {
    (
        engine,
        DriverIo {
            sends,
            dirty,
            closing,
            control,
            events,
        },
    )
}

mod drain;
mod pause;
