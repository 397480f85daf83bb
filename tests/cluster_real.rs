//! Cluster mode with real ringbeat servers (in-process, or a child process
//! for kill -9) against a real `nats-server -js`: takeover across nodes,
//! floods, a node's death, NATS outages and restarts, presence events.
//! Skips with a note only if `nats-server` cannot be found (run `bash
//! scripts/setup.sh`). The fake-hooks tests are in tests/cluster.rs.

use std::collections::HashMap;
use std::time::Duration;

use ringbeat::cluster::{query, OutageMode};
use ringbeat::config::{IoMode, ServeArgs};
use ringbeat::protocol::{CloseReason, OwnedFrame};
use ringbeat::server::Server;

mod common;

use common::nats::{wait_until, Consumer, Nats};

fn real_node(nats: &Nats, i: usize) -> Server {
    common::start(ServeArgs {
        cluster: Some(nats.url()),
        node_id: Some(format!("real{i}")),
        cluster_lease: Some(Duration::from_secs(3)),
        // 20 takeovers of one id in a burst: past the per-id rate limit
        // (burst 10) on whichever node sees more than 10 of them.
        max_takeovers_per_min: Some(0),
        ..common::args(IoMode::Auto)
    })
}

/// What a peer's stream holds after things settled: a CLOSE reason, or
/// nothing within a short wait (still held).
fn settled(p: &mut common::Peer) -> Option<u16> {
    p.stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| p.next()));
    match got {
        Ok(common::Got::Frame(OwnedFrame::Close { reason, .. })) => Some(reason),
        Ok(other) => panic!("expected CLOSE or silence, got {other:?}"),
        Err(_) => None,
    }
}

/// Three real servers in cluster mode: a HELLO on the next node takes the
/// id from the last one with CLOSE(TAKEN_OVER), and then 20 HELLOs with
/// the same id over the three nodes at once leave exactly one holder, the
/// one the directory names.
#[test]
fn real_servers_keep_one_holder_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let servers: Vec<Server> = (0..3).map(|i| real_node(&nats, i)).collect();
    let addr = |i: usize| servers[i % 3].local_addrs()[0];
    let (id, url) = (9090, nats.url());
    let mut prev: Option<common::Peer> = None;
    for round in 0..3 {
        let mut p = common::Peer::connect(addr(round));
        p.hello(id, 10_000);
        let (session, ..) = p.expect_welcome();
        if let Some(mut old) = prev.take() {
            old.expect_close(CloseReason::TakenOver as u16);
        }
        wait_until(
            "directory names the new holder",
            Duration::from_secs(20),
            || {
                query::get(&url, id)
                    .ok()
                    .flatten()
                    .is_some_and(|e| e.session == session && e.node == format!("real{round}"))
            },
        );
        prev = Some(p);
    }
    let mut peers: Vec<common::Peer> = (0..20)
        .map(|i| {
            let mut p = common::Peer::connect(addr(i));
            p.hello(id, 10_000);
            p
        })
        .collect();
    let mut sessions = Vec::new();
    for p in &mut peers {
        sessions.push(p.expect_welcome().0);
    }
    prev.unwrap().expect_close(CloseReason::TakenOver as u16);
    std::thread::sleep(Duration::from_secs(4));
    let outcomes: Vec<Option<u16>> = peers.iter_mut().map(settled).collect();
    let alive: Vec<usize> = (0..20).filter(|&i| outcomes[i].is_none()).collect();
    assert_eq!(alive.len(), 1, "outcomes: {outcomes:?}");
    let count = |reason: CloseReason| {
        outcomes
            .iter()
            .filter(|o| **o == Some(reason as u16))
            .count()
    };
    let (taken, refused) = (count(CloseReason::TakenOver), count(CloseReason::Limited));
    // As in tests/cluster.rs: a claim that loses CLAIM_ATTEMPTS rounds to
    // its 19 rivals is refused by design (CLOSE(LIMITED), counted in
    // ringbeat_cluster_claims_refused); seen once in test.sh, 2026-12-01
    // 22:38 (18 taken over, 1 refused). Every other HELLO is answered one
    // way or the other, and refusals stay the exception.
    assert_eq!(taken + refused, 19, "outcomes: {outcomes:?}");
    assert!(refused <= 3, "outcomes: {outcomes:?}");
    let winner = alive[0];
    peers[winner].ping(5);
    peers[winner].expect_pong(5);
    let entry = query::get(&url, id).unwrap().expect("held");
    assert_eq!(entry.session, sessions[winner]);
    assert_eq!(entry.node, format!("real{}", winner % 3));
    for s in servers {
        common::stop(s);
    }
}

