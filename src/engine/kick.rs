//! Cluster kicks waiting at an id's home shard: a remote node's takeover
//! is answered (through [`KickAck`]) only once the local holder's eviction
//! is acknowledged, i.e. its close with TAKEN_OVER is decided.

use super::Engine;

/// Most cluster kicks one home shard keeps waiting for their evictions.
pub const KICK_WAITS_MAX: usize = 4096;

/// Hears when a cluster kick ([`crate::mailbox::ToHome::Kick`]) is done: the local holder's
/// close with TAKEN_OVER is decided (or there was none). Implemented by
/// `cluster::hooks::KickWaits`.
pub trait KickAck: Send + Sync + std::fmt::Debug {
    fn kicked(&self, ticket: u64);
}

impl Engine {
    /// A kick's ticket is answered once no eviction of `client_id` is in
    /// flight: at once when there was no holder to evict.
    pub(super) fn wait_for_kick(&mut self, client_id: u64, ticket: u64) {
        if ticket == 0 {
            return;
        }
        if self.kick_waits.len() == KICK_WAITS_MAX {
            let (_, oldest) = self.kick_waits.remove(0);
            // Answered before its eviction is decided: the asking node may
            // grant while our holder still answers for a moment. Logged;
            // only a flood of kicks for ids whose evictions stall gets here.
            tracing::warn!(
                shard = self.cfg.shard,
                "kick answered early: {KICK_WAITS_MAX} waiting"
            );
            if let Some(ack) = &self.cfg.kick_ack {
                ack.kicked(oldest);
            }
        }
        self.kick_waits.push((client_id, ticket));
        self.answer_kicks(client_id);
    }

    pub(super) fn answer_kicks(&mut self, client_id: u64) {
        if self.kick_waits.is_empty() || self.registry.evicting(client_id) {
            return;
        }
        let Some(ack) = self.cfg.kick_ack.clone() else {
            self.kick_waits.clear();
            return;
        };
        self.kick_waits.retain(|&(id, ticket)| {
            if id == client_id {
                ack.kicked(ticket);
            }
            id != client_id
        });
    }
}
