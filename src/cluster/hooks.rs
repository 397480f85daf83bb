//! The server's side of [`NodeHooks`]: the cluster's answers travel to the
//! shards over the same mailbox the shards use among themselves. A grant
//! becomes the local registry claim at the id's home shard, a kick an
//! eviction there (both through the one FIFO of that shard, so a kick never
//! overtakes the grant it ends), and a refusal closes the claimant.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{ClaimTicket, NodeHooks};
use crate::engine::KickAck;
use crate::mailbox::{Holder, Peers, ShardMsg, ToHolder, ToHome};
use crate::registry::home_shard;

/// [`NodeHooks`] over the shards' mailbox.
#[derive(Debug)]
pub struct MailboxHooks {
    peers: Arc<Peers>,
    waits: Arc<KickWaits>,
}

/// Kicks whose local close is not yet decided, by ticket: the home shard's
/// engine answers through [`KickAck`], the cluster thread awaits the
/// receiver before it replies to the node that asked.
#[derive(Debug, Default)]
pub struct KickWaits {
    next: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<()>>>,
}

impl KickWaits {
    fn register(&self) -> (u64, oneshot::Receiver<()>) {
        let ticket = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("kick waits").insert(ticket, tx);
        (ticket, rx)
    }
}

impl KickAck for KickWaits {
    fn kicked(&self, ticket: u64) {
        if let Some(tx) = self.pending.lock().expect("kick waits").remove(&ticket) {
            let _ = tx.send(());
        }
    }
}

impl MailboxHooks {
    pub fn new(peers: Arc<Peers>, waits: Arc<KickWaits>) -> MailboxHooks {
        MailboxHooks { peers, waits }
    }

    fn home(&self, client_id: u64) -> u16 {
        home_shard(client_id, self.peers.shards())
    }
}

impl From<Holder> for ClaimTicket {
    fn from(h: Holder) -> ClaimTicket {
        ClaimTicket {
            shard: h.shard,
            slot: h.slot,
            generation: h.generation,
        }
    }
}

impl From<ClaimTicket> for Holder {
    fn from(t: ClaimTicket) -> Holder {
        Holder {
            shard: t.shard,
            slot: t.slot,
            generation: t.generation,
        }
    }
}

impl NodeHooks for MailboxHooks {
    fn kick(&self, client_id: u64, _keep_session: Option<u64>) -> Option<oneshot::Receiver<()>> {
        let (ticket, done) = self.waits.register();
        let msg = ShardMsg::Home(ToHome::Kick { client_id, ticket });
        self.peers.send(self.home(client_id), msg);
        Some(done)
    }

    fn claim_done(&self, client_id: u64, ticket: ClaimTicket, granted: bool) {
        let holder = Holder::from(ticket);
        if granted {
            let msg = ShardMsg::Home(ToHome::Claim { client_id, holder });
            self.peers.send(self.home(client_id), msg);
        } else {
            let msg = ShardMsg::Holder(ToHolder::Refused { client_id, holder });
            self.peers.send(holder.shard, msg);
        }
    }
}