/// `ringbeat serve` in cluster mode as a child process (its own descriptor
/// table and its own death: SIGKILL ends it without a word to NATS).
fn child_node(nats: &Nats, node: &str, lease: &str) -> common::child::Running {
    let url = nats.url();
    common::child::spawn_server(&[
        "--cluster",
        &url,
        "--node-id",
        node,
        "--cluster-lease",
        lease,
        "--interval",
        "2s",
        "--timeout",
        "30s",
        "--max-connections",
        "4096",
    ])
}

/// One PING from every peer: the clients stay honest heartbeaters. The
/// PONGs are left unread (a few bytes each in the socket buffer).
fn heartbeat(peers: &mut [common::Peer], round: u64) {
    for p in peers {
        p.ping(round);
    }
}

/// kill -9 of a real node process holding 1,000 clients, with two real
/// survivors: within the lease plus a tick (plus slack for this loaded
/// box) the directory holds none of them, and exactly one `offline` with
/// reason `node_lost` was published per client, by one survivor only.
#[test]
fn kill_9_of_a_real_node_reaps_its_clients_once() {
    let Some(nats) = Nats::start() else { return };
    let lease = Duration::from_secs(3);
    let mut nodes: Vec<common::child::Running> = ["killed", "survivor1", "survivor2"]
        .iter()
        .map(|n| child_node(&nats, n, "3s"))
        .collect();
    let ids = 30_001..=31_000u64;
    let mut peers: Vec<common::Peer> = Vec::with_capacity(1000);
    for id in ids.clone() {
        let mut p = common::Peer::connect(nodes[0].listen);
        p.hello(id, 2000);
        peers.push(p);
    }
    for p in &mut peers {
        p.expect_welcome();
    }
    let url = nats.url();
    let mut round = 0;
    wait_until("1,000 in the directory", Duration::from_secs(120), || {
        round += 1;
        if round % 50 == 0 {
            heartbeat(&mut peers, round);
        }
        query::count(&url).is_ok_and(|n| n == 1000)
    });
    let consumer = Consumer::start(&url);
    let mut victim = nodes.remove(0);
    victim.child.kill().expect("SIGKILL");
    let _ = victim.child.wait();
    let took = wait_until("directory empty", lease + Duration::from_secs(15), || {
        query::count(&url).is_ok_and(|n| n == 0)
    });
    eprintln!("a real node killed with 1,000 clients: reaped in {took:?} (lease {lease:?})");
    // One lease, one check period (lease/10), and 5 s for this loaded box.
    assert!(took <= lease + Duration::from_secs(5), "reaped in {took:?}");
    std::thread::sleep(Duration::from_secs(2));
    let mut lost: HashMap<u64, u32> = HashMap::new();
    for e in consumer.events() {
        let id = e["client_id"].as_u64().unwrap();
        assert!(ids.contains(&id), "an event for a stranger: {e}");
        assert_eq!(e["event"], "offline", "{e}");
        assert_eq!(e["reason"], "node_lost", "{e}");
        assert_eq!(e["node"], "killed", "{e}");
        *lost.entry(id).or_default() += 1;
    }
    assert_eq!(lost.len(), 1000, "a node_lost for every client");
    let twice = lost.values().filter(|&&n| n != 1).count();
    assert_eq!(twice, 0, "clients with more than one node_lost");
    let reaped: u64 = nodes
        .iter()
        .map(|n| common::child::child_metric(n.metrics, "ringbeat_cluster_reaped_total"))
        .sum();
    assert_eq!(reaped, 1000, "the survivors' reaped counters");
}

