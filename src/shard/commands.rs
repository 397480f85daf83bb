//! The shard's per-pass work after completions: deliver inbox messages to
//! the engine, carry out the engine's commands as SQEs (routing messages to
//! other shards), and move shutdown along.

use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{Phase, Shard, EXIT_WAIT, SHUTDOWN_GRACE};
use crate::conn_table::flag;
use crate::engine::Command;
use crate::mailbox::{Holder, ShardMsg, ToHome};
use crate::ring::ACCEPTS_PER_LISTENER;
use crate::user_data::{Op, UserData};

/// Rounds of the engine's commands a failed shard carries out (events and
/// messages only): its shutdown's closes need one, the bound is slack.
const FAIL_ROUNDS_MAX: usize = 4;

impl Shard {
    /// Hands every message waiting in the inbox to the engine.
    pub(super) fn drain_inbox(&mut self) -> std::io::Result<()> {
        while let Ok(msg) = self.spec.inbox.try_recv() {
            self.deliver(msg)?;
        }
        Ok(())
    }

    fn deliver(&mut self, msg: ShardMsg) -> std::io::Result<()> {
        let engine = &mut self.spec.engine;
        match msg {
            ShardMsg::Home(m) => engine.on_home(m),
            ShardMsg::Holder(m) => engine.on_holder(m, &mut self.ring.sends),
            ShardMsg::Shutdown => self.begin_shutdown()?,
            ShardMsg::Fail => return Err(std::io::Error::other("failure injected by a test")),
        }
        Ok(())
    }

    /// Carries out the engine's commands until it has none left (messages
    /// to this shard are delivered at once and may ask for more).
    pub(super) fn carry_out(&mut self) -> std::io::Result<()> {
        loop {
            let mut commands = std::mem::take(&mut self.commands);
            self.spec
                .engine
                .take_commands(&mut commands, &mut self.ring.sends);
            if commands.is_empty() {
                self.commands = commands;
                return Ok(());
            }
            for command in commands.drain(..) {
                self.carry_out_one(command)?;
            }
            self.commands = commands;
        }
    }

    fn carry_out_one(&mut self, command: Command) -> std::io::Result<()> {
        let fast = self.spec.plan.fast;
        match command {
            Command::ArmRecv { slot, generation } => {
                let fd = self.fd(slot);
                self.ring.recv(fd, slot, generation, fast)
            }
            Command::Send {
                slot,
                generation,
                head,
            } => {
                let fd = self.fd(slot);
                self.ring.send(fd, slot, generation, head)
            }
            Command::SendClose {
                slot,
                generation,
                bytes,
            } => {
                let fd = self.fd(slot);
                self.ring.send_static(fd, slot, generation, bytes)
            }
            Command::CancelRecv { slot, generation } => {
                self.ring.cancel(UserData::new(Op::Recv, slot, generation))
            }
            Command::CancelSend {
                slot,
                generation,
                close_frame,
            } => {
                let op = if close_frame {
                    Op::CloseFrame
                } else {
                    Op::Send
                };
                self.ring.cancel(UserData::new(op, slot, generation))
            }
            Command::CloseFd { slot, generation } => {
                let fd = self.fd(slot);
                self.ring.close(fd, slot, generation)
            }
            // Cluster mode: the cluster decides first; its grant comes
            // back to the home shard as this same claim (cluster/hooks.rs).
            Command::Message {
                msg: ShardMsg::Home(ToHome::Claim { client_id, holder }),
                ..
            } if self.spec.cluster.is_some() => {
                self.cluster_claim(client_id, holder);
                Ok(())
            }
            Command::Message { to, msg } if to == self.spec.id => self.deliver(msg),
            Command::Message { to, msg } => {
                self.spec.peers.send(to, msg);
                Ok(())
            }
            Command::Event(event) => {
                if let Some(cluster) = &self.spec.cluster {
                    cluster.on_event(&event);
                }
                if let Some(tx) = &self.spec.events {
                    tx.send(event);
                }
                Ok(())
            }
        }
    }

