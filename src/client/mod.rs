//! The ringbeat client library: keeps one session with a ringbeat server,
//! notices when the server or the path has died, and comes back without a
//! thundering herd.
//!
//! - [`machine`]: the protocol and every timer (ping schedule, PONG deadlines,
//!   handshake deadline, backoff) as a sans-IO state machine on a
//!   millisecond clock that the caller supplies. Tests drive it with a
//!   simulated clock.
//! - [`Client`] ([`blocking`]): a std driver on a background thread.
//! - `AsyncClient` (`asynchronous`, feature `async-client`): a tokio driver.
//!
//! Both drivers report [`ClientEvent`]s: `Connected`, `Disconnected(reason)`,
//! `Reconnecting { attempt, delay_ms }`, `ConnectFailed`, `Data` and a final
//! `Stopped`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::protocol::{CloseReason, ProtocolError, DEFAULT_MAX_PAYLOAD};

#[cfg(feature = "async-client")]
pub mod asynchronous;
pub mod backoff;
pub mod blocking;
pub mod machine;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg(feature = "async-client")]
pub use asynchronous::AsyncClient;
pub use backoff::{Backoff, Jitter};
pub use blocking::Client;
pub use machine::{Machine, Output};

/// Default TCP connect plus HELLO → WELCOME deadline.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where HELLO's token comes from (PROTOCOL.md, Authentication). Its
/// `Debug` never shows the token.
#[derive(Clone)]
pub enum TokenSource {
    /// The same token on every connect.
    Fixed(String),
    /// Called once per (re)connect, so a long-lived client can hand out a
    /// fresh token before the old one expires.
    Provider(Arc<dyn Fn() -> String + Send + Sync>),
}

impl TokenSource {
    /// The token for the connect starting now.
    pub fn current(&self) -> String {
        match self {
            TokenSource::Fixed(t) => t.clone(),
            TokenSource::Provider(f) => f(),
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Fixed(_) => f.write_str("Fixed(<redacted>)"),
            TokenSource::Provider(_) => f.write_str("Provider(<fn>)"),
        }
    }
}

/// How a client connects and keeps its session.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `host:port` of the server; resolved again on every attempt.
    pub server: String,
    /// Sent in HELLO; 0 is anonymous. A non-zero id held by another live
    /// connection is taken over (PROTOCOL.md "Takeover").
    pub client_id: u64,
    /// Interval to ask for in HELLO; `None` takes the server's default. The
    /// server clamps it; the client adopts what WELCOME says.
    pub interval: Option<Duration>,
    /// How long a PING may wait for its PONG before the server is declared
    /// dead; `None` uses the interval from WELCOME.
    pub pong_timeout: Option<Duration>,
    /// Deadline for TCP connect, and again for HELLO → WELCOME.
    pub connect_timeout: Duration,
    /// Largest DATA payload this client sends or accepts (the server's
    /// `max_payload`, default 1024).
    pub max_payload: u32,
    pub backoff: Backoff,
    /// Reconnect after CLOSE(TAKEN_OVER). Off by default: the newer
    /// connection with the same `client_id` should win, not flap with us.
    pub reconnect_on_takeover: bool,
    /// Seed of the backoff jitter; `None` draws one per client.
    pub seed: Option<u64>,
    /// HELLO's token, for servers that require authentication.
    pub token: Option<TokenSource>,
    /// TLS to the server (feature `tls`); `None` is plain TCP.
    #[cfg(feature = "tls")]
    pub tls: Option<tls::TlsConfig>,
}

impl ClientConfig {
    pub fn new(server: impl Into<String>) -> ClientConfig {
        ClientConfig {
            server: server.into(),
            client_id: 0,
            interval: None,
            pong_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_payload: DEFAULT_MAX_PAYLOAD,
            backoff: Backoff::default(),
            reconnect_on_takeover: false,
            seed: None,
            token: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Sends `token` in every HELLO.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(TokenSource::Fixed(token.into()));
        self
    }

    /// Calls `provider` for each (re)connect and sends what it returns.
    pub fn token_provider(mut self, provider: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.token = Some(TokenSource::Provider(Arc::new(provider)));
        self
    }

    /// Connects over TLS (feature `tls`).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: tls::TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    pub fn client_id(mut self, client_id: u64) -> Self {
        self.client_id = client_id;
        self
    }

    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = Some(interval);
        self
    }

    pub fn pong_timeout(mut self, pong_timeout: Duration) -> Self {
        self.pong_timeout = Some(pong_timeout);
        self
    }

    pub fn connect_timeout(mut self, connect_timeout: Duration) -> Self {
        self.connect_timeout = connect_timeout;
        self
    }

    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// What a client tells its application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A session began: WELCOME arrived. The client pings every
    /// `interval_ms`; the server evicts it after `timeout_ms` of silence.
    Connected {
        session: u64,
        interval_ms: u32,
        timeout_ms: u32,
    },
    /// A session (one that had reached `Connected`) ended.
    Disconnected { reason: DisconnectReason },
    /// An attempt failed before WELCOME (refused, timed out, closed).
    ConnectFailed { reason: DisconnectReason },
    /// The next attempt starts after `delay_ms`; `attempt` counts from 1
    /// since the last session.
    Reconnecting { attempt: u32, delay_ms: u64 },
    /// DATA from the server.
    Data(Vec<u8>),
    /// The client will not connect again; the last event.
    Stopped { reason: StopReason },
}

