//! Node leases and the detection of lost nodes, on a caller-given clock in
//! milliseconds (no I/O, no clock read: tests drive it). A node refreshes
//! its lease every lease/3; a survivor that has not seen a refresh for a
//! whole lease declares the node lost, once per incarnation.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Value of a `ringbeat-nodes` key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub node: String,
    /// Random per process start: a restarted node is a new incarnation, so
    /// the reaping of the old one is not confused with it.
    pub incarnation: u64,
    pub lease_ms: u64,
}

#[derive(Debug)]
struct Seen {
    lease: Lease,
    last_refresh_ms: u64,
    reported: bool,
}

/// What a survivor knows of the other nodes' leases.
#[derive(Debug)]
pub struct LeaseTracker {
    own_node: String,
    nodes: HashMap<String, Seen>,
}

impl LeaseTracker {
    pub fn new(own_node: &str) -> LeaseTracker {
        LeaseTracker {
            own_node: own_node.into(),
            nodes: HashMap::new(),
        }
    }

    /// A lease value was seen (a refresh, or the initial state of the bucket).
    pub fn refreshed(&mut self, lease: Lease, now_ms: u64) {
        if lease.node == self.own_node {
            return;
        }
        let same = self
            .nodes
            .get(&lease.node)
            .is_some_and(|s| s.lease.incarnation == lease.incarnation);
        if same {
            let s = self.nodes.get_mut(&lease.node).expect("present");
            s.last_refresh_ms = now_ms;
        } else {
            let node = lease.node.clone();
            let seen = Seen {
                lease,
                last_refresh_ms: now_ms,
                reported: false,
            };
            self.nodes.insert(node, seen);
        }
    }

    /// The lease key was deleted: the node left cleanly (it removed its own
    /// entries) or was reaped. Either way there is nothing to reap.
    pub fn removed(&mut self, node: &str) {
        self.nodes.remove(node);
    }

    /// As [`LeaseTracker::removed`], by the encoded KV key.
    pub fn removed_key(&mut self, key: &str) {
        self.nodes
            .retain(|node, _| super::subjects::encode_node(node) != key);
    }

    /// NATS was away: no refresh could be seen, so every lease restarts
    /// now rather than being declared lost for our own outage.
    pub fn grace(&mut self, now_ms: u64) {
        for s in self.nodes.values_mut() {
            s.last_refresh_ms = s.last_refresh_ms.max(now_ms);
        }
    }

    /// Whether `node` holds a live lease at `now_ms`.
    pub fn alive(&self, node: &str, now_ms: u64) -> bool {
        node == self.own_node
            || self
                .nodes
                .get(node)
                .is_some_and(|s| now_ms.saturating_sub(s.last_refresh_ms) < s.lease.lease_ms)
    }

    /// Nodes whose lease lapsed since the last call, each incarnation once.
    pub fn newly_lost(&mut self, now_ms: u64) -> Vec<Lease> {
        let mut lost = Vec::new();
        for s in self.nodes.values_mut() {
            let silent_ms = now_ms.saturating_sub(s.last_refresh_ms);
            if !s.reported && silent_ms >= s.lease.lease_ms {
                s.reported = true;
                lost.push(s.lease.clone());
            }
        }
        lost
    }
}

/// How often a node refreshes its own lease.
pub fn refresh_period_ms(lease_ms: u64) -> u64 {
    (lease_ms / 3).max(1)
}

/// How often survivors look for lapsed leases: a tenth of a lease, at most
/// 500 ms, so detection is at most that late.
pub fn check_period_ms(lease_ms: u64) -> u64 {
    (lease_ms / 10).clamp(1, 500)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(node: &str, incarnation: u64) -> Lease {
        Lease {
            node: node.into(),
            incarnation,
            lease_ms: 3000,
        }
    }

    #[test]
    fn a_refreshed_node_is_never_lost() {
        let mut t = LeaseTracker::new("me");
        for now in (0..30_000).step_by(1000) {
            t.refreshed(lease("b", 1), now);
            assert!(t.newly_lost(now + 999).is_empty());
            assert!(t.alive("b", now + 999));
        }
    }

    #[test]
    fn a_silent_node_is_lost_once_after_one_lease() {
        let mut t = LeaseTracker::new("me");
        t.refreshed(lease("b", 1), 1000);
        assert!(t.newly_lost(3999).is_empty(), "lost before a full lease");
        assert_eq!(t.newly_lost(4000), vec![lease("b", 1)]);
        assert!(t.newly_lost(9000).is_empty(), "reported twice");
        assert!(!t.alive("b", 4000));
    }

    #[test]
    fn a_restarted_node_is_a_new_incarnation() {
        let mut t = LeaseTracker::new("me");
        t.refreshed(lease("b", 1), 0);
        assert_eq!(t.newly_lost(3000).len(), 1);
        t.refreshed(lease("b", 2), 3500);
        assert!(t.newly_lost(4000).is_empty());
        assert_eq!(t.newly_lost(6500), vec![lease("b", 2)]);
    }

    #[test]
    fn own_lease_and_removed_nodes_are_not_reaped() {
        let mut t = LeaseTracker::new("me");
        t.refreshed(lease("me", 1), 0);
        t.refreshed(lease("c", 1), 0);
        t.removed("c");
        assert!(t.newly_lost(100_000).is_empty());
        t.refreshed(lease("d:1", 1), 0);
        t.removed_key("d=3A1");
        assert!(t.newly_lost(100_000).is_empty());
    }

    #[test]
    fn our_own_outage_does_not_lose_the_others() {
        let mut t = LeaseTracker::new("me");
        t.refreshed(lease("b", 1), 0);
        t.grace(10_000);
        assert!(t.newly_lost(12_000).is_empty());
        assert_eq!(t.newly_lost(13_000).len(), 1);
    }
}
