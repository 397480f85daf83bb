//! The shard's per-iteration work after completions: route control
//! messages, start queued sends, drain closing connections, and shut down.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{Phase, Shard, CLOSE_LINGER, SHUTDOWN_GRACE};
use crate::conn_table::{flag, State, NONE};
use crate::registry::Control;
use crate::ring::ACCEPTS_PER_LISTENER;
use crate::user_data::{Op, UserData};

impl Shard {
    /// Routes the engine's control messages and handles incoming ones until
    /// both queues are empty.
    pub(super) fn drain_control(&mut self) -> std::io::Result<()> {
        loop {
            let out = std::mem::take(&mut self.control_out);
            let had_out = !out.is_empty();
            for (to, msg) in out {
                if to == self.spec.id {
                    self.handle_control(msg)?;
                } else {
                    self.spec.peers.send(to, msg);
                }
            }
            let mut had_in = false;
            while let Ok(msg) = self.spec.control_rx.try_recv() {
                had_in = true;
                self.handle_control(msg)?;
            }
            if !had_out && !had_in && self.control_out.is_empty() {
                return Ok(());
            }
        }
    }

    fn handle_control(&mut self, msg: Control) -> std::io::Result<()> {
        match msg {
            Control::Claim { client_id, holder } => {
                let routed = self.registry.claim(client_id, holder);
                self.control_out.push(routed);
            }
            Control::Release { client_id, holder } => self.registry.release(client_id, holder),
            Control::Evict { .. } | Control::Granted { .. } => {
                self.with_engine(|e, io| e.on_control(msg, io));
            }
            Control::Shutdown => self.begin_shutdown()?,
        }
        Ok(())
    }

    fn begin_shutdown(&mut self) -> std::io::Result<()> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        tracing::debug!(
            shard = self.spec.id,
            open = self.spec.engine.table.open_count(),
            "shutting down"
        );
        self.phase = Phase::Draining {
            since: Instant::now(),
        };
        self.accept_paused.clear();
        for index in 0..self.spec.listeners.len() as u32 {
            if self.spec.plan.multishot_accept {
                self.ring.cancel(UserData::new(Op::AcceptMulti, index, 0))?;
            } else {
                for addr in 0..ACCEPTS_PER_LISTENER {
                    self.ring
                        .cancel(UserData::new(Op::Accept, (index << 8) | addr, 0))?;
                }
            }
        }
        self.with_engine(|e, io| e.shutdown(io));
        Ok(())
    }

    /// Starts closes the engine asked for, queued sends, and CLOSE ops of
    /// drained slots.
    pub(super) fn flush(&mut self) -> std::io::Result<()> {
        for (slot, generation) in std::mem::take(&mut self.closing_new) {
            self.start_close(slot, generation)?;
        }
        for slot in std::mem::take(&mut self.dirty) {
            self.start_send(slot)?;
        }
        for slot in std::mem::take(&mut self.to_check) {
            self.try_finish_close(slot)?;
        }
        Ok(())
    }

    fn start_close(&mut self, slot: u32, generation: u32) -> std::io::Result<()> {
        let table = &self.spec.engine.table;
        if !table.is_current(slot, generation) {
            return Ok(());
        }
        if table.has(slot, flag::RECV_ARMED) {
            self.ring
                .cancel(UserData::new(Op::Recv, slot, generation))?;
        }
        if table.has(slot, flag::PEER_DONE) && table.has(slot, flag::SEND_INFLIGHT) {
            self.ring
                .cancel(UserData::new(Op::Send, slot, generation))?;
        }
        self.lingering.push((slot, generation, Instant::now()));
        self.to_check.push(slot);
        Ok(())
    }

    fn start_send(&mut self, slot: u32) -> std::io::Result<()> {
        let table = &self.spec.engine.table;
        let state = table.state(slot);
        if state == State::Free || table.has(slot, flag::SEND_INFLIGHT) {
            return Ok(());
        }
        let head = table.send_head[slot as usize];
        if head == NONE {
            return Ok(());
        }
        if state == State::Closing && table.has(slot, flag::PEER_DONE) {
            self.to_check.push(slot);
            return Ok(());
        }
        let generation = table.generation[slot as usize];
        let fd = self.fd(slot);
        self.ring.send(fd, slot, generation, head)?;
        self.spec.engine.table.set(slot, flag::SEND_INFLIGHT);
        Ok(())
    }

    /// Submits the CLOSE op once nothing of the slot is in flight and its
    /// queue is sent (or abandoned).
    fn try_finish_close(&mut self, slot: u32) -> std::io::Result<()> {
        let table = &mut self.spec.engine.table;
        let busy = flag::RECV_ARMED | flag::SEND_INFLIGHT | flag::CLOSE_SUBMITTED;
        if table.state(slot) != State::Closing || table.flags[slot as usize] & busy != 0 {
            return Ok(());
        }
        if table.send_head[slot as usize] != NONE && !table.has(slot, flag::PEER_DONE) {
            return Ok(()); // the CLOSE frame is still queued: start_send runs it
        }
        self.ring
            .sends
            .drop_queue(&mut table.send_head[slot as usize]);
        table.set(slot, flag::CLOSE_SUBMITTED);
        let generation = table.generation[slot as usize];
        let fd = self.fd(slot);
        self.ring.close(fd, slot, generation)
    }

    /// Once a tick: closing slots that did not flush in time give up their
    /// queued bytes.
    pub(super) fn expire_lingering(&mut self) {
        let linger = match self.phase {
            Phase::Running => CLOSE_LINGER,
            _ => SHUTDOWN_GRACE.min(CLOSE_LINGER),
        };
        let mut lingering = std::mem::take(&mut self.lingering);
        lingering.retain(|&(slot, generation, since)| {
            let table = &mut self.spec.engine.table;
            if !table.is_current(slot, generation) || table.has(slot, flag::CLOSE_SUBMITTED) {
                return false;
            }
            if since.elapsed() >= linger && !table.has(slot, flag::PEER_DONE) {
                table.set(slot, flag::PEER_DONE);
                if table.has(slot, flag::SEND_INFLIGHT) {
                    let _ = self.ring.cancel(UserData::new(Op::Send, slot, generation));
                }
                self.to_check.push(slot);
            }
            true
        });
        self.lingering = lingering;
    }

    /// Whether the shard is done; moves shutdown along.
    pub(super) fn check_exit(&mut self) -> std::io::Result<bool> {
        match self.phase {
            Phase::Running => Ok(false),
            Phase::Draining { since } => {
                if self.spec.engine.table.open_count() == 0 {
                    self.phase = Phase::Exiting {
                        since: Instant::now(),
                    };
                    self.ring.cancel(UserData::new(Op::Wake, 0, 0))?;
                } else if since.elapsed() > SHUTDOWN_GRACE * 2 {
                    tracing::warn!(
                        shard = self.spec.id,
                        open = self.spec.engine.table.open_count(),
                        "shutdown grace over; exiting"
                    );
                    return Ok(true);
                }
                Ok(false)
            }
            Phase::Exiting { since } => {
                let inflight = self.ring.inflight;
                if inflight == 0 || since.elapsed() > CLOSE_LINGER {
                    return Ok(true);
                }
                if inflight == 1 && !self.tick_cancelled {
                    self.tick_cancelled = true;
                    self.ring.cancel(UserData::new(Op::Tick, 0, 0))?;
                }
                Ok(false)
            }
        }
    }

    /// The listener fds (for logs).
    pub fn listener_fds(&self) -> Vec<i32> {
        self.spec.listeners.iter().map(|l| l.as_raw_fd()).collect()
    }
}
