//! The cross-shard mailbox: the messages shards send each other, split by
//! who may receive them, and [`Peers`], every shard's inbox with the eventfd
//! that wakes its ring. A message a shard cannot receive is a type error.
//!
//! Takeover: the home shard records the new holder ([`ToHome::Claim`]) and
//! asks the old holder's shard to close it ([`ToHolder::Evict`]); that
//! shard acknowledges once it is closed ([`ToHome::Evicted`]), and only when
//! every holder it replaced has acknowledged does the home shard grant the
//! newest ([`ToHolder::Granted`]). A grant so never races a close still in
//! flight, whatever order the shards' messages arrive in.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::Sender;

use crate::events::OfflineReason;

/// One connection, named across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
}

/// An `offline` event held for the offline grace (see `engine::grace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldOffline {
    pub session: u64,
    pub reason: OfflineReason,
    pub peer: Option<SocketAddr>,
    /// When it went offline (the event keeps this time).
    pub ts_ms: u64,
}

/// To a `client_id`'s home shard, which keeps its registry entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToHome {
    /// `holder` said HELLO with `client_id`.
    Claim { client_id: u64, holder: Holder },
    /// `holder` is gone; with an offline grace, its `offline` event to hold.
    Release {
        client_id: u64,
        holder: Holder,
        offline: Option<HeldOffline>,
    },
    /// A holder the home shard asked to evict is closed (or already was).
    Evicted { client_id: u64 },
    /// Cluster mode: another node took `client_id`; evict the local holder
    /// with CLOSE(TAKEN_OVER) (src/cluster/hooks.rs sends it). `ticket`
    /// (0: none) is answered through [`crate::engine::KickAck`] once the
    /// holder's close is decided, so the remote node is granted only then.
    Kick { client_id: u64, ticket: u64 },
}

/// To the shard of a connection that holds (or asked for) a `client_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToHolder {
    /// Close `old` as TAKEN_OVER, then acknowledge to the home shard.
    Evict { client_id: u64, old: Holder },
    /// `holder` now holds `client_id`; `resumed_from` is the session whose
    /// `offline` was held for the grace (then `resumed` replaces `online`).
    Granted {
        client_id: u64,
        holder: Holder,
        resumed_from: Option<u64>,
    },
    /// `holder`'s claim was over the takeover rate limit: close it with
    /// CLOSE(LIMITED); the id stays with its holder.
    Refused { client_id: u64, holder: Holder },
}

/// Everything a shard's inbox carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardMsg {
    Home(ToHome),
    Holder(ToHolder),
    /// Stop accepting, close everything, exit.
    Shutdown,
    /// Fail as if the shard's ring had returned an I/O error (tests of the
    /// failure path: [`crate::server::Server::inject_shard_failure`]).
    #[doc(hidden)]
    Fail,
}

/// Every shard's inbox and wake eventfd.
///
/// A shard on its own thread reads its eventfd through its ring. Shards
/// driven by one thread (`shard::group`) share one eventfd that no ring
/// reads: the thread sleeps on it, and a per-shard flag says whose inbox
/// has mail. (A ring that reads an eventfd another thread writes is woken
/// from inside that write; the kernel then defers the ring's own eventfd
/// signal, and on 6.18 only the first such deferral is ever delivered: a
/// group thread slept through its ticks.)
#[derive(Debug)]
pub struct Peers {
    senders: Vec<Sender<ShardMsg>>,
    wakers: Vec<std::fs::File>,
    mail: Vec<AtomicBool>,
}

impl Peers {
    /// `wakers[i]` wakes shard `i`'s thread; grouped shards share one.
    pub fn new(senders: Vec<Sender<ShardMsg>>, wakers: Vec<std::fs::File>) -> Peers {
        assert_eq!(senders.len(), wakers.len());
        let mail = (0..senders.len()).map(|_| AtomicBool::new(false)).collect();
        Peers {
            senders,
            wakers,
            mail,
        }
    }

    pub fn shards(&self) -> usize {
        self.senders.len()
    }

    /// Delivers `msg` to shard `to` and wakes its thread.
    pub fn send(&self, to: u16, msg: ShardMsg) {
        let to = usize::from(to);
        if self.senders[to].send(msg).is_ok() {
            // Before the write: a woken group thread must see the flag.
            self.mail[to].store(true, Ordering::SeqCst);
            let _ = (&self.wakers[to]).write(&1u64.to_ne_bytes());
        }
    }

    /// Whether shard `shard` was sent mail since the last call (grouped
    /// shards; a shard on its own thread is woken by its ring instead).
    pub fn take_mail(&self, shard: u16) -> bool {
        let flag = &self.mail[usize::from(shard)];
        flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst)
    }

    /// Whether shard `shard` has mail not yet taken.
    pub fn has_mail(&self, shard: u16) -> bool {
        self.mail[usize::from(shard)].load(Ordering::SeqCst)
    }

    /// Blocks until shard `shard`'s eventfd is written (or was since the
    /// last wait): a group thread's sleep.
    pub fn wait(&self, shard: u16) -> std::io::Result<()> {
        let mut count = [0u8; 8];
        match (&self.wakers[usize::from(shard)]).read(&mut count) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The raw eventfd shard `shard` reads to wake up.
    pub fn wake_fd(&self, shard: u16) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.wakers[usize::from(shard)].as_raw_fd()
    }

    /// Tells every shard to shut down.
    pub fn shutdown_all(&self) {
        for to in 0..self.senders.len() {
            self.send(to as u16, ShardMsg::Shutdown);
        }
    }
}
