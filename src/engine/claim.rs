//! Claims of a `client_id`: a HELLO (token, negotiated interval, WELCOME,
//! then a claim at the id's home shard), the home shard's registry
//! messages, and the holder's shard closing a replaced holder or going
//! online once granted (the takeover protocol: `crate::mailbox`).

use super::{CloseCause, Command, Engine};
use crate::conn_table::flag;
use crate::events::{Event, EventKind};
use crate::mailbox::{ShardMsg, ToHolder, ToHome};
use crate::protocol::{self, CloseReason};
use crate::send_pool::SendPool;

impl Engine {
    pub(super) fn on_hello(&mut self, slot: u32, payload: &[u8], sends: &mut SendPool) {
        let client_id = u64::from_be_bytes(payload[..8].try_into().expect("12 bytes"));
        let requested_ms = u32::from_be_bytes(payload[8..12].try_into().expect("12 bytes"));
        if !self.authenticated(client_id, &payload[12..]) {
            self.stats.unauthorized.inc();
            return self.close(slot, CloseCause::Server(CloseReason::Unauthorized), sends);
        }
        let n = self.cfg.timing.negotiate(requested_ms);
        self.table.timeout_ticks[slot as usize] = n.timeout_ticks;
        if let Some(phi) = &mut self.phi {
            phi.start(slot, self.cfg.timing.ticks(n.interval_ms));
        }
        let welcome = protocol::welcome_frame(self.session(slot), n.interval_ms, n.timeout_ms);
        self.reply(slot, &welcome, sends);
        if !self.is_open(slot) {
            return;
        }
        if client_id == 0 {
            return self.go_online(slot);
        }
        self.table.client_id[slot as usize] = client_id;
        self.table.set(slot, flag::CLAIMED);
        let home = crate::registry::home_shard(client_id, usize::from(self.cfg.shards));
        let holder = self.holder(slot);
        self.message(home, ShardMsg::Home(ToHome::Claim { client_id, holder }));
    }

    /// Whether a HELLO's token is good enough: required and valid, or not
    /// required and absent or valid. Without `--auth` tokens are ignored.
    fn authenticated(&self, client_id: u64, token: &[u8]) -> bool {
        match &self.cfg.auth {
            None => true,
            Some(a) if token.is_empty() => !a.required(),
            Some(a) => a.verify(client_id, token, self.now_unix_s),
        }
    }

    /// A message for a `client_id`'s home shard (this one).
    pub fn on_home(&mut self, msg: ToHome) {
        let out = match msg {
            ToHome::Claim { client_id, holder } => {
                self.registry.claim(client_id, holder, self.now_tick)
            }
            ToHome::Evicted { client_id } => {
                let out = self.registry.evicted(client_id);
                self.answer_kicks(client_id);
                out
            }
            ToHome::Kick { client_id, ticket } => {
                let out = self.registry.kick(client_id);
                self.wait_for_kick(client_id, ticket);
                out
            }
            ToHome::Release {
                client_id,
                holder,
                offline,
            } => {
                let superseded = self.registry.superseded(client_id, holder);
                self.registry.release(client_id, holder);
                if let Some(h) = offline {
                    self.hold_offline(client_id, h, superseded);
                }
                None
            }
        };
        if let Some((to, mut msg)) = out {
            if let ToHolder::Granted {
                client_id,
                resumed_from,
                ..
            } = &mut msg
            {
                *resumed_from = self.resume(*client_id);
            }
            self.message(to, ShardMsg::Holder(msg));
        }
    }

    /// A message for the shard of a connection that holds (or asked for) a
    /// `client_id`.
    pub fn on_holder(&mut self, msg: ToHolder, sends: &mut SendPool) {
        match msg {
            ToHolder::Evict { client_id, old } => {
                if self.table.is_current(old.slot, old.generation) {
                    // The registry already names another: no release.
                    self.table.clear(old.slot, flag::CLAIMED);
                    let cause = CloseCause::Server(CloseReason::TakenOver);
                    self.close(old.slot, cause, sends);
                }
                let home = crate::registry::home_shard(client_id, usize::from(self.cfg.shards));
                self.message(home, ShardMsg::Home(ToHome::Evicted { client_id }));
            }
            ToHolder::Refused { holder, .. } => {
                if self.table.is_current(holder.slot, holder.generation) {
                    self.stats.limited_takeover.inc();
                    self.table.clear(holder.slot, flag::CLAIMED); // never held it
                    let cause = CloseCause::Server(CloseReason::Limited);
                    self.close(holder.slot, cause, sends);
                }
            }
            ToHolder::Granted {
                holder,
                resumed_from,
                ..
            } => {
                let slot = holder.slot;
                if self.table.is_current(slot, holder.generation)
                    && self.is_open(slot)
                    && !self.table.has(slot, flag::ONLINE)
                {
                    match resumed_from {
                        Some(previous) => self.go_resumed(slot, previous),
                        None => self.go_online(slot),
                    }
                }
            }
        }
    }

    pub(super) fn go_online(&mut self, slot: u32) {
        self.table.set(slot, flag::ONLINE);
        if self.cfg.events {
            let peer = self.table.peer(slot);
            let id = self.table.client_id[slot as usize];
            let event = Event::new(EventKind::Online, self.session(slot), id, peer);
            self.push(Command::Event(event));
        }
    }

    /// Online again within the offline grace: one `resumed` event instead
    /// of `offline` + `online`.
    fn go_resumed(&mut self, slot: u32, previous_session: u64) {
        self.table.set(slot, flag::ONLINE);
        if self.cfg.events {
            let peer = self.table.peer(slot);
            let id = self.table.client_id[slot as usize];
            let mut ev = Event::new(EventKind::Resumed, self.session(slot), id, peer);
            ev.previous_session = Some(previous_session);
            self.push(Command::Event(ev));
        }
    }
}
