//! The cluster thread: one OS thread running a current-thread tokio runtime
//! with the async-nats client. It turns claims into compare-and-set writes
//! on the directory, events into publishes and deletes, keeps this node's
//! lease fresh, answers kicks from other nodes, reaps lost nodes, and
//! re-asserts this node's entries when NATS comes back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv::{self, Operation, Store};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::directory::{event_json, Entry, Holding, Holdings, OfflineAction};
use super::lease::{check_period_ms, refresh_period_ms, Lease, LeaseTracker};
use super::subjects::*;
use super::{
    unix_ms, ClaimTicket, ClusterConfig, ClusterError, ClusterMetrics, Command, NodeHooks,
    OutageMode, CLAIM_ATTEMPTS, KICK_TIMEOUT,
};
use crate::events::{Event, EventKind};

/// Claims and deletes in flight at once: the batch one node pipelines.
const IN_FLIGHT_MAX: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reaper keeps a reaped incarnation's claim.
const REAPED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// A started cluster thread.
pub(crate) struct Running {
    join: std::thread::JoinHandle<()>,
    done: crossbeam_channel::Receiver<()>,
}

impl Running {
    pub(crate) fn stop(self, bound: Duration) {
        if self.done.recv_timeout(bound).is_ok() {
            let _ = self.join.join();
        } else {
            tracing::warn!("cluster thread did not stop within {bound:?}; leaving it");
        }
    }
}

#[derive(Serialize, Deserialize)]
struct KickRequest {
    client_id: u64,
    session: u64,
}

#[derive(Debug, Default)]
struct State {
    holdings: Holdings,
    leases: Option<LeaseTracker>,
    /// Deletes that failed (NATS away): retried by the resync.
    pending_deletes: Vec<(u64, u64)>,
}

struct Shared {
    cfg: ClusterConfig,
    hooks: Arc<dyn NodeHooks>,
    metrics: ClusterMetrics,
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    presence: Store,
    nodes: Store,
    reaped: Store,
    state: Mutex<State>,
    connected: AtomicBool,
    started: Instant,
    incarnation: u64,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("cluster state")
    }

    fn with_leases<R>(&self, f: impl FnOnce(&mut LeaseTracker) -> R) -> R {
        let mut st = self.state();
        f(st.leases.as_mut().expect("tracker set at start"))
    }

    fn lease_bytes(&self) -> bytes::Bytes {
        let lease = Lease {
            node: self.cfg.node.clone(),
            incarnation: self.incarnation,
            lease_ms: self.cfg.lease.as_millis() as u64,
        };
        serde_json::to_vec(&lease).expect("lease").into()
    }

    async fn publish_event(&self, event: &Event, node: &str) {
        // online and offline; resumed, suspect and recovered (offline
        // grace, phi detector) on their own subjects the same way.
        let kind = match event.event {
            EventKind::Online => "online",
            EventKind::Offline => "offline",
            EventKind::Resumed => "resumed",
            EventKind::Suspect => "suspect",
            EventKind::Recovered => "recovered",
        };
        let subject = event_subject(kind, event.client_id);
        if self
            .client
            .publish(subject, event_json(event, node).into())
            .await
            .is_err()
        {
            self.metrics.dropped.inc();
        }
    }
}

pub(crate) fn spawn(
    cfg: ClusterConfig,
    hooks: Arc<dyn NodeHooks>,
    metrics: ClusterMetrics,
    rx: mpsc::Receiver<Command>,
) -> Result<Running, ClusterError> {
    let (init_tx, init_rx) = std::sync::mpsc::channel();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let join = std::thread::Builder::new()
        .name("ringbeat-cluster".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = init_tx.send(Err(ClusterError::Io(e)));
                    return;
                }
            };
            rt.block_on(async move {
                match init(cfg, hooks, metrics).await {
                    Ok((shared, conn_events, kicks)) => {
                        let _ = init_tx.send(Ok(()));
                        run(shared, rx, conn_events, kicks).await;
                    }
                    Err(e) => {
                        let _ = init_tx.send(Err(e));
                    }
                }
            });
            let _ = done_tx.send(());
        })?;
    match init_rx.recv() {
        Ok(Ok(())) => Ok(Running { join, done }),
        Ok(Err(e)) => {
            let _ = join.join();
            Err(e)
        }
        Err(_) => Err(ClusterError::JetStream(
            "cluster thread died at start".into(),
        )),
    }
}

type ConnEvents = mpsc::UnboundedReceiver<async_nats::Event>;

