//! Server settings: command-line flags (clap), the TOML file (serde), their
//! defaults, and validation. Flags override the file; the file overrides the
//! defaults. [`Config::resolve`] is the one place that turns input into a
//! checked [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Deserialize;
use thiserror::Error;

use crate::auth::{AuthMode, KeySpec};
use crate::cluster::{ClusterConfig, OutageMode};
use crate::protocol::{DEFAULT_MAX_PAYLOAD, MIN_MAX_PAYLOAD};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7700";
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TICK: Duration = Duration::from_millis(100);
/// Default takeovers of one client_id per minute (after a burst of 10).
pub const DEFAULT_TAKEOVERS_PER_MIN: u32 = 60;
/// Default `max_connections`: a million and then some.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1 << 20;
/// Smallest and largest tick. Below 1 ms the sweep is no longer coarse.
pub const TICK_MIN: Duration = Duration::from_millis(1);
pub const TICK_MAX: Duration = Duration::from_secs(10);
/// Default and largest `batch_wait`.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(10);
pub const BATCH_WAIT_MAX: Duration = Duration::from_millis(50);
/// Default `rtt_budget`: the most batching may add to a PONG's round trip.
pub const DEFAULT_RTT_BUDGET: Duration = Duration::from_millis(2);
/// Largest timeout in ticks: ages are u32 tick differences and must never
/// come near wrap-around.
pub const TIMEOUT_TICKS_MAX: u64 = 1 << 30;
/// Most shards one process runs.
pub const SHARDS_MAX: usize = 1024;

/// How silence is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Detector {
    /// Evict at `timeout`; nothing before.
    #[default]
    Fixed,
    /// Also suspect (an event, no eviction) when phi accrual crosses
    /// `phi_threshold`; eviction stays at `timeout`.
    Phi,
}

/// How the shards drive io_uring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoMode {
    /// Fast if the kernel has every feature it needs, else compat.
    #[default]
    Auto,
    /// Multishot accept into direct descriptors, multishot recv, buffer ring
    /// (kernel 6.0+). Start-up fails if a feature is missing.
    Fast,
    /// What kernel 5.10 has: single-shot ACCEPT and RECV, PROVIDE_BUFFERS,
    /// regular file descriptors.
    Compat,
}

/// Kernel TCP keepalive, set on the listeners so accepted sockets inherit it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

impl std::str::FromStr for Keepalive {
    type Err = String;

    /// `IDLE,INTVL,CNT`, e.g. `60s,10s,5`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        let [idle, interval, count] = parts[..] else {
            return Err(format!(
                "expected IDLE,INTVL,CNT (e.g. 60s,10s,5), got {s:?}"
            ));
        };
        let dur = |v: &str| humantime::parse_duration(v).map_err(|e| format!("{v:?}: {e}"));
        let keepalive = Keepalive {
            idle: dur(idle)?,
            interval: dur(interval)?,
            count: count.parse().map_err(|e| format!("count {count:?}: {e}"))?,
        };
        if keepalive.idle < Duration::from_secs(1)
            || keepalive.interval < Duration::from_secs(1)
            || keepalive.count == 0
        {
            return Err("keepalive idle and interval must be >= 1s and count >= 1".into());
        }
        Ok(keepalive)
    }
}

fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    s.parse().map_err(|e: crate::auth::KeyError| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (use e.g. 200ms, 3s, 1m)"))
}

