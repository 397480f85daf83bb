//! Who holds each non-zero `client_id`, across shards. Each id has a home
//! shard (`client_id % shards`) that keeps its entry; claims, releases and
//! eviction acknowledgements travel there over the mailbox (`mailbox`).
//!
//! An entry names the newest claimant and counts the holders it replaced
//! whose close is not yet acknowledged. The newest is granted only when
//! that count is zero, so at every moment at most one live connection holds
//! a given id (the property test in tests/engine.rs checks every
//! interleaving it can find).
//!
//! Takeovers of one id are rate limited (a token bucket per entry, refilled
//! in ticks): a ping-pong between two connections claiming the same id,
//! or an attacker kicking a victim over and over, costs bounded CPU and
//! events. A claim over the limit is refused (the claimant gets
//! CLOSE(LIMITED)) and the holder stays.

use std::collections::HashMap;

use crate::mailbox::{Holder, ToHolder};

/// Takeovers of one id allowed in a burst; then one per refill period.
pub const TAKEOVER_BURST: u8 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    /// The newest claimant, until it is released.
    holder: Option<Holder>,
    /// Replaced holders whose close is not yet acknowledged.
    evicting: u32,
    /// Takeovers left in the bucket, and the tick it was last refilled.
    takeovers_left: u8,
    refilled_tick: u32,
}

/// The home shard's share of the registry.
#[derive(Debug)]
pub struct Registry {
    entries: HashMap<u64, Entry>,
    /// Ticks per takeover added to a bucket (`u32::MAX`: unlimited).
    refill_ticks: u32,
}

impl Default for Registry {
    fn default() -> Registry {
        Registry::new(u32::MAX)
    }
}

/// The home shard of a client id.
pub fn home_shard(client_id: u64, shards: usize) -> u16 {
    (client_id % shards as u64) as u16
}

/// A message the registry asks to be sent to shard `.0`.
pub type Outgoing = (u16, ToHolder);

fn granted(client_id: u64, holder: Holder) -> Outgoing {
    let resumed_from = None; // the engine fills it in (offline grace)
    (
        holder.shard,
        ToHolder::Granted {
            client_id,
            holder,
            resumed_from,
        },
    )
}