    fn cluster_claim(&self, client_id: u64, holder: Holder) {
        let cluster = self.spec.cluster.as_ref().expect("cluster mode");
        let session = crate::conn_table::session_id(holder.shard, holder.slot, holder.generation);
        let peer = self.spec.engine.table().peer(holder.slot);
        cluster.claim(client_id, session, peer, holder.into());
    }

    fn begin_shutdown(&mut self) -> std::io::Result<()> {
        if self.phase != Phase::Running {
            return Ok(());
        }
        tracing::debug!(
            shard = self.spec.id,
            open = self.spec.engine.table().open_count(),
            "shutting down"
        );
        self.phase = Phase::Draining {
            since: Instant::now(),
        };
        self.accept_paused.clear();
        // Connections still waiting for intake: the engine closes them with
        // the rest.
        for (result, peer) in self.intake.take_all() {
            self.open_conn(result, peer)?;
        }
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
        self.spec.engine.shutdown(&mut self.ring.sends);
        Ok(())
    }

    /// The shard cannot go on: its ring returned an I/O error. A server
    /// that kept running without it would report its clients online while
    /// no one serves them (and, in compat mode, keep their sockets open),
    /// so the whole server stops and the error ends the process: this
    /// shard's clients are announced offline now (their connections close
    /// with the ring, without a CLOSE frame), every other shard is told to
    /// shut down (CLOSE(SHUTDOWN) to its clients).
    pub(super) fn fail(&mut self, error: &std::io::Error) {
        tracing::error!(
            shard = self.spec.id,
            open = self.spec.engine.table().open_count(),
            %error,
            "shard failed: stopping the server"
        );
        self.spec.stats.shard_failures.inc();
        self.spec.engine.shutdown(&mut self.ring.sends);
        // Only what leaves the ring: events (offline, to the sink and the
        // cluster) and messages to other shards (registry releases).
        let mut commands = Vec::new();
        for _ in 0..FAIL_ROUNDS_MAX {
            self.spec
                .engine
                .take_commands(&mut commands, &mut self.ring.sends);
            if commands.is_empty() {
                break;
            }
            for command in commands.drain(..) {
                match command {
                    Command::Event(_) => {
                        let _ = self.carry_out_one(command);
                    }
                    Command::Message { to, msg } if to != self.spec.id => {
                        self.spec.peers.send(to, msg);
                    }
                    _ => {}
                }
            }
        }
        // Compat mode: a slot whose close was submitted may have closed
        // its fd already (the number may be another socket's by now).
        let table = self.spec.engine.table();
        for (slot, fd) in self.fds.iter_mut().enumerate() {
            if *fd >= 0 && !table.has(slot as u32, flag::CLOSE_SUBMITTED) {
                crate::ring::close_raw(std::mem::replace(fd, -1));
            }
        }
        self.phase = Phase::Exiting {
            since: Instant::now(),
        };
        self.spec.peers.shutdown_all();
    }

    /// Whether the shard is done; moves shutdown along.
    pub(super) fn check_exit(&mut self) -> std::io::Result<bool> {
        match self.phase {
            Phase::Running => Ok(false),
            Phase::Draining { since } => {
                let open = self.spec.engine.table().open_count();
                if open == 0 {
                    self.phase = Phase::Exiting {
                        since: Instant::now(),
                    };
                    if !self.spec.grouped {
                        self.ring.cancel(UserData::new(Op::Wake, 0, 0))?;
                    }
                } else if since.elapsed() > SHUTDOWN_GRACE {
                    // The engine's linger ends every close well before this;
                    // reaching it means a completion never came.
                    tracing::warn!(shard = self.spec.id, open, "shutdown grace over; exiting");
                    return Ok(true);
                }
                Ok(false)
            }
            Phase::Exiting { since } => {
                let inflight = self.ring.inflight;
                if inflight == 0 || since.elapsed() > EXIT_WAIT {
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