/// `ringbeat serve` flags. Every flag is optional so that the TOML file and
/// the defaults can fill what is not given.
#[derive(Args, Debug, Default, Clone)]
pub struct ServeArgs {
    /// Address to listen on (repeatable) [default: 127.0.0.1:7700]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Heartbeat interval offered to clients [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Silence after which a connection is evicted [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Sweep period; eviction is at most one tick late [default: 100ms]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub tick: Option<Duration>,
    /// How long a busy shard may gather completions before it handles them:
    /// one wake-up per batch instead of per packet, used only while the
    /// rate fills it (kernel 6.12+; 0 = off) [default: 10ms, at most tick/4]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub batch_wait: Option<Duration>,
    /// The most batched waits may delay a reply: the batching window adapts
    /// to the completion rate within this (and within --batch-wait, its
    /// hard cap) [default: 2ms]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub rtt_budget: Option<Duration>,
    /// Shards, each with its own ring and listener [default: cores]
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
    /// Threads that drive the shards' rings; fewer than --shards makes each
    /// drive several (one eventfd wakes it) [default: cores]
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Largest frame payload accepted [default: 1024]
    #[arg(long, value_name = "BYTES")]
    pub max_payload: Option<u32>,
    /// Most concurrent connections; more get CLOSE(OVERLOADED) [default: 1048576]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<u32>,
    /// Send a PING to connections silent for one interval
    #[arg(long)]
    pub probe: bool,
    /// Most connections from one IPv4 address; more get CLOSE(LIMITED).
    /// Off by default: carrier NAT puts thousands of phones behind one
    /// address [default: off]
    #[arg(long, value_name = "N")]
    pub max_conns_per_ip: Option<u32>,
    /// Takeovers of one client_id allowed per minute, after a burst of 10;
    /// more get CLOSE(LIMITED) (0 = unlimited) [default: 60]
    #[arg(long, value_name = "N")]
    pub max_takeovers_per_min: Option<u32>,
    /// Hold a client's offline event this long; if its client_id says HELLO
    /// again meanwhile, emit one `resumed` instead of offline + online
    /// [default: 0 = off]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub offline_grace: Option<Duration>,
    /// PINGs a second one connection may keep sending (bursts of 2N+8
    /// pass); past it CLOSE(LIMITED) [default: 0 = off]
    #[arg(long, value_name = "N")]
    pub max_ping_rate: Option<u32>,
    /// fixed (evict at timeout) or phi (also emit `suspect` events when a
    /// connection's silence is unlikely for its own rhythm) [default: fixed]
    #[arg(long, value_enum, value_name = "KIND")]
    pub detector: Option<Detector>,
    /// phi above which a connection is suspected [default: 8]
    #[arg(long, value_name = "PHI")]
    pub phi_threshold: Option<f64>,
    /// Serve Prometheus text at http://ADDR/metrics
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Append online/offline events as JSON lines to PATH
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,
    /// Kernel keepalive on accepted sockets, e.g. 60s,10s,5
    #[arg(long, value_name = "IDLE,INTVL,CNT")]
    pub tcp_keepalive: Option<Keepalive>,
    /// TCP_USER_TIMEOUT on accepted sockets
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub tcp_user_timeout: Option<Duration>,
    /// auto, fast (kernel 6.0+) or compat (kernel 5.10 path) [default: auto]
    #[arg(long, value_enum, value_name = "MODE")]
    pub io_mode: Option<IoMode>,
    /// Verifying key for HELLO tokens, KID=hs256:SECRET_FILE or
    /// KID=eddsa:PUBKEY.pem (repeatable: several kids = key rotation)
    #[arg(long = "auth-key", value_name = "KID=ALG:FILE", value_parser = parse_key_spec)]
    pub auth_key: Vec<KeySpec>,
    /// required, optional or off [default: required with a key, else off]
    #[arg(long, value_enum, value_name = "MODE")]
    pub auth: Option<AuthMode>,
    /// Longest interval a HELLO may ask for [default: --interval, so a
    /// client can shorten its interval but never lengthen it]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub max_interval: Option<Duration>,
    /// Every connection starts with a PROXY protocol v2 header (behind a
    /// load balancer such as haproxy `send-proxy-v2`)
    #[arg(long)]
    pub proxy_protocol: bool,
    /// TOML file with the same keys as the flags (flags win)
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    // --- cluster mode (docs/CLUSTER.md) ---
    /// Join a cluster through NATS JetStream at URL (nats://HOST:PORT)
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's id in the cluster [default: hostname:port of the first listener]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,
    /// Node lease: a node silent this long is lost and its clients go offline [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub cluster_lease: Option<Duration>,
    /// HELLOs with an id while NATS is unreachable: refuse, or accept locally
    /// and reconcile later [default: refuse]
    #[arg(long, value_enum, value_name = "MODE")]
    pub cluster_outage: Option<OutageMode>,
}