fn outage_node(nats: &Nats, i: usize, outage: OutageMode) -> Server {
    common::start(ServeArgs {
        cluster: Some(nats.url()),
        node_id: Some(format!("real{i}")),
        cluster_lease: Some(Duration::from_secs(3)),
        cluster_outage: Some(outage),
        ..common::args(IoMode::Auto)
    })
}

fn wait_connected(servers: &[Server], want: u64) {
    for s in servers {
        wait_until("cluster connection", Duration::from_secs(30), || {
            common::metric(s.stats(), "ringbeat_cluster_connected") == want
        });
    }
}

/// The peer still holds its connection: a PING is answered.
fn alive(p: &mut common::Peer, value: u64) {
    p.ping(value);
    p.expect_pong(value);
}

/// `--cluster-outage local`: while NATS is away two nodes each grant a
/// HELLO with the same id; when NATS is back the reconcile closes exactly
/// one of them with CLOSE(TAKEN_OVER) and the directory names the other.
#[test]
fn outage_local_grants_both_and_the_reconcile_keeps_one() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let servers: Vec<Server> = (0..2)
        .map(|i| outage_node(&nats, i, OutageMode::Local))
        .collect();
    wait_connected(&servers, 1);
    nats.stop();
    wait_connected(&servers, 0);
    let id = 7_007;
    let mut peers: Vec<common::Peer> = (0..2)
        .map(|i| {
            let mut p = common::Peer::connect(servers[i].local_addrs()[0]);
            p.hello(id, 10_000);
            p
        })
        .collect();
    let sessions: Vec<u64> = peers.iter_mut().map(|p| p.expect_welcome().0).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        alive(p, i as u64);
    }
    nats.resume();
    wait_connected(&servers, 1);
    std::thread::sleep(Duration::from_secs(3));
    let outcomes: Vec<Option<u16>> = peers.iter_mut().map(settled).collect();
    let survivors: Vec<usize> = (0..2).filter(|&i| outcomes[i].is_none()).collect();
    assert_eq!(survivors.len(), 1, "outcomes: {outcomes:?}");
    let loser = 1 - survivors[0];
    assert_eq!(outcomes[loser], Some(CloseReason::TakenOver as u16));
    let winner = survivors[0];
    alive(&mut peers[winner], 99);
    let entry = query::get(&nats.url(), id).unwrap().expect("held");
    assert_eq!(
        (entry.node, entry.session),
        (format!("real{winner}"), sessions[winner])
    );
    let out = common::metric(
        servers[loser].stats(),
        "ringbeat_cluster_takeovers_total{direction=\"out\"}",
    );
    assert_eq!(out, 1, "the loser counted its takeover");
    for s in servers {
        common::stop(s);
    }
}

/// `--cluster-outage refuse` (the default): a HELLO with an id while NATS
/// is away is closed with CLOSE(LIMITED) and counted; an anonymous client
/// and a client connected before the outage keep working.
#[test]
fn outage_refuse_closes_a_hello_with_an_id_and_counts_it() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let server = outage_node(&nats, 0, OutageMode::Refuse);
    let servers = [server];
    wait_connected(&servers, 1);
    let addr = servers[0].local_addrs()[0];
    let mut before = common::Peer::connect(addr);
    before.hello(11, 10_000);
    before.expect_welcome();
    wait_until("held before the outage", Duration::from_secs(20), || {
        query::count(&nats.url()).is_ok_and(|n| n == 1)
    });
    nats.stop();
    wait_connected(&servers, 0);
    let mut refused = common::Peer::connect(addr);
    refused.hello(12, 10_000);
    refused.expect_welcome();
    refused.expect_close(CloseReason::Limited as u16);
    let stats = servers[0].stats();
    assert_eq!(
        common::metric(stats, "ringbeat_cluster_claims_refused_total"),
        1
    );
    let mut anonymous = common::Peer::connect(addr);
    anonymous.hello(0, 10_000);
    anonymous.expect_welcome();
    alive(&mut anonymous, 1);
    alive(&mut before, 2);
    nats.resume();
    wait_connected(&servers, 1);
    let mut after = common::Peer::connect(addr);
    after.hello(12, 10_000);
    let (session, ..) = after.expect_welcome();
    wait_until("granted once NATS is back", Duration::from_secs(20), || {
        query::get(&nats.url(), 12)
            .ok()
            .flatten()
            .is_some_and(|e| e.session == session)
    });
    alive(&mut before, 3);
    let [server] = servers;
    common::stop(server);
}

