//! A thread that drives several shards' rings (`--threads` below
//! `--shards`).
//!
//! A ring's direct-descriptor table is capped by RLIMIT_NOFILE, so a
//! million connections under a 20,000 limit need 56 rings; on a box with 2
//! cores, 56 threads each sleeping in its own ring meant a context switch
//! for nearly every heartbeat (the 1M profile: `finish_task_switch` under
//! `io_cqring_wait` was the largest server entry). A group keeps one thread
//! per core: every ring in it signals one eventfd when it has completions or
//! task work, and the thread sleeps on that eventfd only when no ring has
//! anything. While it is awake the signals are off (the flags in shared
//! ring memory say which rings to enter), so a busy thread takes its rings'
//! heartbeats without being woken for each.
//!
//! Each shard keeps its own ring, engine, tick and shutdown phases: the
//! group only decides which ring to enter next. Batched waits
//! (`--rtt-budget`) do not apply: a group thread's wake-up is already
//! shared by every ring it drives.

use std::sync::Arc;

use super::{Shard, ShardSpec};
use crate::mailbox::Peers;

/// Several shards on one thread.
pub struct Group {
    shards: Vec<Shard>,
    /// Owns the group's eventfd: every shard's wake eventfd, signalled by
    /// every ring in the group (see [`crate::ring::Ring::notify`]) and by
    /// whoever sends a shard mail.
    peers: Arc<Peers>,
    /// The shard whose eventfd (the group's) the thread sleeps on.
    first: u16,
}

impl Group {
    /// Builds every shard's ring; call on the group's own thread (the rings
    /// are single-issuer).
    pub fn new(specs: Vec<ShardSpec>) -> std::io::Result<Group> {
        assert!(!specs.is_empty(), "a group drives at least one shard");
        let (peers, first, wake_fd) = (specs[0].peers.clone(), specs[0].id, specs[0].wake_fd);
        let mut shards = Vec::with_capacity(specs.len());
        for spec in specs {
            // The shards' wake fds are duplicates of one eventfd.
            assert!(spec.grouped, "a grouped shard does not read its wake fd");
            let mut shard = Shard::new(spec)?;
            shard.ring.notify(wake_fd)?;
            shard.ring.set_notify(false);
            shards.push(shard);
        }
        Ok(Group {
            shards,
            peers,
            first,
        })
    }

    /// Runs until every shard has shut down. A shard that fails stops the
    /// server (see `Shard::fail`); the group drives the others through
    /// their shutdown and then returns the first error.
    pub fn run(mut self) -> std::io::Result<()> {
        let mut failed = None;
        let mut i = 0;
        while i < self.shards.len() {
            match self.shards[i].start() {
                Ok(()) => i += 1,
                Err(e) => self.remove_failed(i, e, &mut failed),
            }
        }
        while !self.shards.is_empty() {
            if self.pass(&mut failed) {
                continue;
            }
            if let Err(e) = self.sleep() {
                // The thread cannot wait: no shard of it can go on.
                while !self.shards.is_empty() {
                    let e = std::io::Error::new(e.kind(), e.to_string());
                    self.remove_failed(0, e, &mut failed);
                }
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Enters every ring that has work; whether any had.
    fn pass(&mut self, failed: &mut Option<std::io::Error>) -> bool {
        let mut entered = false;
        let mut i = 0;
        while i < self.shards.len() {
            let shard = &mut self.shards[i];
            if self.peers.take_mail(shard.spec.id) {
                shard.inbox_woken = true;
            }
            if !shard.inbox_woken && !shard.ring.has_work() && shard.intake.is_empty() {
                i += 1;
                continue;
            }
            entered = true;
            match shard.pass_ready() {
                Ok(false) => i += 1,
                Ok(true) => drop(self.shards.swap_remove(i)),
                Err(e) => self.remove_failed(i, e, failed),
            }
        }
        entered
    }

    /// Shard `i` failed with `e`: it stops the server and leaves the group
    /// (its ring, and with it its connections, closes); the first error is
    /// the group's.
    fn remove_failed(&mut self, i: usize, e: std::io::Error, failed: &mut Option<std::io::Error>) {
        let mut shard = self.shards.swap_remove(i);
        shard.fail(&e);
        let id = shard.spec.id;
        failed.get_or_insert_with(|| std::io::Error::new(e.kind(), format!("shard {id}: {e}")));
    }

    /// Sleeps until a ring signals, unless one already has work.
    fn sleep(&mut self) -> std::io::Result<()> {
        let mut idle = true;
        for shard in &mut self.shards {
            shard.ring.set_notify(true);
            idle &= !shard.ring.has_work()
                && !self.peers.has_mail(shard.spec.id)
                && shard.intake.is_empty();
        }
        if idle {
            self.peers.wait(self.first)?;
        }
        for shard in &mut self.shards {
            shard.ring.set_notify(false);
        }
        Ok(())
    }
}
