//! Starts the shards and runs the control plane: picks the io mode, sizes
//! each shard, binds one SO_REUSEPORT listener per shard and address, pins
//! threads round-robin to cores, and builds the mailbox the shards message
//! each other through (`mailbox`).

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{bail, Context};
use crossbeam_channel::Receiver;
use socket2::{Domain, Socket, TcpKeepalive, Type};

use crate::auth::{AuthError, AuthMode, AuthStats, Authenticator};
use crate::cluster::hooks::{KickWaits, MailboxHooks};
use crate::cluster::{ClusterHandle, ClusterMetrics};
use crate::config::{Config, IoMode};
use crate::conn_table::{ConnTable, SLOTS_MAX};
use crate::engine::{Engine, EngineConfig, KickAck, TokenCheck};
use crate::events::{self, Event, EventSender};
use crate::heartbeat::Timing;
use crate::mailbox::{Peers, ShardMsg};
use crate::per_ip::PerIpLimit;
use crate::ring::{self, Features, RingSetup};
use crate::shard::group::Group;
use crate::shard::{IoPlan, Shard, ShardSpec};
use crate::stash::HelloPool;
use crate::stats::Stats;

/// Most entries of one ring's fixed-file table (kernel IORING_MAX_FIXED_FILES).
const FIXED_FILES_MAX: u64 = 1 << 20;
/// Most HELLOs with tokens one shard assembles at once (each ~0.5 KiB).
const HELLO_POOL_MAX: u32 = 1024;
/// Descriptors kept free for listeners, eventfds, the metrics socket, logs.
const RESERVED_FDS: u64 = 64;

/// Slots of each shard kept free for refusals: past `slots - reserve` open
/// connections a new one is still accepted, answered CLOSE(OVERLOADED) and
/// closed, instead of waiting unanswered in the listen backlog.
pub fn refusal_reserve(slots: u32) -> u32 {
    (slots / 16).clamp(1, 1024).min(slots.saturating_sub(1))
}

/// The engine's token check, carried out by the authenticator. Each shard
/// gets its own clone (its own cache: no lock is shared between shards).
#[derive(Debug)]
struct ShardAuth(Authenticator);

impl TokenCheck for ShardAuth {
    fn required(&self) -> bool {
        self.0.requires_hello()
    }

    fn verify(&self, client_id: u64, token: &[u8], now_unix_s: u64) -> bool {
        self.0.check_hello(client_id, token, now_unix_s).is_ok()
    }
}

/// Exports the authenticator's counters on /metrics.
fn render_auth(stats: Arc<AuthStats>) -> crate::stats::ExtraRender {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    Box::new(move |out: &mut String| {
        let _ = writeln!(
            out,
            "# HELP ringbeat_auth_verified Tokens accepted by a signature check.\n\
             # TYPE ringbeat_auth_verified counter\n\
             ringbeat_auth_verified_total {}\n\
             # HELP ringbeat_auth_cache_hits Tokens accepted from a shard's cache.\n\
             # TYPE ringbeat_auth_cache_hits counter\n\
             ringbeat_auth_cache_hits_total {}\n\
             # HELP ringbeat_auth_rejected Tokens refused, by reason.\n\
             # TYPE ringbeat_auth_rejected counter",
            stats.verified.load(Relaxed),
            stats.cache_hits.load(Relaxed),
        );
        for (name, n) in AuthError::NAMES.iter().zip(&stats.rejected) {
            let _ = writeln!(
                out,
                "ringbeat_auth_rejected_total{{reason=\"{name}\"}} {}",
                n.load(Relaxed)
            );
        }
    })
}

/// Whether connections need their peer address: events carry it, the
/// per-address limit counts by it.
fn keeps_peers(config: &Config, events: bool) -> bool {
    events || config.max_conns_per_ip.is_some() || config.proxy_protocol
}

/// The io mode chosen at start-up, and why.
#[derive(Clone, Debug)]
pub struct ModeChoice {
    pub plan: IoPlan,
    pub reason: String,
}

