//! Cluster mode: presence and takeover across ringbeat nodes on NATS
//! JetStream. Detection stays node-local; this module shares only
//! transitions (a KV directory `ringbeat-presence`, events on
//! `ringbeat.presence.*`) and node leases (`ringbeat-nodes`). The NATS
//! client runs on its own thread (`thread.rs`); shards reach it through the
//! non-blocking [`ClusterHandle`], and it reaches the server through
//! [`NodeHooks`]. See docs/CLUSTER.md.

pub mod directory;
pub mod hooks;
pub mod lease;
pub mod metrics;
pub mod query;
pub mod subjects;
mod thread;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use thiserror::Error;
use tokio::sync::mpsc;

use crate::events::Event;
pub use metrics::ClusterMetrics;

/// Default `--cluster-lease`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// Claims and events queued to the cluster thread; past it they are counted
/// in `ringbeat_cluster_dropped` (a claim is refused, an event lost).
pub const QUEUE_MAX: usize = 1 << 16;
/// Longest a node waits for the remote holder's kick reply.
pub const KICK_TIMEOUT: Duration = Duration::from_secs(2);
/// Compare-and-set rounds a claim may lose before it is refused.
pub const CLAIM_ATTEMPTS: u32 = 16;

/// What a HELLO with an id meets while NATS is unreachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OutageMode {
    /// Refuse it: no duplicate can arise, but no client with an id connects
    /// anywhere until NATS is back.
    #[default]
    Refuse,
    /// Accept it locally; when NATS is back, reconcile, and close the loser
    /// of any duplicate with TAKEN_OVER.
    Local,
}

/// Settings of cluster mode.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `nats://host:port`.
    pub url: String,
    pub node: String,
    pub lease: Duration,
    pub outage: OutageMode,
    /// Claims and events queued to the cluster thread ([`QUEUE_MAX`]).
    pub queue_max: usize,
}

#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("cannot connect to NATS at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("cluster thread: {0}")]
    Io(#[from] std::io::Error),
}

/// Opaque to the cluster: carried from `claim` back to `claim_done`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTicket {
    pub shard: u16,
    pub slot: u32,
    pub generation: u32,
}

/// What the cluster asks of the local server. Calls come from the cluster
/// thread, in causal order: a `kick` for an id is made after the
/// `claim_done` that granted the session it ends, so the server must apply
/// them in call order (one FIFO queue to the id's home shard).
pub trait NodeHooks: Send + Sync + 'static {
    /// Close the local connection holding `client_id` with CLOSE(TAKEN_OVER),
    /// unless its session is `keep_session`. Must not block for long: the
    /// remote node's reply waits for it, bounded by [`KICK_TIMEOUT`]. The
    /// receiver, if any, fires once the local close is decided; the reply
    /// waits for it (`None`: decided already).
    fn kick(
        &self,
        client_id: u64,
        keep_session: Option<u64>,
    ) -> Option<tokio::sync::oneshot::Receiver<()>>;
    /// Answers a [`ClusterHandle::claim`]: grant the HELLO or refuse it.
    fn claim_done(&self, client_id: u64, ticket: ClaimTicket, granted: bool);
}

pub(crate) enum Command {
    Claim {
        client_id: u64,
        session: u64,
        peer: Option<SocketAddr>,
        ticket: ClaimTicket,
        queued: Instant,
    },
    Event {
        event: Event,
        queued: Instant,
    },
    /// Stop at once, as `kill -9` would: no drain, lease left to lapse.
    Crash,
}

/// The shards' end of the cluster thread. Every call is non-blocking.
pub struct ClusterHandle {
    tx: mpsc::Sender<Command>,
    hooks: Arc<dyn NodeHooks>,
    metrics: ClusterMetrics,
    thread: thread::Running,
}

impl std::fmt::Debug for ClusterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterHandle").finish_non_exhaustive()
    }
}

impl ClusterHandle {
    /// Connects to NATS (bounded), makes sure the buckets exist, and starts
    /// the cluster thread. Fails if NATS cannot be reached at start.
    pub fn start(
        config: ClusterConfig,
        hooks: Arc<dyn NodeHooks>,
        metrics: ClusterMetrics,
    ) -> Result<ClusterHandle, ClusterError> {
        let (tx, rx) = mpsc::channel(config.queue_max.max(1));
        let thread = thread::spawn(config, hooks.clone(), metrics.clone(), rx)?;
        Ok(ClusterHandle {
            tx,
            hooks,
            metrics,
            thread,
        })
    }

    /// Asks the cluster for `client_id`; the answer is `claim_done(ticket, _)`.
    /// A full queue refuses at once (counted).
    pub fn claim(
        &self,
        client_id: u64,
        session: u64,
        peer: Option<SocketAddr>,
        ticket: ClaimTicket,
    ) {
        let cmd = Command::Claim {
            client_id,
            session,
            peer,
            ticket,
            queued: Instant::now(),
        };
        if self.tx.try_send(cmd).is_err() {
            self.metrics.dropped.inc();
            self.metrics.claims_refused.inc();
            self.hooks.claim_done(client_id, ticket, false);
        }
    }

    /// An online/offline transition: published on its subject; an offline
    /// also deletes the directory entry this node wrote for that session.
    pub fn on_event(&self, event: &Event) {
        let cmd = Command::Event {
            event: event.clone(),
            queued: Instant::now(),
        };
        if self.tx.try_send(cmd).is_err() {
            self.metrics.dropped.inc();
        }
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// Drains queued work, removes this node's lease, and stops the thread;
    /// bounded by a few seconds even if NATS is gone.
    pub fn shutdown(self) {
        drop(self.tx);
        self.thread.stop(Duration::from_secs(5));
    }

    /// For tests of node loss: stop the cluster thread the way `kill -9`
    /// would stop the process (no drain, no lease removal, the NATS
    /// connection simply goes), waiting behind already queued work.
    #[doc(hidden)]
    pub fn simulate_crash(self) {
        if self.tx.try_send(Command::Crash).is_ok() {
            self.thread.stop(Duration::from_secs(5));
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