impl Registry {
    /// A registry allowing a takeover of one id every `refill_ticks` after
    /// a burst of [`TAKEOVER_BURST`] (`u32::MAX`: no limit).
    pub fn new(refill_ticks: u32) -> Registry {
        assert!(refill_ticks > 0);
        Registry {
            entries: HashMap::new(),
            refill_ticks,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Records `holder` as the newest claimant: the one it replaces is
    /// evicted, or, with nothing to wait for, `holder` is granted at once.
    /// A takeover over the rate limit is refused instead.
    pub fn claim(&mut self, client_id: u64, holder: Holder, now_tick: u32) -> Option<Outgoing> {
        let refill_ticks = self.refill_ticks;
        let entry = self.entries.entry(client_id).or_insert(Entry {
            holder: None,
            evicting: 0,
            takeovers_left: TAKEOVER_BURST,
            refilled_tick: now_tick,
        });
        if entry.holder.is_some_and(|h| h != holder) && !take_token(entry, now_tick, refill_ticks) {
            let refused = ToHolder::Refused { client_id, holder };
            return Some((holder.shard, refused));
        }
        let old = entry.holder.replace(holder);
        match old {
            Some(old) if old != holder => {
                entry.evicting += 1;
                let evict = ToHolder::Evict { client_id, old };
                Some((old.shard, evict))
            }
            _ if entry.evicting == 0 => Some(granted(client_id, holder)),
            _ => None,
        }
    }

    /// A replaced holder is closed; grants the newest once none is left.
    pub fn evicted(&mut self, client_id: u64) -> Option<Outgoing> {
        let entry = self.entries.get_mut(&client_id)?;
        assert!(
            entry.evicting > 0,
            "eviction of {client_id} acknowledged twice"
        );
        entry.evicting -= 1;
        match (entry.evicting, entry.holder) {
            (0, None) => {
                self.entries.remove(&client_id);
                None
            }
            (0, Some(h)) => Some(granted(client_id, h)),
            _ => None,
        }
    }

    /// Cluster mode: another node took `client_id`. The local holder, if
    /// any, is evicted (TAKEN_OVER) and nobody here is granted after it.
    pub fn kick(&mut self, client_id: u64) -> Option<Outgoing> {
        let entry = self.entries.get_mut(&client_id)?;
        let old = entry.holder.take()?;
        entry.evicting += 1;
        Some((old.shard, ToHolder::Evict { client_id, old }))
    }

    /// Forgets `holder` if it is still the newest claimant.
    pub fn release(&mut self, client_id: u64, holder: Holder) {
        let Some(entry) = self.entries.get_mut(&client_id) else {
            return;
        };
        if entry.holder == Some(holder) {
            entry.holder = None;
            if entry.evicting == 0 {
                self.entries.remove(&client_id);
            }
        }
    }

    /// Whether a claimant other than `holder` is the newest for `client_id`.
    pub fn superseded(&self, client_id: u64, holder: Holder) -> bool {
        self.holder(client_id).is_some_and(|h| h != holder)
    }

    /// Whether an eviction of `client_id`'s holder is not yet acknowledged.
    pub fn evicting(&self, client_id: u64) -> bool {
        self.entries.get(&client_id).is_some_and(|e| e.evicting > 0)
    }

    /// The newest claimant of `client_id`.
    pub fn holder(&self, client_id: u64) -> Option<Holder> {
        self.entries.get(&client_id).and_then(|e| e.holder)
    }
}

/// Takes one takeover from the entry's bucket, refilling it first.
fn take_token(entry: &mut Entry, now_tick: u32, refill_ticks: u32) -> bool {
    if refill_ticks == u32::MAX {
        return true;
    }
    let earned = now_tick.wrapping_sub(entry.refilled_tick) / refill_ticks;
    if earned > 0 {
        let left = u32::from(entry.takeovers_left) + earned;
        entry.takeovers_left = left.min(u32::from(TAKEOVER_BURST)) as u8;
        entry.refilled_tick = entry.refilled_tick.wrapping_add(earned * refill_ticks);
    }
    if entry.takeovers_left == 0 {
        return false;
    }
    entry.takeovers_left -= 1;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(shard: u16, slot: u32) -> Holder {
        Holder {
            shard,
            slot,
            generation: 1,
        }
    }

    #[test]
    fn a_cluster_kick_evicts_the_holder_and_grants_nobody() {
        let mut r = Registry::default();
        assert!(r.kick(9).is_none(), "nothing held");
        r.claim(9, h(0, 1), 0);
        let evict = ToHolder::Evict {
            client_id: 9,
            old: h(0, 1),
        };
        assert_eq!(r.kick(9), Some((0, evict)));
        assert_eq!(r.holder(9), None);
        assert_eq!(r.evicted(9), None, "no grant after a kick");
        assert!(r.is_empty());
    }

    #[test]
    fn first_claim_is_granted_second_evicts_first_then_is_granted() {
        let mut r = Registry::default();
        assert_eq!(
            r.claim(9, h(0, 1), 0),
            Some((
                0,
                ToHolder::Granted {
                    client_id: 9,
                    holder: h(0, 1),
                    resumed_from: None,
                }
            ))
        );
        assert_eq!(
            r.claim(9, h(1, 5), 0),
            Some((
                0,
                ToHolder::Evict {
                    client_id: 9,
                    old: h(0, 1),
                }
            ))
        );
        assert_eq!(r.holder(9), Some(h(1, 5)));
        assert_eq!(
            r.evicted(9),
            Some((
                1,
                ToHolder::Granted {
                    client_id: 9,
                    holder: h(1, 5),
                    resumed_from: None,
                }
            ))
        );
    }

    #[test]
    fn no_grant_while_an_older_eviction_is_outstanding() {
        let mut r = Registry::default();
        r.claim(9, h(0, 1), 0);
        r.claim(9, h(1, 5), 0); // evicts (0,1)
        r.claim(9, h(2, 7), 0); // evicts (1,5), which was never granted
        assert_eq!(r.evicted(9), None, "(0,1) may still be live");
        assert!(matches!(r.evicted(9), Some((2, ToHolder::Granted { .. }))));
    }

    #[test]
    fn takeovers_past_the_burst_are_refused_until_the_bucket_refills() {
        let mut r = Registry::new(10); // one takeover per 10 ticks
        r.claim(9, h(0, 0), 0);
        for i in 1..=u32::from(TAKEOVER_BURST) {
            assert!(matches!(
                r.claim(9, h(0, i), 0),
                Some((_, ToHolder::Evict { .. }))
            ));
            r.evicted(9);
        }
        let over = h(1, 99);
        assert_eq!(
            r.claim(9, over, 5),
            Some((
                1,
                ToHolder::Refused {
                    client_id: 9,
                    holder: over
                }
            ))
        );
        assert_ne!(r.holder(9), Some(over), "the holder stays");
        assert!(matches!(
            r.claim(9, over, 10),
            Some((_, ToHolder::Evict { .. }))
        ));
    }

    #[test]
    fn late_release_of_old_holder_keeps_new() {
        let mut r = Registry::default();
        r.claim(9, h(0, 1), 0);
        r.claim(9, h(1, 5), 0);
        r.release(9, h(0, 1));
        assert_eq!(r.holder(9), Some(h(1, 5)));
        r.evicted(9);
        r.release(9, h(1, 5));
        assert!(r.is_empty());
    }
}