/// Why a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisconnectReason {
    /// A PING's PONG missed its deadline: the server or the path is dead.
    PongTimeout,
    /// No WELCOME within `connect_timeout` after HELLO.
    HandshakeTimeout,
    /// The server sent CLOSE with this reason code (PROTOCOL.md table).
    ServerClosed { reason: u16 },
    /// The server closed the TCP connection without CLOSE.
    Eof,
    /// A socket error: refused, reset, timed out...
    Io(std::io::ErrorKind),
    /// The server broke the protocol; the client sent CLOSE(PROTOCOL_ERROR).
    Protocol(ProtocolError),
    /// The application closed the client.
    Local,
}

impl DisconnectReason {
    /// The CLOSE reason the server gave, if it gave one this version names.
    pub fn close_reason(&self) -> Option<CloseReason> {
        match self {
            DisconnectReason::ServerClosed { reason } => CloseReason::from_code(*reason),
            _ => None,
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PongTimeout => f.write_str("no PONG before the deadline"),
            DisconnectReason::HandshakeTimeout => f.write_str("no WELCOME before the deadline"),
            DisconnectReason::ServerClosed { reason } => match CloseReason::from_code(*reason) {
                Some(r) => write!(f, "server sent CLOSE({})", r.name()),
                None => write!(f, "server sent CLOSE({reason})"),
            },
            DisconnectReason::Eof => f.write_str("server closed the connection"),
            DisconnectReason::Io(kind) => write!(f, "socket error: {kind}"),
            DisconnectReason::Protocol(e) => write!(f, "protocol error: {e}"),
            DisconnectReason::Local => f.write_str("closed by the application"),
        }
    }
}

/// Why a client stopped for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The application closed it.
    Closed,
    /// A newer connection took over this `client_id`.
    TakenOver,
    /// `max_attempts` consecutive attempts failed.
    GaveUp { attempts: u32 },
    /// The server answered CLOSE(UNAUTHORIZED): it will not accept this
    /// token for this `client_id`, so retrying would only hammer it. Fix the
    /// token (or its provider) and start a new client.
    Unauthorized,
    /// The token source gave more than [`crate::protocol::TOKEN_MAX`] bytes.
    TokenTooLong { len: usize },
}

/// Errors from the client API.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("not connected")]
    NotConnected,
    #[error("payload of {len} bytes over max_payload {max}")]
    TooLarge { len: usize, max: u32 },
    #[error("the client has stopped")]
    Stopped,
}

/// Whether a DATA payload may be handed to the driver now: both drivers
/// refuse it the same way before it reaches their command channel.
fn check_send(payload: &[u8], max_payload: u32, live: &AtomicBool) -> Result<(), ClientError> {
    if payload.len() > max_payload as usize {
        return Err(ClientError::TooLarge {
            len: payload.len(),
            max: max_payload,
        });
    }
    if !live.load(Ordering::Acquire) {
        return Err(ClientError::NotConnected);
    }
    Ok(())
}

/// What both drivers do with an event before the application gets it: log
/// it and keep the `is_live` flag in step.
fn observe(event: &ClientEvent, live: &AtomicBool, server: &str) {
    match event {
        ClientEvent::Connected { session, .. } => {
            tracing::info!(session, server = %server, "connected");
            live.store(true, Ordering::Release);
        }
        ClientEvent::Disconnected { reason } => {
            if *reason == DisconnectReason::Local {
                tracing::info!(%reason, "disconnected");
            } else {
                tracing::warn!(%reason, "disconnected");
            }
            live.store(false, Ordering::Release);
        }
        ClientEvent::ConnectFailed { reason } => tracing::debug!(%reason, "connect failed"),
        ClientEvent::Reconnecting { attempt, delay_ms } => {
            tracing::info!(attempt, delay_ms, "reconnecting");
        }
        ClientEvent::Stopped {
            reason: reason @ (StopReason::Unauthorized | StopReason::TokenTooLong { .. }),
        } => tracing::error!(?reason, "stopped: the server will not accept this token"),
        ClientEvent::Stopped { reason } => tracing::info!(?reason, "stopped"),
        ClientEvent::Data(_) => {}
    }
}