/// The TOML file. Keys are the flag names with `_` for `-`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    #[serde(default, with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub tick: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub batch_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub rtt_budget: Option<Duration>,
    pub shards: Option<usize>,
    pub threads: Option<usize>,
    pub max_payload: Option<u32>,
    pub max_connections: Option<u32>,
    pub probe: Option<bool>,
    pub max_conns_per_ip: Option<u32>,
    pub max_takeovers_per_min: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub offline_grace: Option<Duration>,
    pub max_ping_rate: Option<u32>,
    pub detector: Option<Detector>,
    pub phi_threshold: Option<f64>,
    pub metrics: Option<SocketAddr>,
    pub events: Option<PathBuf>,
    pub tcp_keepalive: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub tcp_user_timeout: Option<Duration>,
    pub io_mode: Option<IoMode>,
    #[serde(default, with = "humantime_serde")]
    pub min_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_interval: Option<Duration>,
    pub recv_buffers: Option<u32>,
    pub send_chunks: Option<u32>,
    /// `KID=ALG:FILE` strings, as `--auth-key`.
    pub auth_key: Option<Vec<String>>,
    pub auth: Option<AuthMode>,
    pub proxy_protocol: Option<bool>,
    // --- cluster mode ---
    pub cluster: Option<String>,
    pub node_id: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub cluster_lease: Option<Duration>,
    pub cluster_outage: Option<OutageMode>,
}