/// Resolves `--io-mode` against what the kernel has.
pub fn choose_mode(
    requested: IoMode,
    features: &Features,
    needs_peers: bool,
) -> anyhow::Result<ModeChoice> {
    let fast = match (requested, features.fast_mode_ready()) {
        (IoMode::Compat, _) => false,
        (_, Ok(())) => true,
        (IoMode::Fast, Err(why)) => bail!("--io-mode fast: {why}"),
        (IoMode::Auto, Err(_)) => false,
    };
    if !fast {
        features
            .compat_mode_ready()
            .map_err(|why| anyhow::anyhow!("no usable io_uring: {why}"))?;
    }
    let reason = match (requested, fast) {
        (IoMode::Compat, _) => "compat: forced by --io-mode compat".to_owned(),
        (_, true) => "fast: multishot recv, buffer ring and direct descriptors present".to_owned(),
        (_, false) => format!(
            "compat: {}",
            features.fast_mode_ready().err().unwrap_or_default()
        ),
    };
    // Multishot accept cannot report peer addresses.
    let plan = IoPlan {
        fast,
        multishot_accept: fast && !needs_peers,
    };
    Ok(ModeChoice { plan, reason })
}

/// Slots per shard: an even share of `max_connections` plus slack for
/// uneven SO_REUSEPORT hashing, capped by the fd limit.
pub fn slots_per_shard(config: &Config, fast: bool, nofile: u64) -> u32 {
    let shards = config.shards as u64;
    let share = u64::from(config.max_connections).div_ceil(shards);
    let wanted = share + share / 8 + 64;
    let cap = if fast {
        nofile.saturating_sub(RESERVED_FDS).min(FIXED_FILES_MAX)
    } else {
        // Regular fds: all shards share one process-wide table.
        nofile.saturating_sub(RESERVED_FDS) / shards
    };
    wanted.min(cap).min(u64::from(SLOTS_MAX)).max(1) as u32
}

fn listener(addr: SocketAddr, config: &Config) -> anyhow::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if let Some(k) = config.tcp_keepalive {
        let ka = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        socket.set_tcp_keepalive(&ka)?;
    }
    if let Some(t) = config.tcp_user_timeout {
        socket.set_tcp_user_timeout(Some(t))?;
    }
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(65_535)?;
    // Delayed ACKs from the first byte: every client speaks first (HELLO,
    // or a proxy's header) and the server answers at once, so the ACK rides
    // on the answer. A new connection otherwise starts in quick-ACK mode and
    // ACKs the HELLO in a packet of its own, a third of what a client
    // receives in its handshake. Accepted sockets inherit the mode; the
    // kernel leaves it by itself when an answer is late (its delayed-ACK
    // timer fires). It only saves packets: a kernel that refuses it costs
    // one more per handshake, not the listener.
    if let Err(e) = ring::set_tcp_option(socket.as_raw_fd(), libc::TCP_QUICKACK, 0) {
        tracing::warn!(%addr, error = %e, "cannot delay ACKs on the listener (TCP_QUICKACK)");
    }
    Ok(socket)
}