/// NATS restarts (empty store) while three real servers hold clients: no
/// client is disconnected, the directory is whole again within a lease,
/// and a consumer sees no online/offline for the unchanged clients.
#[test]
fn real_servers_survive_a_nats_restart() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let lease = Duration::from_secs(3);
    let servers: Vec<Server> = (0..3).map(|i| real_node(&nats, i)).collect();
    let url = nats.url();
    let mut peers = thirty_welcomed(&servers, &url);
    let consumer = Consumer::start(&url);
    nats.restart_empty(Duration::from_millis(500));
    let took = wait_until("directory whole", lease * 5, || {
        query::count(&url).is_ok_and(|n| n == 30)
    });
    eprintln!("real servers: directory whole {took:?} after NATS came back (lease {lease:?})");
    assert!(took <= lease, "not within a lease: {took:?}");
    for (id, session, _) in &peers {
        let entry = query::get(&url, *id).unwrap().expect("present");
        assert_eq!(entry.node, format!("real{}", id % 3));
        assert_eq!(entry.session, *session);
    }
    std::thread::sleep(lease + Duration::from_secs(1));
    for (id, _, p) in &mut peers {
        alive(p, *id);
    }
    assert_eq!(consumer.events(), Vec::<serde_json::Value>::new());
    assert_eq!(query::count(&url).unwrap(), 30, "no node was reaped");
    for s in servers {
        common::stop(s);
    }
}

/// Three real servers: a consumer of `ringbeat.presence.>` sees, for every
/// connection, one `online` and later one `offline`, in that order, with
/// the session the client was welcomed with and the node it said HELLO to.
#[test]
fn real_servers_publish_online_then_offline_for_every_connection() {
    let Some(nats) = Nats::start() else { return };
    let servers: Vec<Server> = (0..3).map(|i| real_node(&nats, i)).collect();
    let url = nats.url();
    let consumer = Consumer::start(&url);
    let peers = thirty_welcomed(&servers, &url);
    let sessions: Vec<(u64, u64)> = peers.iter().map(|(id, s, _)| (*id, *s)).collect();
    drop(peers); // every client goes away
    wait_until("60 events", Duration::from_secs(60), || {
        consumer.events().len() >= 60
    });
    std::thread::sleep(Duration::from_millis(500));
    let events = consumer.events();
    assert_eq!(events.len(), 60, "{events:?}");
    for (id, session) in sessions {
        let mine: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["client_id"] == id).collect();
        let kinds: Vec<&str> = mine.iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["online", "offline"], "client {id}");
        assert!(mine.iter().all(|e| e["session"] == session), "client {id}");
        assert!(mine
            .iter()
            .all(|e| e["node"] == format!("real{}", id % 3).as_str()));
    }
    wait_until("offline deletes", Duration::from_secs(30), || {
        query::count(&url).is_ok_and(|n| n == 0)
    });
    for s in servers {
        common::stop(s);
    }
}

/// Clients 1..=30 say HELLO, spread over three real servers; returns
/// (id, session, peer) once all are welcomed and in the directory.
fn thirty_welcomed(servers: &[Server], url: &str) -> Vec<(u64, u64, common::Peer)> {
    let mut peers: Vec<(u64, u64, common::Peer)> = (1..=30u64)
        .map(|id| {
            let mut p = common::Peer::connect(servers[id as usize % 3].local_addrs()[0]);
            p.hello(id, 10_000);
            (id, 0, p)
        })
        .collect();
    for (_, session, p) in &mut peers {
        *session = p.expect_welcome().0;
    }
    wait_until("30 in the directory", Duration::from_secs(60), || {
        query::count(url).is_ok_and(|n| n == 30)
    });
    peers
}
