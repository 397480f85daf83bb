//! One worker's simulated clients as flat arrays, and everything they decide
//! without I/O: what to send when a client is due, and what received bytes
//! mean. The worker (`worker`) only moves bytes.

use super::detect::RosterEntry;
use super::jitter::{JitterModel, Profile};
use super::mix::Scenario;
use super::mqtt;
use super::report::Tally;
use crate::protocol::{self, CloseReason, Kind, HEADER_LEN};

/// Bytes of each inbound frame a client keeps: a header and a fixed
/// payload (WELCOME is the largest); the rest of a longer frame is skipped.
const KEEP: usize = 24;
/// Time between the bytes of a dribbled PING.
pub const DRIBBLE_STEP_NS: u64 = 10_000_000;

/// What the clients speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Wire {
    /// ringbeat frames (PROTOCOL.md): PING/PONG carrying the send time.
    Ringbeat,
    /// MQTT 3.1.1: CONNECT with a keepalive, then PINGREQ/PINGRESP.
    Mqtt,
}

/// Lifecycle of a simulated client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    Idle = 0,
    Connecting = 1,
    Live = 2,
    /// Told the server goodbye (or sent garbage); waiting for its EOF.
    Closing = 3,
    Done = 4,
}

mod flag {
    pub const PING_OUTSTANDING: u8 = 1 << 0;
    pub const FAULTED: u8 = 1 << 1;
    pub const GOT_CLOSE: u8 = 1 << 2;
    /// MQTT: the broker accepted the session (CONNACK 0).
    pub const SESSION: u8 = 1 << 3;
}

/// Timing the clients follow and judge the server by.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub interval_ns: u64,
    /// ± this fraction of the interval, uniformly.
    pub jitter: f64,
    pub fault_after_ns: u64,
    /// No fault before this time (since the run started).
    pub fault_not_before_ns: u64,
    pub server_timeout_ns: u64,
    pub server_tick_ns: u64,
    /// Allowance on the detection bound for measuring from this side
    /// (see [`super::report::Tally::detection`]).
    pub slack_ns: u64,
    /// Jittery, bursty and flapping clients (`--jitter-ms`,
    /// `--delay-episodes`, `--flap`).
    pub model: JitterModel,
}

/// What the worker must do for a client that came due.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send these bytes, then call again at `next_ns`.
    Send {
        bytes: Vec<u8>,
        next_ns: Option<u64>,
    },
    /// Abort the connection (SO_LINGER 0 was set at creation).
    Reset,
    /// Close the connection (a flapper): the next slot reconnects with
    /// the same client_id `gap_ns` later.
    Flap { gap_ns: u64 },
    /// Nothing more, ever (silent, or no longer live).
    Nothing,
}

/// How far reassembly of an inbound frame has got.
enum Need {
    /// Keep this many bytes before asking again.
    Bytes(usize),
    /// The whole frame is this long.
    Frame(usize),
    /// Not a valid header.
    Invalid,
}

/// What received bytes asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// Answer a server PING.
    Pong([u8; 8]),
    /// The server closed the conversation (CLOSE frame or a bad frame).
    Close,
}

/// Flat per-client arrays (about 50 bytes a client).
#[derive(Debug)]
pub struct Clients {
    wire: Wire,
    pub state: Vec<ClientState>,
    pub scenario: Vec<Scenario>,
    flags: Vec<u8>,
    /// When the client last sent a complete frame (detection starts here).
    pub last_sent_ns: Vec<u64>,
    /// When the last send completed: its bytes had left for the kernel
    /// (the time eviction attribution judges by; 0 = none yet).
    pub last_left_ns: Vec<u64>,
    /// When the next PING is scheduled (0 = not scheduled by the wheel).
    due_ns: Vec<u64>,
    pub fault_at_ns: Vec<u64>,
    partial: Vec<[u8; KEEP]>,
    partial_len: Vec<u8>,
    skip: Vec<u32>,
    /// Bytes of the current dribbled PING already sent.
    dribble_pos: Vec<u8>,
    pub send_head: Vec<u32>,
    /// How each healthy client keeps its schedule ([`JitterModel`]).
    pub profile: Vec<Profile>,
    /// PINGs a bursty client held back, sent with its next one.
    held: Vec<u8>,
    /// When the connect completed (0 = never).
    pub connected_ns: Vec<u64>,
}