/// Binds every shard's listeners. Port 0 is resolved by shard 0 so all
/// shards share the same port.
fn bind_all(config: &Config) -> anyhow::Result<(Vec<Vec<Socket>>, Vec<SocketAddr>)> {
    let mut per_shard: Vec<Vec<Socket>> = (0..config.shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::new();
    for &addr in &config.listen {
        let first = listener(addr, config)?;
        let actual = first
            .local_addr()?
            .as_socket()
            .context("listener address")?;
        per_shard[0].push(first);
        for shard in per_shard.iter_mut().skip(1) {
            shard.push(listener(actual, config)?);
        }
        bound.push(actual);
    }
    Ok((per_shard, bound))
}

/// A running server.
#[derive(Debug)]
pub struct Server {
    peers: Arc<Peers>,
    threads: Vec<JoinHandle<std::io::Result<()>>>,
    local_addrs: Vec<SocketAddr>,
    metrics_addr: Option<SocketAddr>,
    stats: Arc<Stats>,
    mode: ModeChoice,
    capacity: u64,
    events_sink: Option<events::FileSink>,
    cluster: Option<Arc<ClusterHandle>>,
}

impl Server {
    /// Starts a server; events go to `config.events` if set.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        let sink = match &config.events {
            Some(path) => {
                let (tx, rx) = events::channel();
                let sink = events::FileSink::spawn(path, rx, tx.drops().clone())?;
                Some((tx, sink))
            }
            None => None,
        };
        let (tx, sink) = sink.unzip();
        let drops = tx.as_ref().map(|t| t.drops().clone());
        let mut server = Server::start_inner(config, tx)?;
        if let Some(d) = drops {
            server.stats.attach_event_drops(d);
        }
        server.events_sink = sink;
        Ok(server)
    }

    /// Starts a server whose events a library user receives.
    pub fn start_with_events(config: Config) -> anyhow::Result<(Server, Receiver<Event>)> {
        let (tx, rx) = events::channel();
        let drops = tx.drops().clone();
        let server = Server::start_inner(config, Some(tx))?;
        server.stats.attach_event_drops(drops);
        Ok((server, rx))
    }

    /// Asks the events file sink, if any, to reopen its path (SIGHUP).
    pub fn events_reopen_handle(&self) -> Option<events::ReopenHandle> {
        self.events_sink.as_ref().map(|s| s.reopen_handle())
    }

    fn start_inner(config: Config, events: Option<EventSender>) -> anyhow::Result<Server> {
        let features = Features::probe();
        let mode = choose_mode(
            config.io_mode,
            &features,
            keeps_peers(&config, events.is_some() || config.cluster.is_some()),
        )?;
        let nofile = ring::raise_nofile_limit().context("RLIMIT_NOFILE")?;
        let slots = slots_per_shard(&config, mode.plan.fast, nofile);
        let shard_limit = slots - refusal_reserve(slots);
        let held = u64::from(shard_limit) * config.shards as u64;
        let capacity = held.min(u64::from(config.max_connections));
        tracing::info!(mode = %mode.reason, features = %features.summary(), "io mode");
        tracing::info!(
            shards = config.shards,
            slots_per_shard = slots,
            refusal_reserve = slots - shard_limit,
            nofile,
            "capacity {capacity} connections (past it: CLOSE(OVERLOADED))"
        );
        if held < u64::from(config.max_connections) {
            tracing::warn!(
                "can hold {held} connections, below --max-connections {}: {}",
                config.max_connections,
                if mode.plan.fast {
                    "raise nofile or --shards (each ring's table is capped by RLIMIT_NOFILE)"
                } else {
                    "raise nofile"
                }
            );
        }
        let (listeners, local_addrs) = bind_all(&config)?;
        let mut stats = Stats::new();
        let cluster_metrics = config.cluster.as_ref().map(|_| {
            let m = ClusterMetrics::default();
            m.register(stats.registry_mut());
            m
        });
        let stats = Arc::new(stats);
        stats.capacity.set(capacity as i64);
        let auth = Authenticator::from_config(&config).context("auth keys")?;
        tracing::info!(auth = ?auth.mode(), proxy_protocol = config.proxy_protocol, "identity");
        if auth.mode() != AuthMode::Off {
            stats.attach_render(render_auth(auth.stats().clone()));
        }
        let metrics_addr = config
            .metrics
            .map(|addr| crate::metrics_http::spawn(addr, stats.clone()))
            .transpose()
            .context("cannot serve metrics")?;
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..config.shards)
            .map(|_| crossbeam_channel::unbounded())
            .unzip();
        let wakers = wakers(&config)?;
        let peers = Arc::new(Peers::new(senders, wakers));
        let kick_waits = Arc::new(KickWaits::default());
        let cluster = match (&config.cluster, cluster_metrics) {
            (Some(c), Some(metrics)) => {
                let hooks = Arc::new(MailboxHooks::new(peers.clone(), kick_waits.clone()));
                let handle = ClusterHandle::start(c.clone(), hooks, metrics)
                    .context("cannot join the cluster")?;
                tracing::info!(node = %c.node, url = %c.url, "cluster mode");
                Some(Arc::new(handle))
            }
            _ => None,
        };
        let shared = Shared {
            config: &config,
            plan: mode.plan,
            slots,
            shard_limit,
            max_connections: capacity as u32,
            peers: &peers,
            per_ip: config
                .max_conns_per_ip
                .map(|n| Arc::new(PerIpLimit::new(n))),
            auth: (auth.mode() != AuthMode::Off).then_some(&auth),
            events: &events,
            cluster: &cluster,
            kick_waits: &kick_waits,
            stats: &stats,
            live_total: Arc::new(AtomicU32::new(0)),
            start: Instant::now(),
        };
        let threads = spawn_shards(&shared, listeners, receivers)?;
        Ok(Server {
            peers,
            threads,
            local_addrs,
            metrics_addr,
            stats,
            mode,
            capacity,
            events_sink: None,
            cluster,
        })
    }

    /// The bound listen addresses (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn mode(&self) -> &ModeChoice {
        &self.mode
    }

    /// Connections the shards can hold together.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Makes shard `shard` fail as on an I/O error from its ring, so tests
    /// can check that a failed shard stops the whole server cleanly.
    #[doc(hidden)]
    pub fn inject_shard_failure(&self, shard: u16) {
        assert!(usize::from(shard) < self.peers.shards(), "no shard {shard}");
        self.peers.send(shard, ShardMsg::Fail);
    }

    /// A handle that can stop the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            peers: self.peers.clone(),
        }
    }

    /// Asks every shard to close all connections with CLOSE(SHUTDOWN).
    pub fn shutdown(&self) {
        self.shutdown_handle().shutdown();
    }

    /// Waits for every shard to finish, then at most
    /// [`events::SHUTDOWN_WAIT_MS`] for the events file sink.
    pub fn join(self) -> anyhow::Result<()> {
        let mut first_err = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    first_err = first_err.or(Some(anyhow::anyhow!("shard thread {i}: {e}")))
                }
                Err(_) => {
                    first_err = first_err.or(Some(anyhow::anyhow!("shard thread {i} panicked")))
                }
            }
        }
        drop(self.peers);
        // The shards' offline events are queued; the cluster drains them
        // (directory deletes) and removes this node's lease.
        if let Some(Ok(cluster)) = self.cluster.map(Arc::try_unwrap) {
            cluster.shutdown();
        }
        if let Some(sink) = self.events_sink {
            sink.finish(std::time::Duration::from_millis(events::SHUTDOWN_WAIT_MS));
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Stops a server from any thread (signal handler thread, tests).
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    peers: Arc<Peers>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.peers.shutdown_all();
    }
}

