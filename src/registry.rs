//! Who holds each non-zero `client_id`, across shards. Each id has a home
//! shard (`client_id % shards`) that keeps its entry; claims and releases
//! travel there over the control plane (crossbeam channels, see `server`).
//!
//! Takeover is two hops so that the old holder is closed before the new one
//! is announced: home → old holder's shard (`Evict`), which closes it and
//! tells the new holder's shard (`Granted`). At every moment the registry
//! names at most one holder per id.

use std::collections::HashMap;

/// One connection, named across shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Holder {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
}

/// Control-plane messages between shards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// To the home shard: `holder` said HELLO with `client_id`.
    Claim { client_id: u64, holder: Holder },
    /// To the home shard: `holder` is gone.
    Release { client_id: u64, holder: Holder },
    /// To the old holder's shard: close `old` as TAKEN_OVER, then grant `new`.
    Evict {
        client_id: u64,
        old: Holder,
        new: Holder,
    },
    /// To the new holder's shard: it now holds `client_id`.
    Granted { client_id: u64, holder: Holder },
    /// To every shard: stop accepting, close everything, exit.
    Shutdown,
}

/// The home shard's share of the registry.
#[derive(Debug, Default)]
pub struct Registry {
    holders: HashMap<u64, Holder>,
}

/// The home shard of a client id.
pub fn home_shard(client_id: u64, shards: usize) -> u16 {
    (client_id % shards as u64) as u16
}

impl Registry {
    pub fn len(&self) -> usize {
        self.holders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.holders.is_empty()
    }

    /// Records the new holder; returns the message to send (and its target
    /// shard): `Evict` to the old holder's shard, or `Granted` at once.
    pub fn claim(&mut self, client_id: u64, holder: Holder) -> (u16, Control) {
        match self.holders.insert(client_id, holder) {
            Some(old) if old != holder => (
                old.shard,
                Control::Evict {
                    client_id,
                    old,
                    new: holder,
                },
            ),
            _ => (holder.shard, Control::Granted { client_id, holder }),
        }
    }

    /// Forgets `holder` if it is still the one on record.
    pub fn release(&mut self, client_id: u64, holder: Holder) {
        if self.holders.get(&client_id) == Some(&holder) {
            self.holders.remove(&client_id);
        }
    }

    pub fn holder(&self, client_id: u64) -> Option<Holder> {
        self.holders.get(&client_id).copied()
    }
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
    fn first_claim_is_granted_second_evicts_first() {
        let mut r = Registry::default();
        assert_eq!(
            r.claim(9, h(0, 1)),
            (
                0,
                Control::Granted {
                    client_id: 9,
                    holder: h(0, 1)
                }
            )
        );
        assert_eq!(
            r.claim(9, h(1, 5)),
            (
                1 - 1,
                Control::Evict {
                    client_id: 9,
                    old: h(0, 1),
                    new: h(1, 5)
                }
            )
        );
        assert_eq!(r.holder(9), Some(h(1, 5)));
    }

    #[test]
    fn late_release_of_old_holder_keeps_new() {
        let mut r = Registry::default();
        r.claim(9, h(0, 1));
        r.claim(9, h(1, 5));
        r.release(9, h(0, 1));
        assert_eq!(r.holder(9), Some(h(1, 5)));
        r.release(9, h(1, 5));
        assert!(r.is_empty());
    }
}