impl Clients {
    pub fn new(scenarios: Vec<Scenario>, wire: Wire) -> Clients {
        let n = scenarios.len();
        Clients {
            wire,
            state: vec![ClientState::Idle; n],
            scenario: scenarios,
            flags: vec![0; n],
            last_sent_ns: vec![0; n],
            last_left_ns: vec![0; n],
            due_ns: vec![0; n],
            fault_at_ns: vec![u64::MAX; n],
            partial: vec![[0; KEEP]; n],
            partial_len: vec![0; n],
            skip: vec![0; n],
            dribble_pos: vec![0; n],
            send_head: vec![crate::conn_table::NONE; n],
            profile: vec![Profile::Regular; n],
            held: vec![0; n],
            connected_ns: vec![0; n],
        }
    }

    pub fn len(&self) -> usize {
        self.state.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_empty()
    }

    /// The connect completed: the client is live from `now_ns`.
    pub fn on_connected(&mut self, c: u32, now_ns: u64, timing: &Timing) {
        let i = c as usize;
        self.state[i] = ClientState::Live;
        self.last_sent_ns[i] = now_ns;
        self.last_left_ns[i] = now_ns;
        self.connected_ns[i] = now_ns;
        if self.scenario[i] != Scenario::Healthy || self.profile[i] == Profile::FlapFirst {
            self.fault_at_ns[i] = (now_ns + timing.fault_after_ns).max(timing.fault_not_before_ns);
        }
    }

    /// Client `c` is due at `now_ns`; `unit` is a uniform draw in [0, 1).
    pub fn on_due(
        &mut self,
        c: u32,
        now_ns: u64,
        unit: f64,
        timing: &Timing,
        tally: &mut Tally,
    ) -> Due {
        let i = c as usize;
        if self.state[i] != ClientState::Live {
            return Due::Nothing;
        }
        let faulted = self.flags[i] & flag::FAULTED != 0;
        if !faulted && now_ns >= self.fault_at_ns[i] {
            self.flags[i] |= flag::FAULTED;
            match self.scenario[i] {
                Scenario::Silent => return Due::Nothing,
                Scenario::Reset => {
                    self.state[i] = ClientState::Done;
                    return Due::Reset;
                }
                Scenario::Close => {
                    self.state[i] = ClientState::Closing;
                    let bytes = match self.wire {
                        Wire::Ringbeat => {
                            protocol::close_frame(CloseReason::Normal, "load: goodbye")
                        }
                        Wire::Mqtt => mqtt::DISCONNECT.to_vec(),
                    };
                    return Due::Send {
                        bytes,
                        next_ns: None,
                    };
                }
                Scenario::Garbage => {
                    self.state[i] = ClientState::Closing;
                    let bytes = match self.wire {
                        Wire::Ringbeat => b"GARBAGE!".to_vec(),
                        Wire::Mqtt => mqtt::GARBAGE.to_vec(),
                    };
                    return Due::Send {
                        bytes,
                        next_ns: None,
                    };
                }
                Scenario::Healthy if self.profile[i] == Profile::FlapFirst => {
                    self.state[i] = ClientState::Done;
                    return Due::Flap {
                        gap_ns: timing.model.flap_gap_ns,
                    };
                }
                Scenario::Healthy | Scenario::Dribble => {}
            }
        }
        let dribbling = self.flags[i] & flag::FAULTED != 0 && self.scenario[i] == Scenario::Dribble;
        if dribbling {
            return self.dribble(i, now_ns, unit, timing, tally);
        }
        if self.due_ns[i] != 0 {
            tally.send_lag(now_ns.saturating_sub(self.due_ns[i]));
        }
        self.ping_started(i, now_ns, tally);
        let next_ns = next_ping_ns(now_ns, unit, timing);
        let (extra_ns, held) = timing.model.delay(self.profile[i], next_ns - now_ns, unit);
        let next_ns = next_ns.saturating_add_signed(extra_ns);
        self.due_ns[i] = next_ns;
        let mut bytes = self.ping_bytes(now_ns);
        // A burst: the PINGs held back during the last pause go now too.
        for _ in 0..std::mem::replace(&mut self.held[i], held.min(255) as u8) {
            bytes.extend(self.ping_bytes(now_ns));
        }
        Due::Send {
            bytes,
            next_ns: Some(next_ns),
        }
    }