/// What every shard shares at start-up.
struct Shared<'a> {
    config: &'a Config,
    plan: IoPlan,
    slots: u32,
    shard_limit: u32,
    /// The effective global limit (`ringbeat_capacity`).
    max_connections: u32,
    peers: &'a Arc<Peers>,
    per_ip: Option<Arc<PerIpLimit>>,
    auth: Option<&'a Authenticator>,
    events: &'a Option<EventSender>,
    cluster: &'a Option<Arc<ClusterHandle>>,
    kick_waits: &'a Arc<KickWaits>,
    stats: &'a Arc<Stats>,
    live_total: Arc<AtomicU32>,
    start: Instant,
}

fn spawn_shards(
    shared: &Shared<'_>,
    listeners: Vec<Vec<Socket>>,
    receivers: Vec<Receiver<ShardMsg>>,
) -> anyhow::Result<Vec<JoinHandle<std::io::Result<()>>>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads_n = shared.config.threads.min(shared.config.shards);
    let mut groups: Vec<Vec<ShardSpec>> = (0..threads_n).map(|_| Vec::new()).collect();
    for (id, (listeners, inbox)) in listeners.into_iter().zip(receivers).enumerate() {
        let spec = shard_spec(shared, id as u16, listeners, inbox)
            .with_context(|| format!("cannot set up shard {id}"))?;
        groups[id % threads_n].push(spec);
    }
    let mut threads = Vec::new();
    // Each thread builds its rings itself (a single-issuer ring belongs to
    // the thread that made it) and reports here before serving.
    let (ready_tx, ready_rx) = crossbeam_channel::unbounded();
    for (t, specs) in groups.into_iter().enumerate() {
        let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
        let ready = ready_tx.clone();
        let name = if specs.len() == 1 {
            format!("ringbeat-shard-{t}")
        } else {
            format!("ringbeat-group-{t}")
        };
        let t = std::thread::Builder::new().name(name).spawn(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            drive(specs, &ready)
        })?;
        threads.push(t);
    }
    // A thread that panics while starting drops its sender: recv fails
    // instead of waiting for ever.
    drop(ready_tx);
    for _ in 0..threads.len() {
        let (id, result) = ready_rx
            .recv()
            .context("a shard thread died while starting")?;
        if let Err(e) = result {
            shared.peers.shutdown_all();
            anyhow::bail!("cannot set up shard {id}: io_uring: {e}");
        }
    }
    Ok(threads)
}

/// One wake eventfd per shard; grouped shards (fewer `--threads` than
/// `--shards`) share their thread's, which the rings also signal.
fn wakers(config: &Config) -> std::io::Result<Vec<std::fs::File>> {
    let threads = config.threads.min(config.shards);
    if threads == config.shards {
        return (0..config.shards).map(|_| ring::eventfd()).collect();
    }
    let groups = (0..threads)
        .map(|_| ring::eventfd())
        .collect::<std::io::Result<Vec<_>>>()?;
    (0..config.shards)
        .map(|id| groups[id % threads].try_clone())
        .collect()
}