/// Bad flags or configuration. The binary prints it on one line and exits 2.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Checked settings of one server.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub interval: Duration,
    pub timeout: Duration,
    pub tick: Duration,
    /// Longest a shard gathers completions before handling them.
    pub batch_wait: Duration,
    /// The most batching may add to a reply (see [`Config::batch_window_cap`]).
    pub rtt_budget: Duration,
    pub shards: usize,
    /// Threads driving the shards' rings; when fewer than `shards`, each
    /// drives several (`shard::group`); more than `shards` are not started.
    pub threads: usize,
    pub max_payload: u32,
    pub max_connections: u32,
    pub probe: bool,
    /// Connections per IPv4 source address (`None`: no limit).
    pub max_conns_per_ip: Option<u32>,
    /// Takeovers of one client_id per minute (0: no limit).
    pub max_takeovers_per_min: u32,
    /// How long an `offline` waits for the same id to come back (0: off).
    pub offline_grace: Duration,
    /// PINGs a second per connection (0: no limit).
    pub max_ping_rate: u32,
    pub detector: Detector,
    pub phi_threshold: f64,
    pub metrics: Option<SocketAddr>,
    pub events: Option<PathBuf>,
    pub tcp_keepalive: Option<Keepalive>,
    pub tcp_user_timeout: Option<Duration>,
    pub io_mode: IoMode,
    /// Smallest and largest interval a HELLO may ask for. `max_interval`
    /// defaults to `interval`: the server owns liveness.
    pub min_interval: Duration,
    pub max_interval: Duration,
    /// HELLO token keys (not yet loaded: see [`crate::auth::Authenticator::from_config`]).
    pub auth_keys: Vec<KeySpec>,
    /// Resolved mode: `Required` if keys are given and no mode is, else `Off`.
    pub auth: AuthMode,
    /// Listeners expect a PROXY protocol v2 header first ([`crate::proxy_v2`]).
    pub proxy_protocol: bool,
    /// Receive buffers per shard (each [`crate::buf_ring::BUF_LEN`] bytes).
    pub recv_buffers: u32,
    /// Send chunks per shard (each [`crate::send_pool::CHUNK_LEN`] bytes).
    pub send_chunks: u32,
    /// Cluster mode, when `--cluster` is given.
    pub cluster: Option<ClusterConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(ServeArgs::default()).expect("defaults are valid")
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl Config {
    /// Merges flags over the file named by `--config` (if any) over defaults,
    /// then validates.
    pub fn resolve(args: ServeArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None => FileConfig::default(),
        };
        let first_listen = (args.listen.first())
            .or(file.listen.as_ref().and_then(|l| l.first()))
            .copied()
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"));
        let cluster = resolve_cluster(&args, &file, first_listen)?;
        let keepalive = match (args.tcp_keepalive, file.tcp_keepalive) {
            (Some(k), _) => Some(k),
            (None, Some(s)) => Some(
                s.parse()
                    .map_err(|e| ConfigError::Invalid(format!("tcp_keepalive: {e}")))?,
            ),
            (None, None) => None,
        };
        let listen = if !args.listen.is_empty() {
            args.listen
        } else {
            file.listen
                .unwrap_or_else(|| vec![DEFAULT_LISTEN.parse().expect("valid default")])
        };
        let tick = args.tick.or(file.tick).unwrap_or(DEFAULT_TICK);
        let interval = args.interval.or(file.interval).unwrap_or(DEFAULT_INTERVAL);
        let auth_keys = if !args.auth_key.is_empty() {
            args.auth_key
        } else {
            let specs = file.auth_key.unwrap_or_default();
            let parsed: Result<Vec<KeySpec>, _> = specs.iter().map(|s| s.parse()).collect();
            parsed.map_err(|e| ConfigError::Invalid(format!("auth_key: {e}")))?
        };
        let auth = args.auth.or(file.auth).unwrap_or(if auth_keys.is_empty() {
            AuthMode::Off
        } else {
            AuthMode::Required
        });
        let config = Config {
            listen,
            interval,
            timeout: args.timeout.or(file.timeout).unwrap_or(DEFAULT_TIMEOUT),
            tick,
            batch_wait: args
                .batch_wait
                .or(file.batch_wait)
                .unwrap_or(DEFAULT_BATCH_WAIT.min(tick / 4)),
            rtt_budget: args
                .rtt_budget
                .or(file.rtt_budget)
                .unwrap_or(DEFAULT_RTT_BUDGET),
            shards: args.shards.or(file.shards).unwrap_or_else(cores),
            threads: args.threads.or(file.threads).unwrap_or_else(cores),
            max_payload: args
                .max_payload
                .or(file.max_payload)
                .unwrap_or(DEFAULT_MAX_PAYLOAD),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            probe: args.probe || file.probe.unwrap_or(false),
            max_conns_per_ip: args.max_conns_per_ip.or(file.max_conns_per_ip),
            max_takeovers_per_min: args
                .max_takeovers_per_min
                .or(file.max_takeovers_per_min)
                .unwrap_or(DEFAULT_TAKEOVERS_PER_MIN),
            offline_grace: args
                .offline_grace
                .or(file.offline_grace)
                .unwrap_or(Duration::ZERO),
            max_ping_rate: args.max_ping_rate.or(file.max_ping_rate).unwrap_or(0),
            detector: args.detector.or(file.detector).unwrap_or_default(),
            phi_threshold: args.phi_threshold.or(file.phi_threshold).unwrap_or(8.0),
            metrics: args.metrics.or(file.metrics),
            events: args.events.or(file.events),
            tcp_keepalive: keepalive,
            tcp_user_timeout: args.tcp_user_timeout.or(file.tcp_user_timeout),
            io_mode: args.io_mode.or(file.io_mode).unwrap_or_default(),
            min_interval: file.min_interval.unwrap_or(Duration::from_millis(100)),
            max_interval: args.max_interval.or(file.max_interval).unwrap_or(interval),
            recv_buffers: file.recv_buffers.unwrap_or(512),
            send_chunks: file.send_chunks.unwrap_or(1024),
            auth_keys,
            auth,
            proxy_protocol: args.proxy_protocol || file.proxy_protocol.unwrap_or(false),
            cluster,
        };
        config.validate()?;
        Ok(config)
    }

    /// The longest batching window a shard may use: the RTT budget, never
    /// more than `--batch-wait` (pass it to `BatchWait::new`).
    pub fn batch_window_cap(&self) -> Duration {
        self.rtt_budget.min(self.batch_wait)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.is_empty() {
            return bad("at least one --listen address is needed".into());
        }
        if !(TICK_MIN..=TICK_MAX).contains(&self.tick) {
            return bad(format!(
                "--tick must be within 1ms..=10s, got {:?}",
                self.tick
            ));
        }
        if self.batch_wait > BATCH_WAIT_MAX || self.batch_wait * 2 > self.tick {
            return bad(format!(
                "--batch-wait must be at most {BATCH_WAIT_MAX:?} and half a --tick, got {:?}",
                self.batch_wait
            ));
        }
        if self.rtt_budget > self.tick {
            return bad(format!(
                "--rtt-budget must be at most a --tick ({:?}), got {:?}",
                self.tick, self.rtt_budget
            ));
        }
        if self.interval < self.tick {
            return bad(format!(
                "--interval ({:?}) must be at least one --tick ({:?})",
                self.interval, self.tick
            ));
        }
        if self.timeout <= self.interval {
            return bad(format!(
                "--timeout ({:?}) must be longer than --interval ({:?})",
                self.timeout, self.interval
            ));
        }
        if self.timeout.as_millis() / self.tick.as_millis() > u128::from(TIMEOUT_TICKS_MAX) {
            return bad("--timeout is too many ticks; raise --tick".into());
        }
        if self.timeout.as_millis() > u128::from(u32::MAX) {
            return bad("--timeout must fit in u32 milliseconds".into());
        }
        if self.min_interval > self.interval || self.max_interval < self.interval {
            return bad("min_interval <= interval <= max_interval must hold".into());
        }
        if self.auth != AuthMode::Off && self.auth_keys.is_empty() {
            return bad(format!(
                "--auth {} needs at least one --auth-key",
                if self.auth == AuthMode::Required {
                    "required"
                } else {
                    "optional"
                }
            ));
        }
        if self.shards == 0 || self.shards > SHARDS_MAX {
            return bad(format!("--shards must be within 1..={SHARDS_MAX}"));
        }
        if self.threads == 0 || self.threads > SHARDS_MAX {
            return bad(format!("--threads must be within 1..={SHARDS_MAX}"));
        }
        if self.max_payload < MIN_MAX_PAYLOAD {
            return bad(format!(
                "--max-payload must be at least {MIN_MAX_PAYLOAD} (a CLOSE with full text)"
            ));
        }
        if self.max_payload > 16 << 20 {
            return bad("--max-payload must be at most 16 MiB".into());
        }
        if !(0.5..=30.0).contains(&self.phi_threshold) {
            return bad(format!(
                "--phi-threshold must be within 0.5..=30, got {}",
                self.phi_threshold
            ));
        }
        if self.offline_grace > Duration::from_secs(3600) {
            return bad(format!(
                "--offline-grace must be at most 1h, got {:?}",
                self.offline_grace
            ));
        }
        if self.max_conns_per_ip == Some(0) {
            return bad("--max-conns-per-ip must be at least 1 (omit it for no limit)".into());
        }
        if self.max_connections == 0 {
            return bad("--max-connections must be at least 1".into());
        }
        if !(16..=1 << 15).contains(&self.recv_buffers) || !self.recv_buffers.is_power_of_two() {
            return bad("recv_buffers must be a power of two within 16..=32768".into());
        }
        if !(16..=1 << 20).contains(&self.send_chunks) {
            return bad("send_chunks must be within 16..=1048576".into());
        }
        Ok(())
    }

    /// Timeout over interval: a HELLO's interval keeps this ratio.
    pub fn timeout_ratio(&self) -> f64 {
        self.timeout.as_secs_f64() / self.interval.as_secs_f64()
    }
}