    /// What detection analysis needs of client `c` (`id` is its client_id),
    /// if it ever connected.
    pub fn roster_entry(&self, c: u32, id: u64) -> Option<RosterEntry> {
        let i = c as usize;
        if self.connected_ns[i] == 0 {
            return None;
        }
        let faulted = self.flags[i] & flag::FAULTED != 0;
        let silent = self.scenario[i] == Scenario::Silent && faulted;
        Some(RosterEntry {
            client_id: id,
            role: if silent {
                "silent"
            } else {
                self.profile[i].name()
            },
            connected_ns: self.connected_ns[i],
            silent_from_ns: silent.then_some(self.last_sent_ns[i]),
            flapped: self.profile[i] == Profile::FlapFirst && faulted,
        })
    }

    /// Client `c`'s first PING is scheduled at `at_ns` (its lag counts from there).
    pub fn set_due(&mut self, c: u32, at_ns: u64) {
        self.due_ns[c as usize] = at_ns;
    }

    /// A send for client `c` completed at `now_ns`: what it carried has
    /// left the load generator.
    pub fn on_send_done(&mut self, c: u32, now_ns: u64) {
        self.last_left_ns[c as usize] = now_ns;
    }

    /// A client meant to stay alive was evicted, seen at `now_ns`.
    fn healthy_evicted(&self, i: usize, now_ns: u64, timing: &Timing, tally: &mut Tally) {
        match attribute(self.last_left_ns[i], now_ns, timing.server_timeout_ns) {
            Fault::Server => tally.false_evictions += 1,
            Fault::LateClient => {
                tally.late_client_evictions += 1;
                if tally.late_evicted.len() < super::report::LATE_KEPT_MAX {
                    tally.late_evicted.push((i as u64, self.last_left_ns[i]));
                } else {
                    tally.late_unkept += 1;
                }
            }
        }
    }

    /// A heartbeat sent at `sent_ns`. A ringbeat PING carries its send time
    /// for the RTT; PINGREQ carries nothing, so MQTT RTTs use `last_sent_ns`.
    fn ping_bytes(&self, sent_ns: u64) -> Vec<u8> {
        match self.wire {
            Wire::Ringbeat => protocol::ping_frame(sent_ns.to_be_bytes()).to_vec(),
            Wire::Mqtt => mqtt::PINGREQ.to_vec(),
        }
    }

    fn ping_started(&mut self, i: usize, now_ns: u64, tally: &mut Tally) {
        if self.flags[i] & flag::PING_OUTSTANDING != 0 {
            tally.heartbeats_lost += 1;
        }
        self.flags[i] |= flag::PING_OUTSTANDING;
        self.last_sent_ns[i] = now_ns;
        tally.heartbeats_sent += 1;
    }

    /// One byte of a PING; the next byte one step later, the next PING an
    /// interval after this one started.
    fn dribble(
        &mut self,
        i: usize,
        now_ns: u64,
        unit: f64,
        timing: &Timing,
        tally: &mut Tally,
    ) -> Due {
        let pos = self.dribble_pos[i];
        if pos == 0 {
            self.ping_started(i, now_ns, tally);
        }
        let frame = self.ping_bytes(self.last_sent_ns[i]);
        let byte = frame[usize::from(pos)];
        let next_ns = if usize::from(pos) + 1 < frame.len() {
            self.dribble_pos[i] = pos + 1;
            now_ns + DRIBBLE_STEP_NS
        } else {
            self.dribble_pos[i] = 0;
            let started = self.last_sent_ns[i];
            next_ping_ns(started, unit, timing).max(now_ns + DRIBBLE_STEP_NS)
        };
        Due::Send {
            bytes: vec![byte],
            next_ns: Some(next_ns),
        }
    }

