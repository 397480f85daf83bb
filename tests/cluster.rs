//! Cluster mode against a real `nats-server -js` (started per test on a free
//! loopback port with a temporary store) and three nodes whose server side
//! is a fake [`NodeHooks`]: it grants, takes over locally and emits events
//! the way the server does, so these tests prove what the cluster thread
//! decides. Skips with a note only if `nats-server` cannot be found (run
//! `bash scripts/setup.sh`).

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use ringbeat::cluster::{
    query, ClaimTicket, ClusterConfig, ClusterHandle, ClusterMetrics, NodeHooks, OutageMode,
};
use ringbeat::config::{IoMode, ServeArgs};
use ringbeat::events::{Event, EventKind, OfflineReason};
use ringbeat::protocol::{CloseReason, OwnedFrame};
use ringbeat::server::Server;

mod common;

fn nats_server_bin() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push("nats-server".into());
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        candidates.push(PathBuf::from(dir).join("nats-server"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin/nats-server"));
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

struct Nats {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Child,
}

impl Nats {
    fn start() -> Option<Nats> {
        let Some(bin) = nats_server_bin() else {
            eprintln!("SKIP: nats-server not found; run `bash scripts/setup.sh`");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(&bin, port, &store);
        Some(Nats {
            bin,
            port,
            store,
            child,
        })
    }

    fn spawn(bin: &PathBuf, port: u16, store: &tempfile::TempDir) -> Child {
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server and starts it again on the same port with an
    /// empty store (the worst case: every bucket is gone).
    fn restart_empty(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.store = tempfile::tempdir().unwrap();
        self.resume();
    }

    /// The outage begins: the server is gone, the store stays.
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The outage ends: the same port, the store as it was left.
    fn resume(&mut self) {
        self.child = Self::spawn(&self.bin, self.port, &self.store);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A stock NATS subscriber on `ringbeat.presence.>`, collecting JSON.
struct Consumer {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Consumer {
    fn start(url: &str) -> Consumer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (url, sink) = (url.to_string(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = async_nats::ConnectOptions::new()
                    .max_reconnects(None)
                    .reconnect_delay_callback(|_| Duration::from_millis(100))
                    .connect(url)
                    .await
                    .unwrap();
                let mut sub = client.subscribe("ringbeat.presence.>").await.unwrap();
                client.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                while let Some(msg) = sub.next().await {
                    let v = serde_json::from_slice(&msg.payload).unwrap();
                    sink.lock().unwrap().push(v);
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Consumer {
            seen,
            _thread: thread,
        }
    }

    fn events(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
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
/// 19 others were closed with TAKEN_OVER, and the directory (read through
/// the `ringbeat presence` command) names the survivor.
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
    assert_eq!((taken, refused), (19, 0), "others: taken over / refused");
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
    let taken = outcomes
        .iter()
        .filter(|o| **o == Some(CloseReason::TakenOver as u16))
        .count();
    assert_eq!(taken, 19, "outcomes: {outcomes:?}");
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
