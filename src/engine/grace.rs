//! Offline grace (`--offline-grace`): a client with a `client_id` that
//! goes offline (for a reason other than takeover or shutdown) has its
//! `offline` event held by the id's home shard; if the same id is granted
//! again within the grace, neither that `offline` nor the new `online` is
//! emitted but one `resumed` event is. Otherwise the `offline` is emitted
//! when the grace ends, with its original time. Held events are flushed on
//! shutdown.
//!
//! Memory: one map entry (~64 B with the hash map's overhead) per id
//! offline within the grace, on its home shard: at a million clients with
//! 10% flapping inside the grace, ~100,000 entries, ~6.4 MB in all.

use std::collections::{HashMap, VecDeque};

use super::{Command, Engine};
use crate::events::{Event, EventKind};
use crate::mailbox::HeldOffline;

/// Held `offline` events of the ids this shard is home to.
#[derive(Debug, Default)]
pub(super) struct Grace {
    held: HashMap<u64, (HeldOffline, u32)>,
    /// (client_id, session, release tick) in the order they were held; an
    /// entry whose id was resumed or held again since is skipped.
    order: VecDeque<(u64, u64, u32)>,
}

impl Grace {
    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.held.len()
    }
}

fn offline_event(client_id: u64, h: &HeldOffline) -> Event {
    let mut ev = Event::new(EventKind::Offline, h.session, client_id, h.peer);
    ev.ts_ms = h.ts_ms;
    ev.reason = Some(h.reason.name());
    ev
}

impl Engine {
    /// Home shard: an `offline` for `client_id` to hold for the grace.
    /// Emitted at once when a newer claimant already holds the id (its
    /// `online` was emitted, so a later `offline` would come out of order).
    pub(super) fn hold_offline(&mut self, client_id: u64, h: HeldOffline, superseded: bool) {
        if superseded {
            return self.push(Command::Event(offline_event(client_id, &h)));
        }
        let release_tick = self.now_tick.wrapping_add(self.cfg.offline_grace_ticks);
        if let Some((old, _)) = self.grace.held.insert(client_id, (h, release_tick)) {
            // Offline twice within the grace with no resume between: the
            // first one is final.
            self.push(Command::Event(offline_event(client_id, &old)));
        }
        self.grace
            .order
            .push_back((client_id, h.session, release_tick));
    }

    /// Home shard: `client_id` is granted again; the session whose
    /// `offline` was held, if any (its `offline` is then never emitted).
    pub(super) fn resume(&mut self, client_id: u64) -> Option<u64> {
        self.grace.held.remove(&client_id).map(|(h, _)| {
            self.stats.resumed.inc();
            h.session
        })
    }

    /// Once a tick: held `offline`s whose grace is over are emitted.
    pub(super) fn release_expired_offline(&mut self) {
        while let Some(&(client_id, session, release_tick)) = self.grace.order.front() {
            if self.now_tick.wrapping_sub(release_tick) as i32 <= 0 {
                return;
            }
            self.grace.order.pop_front();
            let current = self.grace.held.get(&client_id);
            if current.is_some_and(|(h, _)| h.session == session) {
                let (h, _) = self.grace.held.remove(&client_id).expect("present");
                self.push(Command::Event(offline_event(client_id, &h)));
            }
        }
    }

    /// Shutdown: every held `offline` is emitted now.
    pub(super) fn flush_held_offline(&mut self) {
        self.grace.order.clear();
        let held: Vec<_> = self.grace.held.drain().collect();
        for (client_id, (h, _)) in held {
            self.push(Command::Event(offline_event(client_id, &h)));
        }
    }
}
