//! Cluster mode against a real `nats-server -js` (started per test on a free
//! loopback port with a temporary store) and three nodes whose server side
//! is a fake [`NodeHooks`]: it grants, takes over locally and emits events
//! the way the server does, so these tests prove what the cluster thread
//! decides. Skips with a note only if `nats-server` cannot be found (run
//! `bash scripts/setup.sh`). Real servers in cluster mode are in
//! tests/cluster_real.rs.

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ringbeat::cluster::{
    query, ClaimTicket, ClusterConfig, ClusterHandle, ClusterMetrics, NodeHooks, OutageMode,
};
use ringbeat::events::{Event, EventKind, OfflineReason};

mod common;

use common::nats::{wait_until, Consumer, Nats};

/// What one fake node's server side saw.
#[derive(Default)]
struct Local {
    /// client_id -> live session.
    holders: HashMap<u64, u64>,
    /// ticket slot -> (client_id, session).
    pending: HashMap<u32, (u64, u64)>,
    granted: u32,
    refused: u32,
    taken_over: u32,
    kicks: u32,
}

/// The server side of one node, as the cluster sees it.
struct FakeNode {
    name: String,
    local: Mutex<Local>,
    handle: Mutex<Option<Arc<ClusterHandle>>>,
    next_slot: AtomicU32,
}

impl FakeNode {
    fn start(nats: &Nats, name: &str, lease: Duration) -> Arc<FakeNode> {
        Self::start_with_queue(nats, name, lease, ringbeat::cluster::QUEUE_MAX)
    }

    fn start_with_queue(
        nats: &Nats,
        name: &str,
        lease: Duration,
        queue_max: usize,
    ) -> Arc<FakeNode> {
        let node = Arc::new(FakeNode {
            name: name.into(),
            local: Mutex::default(),
            handle: Mutex::default(),
            next_slot: AtomicU32::new(0),
        });
        let config = ClusterConfig {
            url: nats.url(),
            node: name.into(),
            lease,
            outage: OutageMode::Refuse,
            queue_max,
        };
        let handle = ClusterHandle::start(config, node.clone(), ClusterMetrics::default())
            .expect("cluster starts");
        *node.handle.lock().unwrap() = Some(Arc::new(handle));
        node
    }

    fn handle(&self) -> Arc<ClusterHandle> {
        self.handle.lock().unwrap().clone().expect("running")
    }

    fn hello(&self, client_id: u64, session: u64) {
        let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
        self.local
            .lock()
            .unwrap()
            .pending
            .insert(slot, (client_id, session));
        let ticket = ClaimTicket {
            shard: 0,
            slot,
            generation: 1,
        };
        self.handle().claim(client_id, session, None, ticket);
    }

    fn offline(&self, client_id: u64, session: u64, reason: OfflineReason) {
        let mut ev = Event::new(EventKind::Offline, session, client_id, None);
        ev.reason = Some(reason.name());
        self.handle().on_event(&ev);
    }

    /// The peer closes: the server's offline path.
    fn disconnect(&self, client_id: u64) {
        let session = self.local.lock().unwrap().holders.remove(&client_id);
        if let Some(session) = session {
            self.offline(client_id, session, OfflineReason::Normal);
        }
    }

    fn answered(&self) -> u32 {
        let l = self.local.lock().unwrap();
        l.granted + l.refused
    }