    /// Bytes arrived for client `c`. Replies go to `out`.
    pub fn on_bytes(
        &mut self,
        c: u32,
        mut data: &[u8],
        now_ns: u64,
        timing: &Timing,
        tally: &mut Tally,
        out: &mut Vec<Reply>,
    ) {
        let i = c as usize;
        while !data.is_empty() {
            if self.skip[i] > 0 {
                let n = data.len().min(self.skip[i] as usize);
                self.skip[i] -= n as u32;
                data = &data[n..];
                continue;
            }
            let frame_len = loop {
                match self.frame_len(i) {
                    Need::Bytes(n) => {
                        data = self.take(i, data, n);
                        if usize::from(self.partial_len[i]) < n {
                            return;
                        }
                    }
                    Need::Frame(len) => break len,
                    Need::Invalid => {
                        tally.server_protocol_errors += 1;
                        self.partial_len[i] = 0;
                        out.push(Reply::Close);
                        return;
                    }
                }
            };
            let keep = frame_len.min(KEEP);
            data = self.take(i, data, keep);
            if usize::from(self.partial_len[i]) < keep {
                return;
            }
            self.skip[i] = (frame_len - keep) as u32;
            self.partial_len[i] = 0;
            match self.wire {
                Wire::Ringbeat => self.frame_done(i, keep, now_ns, timing, tally, out),
                Wire::Mqtt => self.packet_done(i, keep, now_ns, tally, out),
            }
        }
    }

