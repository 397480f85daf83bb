//! The client's protocol and timers as a sans-IO state machine: no sockets,
//! no clock reads. A driver feeds it what happened (`connected`, `received`,
//! `transport_lost`, the time) and carries out what it asks (`Output`).
//!
//! Time is milliseconds on a clock the driver owns (`now_ms`, monotonic,
//! usually "since the client started"); tests use a simulated one.
//!
//! ```text
//!  Idle ─start─▶ Connecting ─connected─▶ Handshaking ─WELCOME─▶ Live
//!                   ▲  │ failed              │ timeout/close/EOF   │ PONG miss,
//!                   │  ▼                     ▼                     │ CLOSE, EOF
//!                   └─ Waiting (backoff) ◀──────────────────────────┘
//!  any ─close / TAKEN_OVER / UNAUTHORIZED / max attempts─▶ Stopped
//! ```
//!
//! Server verdicts: CLOSE(UNAUTHORIZED) stops the client (the same token
//! would be refused again: no reconnect loop). CLOSE(LIMITED) counts as a
//! failed attempt, so the backoff grows, and doubles the interval the next
//! HELLO asks for (as gRPC clients do after `too_many_pings`), up to
//! [`LIMITED_INTERVAL_MAX_MS`].
//!
//! The dead-server rule: every PING gets a deadline `pong_timeout` after it
//! is sent; its PONG (or a later one: the server answers in order) cancels
//! it; the first deadline that passes declares the server dead. With PINGs
//! every `interval`, a server that falls silent at `t` is declared dead no
//! earlier than `t + pong_timeout` and no later than
//! `t + interval + pong_timeout` (property-tested below).

use std::collections::VecDeque;

use super::backoff::{Backoff, Jitter};
use super::{ClientConfig, ClientError, ClientEvent, DisconnectReason, StopReason, TokenSource};
use crate::protocol::{
    close_frame, data_frame, hello_frame_with_token, ping_frame, pong_frame, CloseReason, Decoder,
    Kind, OwnedFrame, ProtocolError, TOKEN_MAX,
};

/// Most PINGs awaiting a PONG at once; `pong_timeout` is clamped to this
/// many intervals so the queue below has a static bound.
pub const PINGS_OUTSTANDING_MAX: u64 = 64;
/// Longest interval CLOSE(LIMITED) doublings ask for.
pub const LIMITED_INTERVAL_MAX_MS: u32 = 3_600_000;

/// What the driver must do next, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Open a TCP connection to the server, then call `connected` or
    /// `connect_failed`.
    Connect,
    /// Write these bytes to the current connection.
    Transmit(Vec<u8>),
    /// Close the current connection (after the bytes queued before this).
    Disconnect,
    /// Tell the application.
    Event(ClientEvent),
}

/// Where the machine is, for drivers and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Idle,
    Connecting,
    Handshaking,
    Live,
    Waiting,
    Stopped,
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    seq: u64,
    sent_ms: u64,
    deadline_ms: u64,
}

#[derive(Debug)]
struct Live {
    session: u64,
    interval_ms: u64,
    pong_timeout_ms: u64,
    next_ping_ms: u64,
    pings: VecDeque<Outstanding>,
}

#[derive(Debug)]
enum State {
    Idle,
    Connecting,
    Handshaking { deadline_ms: u64 },
    Live(Live),
    Waiting { until_ms: u64 },
    Stopped,
}

/// What a timer firing means; computed first so `self` is free to change.
enum Due {
    Nothing,
    Lost(DisconnectReason),
    Attempt,
    Ping,
}