// --- cluster mode ---

/// Shortest `--cluster-lease`: refreshes every lease/3 must stay well above
/// a NATS round trip.
pub const CLUSTER_LEASE_MIN: Duration = Duration::from_millis(300);

/// The cluster settings, or `None` without `--cluster`.
fn resolve_cluster(
    args: &ServeArgs,
    file: &FileConfig,
    first_listen: SocketAddr,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(url) = args.cluster.clone().or_else(|| file.cluster.clone()) else {
        return Ok(None);
    };
    if !(url.starts_with("nats://") || url.starts_with("tls://")) {
        return Err(ConfigError::Invalid(format!(
            "--cluster must be nats://HOST:PORT, got {url:?}"
        )));
    }
    let lease = args
        .cluster_lease
        .or(file.cluster_lease)
        .unwrap_or(crate::cluster::DEFAULT_LEASE);
    if lease < CLUSTER_LEASE_MIN {
        return Err(ConfigError::Invalid(format!(
            "--cluster-lease must be at least {CLUSTER_LEASE_MIN:?}"
        )));
    }
    let node = match args.node_id.clone().or_else(|| file.node_id.clone()) {
        Some(n) if !n.is_empty() => n,
        Some(_) => return Err(ConfigError::Invalid("--node-id must not be empty".into())),
        None => default_node_id(first_listen),
    };
    Ok(Some(ClusterConfig {
        url,
        node,
        lease,
        outage: args
            .cluster_outage
            .or(file.cluster_outage)
            .unwrap_or_default(),
        queue_max: crate::cluster::QUEUE_MAX,
    }))
}

/// `hostname:port` of the first listener.
fn default_node_id(first_listen: SocketAddr) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{host}:{}", first_listen.port())
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

#[cfg(test)]
mod tests;