    fn take_handle(&self) -> ClusterHandle {
        let mut arc = self.handle.lock().unwrap().take().expect("running");
        // A hook on the cluster thread may hold a clone for a moment.
        for _ in 0..500 {
            match Arc::try_unwrap(arc) {
                Ok(handle) => return handle,
                Err(shared) => arc = shared,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("cluster handle still shared")
    }
}

impl NodeHooks for FakeNode {
    fn kick(
        &self,
        client_id: u64,
        keep_session: Option<u64>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>> {
        let gone = {
            let mut l = self.local.lock().unwrap();
            l.kicks += 1;
            match l.holders.get(&client_id) {
                Some(&s) if Some(s) != keep_session => {
                    l.holders.remove(&client_id);
                    l.taken_over += 1;
                    Some(s)
                }
                _ => None,
            }
        };
        if let Some(session) = gone {
            self.offline(client_id, session, OfflineReason::TakenOver);
        }
        None // decided at once
    }

    fn claim_done(&self, _client_id: u64, ticket: ClaimTicket, granted: bool) {
        let (previous, client_id, session) = {
            let mut l = self.local.lock().unwrap();
            let (client_id, session) = l.pending.remove(&ticket.slot).expect("known ticket");
            if !granted {
                l.refused += 1;
                return;
            }
            l.granted += 1;
            let previous = l.holders.insert(client_id, session);
            if previous.is_some() {
                l.taken_over += 1;
            }
            (previous, client_id, session)
        };
        if let Some(old) = previous {
            self.offline(client_id, old, OfflineReason::TakenOver);
        }
        let ev = Event::new(EventKind::Online, session, client_id, None);
        self.handle().on_event(&ev);
    }
}

fn three_nodes(nats: &Nats, lease: Duration) -> Vec<Arc<FakeNode>> {
    ["node-a:7700", "node-b:7700", "node-c:7700"]
        .iter()
        .map(|n| FakeNode::start(nats, n, lease))
        .collect()
}

fn stop(nodes: Vec<Arc<FakeNode>>) {
    for n in nodes {
        n.take_handle().shutdown();
    }
}

/// 20 HELLOs with one id over three nodes at once: one holder survives, the
/// 19 others were closed with TAKEN_OVER (or, rarely, refused), and the
/// directory (read through the `ringbeat presence` command) names the
/// survivor.
#[test]
fn twenty_hellos_one_id_three_nodes_leave_one_holder() {
    let Some(nats) = Nats::start() else { return };
    let nodes = three_nodes(&nats, Duration::from_secs(10));
    let id = 4242;
    for session in 1..=20u64 {
        nodes[session as usize % 3].hello(id, session);
    }
    let total = || nodes.iter().map(|n| n.answered()).sum::<u32>();
    wait_until("every claim answered", Duration::from_secs(60), || {
        total() == 20
    });
    // Kicks answered after the last grant may still be on their way.
    std::thread::sleep(Duration::from_millis(500));
    let live: Vec<(String, u64)> = nodes
        .iter()
        .filter_map(|n| {
            let l = n.local.lock().unwrap();
            l.holders.get(&id).map(|s| (n.name.clone(), *s))
        })
        .collect();
    assert_eq!(live.len(), 1, "live holders: {live:?}");
    let taken: u32 = nodes
        .iter()
        .map(|n| n.local.lock().unwrap().taken_over)
        .sum();
    let refused: u32 = nodes.iter().map(|n| n.local.lock().unwrap().refused).sum();
    // A claim that loses CLAIM_ATTEMPTS compare-and-set rounds to its
    // rivals is refused, by design and counted: 19 rivals can do that on a
    // loaded box (seen once in test.sh, 2026-12-01: 18 taken over, 1
    // refused). Every other HELLO must have been answered one way or the
    // other, and refusals must stay the exception.
    assert_eq!(
        taken + refused,
        19,
        "others: taken over {taken} + refused {refused}"
    );
    assert!(
        refused <= 3,
        "others: taken over {taken}, refused {refused}"
    );
    let (node, session) = &live[0];
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat"))
        .args(["presence", "--cluster", &nats.url(), "get", &id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "presence get: {out:?}");
    let entry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entry["node"], node.as_str());
    assert_eq!(entry["session"], *session);
    let absent = Command::new(env!("CARGO_BIN_EXE_ringbeat"))
        .args(["presence", "--cluster", &nats.url(), "get", "777"])
        .output()
        .unwrap();
    assert_eq!(absent.status.code(), Some(1), "offline id exits 1");
    stop(nodes);
}

/// A node holding 1,000 clients dies without a word: within one lease and
/// one check period (plus slack for this loaded box) the directory holds
/// none of them, and exactly one `node_lost` offline was published for each.
#[test]
fn a_lost_node_is_reaped_once_within_a_lease() {
    let Some(nats) = Nats::start() else { return };
    let lease = Duration::from_secs(2);
    let nodes = three_nodes(&nats, lease);
    let consumer = Consumer::start(&nats.url());
    let ids = 10_000..11_000u64;
    for id in ids.clone() {
        nodes[0].hello(id, id + 1);
    }
    wait_until("1,000 claims", Duration::from_secs(120), || {
        nodes[0].answered() == 1000
    });
    assert_eq!(nodes[0].local.lock().unwrap().granted, 1000);
    assert_eq!(query::count(&nats.url()).unwrap(), 1000);
    let mut nodes = nodes;
    let dead = nodes.remove(0);
    let crashed = Instant::now();
    dead.take_handle().simulate_crash();
    let url = nats.url();
    let took = wait_until("directory empty", lease * 4, || {
        query::count(&url).unwrap() == 0
    });
    let _ = crashed;
    eprintln!("reaped 1,000 clients {took:?} after the crash (lease {lease:?})");
    // One lease, one check period (lease/10), and 1.5 s of slack.
    assert!(took <= lease + lease / 10 + Duration::from_millis(1500));
    std::thread::sleep(Duration::from_secs(2));
    let mut lost: HashMap<u64, u32> = HashMap::new();
    for e in consumer.events() {
        if e["reason"] == "node_lost" {
            assert_eq!(e["node"], "node-a:7700");
            *lost.entry(e["client_id"].as_u64().unwrap()).or_default() += 1;
        }
    }
    assert_eq!(lost.len(), 1000, "a node_lost for every client");
    assert!(lost.values().all(|&n| n == 1), "exactly one each");
    stop(nodes);
}

/// NATS restarts with an empty store while nodes hold clients: nobody is
/// disconnected, the directory is whole again within a lease, and a
/// consumer sees no event for the clients that did not change.
#[test]
fn nats_restart_keeps_clients_and_rebuilds_the_directory() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let lease = Duration::from_secs(3);
    let nodes = three_nodes(&nats, lease);
    for id in 1..=60u64 {
        nodes[id as usize % 3].hello(id, 100 + id);
    }
    wait_until("60 claims", Duration::from_secs(60), || {
        nodes.iter().map(|n| n.answered()).sum::<u32>() == 60
    });
    let consumer = Consumer::start(&nats.url());
    nats.restart_empty(Duration::from_millis(500));
    let url = nats.url();
    let took = wait_until("directory whole", lease * 3, || {
        query::count(&url).is_ok_and(|n| n == 60)
    });
    eprintln!("directory whole {took:?} after NATS came back (lease {lease:?})");
    assert!(took <= lease, "not within a lease");
    for id in 1..=60u64 {
        let entry = query::get(&url, id).unwrap().expect("present");
        assert_eq!(entry.node, nodes[id as usize % 3].name);
        assert_eq!(entry.session, 100 + id);
    }
    std::thread::sleep(lease + Duration::from_secs(1));
    for n in &nodes {
        let l = n.local.lock().unwrap();
        assert_eq!((l.kicks, l.taken_over, l.holders.len()), (0, 0, 20));
    }
    assert_eq!(consumer.events(), Vec::<serde_json::Value>::new());
    assert_eq!(query::count(&url).unwrap(), 60, "no node was reaped");
    stop(nodes);
}

/// A stock subscriber to `ringbeat.presence.>` sees, for every connection,
/// one online and later one offline, in that order, with the node.
#[test]
fn a_consumer_sees_online_then_offline_for_every_connection() {
    let Some(nats) = Nats::start() else { return };
    let nodes = three_nodes(&nats, Duration::from_secs(10));
    let consumer = Consumer::start(&nats.url());
    for id in 1..=30u64 {
        nodes[id as usize % 3].hello(id, 500 + id);
    }
    wait_until("30 claims", Duration::from_secs(60), || {
        nodes.iter().map(|n| n.answered()).sum::<u32>() == 30
    });
    for id in 1..=30u64 {
        nodes[id as usize % 3].disconnect(id);
    }
    wait_until("60 events", Duration::from_secs(30), || {
        consumer.events().len() >= 60
    });
    std::thread::sleep(Duration::from_millis(300));
    let events = consumer.events();
    assert_eq!(events.len(), 60);
    for id in 1..=30u64 {
        let mine: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["client_id"] == id).collect();
        let kinds: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["online", "offline"], "client {id}");
        assert!(mine.iter().all(|e| e["session"] == 500 + id));
        assert_eq!(mine[0]["node"], nodes[id as usize % 3].name.as_str());
    }
    assert_eq!(query::count(&nats.url()).unwrap(), 0, "offline deletes");
    stop(nodes);
}