/// One client's protocol state and timers.
#[derive(Debug)]
pub struct Machine {
    client_id: u64,
    requested_interval_ms: u32,
    pong_timeout_ms: Option<u64>,
    connect_timeout_ms: u64,
    max_payload: u32,
    backoff: Backoff,
    reconnect_on_takeover: bool,
    token: Option<TokenSource>,
    /// The interval of the last WELCOME, the base for a LIMITED doubling.
    granted_interval_ms: u32,
    jitter: Jitter,
    state: State,
    /// Consecutive attempts that did not reach WELCOME.
    failures: u32,
    next_seq: u64,
    last_rtt_ms: Option<u64>,
    decoder: Decoder,
    out: VecDeque<Output>,
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Machine {
    pub fn new(config: &ClientConfig) -> Machine {
        let seed = config
            .seed
            .unwrap_or_else(|| Jitter::seed_from_environment(config.client_id));
        Machine {
            client_id: config.client_id,
            requested_interval_ms: config.interval.map_or(0, |d| {
                u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
            }),
            pong_timeout_ms: config.pong_timeout.map(|d| ms(d).max(1)),
            connect_timeout_ms: ms(config.connect_timeout).max(1),
            max_payload: config.max_payload,
            backoff: config.backoff,
            reconnect_on_takeover: config.reconnect_on_takeover,
            token: config.token.clone(),
            granted_interval_ms: 0,
            jitter: Jitter::new(seed),
            state: State::Idle,
            failures: 0,
            next_seq: 0,
            last_rtt_ms: None,
            decoder: Decoder::new(config.max_payload),
            out: VecDeque::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            State::Idle => Phase::Idle,
            State::Connecting => Phase::Connecting,
            State::Handshaking { .. } => Phase::Handshaking,
            State::Live(_) => Phase::Live,
            State::Waiting { .. } => Phase::Waiting,
            State::Stopped => Phase::Stopped,
        }
    }

    /// The session id from WELCOME while live.
    pub fn session(&self) -> Option<u64> {
        match &self.state {
            State::Live(live) => Some(live.session),
            _ => None,
        }
    }

    /// The interval the next HELLO asks for (0 = the server's default).
    pub fn requested_interval_ms(&self) -> u32 {
        self.requested_interval_ms
    }

    /// Round trip of the last answered PING.
    pub fn last_rtt_ms(&self) -> Option<u64> {
        self.last_rtt_ms
    }

    /// PINGs sent and not yet answered.
    pub fn pings_outstanding(&self) -> usize {
        match &self.state {
            State::Live(live) => live.pings.len(),
            _ => 0,
        }
    }

    /// The next thing the driver must do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` must next be called, if a timer is running.
    pub fn poll_timeout(&self) -> Option<u64> {
        match &self.state {
            State::Handshaking { deadline_ms } => Some(*deadline_ms),
            State::Waiting { until_ms } => Some(*until_ms),
            State::Live(live) => Some(match live.pings.front() {
                Some(p) => p.deadline_ms.min(live.next_ping_ms),
                None => live.next_ping_ms,
            }),
            State::Idle | State::Connecting | State::Stopped => None,
        }
    }

    /// Begins the first attempt.
    pub fn start(&mut self, _now_ms: u64) {
        assert!(matches!(self.state, State::Idle), "start called twice");
        self.begin_attempt();
    }

    fn begin_attempt(&mut self) {
        self.state = State::Connecting;
        self.out.push_back(Output::Connect);
    }

    /// The TCP connection asked for by `Output::Connect` is open.
    pub fn connected(&mut self, now_ms: u64) {
        match self.state {
            State::Connecting => {}
            // Closed while connecting: drop the new socket.
            State::Stopped => return self.out.push_back(Output::Disconnect),
            _ => {
                debug_assert!(false, "connected() without Output::Connect");
                return;
            }
        }
        self.decoder = Decoder::new(self.max_payload);
        self.state = State::Handshaking {
            deadline_ms: now_ms.saturating_add(self.connect_timeout_ms),
        };
        let token = self
            .token
            .as_ref()
            .map(TokenSource::current)
            .unwrap_or_default();
        match hello_frame_with_token(self.client_id, self.requested_interval_ms, token.as_bytes()) {
            Ok(hello) => self.out.push_back(Output::Transmit(hello)),
            Err(_) => {
                debug_assert!(token.len() > TOKEN_MAX);
                self.out.push_back(Output::Disconnect);
                self.stop(StopReason::TokenTooLong { len: token.len() });
            }
        }
    }

    /// The attempt asked for by `Output::Connect` failed.
    pub fn connect_failed(&mut self, now_ms: u64, reason: DisconnectReason) {
        if matches!(self.state, State::Connecting) {
            self.lost(now_ms, reason);
        }
    }

    /// The current connection ended (EOF, reset, write error).
    pub fn transport_lost(&mut self, now_ms: u64, reason: DisconnectReason) {
        if matches!(self.state, State::Handshaking { .. } | State::Live(_)) {
            self.lost(now_ms, reason);
        }
    }

    /// Bytes read from the current connection.
    pub fn received(&mut self, now_ms: u64, bytes: &[u8]) {
        if !self.has_connection() {
            return;
        }
        self.decoder.feed(bytes);
        while self.has_connection() {
            match self.decoder.next_frame() {
                Ok(Some(frame)) => self.on_frame(now_ms, frame),
                Ok(None) => break,
                Err(e) => self.protocol_error(now_ms, e),
            }
        }
    }

    /// Queues a DATA frame on the live session.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let too_large = ClientError::TooLarge {
            len: payload.len(),
            max: self.max_payload,
        };
        match self.state {
            State::Stopped => return Err(ClientError::Stopped),
            State::Live(_) => {}
            _ => return Err(ClientError::NotConnected),
        }
        let frame = data_frame(payload, self.max_payload).map_err(|_| too_large)?;
        self.out.push_back(Output::Transmit(frame));
        Ok(())
    }

    /// Says goodbye (CLOSE(NORMAL)) and stops for good.
    pub fn close(&mut self, _now_ms: u64) {
        if matches!(self.state, State::Stopped) {
            return;
        }
        if self.has_connection() {
            let bye = close_frame(CloseReason::Normal, CloseReason::Normal.text());
            self.out.push_back(Output::Transmit(bye));
            self.out.push_back(Output::Disconnect);
        }
        if matches!(self.state, State::Live(_)) {
            self.event(ClientEvent::Disconnected {
                reason: DisconnectReason::Local,
            });
        }
        self.stop(StopReason::Closed);
    }

    /// Fires every timer that is due at `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // A ping that is due and a deadline that passed can both be pending
        // after a long stall; the loop settles them in order.
        loop {
            match self.due(now_ms) {
                Due::Nothing => return,
                Due::Lost(reason) => self.lost(now_ms, reason),
                Due::Attempt => self.begin_attempt(),
                Due::Ping => self.send_ping(now_ms),
            }
        }
    }

    fn due(&self, now_ms: u64) -> Due {
        match &self.state {
            State::Handshaking { deadline_ms } if now_ms >= *deadline_ms => {
                Due::Lost(DisconnectReason::HandshakeTimeout)
            }
            State::Waiting { until_ms } if now_ms >= *until_ms => Due::Attempt,
            State::Live(live) => {
                if live.pings.front().is_some_and(|p| now_ms >= p.deadline_ms) {
                    Due::Lost(DisconnectReason::PongTimeout)
                } else if now_ms >= live.next_ping_ms {
                    Due::Ping
                } else {
                    Due::Nothing
                }
            }
            _ => Due::Nothing,
        }
    }

    fn send_ping(&mut self, now_ms: u64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let State::Live(live) = &mut self.state else {
            unreachable!("pings are sent only while live")
        };
        live.pings.push_back(Outstanding {
            seq,
            sent_ms: now_ms,
            deadline_ms: now_ms.saturating_add(live.pong_timeout_ms),
        });
        assert!(live.pings.len() as u64 <= PINGS_OUTSTANDING_MAX + 1);
        // Keep the schedule (no drift) unless we fell a whole interval behind.
        live.next_ping_ms += live.interval_ms;
        if live.next_ping_ms <= now_ms {
            live.next_ping_ms = now_ms + live.interval_ms;
        }
        let ping = ping_frame(seq.to_be_bytes());
        self.out.push_back(Output::Transmit(ping.to_vec()));
    }

    fn has_connection(&self) -> bool {
        matches!(self.state, State::Handshaking { .. } | State::Live(_))
    }

    fn event(&mut self, event: ClientEvent) {
        self.out.push_back(Output::Event(event));
    }

    fn on_frame(&mut self, now_ms: u64, frame: OwnedFrame) {
        match frame {
            OwnedFrame::Ping(payload) => {
                self.out
                    .push_back(Output::Transmit(pong_frame(payload).to_vec()));
            }
            OwnedFrame::Pong(payload) => self.on_pong(now_ms, u64::from_be_bytes(payload)),
            OwnedFrame::Welcome {
                session,
                interval_ms,
                timeout_ms,
            } => self.on_welcome(now_ms, session, interval_ms, timeout_ms),
            OwnedFrame::Data(data) => self.event(ClientEvent::Data(data)),
            OwnedFrame::Close { reason, .. } => {
                self.lost(now_ms, DisconnectReason::ServerClosed { reason });
            }
            OwnedFrame::Hello { .. } => {
                self.protocol_error(now_ms, ProtocolError::WrongDirection(Kind::Hello));
            }
        }
    }

    fn on_welcome(&mut self, now_ms: u64, session: u64, interval_ms: u32, timeout_ms: u32) {
        if !matches!(self.state, State::Handshaking { .. }) {
            tracing::debug!(session, "ignoring a second WELCOME");
            return;
        }
        let interval = u64::from(interval_ms.max(1));
        let pong_timeout = self
            .pong_timeout_ms
            .unwrap_or(interval)
            .min(interval * PINGS_OUTSTANDING_MAX);
        self.granted_interval_ms = interval_ms;
        self.state = State::Live(Live {
            session,
            interval_ms: interval,
            pong_timeout_ms: pong_timeout,
            next_ping_ms: now_ms + interval,
            pings: VecDeque::new(),
        });
        self.failures = 0;
        self.event(ClientEvent::Connected {
            session,
            interval_ms,
            timeout_ms,
        });
    }

    /// A PONG answers its PING and, the server replying in order, every
    /// older one too.
    fn on_pong(&mut self, now_ms: u64, seq: u64) {
        let State::Live(live) = &mut self.state else {
            return;
        };
        while let Some(front) = live.pings.front().copied() {
            if front.seq > seq {
                break;
            }
            live.pings.pop_front();
            if front.seq == seq {
                self.last_rtt_ms = Some(now_ms.saturating_sub(front.sent_ms));
            }
        }
    }

    fn protocol_error(&mut self, now_ms: u64, error: ProtocolError) {
        let reason = error.close_reason();
        let text = error.to_string();
        self.out
            .push_back(Output::Transmit(close_frame(reason, &text)));
        self.lost(now_ms, DisconnectReason::Protocol(error));
    }

    /// The connection or the attempt ended: report it, then back off, or
    /// stop if this was a takeover or the last allowed attempt.
    fn lost(&mut self, now_ms: u64, reason: DisconnectReason) {
        if self.has_connection() {
            self.out.push_back(Output::Disconnect);
        }
        let verdict = reason.close_reason();
        let limited = verdict == Some(CloseReason::Limited);
        if matches!(self.state, State::Live(_)) {
            self.event(ClientEvent::Disconnected { reason });
        } else {
            self.failures = self.failures.saturating_add(1);
            self.event(ClientEvent::ConnectFailed { reason });
        }
        match verdict {
            Some(CloseReason::TakenOver) if !self.reconnect_on_takeover => {
                return self.stop(StopReason::TakenOver)
            }
            Some(CloseReason::Unauthorized) => return self.stop(StopReason::Unauthorized),
            _ => {}
        }
        if limited {
            self.on_limited();
        }
        if self.backoff.exhausted(self.failures) {
            let attempts = self.failures;
            return self.stop(StopReason::GaveUp { attempts });
        }
        let delay_ms = self.backoff.delay_ms(self.failures, &mut self.jitter);
        self.state = State::Waiting {
            until_ms: now_ms.saturating_add(delay_ms),
        };
        self.event(ClientEvent::Reconnecting {
            attempt: self.failures + 1,
            delay_ms,
        });
    }

    /// CLOSE(LIMITED): ask for twice the interval next time, and make sure
    /// the backoff counts this as a failure even after a live session.
    fn on_limited(&mut self) {
        if self.failures == 0 {
            self.failures = 1;
        }
        let base = match self.requested_interval_ms {
            0 => self.granted_interval_ms,
            r => r.max(self.granted_interval_ms),
        };
        if base == 0 {
            return; // never welcomed and no request: nothing to double yet
        }
        self.requested_interval_ms = base.saturating_mul(2).clamp(1, LIMITED_INTERVAL_MAX_MS);
    }

    fn stop(&mut self, reason: StopReason) {
        self.state = State::Stopped;
        self.event(ClientEvent::Stopped { reason });
    }
}

#[cfg(test)]
mod tests;