/// A shard thread's body: one shard on its own, or a group of several.
fn drive(
    mut specs: Vec<ShardSpec>,
    ready: &crossbeam_channel::Sender<(u16, Result<(), String>)>,
) -> std::io::Result<()> {
    let first = specs[0].id;
    if specs.len() == 1 {
        let shard = Shard::new(specs.remove(0));
        let _ = ready.send((first, shard.as_ref().map(|_| ()).map_err(|e| e.to_string())));
        return shard?.run();
    }
    let group = Group::new(specs);
    let _ = ready.send((first, group.as_ref().map(|_| ()).map_err(|e| e.to_string())));
    group?.run()
}

fn shard_spec(
    shared: &Shared<'_>,
    id: u16,
    listeners: Vec<Socket>,
    inbox: Receiver<ShardMsg>,
) -> anyhow::Result<ShardSpec> {
    let config = shared.config;
    let ring_setup = RingSetup {
        sq_entries: 2048,
        cq_entries: 16_384,
        fixed_files: shared.plan.fast.then_some(shared.slots),
        buf_ring: shared.plan.fast,
        recv_buffers: config.recv_buffers as u16,
        send_chunks: config.send_chunks,
        listeners: listeners.len(),
    };
    let events = shared.events.is_some() || shared.cluster.is_some();
    let generation_base = (shared.start.elapsed().as_nanos() as u32).wrapping_mul(2_654_435_761)
        ^ u32::from(id) << 20;
    let engine = Engine::new(
        EngineConfig {
            shard: id,
            shards: config.shards as u16,
            timing: Timing::from_config(config),
            max_payload: config.max_payload,
            probe: config.probe,
            max_connections: shared.max_connections,
            shard_limit: shared.shard_limit,
            events,
            multishot_recv: shared.plan.fast,
            auth: shared
                .auth
                .map(|a| Arc::new(ShardAuth(a.clone())) as Arc<dyn TokenCheck>),
            kick_ack: shared
                .cluster
                .is_some()
                .then(|| shared.kick_waits.clone() as Arc<dyn KickAck>),
            per_ip: shared.per_ip.clone(),
            takeovers_per_min: config.max_takeovers_per_min,
            max_ping_rate: config.max_ping_rate,
            proxy_protocol: config.proxy_protocol,
            phi_threshold: (config.detector == crate::config::Detector::Phi)
                .then_some(config.phi_threshold),
            offline_grace_ticks: Timing::from_config(config)
                .ticks(config.offline_grace.as_millis() as u32),
        },
        ConnTable::new(shared.slots, keeps_peers(config, events), generation_base),
        HelloPool::new((shared.slots / 64).clamp(16, HELLO_POOL_MAX)),
        shared.live_total.clone(),
        shared.stats.for_shard(id),
    );
    let wake_fd = shared.peers.wake_fd(id);
    Ok(ShardSpec {
        id,
        plan: shared.plan,
        engine,
        ring_setup,
        listeners,
        inbox,
        wake_fd,
        grouped: config.threads < config.shards,
        peers: shared.peers.clone(),
        events: shared.events.clone(),
        cluster: shared.cluster.clone(),
        stats: shared.stats.clone(),
        start: shared.start,
        tick: config.tick,
        // Measured: in compat mode (single-shot receives) a minimum wait
        // stalled replies for up to a second (RTT p99 4.9 ms -> 420 ms at
        // 15K clients), so only fast mode batches.
        batch_wait_us: if shared.plan.fast {
            config.batch_window_cap().as_micros() as u32
        } else {
            0
        },
    })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    use super::*;

    /// The HELLO's ACK rides on the WELCOME: the listener delays ACKs, and
    /// a connection it accepts starts that way (TCP_QUICKACK reads 0 when
    /// delayed-ACK mode is on). A kernel whose children did not inherit the
    /// mode would cost every client one more packet per handshake. Read
    /// before any byte arrives: a received byte arms the delayed-ACK timer,
    /// and a test thread descheduled past it would see the mode left.
    #[test]
    fn accepted_connections_delay_their_acks() {
        let config = Config::default();
        let socket = listener("127.0.0.1:0".parse().unwrap(), &config).unwrap();
        assert_eq!(
            ring::tcp_option(socket.as_raw_fd(), libc::TCP_QUICKACK).unwrap(),
            0
        );
        let listener: TcpListener = socket.into();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert_eq!(
            ring::tcp_option(accepted.as_raw_fd(), libc::TCP_QUICKACK).unwrap(),
            0
        );
    }
}