/// A HELLO flood fills the cluster queue: the excess is refused at once and
/// counted (nothing waits, nothing is lost silently), and an honest client
/// that comes after is granted and written to the directory.
#[test]
fn a_hello_flood_is_refused_and_counted_while_an_honest_client_gets_in() {
    let Some(nats) = Nats::start() else { return };
    let node = FakeNode::start_with_queue(&nats, "flooded:1", Duration::from_secs(10), 32);
    let flood = 5_000u64;
    for i in 0..flood {
        node.hello(1_000_000 + i, i + 1);
    }
    wait_until("flood answered", Duration::from_secs(60), || {
        u64::from(node.answered()) == flood
    });
    let (granted, refused) = {
        let l = node.local.lock().unwrap();
        (l.granted, l.refused)
    };
    let metrics = node.handle().metrics().clone();
    assert!(refused > 0, "a 32-deep queue took 5,000 claims at once");
    assert_eq!(u64::from(granted + refused), flood);
    assert_eq!(
        metrics.claims_refused.get(),
        u64::from(refused),
        "every refusal counted"
    );
    // Queue-full claims, plus online events that met a full queue too.
    assert!(metrics.dropped.get() >= u64::from(refused));
    // The honest client, like a real one, tries again after a refusal.
    let mut tries = 0;
    while !node.local.lock().unwrap().holders.contains_key(&42) {
        tries += 1;
        assert!(tries <= 50, "the honest client never got in");
        node.hello(42, 4242);
        let want = flood + tries;
        wait_until("honest claim answered", Duration::from_secs(20), || {
            u64::from(node.answered()) == want
        });
    }
    let entry = query::get(&nats.url(), 42).unwrap().expect("written");
    assert_eq!(entry.session, 4242);
    node.take_handle().shutdown();
}