    /// Copies from `data` until `want` bytes are kept; returns the rest.
    fn take<'a>(&mut self, i: usize, data: &'a [u8], want: usize) -> &'a [u8] {
        let have = usize::from(self.partial_len[i]);
        let n = want.saturating_sub(have).min(data.len());
        self.partial[i][have..have + n].copy_from_slice(&data[..n]);
        self.partial_len[i] += n as u8;
        &data[n..]
    }

    /// The length of the frame being reassembled, from what is kept of it.
    fn frame_len(&self, i: usize) -> Need {
        let kept = &self.partial[i][..usize::from(self.partial_len[i])];
        match self.wire {
            Wire::Ringbeat => {
                let Some(header) = kept.get(..HEADER_LEN) else {
                    return Need::Bytes(HEADER_LEN);
                };
                match protocol::parse_header(header.try_into().unwrap(), u32::MAX) {
                    Ok(h) => Need::Frame(h.frame_len()),
                    Err(_) => Need::Invalid,
                }
            }
            Wire::Mqtt => match mqtt::fixed_header(kept) {
                Ok(Some(h)) => Need::Frame(h.packet_len()),
                Ok(None) => Need::Bytes(kept.len().max(1) + 1),
                Err(mqtt::MalformedLength) => Need::Invalid,
            },
        }
    }

    /// The first `kept` bytes of a ringbeat frame are in `partial`.
    fn frame_done(
        &mut self,
        i: usize,
        kept: usize,
        now_ns: u64,
        timing: &Timing,
        tally: &mut Tally,
        out: &mut Vec<Reply>,
    ) {
        let header: &[u8; HEADER_LEN] = self.partial[i][..HEADER_LEN].try_into().unwrap();
        let kind = protocol::parse_header(header, u32::MAX)
            .expect("frame_len checked it")
            .kind;
        let payload = &self.partial[i][HEADER_LEN..kept];
        match kind {
            Kind::Pong if payload.len() == 8 => {
                let sent_ns = u64::from_be_bytes(payload.try_into().unwrap());
                self.pong(i, sent_ns, now_ns, tally);
            }
            Kind::Ping if payload.len() == 8 => {
                out.push(Reply::Pong(payload.try_into().unwrap()));
            }
            Kind::Welcome if payload.len() == protocol::WELCOME_LEN => {
                tally.welcomed(now_ns, now_ns.saturating_sub(self.connected_ns[i]));
            }
            Kind::Close if payload.len() >= 2 => {
                let reason = u16::from_be_bytes([payload[0], payload[1]]);
                self.flags[i] |= flag::GOT_CLOSE;
                self.on_server_close(i, reason, now_ns, timing, tally);
                out.push(Reply::Close);
            }
            _ => {}
        }
    }

    /// The first `kept` bytes of an MQTT packet are in `partial`.
    fn packet_done(
        &mut self,
        i: usize,
        kept: usize,
        now_ns: u64,
        tally: &mut Tally,
        out: &mut Vec<Reply>,
    ) {
        let bytes = &self.partial[i][..kept];
        let h = mqtt::fixed_header(bytes)
            .ok()
            .flatten()
            .expect("frame_len checked it");
        match h.packet_type {
            mqtt::PINGRESP => self.pong(i, self.last_sent_ns[i], now_ns, tally),
            mqtt::CONNACK if bytes.get(h.header_len + 1) == Some(&0) => {
                self.flags[i] |= flag::SESSION;
                tally.welcomed(now_ns, now_ns.saturating_sub(self.connected_ns[i]));
            }
            // Return code 0 is "accepted"; anything else closes the session.
            mqtt::CONNACK if bytes.get(h.header_len + 1).is_some_and(|&rc| rc != 0) => {
                tally.count_close_name("mqtt_connack_refused");
                self.flags[i] |= flag::GOT_CLOSE;
                out.push(Reply::Close);
            }
            _ => {}
        }
    }

    /// A heartbeat sent at `sent_ns` was answered.
    fn pong(&mut self, i: usize, sent_ns: u64, now_ns: u64, tally: &mut Tally) {
        self.flags[i] &= !flag::PING_OUTSTANDING;
        tally.heartbeats_answered += 1;
        if self.scenario[i] == Scenario::Healthy && sent_ns <= now_ns {
            tally.rtt((now_ns - sent_ns) / 1_000);
        }
    }

    fn on_server_close(
        &mut self,
        i: usize,
        reason: u16,
        now_ns: u64,
        timing: &Timing,
        tally: &mut Tally,
    ) {
        tally.count_close(reason);
        if reason != CloseReason::Timeout.code() {
            return;
        }
        let scenario = self.scenario[i];
        let faulted = self.flags[i] & flag::FAULTED != 0;
        if scenario == Scenario::Silent && faulted {
            tally.silent_evicted += 1;
            let silent_ns = now_ns.saturating_sub(self.last_sent_ns[i]);
            tally.detection(silent_ns, timing);
        } else {
            self.healthy_evicted(i, now_ns, timing, tally);
        }
    }

    /// The stream ended (EOF or reset) for client `c`.
    pub fn on_eof(&mut self, c: u32, reset: bool, now_ns: u64, timing: &Timing, tally: &mut Tally) {
        let i = c as usize;
        let got_close = self.flags[i] & flag::GOT_CLOSE != 0;
        if !got_close {
            tally.count_close_name(if reset { "reset" } else { "eof" });
            let faulted = self.flags[i] & flag::FAULTED != 0;
            if self.scenario[i] == Scenario::Silent && faulted {
                // Evicted without a readable CLOSE: still a detection.
                tally.silent_evicted += 1;
                tally.detection(now_ns.saturating_sub(self.last_sent_ns[i]), timing);
            } else if self.state[i] == ClientState::Live && self.scenario[i].stays_alive() {
                tally.unexpected_disconnects += 1;
                // An MQTT broker closes a conforming client without a reason
                // on the wire, and keepalive expiry is why it would once the
                // session is up. Before CONNACK it is a failed connect (e.g.
                // the handshake's ACK was dropped by a full accept queue).
                match self.wire {
                    Wire::Mqtt if self.flags[i] & flag::SESSION != 0 => {
                        self.healthy_evicted(i, now_ns, timing, tally);
                    }
                    Wire::Mqtt => tally.count_close_name("mqtt_before_connack"),
                    Wire::Ringbeat => {}
                }
            }
        }
        self.state[i] = ClientState::Done;
    }
}

/// Whose fault an eviction of a client meant to be healthy was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client's last frame had left less than `timeout` before the
    /// eviction was seen: the server evicted a client that kept its promise.
    Server,
    /// The client's last frame left `timeout` or more before: the load
    /// generator fell behind its own schedule.
    LateClient,
}

/// Attributes an eviction seen at `evicted_ns` (the CLOSE(TIMEOUT) arrival,
/// or the server's recorded eviction time) of a client whose last send
/// completed at `last_left_ns`. The arrival is at or after the server's
/// eviction, so `Server` is certain; `LateClient` may hide a server that
/// also evicted late.
pub fn attribute(last_left_ns: u64, evicted_ns: u64, timeout_ns: u64) -> Fault {
    if evicted_ns.saturating_sub(last_left_ns) < timeout_ns {
        Fault::Server
    } else {
        Fault::LateClient
    }
}

fn next_ping_ns(from_ns: u64, unit: f64, timing: &Timing) -> u64 {
    let factor = 1.0 + timing.jitter * (2.0 * unit - 1.0);
    from_ns + (timing.interval_ns as f64 * factor.max(0.05)) as u64
}

#[cfg(test)]
mod tests;