/// Connects with a bound; reconnects forever afterwards.
pub(crate) async fn connect(
    url: &str,
    name: &str,
) -> Result<(async_nats::Client, ConnEvents), ClusterError> {
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let opts = async_nats::ConnectOptions::new()
        .name(name)
        .max_reconnects(None)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64 * 100).clamp(50, 1000))
        })
        .event_callback(move |e| {
            let tx = ev_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        });
    let connect_err = |message: String| ClusterError::Connect {
        url: url.into(),
        message,
    };
    let client = tokio::time::timeout(CONNECT_TIMEOUT, opts.connect(url))
        .await
        .map_err(|_| connect_err(format!("no answer within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| connect_err(e.to_string()))?;
    Ok((client, ev_rx))
}

/// Opens a KV bucket, creating it if missing (another node may race us).
pub(crate) async fn ensure_bucket(
    js: &async_nats::jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<Store, ClusterError> {
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: name.into(),
        history: 1,
        max_age,
        ..Default::default()
    };
    match js.create_key_value(config).await {
        Ok(store) => Ok(store),
        Err(e) => js
            .get_key_value(name)
            .await
            .map_err(|_| ClusterError::JetStream(format!("bucket {name}: {e}"))),
    }
}

async fn ensure_buckets(
    js: &async_nats::jetstream::Context,
) -> Result<(Store, Store, Store), ClusterError> {
    let presence = ensure_bucket(js, PRESENCE_BUCKET, Duration::ZERO).await?;
    let nodes = ensure_bucket(js, NODES_BUCKET, Duration::ZERO).await?;
    let reaped = ensure_bucket(js, REAPED_BUCKET, REAPED_MAX_AGE).await?;
    Ok((presence, nodes, reaped))
}

async fn init(
    cfg: ClusterConfig,
    hooks: Arc<dyn NodeHooks>,
    metrics: ClusterMetrics,
) -> Result<(Arc<Shared>, ConnEvents, async_nats::Subscriber), ClusterError> {
    let (client, conn_events) = connect(&cfg.url, &format!("ringbeat {}", cfg.node)).await?;
    let js = async_nats::jetstream::new(client.clone());
    let (presence, nodes, reaped) = ensure_buckets(&js).await?;
    let kicks = client
        .subscribe(kick_subject(&cfg.node))
        .await
        .map_err(|e| ClusterError::JetStream(e.to_string()))?;
    let incarnation = (unix_ms() << 16) ^ u64::from(std::process::id());
    let state = State {
        leases: Some(LeaseTracker::new(&cfg.node)),
        ..State::default()
    };
    let shared = Arc::new(Shared {
        cfg,
        hooks,
        metrics,
        client,
        js,
        presence,
        nodes,
        reaped,
        state: Mutex::new(state),
        connected: AtomicBool::new(true),
        started: Instant::now(),
        incarnation,
    });
    shared
        .nodes
        .put(encode_node(&shared.cfg.node), shared.lease_bytes())
        .await
        .map_err(|e| ClusterError::JetStream(format!("lease: {e}")))?;
    shared.metrics.connected.set(1);
    Ok((shared, conn_events, kicks))
}

async fn run(
    sh: Arc<Shared>,
    mut rx: mpsc::Receiver<Command>,
    conn_events: ConnEvents,
    kicks: async_nats::Subscriber,
) {
    let background = [
        tokio::spawn(lease_refresher(sh.clone())),
        tokio::spawn(lease_watcher(sh.clone())),
        tokio::spawn(reaper_loop(sh.clone())),
        tokio::spawn(kick_responder(sh.clone(), kicks)),
        tokio::spawn(connection_watch(sh.clone(), conn_events)),
    ];
    let slots = Arc::new(Semaphore::new(IN_FLIGHT_MAX));
    let mut tasks = JoinSet::new();
    let mut batch = Vec::with_capacity(IN_FLIGHT_MAX);
    while rx.recv_many(&mut batch, IN_FLIGHT_MAX).await > 0 {
        for cmd in batch.drain(..) {
            if let Command::Crash = cmd {
                return;
            }
            let permit = slots.clone().acquire_owned().await.expect("open");
            if let Some(fut) = handle(&sh, cmd).await {
                tasks.spawn(async move {
                    fut.await;
                    drop(permit);
                });
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    for task in background {
        task.abort();
    }
    let key = encode_node(&sh.cfg.node);
    let _ = tokio::time::timeout(Duration::from_secs(1), sh.nodes.delete(key)).await;
    let _ = tokio::time::timeout(Duration::from_secs(1), sh.client.flush()).await;
}

type Task = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Publishes events at once; returns the directory work to run concurrently.
async fn handle(sh: &Arc<Shared>, cmd: Command) -> Option<Task> {
    match cmd {
        Command::Claim {
            client_id,
            session,
            peer,
            ticket,
            queued,
        } => {
            let sh = sh.clone();
            let entry = Entry {
                node: sh.cfg.node.clone(),
                session,
                since_ms: unix_ms(),
                peer: peer.map(|p| p.to_string()),
            };
            Some(Box::pin(async move {
                claim(&sh, client_id, entry, ticket, queued).await;
            }))
        }
        Command::Crash => None,
        Command::Event { event, queued } => {
            sh.publish_event(&event, &sh.cfg.node).await;
            if event.event != EventKind::Offline || event.client_id == 0 {
                return None;
            }
            let action = sh.state().holdings.offline(event.client_id, event.session);
            let OfflineAction::Delete { revision } = action else {
                return None;
            };
            let sh = sh.clone();
            Some(Box::pin(async move {
                delete_entry(&sh, event.client_id, revision, queued).await;
            }))
        }
    }
}

async fn delete_entry(sh: &Shared, client_id: u64, revision: u64, queued: Instant) {
    let key = presence_key(client_id);
    match sh
        .presence
        .delete_expect_revision(&key, Some(revision))
        .await
    {
        Ok(()) => {
            sh.metrics.directory_writes.inc();
            sh.metrics
                .lag_seconds
                .observe(queued.elapsed().as_secs_f64());
        }
        Err(e) if !sh.connected.load(Ordering::Relaxed) || is_timeout(&e) => {
            sh.state().pending_deletes.push((client_id, revision));
        }
        // Wrong revision: the key moved on (a newer holder); not ours.
        Err(_) => {}
    }
}

fn is_timeout(e: &kv::DeleteError) -> bool {
    !matches!(e.kind(), kv::DeleteErrorKind::InvalidKey) && e.to_string().contains("timed out")
}

/// What asking the remote holder to let go came to.
enum Kick {
    /// The holder closed it (or its node is gone): try the CAS.
    Released,
    /// Read again and retry.
    Retry,
}

async fn kick_remote(sh: &Shared, client_id: u64, holder: &Entry) -> Kick {
    let req = KickRequest {
        client_id,
        session: holder.session,
    };
    let payload = serde_json::to_vec(&req).expect("kick").into();
    let subject = kick_subject(&holder.node);
    let reply = tokio::time::timeout(KICK_TIMEOUT, sh.client.request(subject, payload)).await;
    match reply {
        Ok(Ok(msg)) if msg.payload.as_ref() == b"ok" => Kick::Released,
        Ok(Ok(_)) => Kick::Retry,
        // No responder or no answer in time: a node without a live lease
        // is gone and its entry is free; a live one is asked again.
        _ => {
            let now = sh.now_ms();
            if sh.with_leases(|t| t.alive(&holder.node, now)) {
                Kick::Retry
            } else {
                Kick::Released
            }
        }
    }
}

async fn claim(sh: &Shared, client_id: u64, entry: Entry, ticket: ClaimTicket, queued: Instant) {
    let granted = claim_rounds(sh, client_id, entry, queued).await;
    if !granted {
        sh.metrics.claims_refused.inc();
    }
    sh.hooks.claim_done(client_id, ticket, granted);
}

/// Compare-and-set rounds until this node's entry is written or the rounds
/// are spent. A remote holder is kicked before our write replaces it.
async fn claim_rounds(sh: &Shared, client_id: u64, entry: Entry, queued: Instant) -> bool {
    let key = presence_key(client_id);
    for round in 0..CLAIM_ATTEMPTS {
        if round > 0 {
            let backoff_ms = (20 * u64::from(round)).min(300);
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        }
        if !sh.connected.load(Ordering::Relaxed) {
            return outage_claim(sh, client_id, entry);
        }
        let Ok(current) = sh.presence.entry(&key).await else {
            continue;
        };
        let live = current.filter(|e| e.operation == Operation::Put);
        let mut inbound = false;
        let written = match live {
            None => sh.presence.create(&key, entry.to_bytes()).await.ok(),
            Some(e) => {
                if let Some(h) = Entry::from_bytes(&e.value).filter(|h| h.node != sh.cfg.node) {
                    if let Kick::Retry = kick_remote(sh, client_id, &h).await {
                        continue;
                    }
                    inbound = true;
                }
                let value = entry.to_bytes();
                sh.presence.update(&key, value, e.revision).await.ok()
            }
        };
        let Some(revision) = written else { continue };
        if inbound {
            sh.metrics.takeover(true);
        }
        sh.metrics.directory_writes.inc();
        sh.metrics
            .lag_seconds
            .observe(queued.elapsed().as_secs_f64());
        let session = entry.session;
        let holding = Holding {
            session,
            revision,
            entry,
        };
        sh.state().holdings.granted(client_id, holding);
        return true;
    }
    false
}

fn outage_claim(sh: &Shared, client_id: u64, entry: Entry) -> bool {
    match sh.cfg.outage {
        OutageMode::Refuse => false,
        OutageMode::Local => {
            let holding = Holding {
                session: entry.session,
                revision: 0,
                entry,
            };
            sh.state().holdings.granted(client_id, holding);
            true
        }
    }
}

/// Longest a kick reply waits for the local close to be decided: half the
/// asking node's [`super::KICK_TIMEOUT`], so the reply still arrives.
const KICK_DECIDE_MAX: Duration = Duration::from_secs(1);

/// Another node wants an id we hold: end our holder, then say so.
async fn kick_responder(sh: Arc<Shared>, mut kicks: async_nats::Subscriber) {
    while let Some(msg) = kicks.next().await {
        let Ok(req) = serde_json::from_slice::<KickRequest>(&msg.payload) else {
            continue;
        };
        let stale = {
            let st = sh.state();
            let held = st.holdings.get(req.client_id);
            held.is_some_and(|h| h.session != req.session)
        };
        let mut decided = None;
        if !stale {
            let had = sh.state().holdings.kicked(req.client_id).is_some();
            decided = sh.hooks.kick(req.client_id, None);
            if had {
                sh.metrics.takeover(false);
            }
        }
        let Some(reply) = msg.reply else { continue };
        let answer: &'static [u8] = if stale { b"stale" } else { b"ok" };
        let sh = sh.clone();
        // The reply waits until our holder's close is decided (its CLOSE
        // queued, its PINGs no longer answered), so the asking node grants
        // only after: never two live holders. Bounded below the asker's
        // own KICK_TIMEOUT; a shard too stalled to decide in time is logged.
        tokio::spawn(async move {
            if let Some(done) = decided {
                if tokio::time::timeout(KICK_DECIDE_MAX, done).await.is_err() {
                    tracing::warn!(
                        client_id = req.client_id,
                        "kick not decided in time; replying anyway"
                    );
                }
            }
            let _ = sh.client.publish(reply, answer.into()).await;
        });
    }
}

async fn lease_refresher(sh: Arc<Shared>) {
    let period = Duration::from_millis(refresh_period_ms(sh.cfg.lease.as_millis() as u64));
    loop {
        tokio::time::sleep(period).await;
        let key = encode_node(&sh.cfg.node);
        if let Err(e) = sh.nodes.put(key, sh.lease_bytes()).await {
            tracing::debug!("cluster lease refresh failed: {e}");
        }
    }
}

/// Follows `ringbeat-nodes` into the lease tracker; re-opens the watch if
/// it ends (NATS restarted).
async fn lease_watcher(sh: Arc<Shared>) {
    loop {
        if let Ok(mut watch) = sh.nodes.watch_with_history(">").await {
            while let Some(Ok(entry)) = watch.next().await {
                let now = sh.now_ms();
                match entry.operation {
                    Operation::Put => {
                        if let Ok(lease) = serde_json::from_slice::<Lease>(&entry.value) {
                            sh.with_leases(|t| t.refreshed(lease, now));
                        }
                    }
                    Operation::Delete | Operation::Purge => {
                        sh.with_leases(|t| t.removed_key(&entry.key));
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn reaper_loop(sh: Arc<Shared>) {
    let period = Duration::from_millis(check_period_ms(sh.cfg.lease.as_millis() as u64));
    loop {
        tokio::time::sleep(period).await;
        if !sh.connected.load(Ordering::Relaxed) {
            continue;
        }
        let now = sh.now_ms();
        for lease in sh.with_leases(|t| t.newly_lost(now)) {
            let sh = sh.clone();
            tokio::spawn(async move { reap(&sh, lease).await });
        }
    }
}

/// Removes a lost node's entries and publishes their `node_lost` offline,
/// if this survivor wins the node's reaper key (one reaper cluster-wide).
async fn reap(sh: &Shared, lost: Lease) {
    let key = reaper_key(&lost.node, lost.incarnation);
    let claim = bytes::Bytes::from(sh.cfg.node.clone().into_bytes());
    if sh.reaped.create(&key, claim).await.is_err() {
        return;
    }
    tracing::info!(node = %lost.node, "cluster: node lease lapsed; reaping its clients");
    let Ok(keys) = sh.presence.keys().await else {
        return;
    };
    let keys: Vec<String> = keys.filter_map(|k| async { k.ok() }).collect().await;
    futures::stream::iter(keys)
        .for_each_concurrent(64, |key| reap_one(sh, &lost.node, key))
        .await;
    let _ = sh.nodes.delete(encode_node(&lost.node)).await;
}

async fn reap_one(sh: &Shared, lost_node: &str, key: String) {
    let Ok(Some(e)) = sh.presence.entry(&key).await else {
        return;
    };
    let Some(entry) = Entry::from_bytes(&e.value).filter(|h| h.node == lost_node) else {
        return;
    };
    let Ok(client_id) = key.parse::<u64>() else {
        return;
    };
    if sh
        .presence
        .delete_expect_revision(&key, Some(e.revision))
        .await
        .is_err()
    {
        return;
    }
    sh.metrics.directory_writes.inc();
    sh.metrics.reaped.inc();
    let mut event = Event::new(EventKind::Offline, entry.session, client_id, None);
    event.peer = entry.peer;
    event.reason = Some("node_lost");
    sh.publish_event(&event, lost_node).await;
}

async fn connection_watch(sh: Arc<Shared>, mut events: ConnEvents) {
    while let Some(ev) = events.recv().await {
        match ev {
            async_nats::Event::Connected => {
                sh.connected.store(true, Ordering::Relaxed);
                sh.metrics.connected.set(1);
                let now = sh.now_ms();
                sh.with_leases(|t| t.grace(now));
                resync(&sh).await;
            }
            async_nats::Event::Disconnected => {
                sh.connected.store(false, Ordering::Relaxed);
                sh.metrics.connected.set(0);
            }
            _ => {}
        }
    }
}

/// NATS is back: recreate the buckets if the store was lost, write our
/// lease, retry failed deletes, and re-assert every holding. Where another
/// node's entry now holds one of our ids, theirs wins and ours is closed
/// with TAKEN_OVER.
async fn resync(sh: &Shared) {
    if let Err(e) = ensure_buckets(&sh.js).await {
        tracing::warn!("cluster resync: {e}");
        return;
    }
    let _ = sh
        .nodes
        .put(encode_node(&sh.cfg.node), sh.lease_bytes())
        .await;
    let pending = std::mem::take(&mut sh.state().pending_deletes);
    for (client_id, revision) in pending {
        delete_entry(sh, client_id, revision, Instant::now()).await;
    }
    let held: Vec<(u64, Holding)> = {
        let st = sh.state();
        st.holdings.iter().map(|(id, h)| (id, h.clone())).collect()
    };
    for (client_id, h) in held {
        reassert(sh, client_id, h).await;
    }
}

/// Re-asserts one holding, re-reading after a lost `create` (another node
/// reconciling the same id at the same moment): the entry that got there
/// first wins and ours is closed. Rounds spent: counted as dropped.
async fn reassert(sh: &Shared, client_id: u64, h: Holding) {
    let key = presence_key(client_id);
    for round in 0..CLAIM_ATTEMPTS {
        if round > 0 {
            let backoff_ms = (20 * u64::from(round)).min(300);
            tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        }
        if reassert_once(sh, client_id, &key, &h).await {
            return;
        }
    }
    sh.metrics.dropped.inc();
    tracing::debug!(client_id, "cluster resync: rounds spent re-asserting");
}

/// One read and at most one write; `false` when the round must be repeated.
async fn reassert_once(sh: &Shared, client_id: u64, key: &str, h: &Holding) -> bool {
    let Ok(current) = sh.presence.entry(key).await else {
        return false;
    };
    let live = current.filter(|e| e.operation == Operation::Put);
    let Some(e) = live else {
        let Ok(rev) = sh.presence.create(key, h.entry.to_bytes()).await else {
            return false;
        };
        sh.metrics.directory_writes.inc();
        sh.state().holdings.set_revision(client_id, h.session, rev);
        return true;
    };
    let theirs = Entry::from_bytes(&e.value);
    let ours = theirs
        .as_ref()
        .is_some_and(|t| t.node == sh.cfg.node && t.session == h.session);
    if ours {
        sh.state()
            .holdings
            .set_revision(client_id, h.session, e.revision);
    } else {
        sh.state().holdings.kicked(client_id);
        sh.hooks.kick(client_id, None);
        sh.metrics.takeover(false);
    }
    true
}
