//! Online/offline events: what they say, their JSON-lines form, and the sink
//! that takes them off the shards. A shard never waits on the sink: it
//! `try_send`s into a bounded crossbeam channel and counts what is dropped.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::Serialize;

/// Events buffered between shards and consumers before new ones are dropped.
pub const EVENT_QUEUE_MAX: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Online,
    Offline,
}

/// Why a connection went offline. Names are a contract (`reason` field).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineReason {
    Timeout,
    ProtocolError,
    FrameTooLarge,
    TakenOver,
    Shutdown,
    /// The peer sent CLOSE.
    Normal,
    /// The peer reset the connection.
    Reset,
    /// The peer closed without CLOSE (EOF), or an I/O error ended it.
    Closed,
    /// The server was at its limit, or the peer did not read its replies.
    Overloaded,
    /// Authentication was required and the connection did not prove its id.
    Unauthorized,
    /// A per-source or per-id limit was hit.
    Limited,
}

impl OfflineReason {
    pub fn name(self) -> &'static str {
        match self {
            OfflineReason::Timeout => "timeout",
            OfflineReason::ProtocolError => "protocol_error",
            OfflineReason::FrameTooLarge => "frame_too_large",
            OfflineReason::TakenOver => "taken_over",
            OfflineReason::Shutdown => "shutdown",
            OfflineReason::Normal => "normal",
            OfflineReason::Reset => "reset",
            OfflineReason::Closed => "closed",
            OfflineReason::Overloaded => "overloaded",
            OfflineReason::Unauthorized => "unauthorized",
            OfflineReason::Limited => "limited",
        }
    }

    pub const ALL: [OfflineReason; 11] = [
        OfflineReason::Timeout,
        OfflineReason::ProtocolError,
        OfflineReason::FrameTooLarge,
        OfflineReason::TakenOver,
        OfflineReason::Shutdown,
        OfflineReason::Normal,
        OfflineReason::Reset,
        OfflineReason::Closed,
        OfflineReason::Overloaded,
        OfflineReason::Unauthorized,
        OfflineReason::Limited,
    ];
}

/// One line of the event stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub ts_ms: u64,
    pub event: EventKind,
    pub session: u64,
    pub client_id: u64,
    /// `ip:port`, or `null` when unknown.
    pub peer: Option<String>,
    /// Offline reason name; `null` for online.
    pub reason: Option<&'static str>,
}

impl Event {
    pub fn new(kind: EventKind, session: u64, client_id: u64, peer: Option<SocketAddr>) -> Event {
        let ts_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Event {
            ts_ms,
            event: kind,
            session,
            client_id,
            peer: peer.map(|p| p.to_string()),
            reason: None,
        }
    }

    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("events serialize");
        s.push('\n');
        s
    }
}

/// The shards' end: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct EventSender {
    tx: Sender<Event>,
    dropped: Arc<AtomicU64>,
}

impl EventSender {
    pub fn send(&self, event: Event) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(event) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A bounded event channel.
pub fn channel() -> (EventSender, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::bounded(EVENT_QUEUE_MAX);
    let dropped = Arc::new(AtomicU64::new(0));
    (EventSender { tx, dropped }, rx)
}

/// Appends events from `rx` to `path` as JSON lines until every sender is
/// gone. Flushes whenever the channel runs dry.
pub fn spawn_file_writer(path: &Path, rx: Receiver<Event>) -> std::io::Result<JoinHandle<()>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut out = std::io::BufWriter::new(file);
    std::thread::Builder::new()
        .name("ringbeat-events".into())
        .spawn(move || {
            while let Ok(ev) = rx.recv() {
                let mut ok = out.write_all(ev.to_json_line().as_bytes()).is_ok();
                while let Ok(ev) = rx.try_recv() {
                    ok &= out.write_all(ev.to_json_line().as_bytes()).is_ok();
                }
                if !(ok && out.flush().is_ok()) {
                    tracing::warn!("writing events failed; events may be lost");
                }
            }
            let _ = out.flush();
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_line_has_contract_fields() {
        let mut e = Event::new(
            EventKind::Offline,
            7,
            42,
            Some("127.0.0.1:9".parse().unwrap()),
        );
        e.reason = Some(OfflineReason::Timeout.name());
        let v: serde_json::Value = serde_json::from_str(e.to_json_line().trim()).unwrap();
        assert_eq!(v["event"], "offline");
        assert_eq!(v["session"], 7);
        assert_eq!(v["client_id"], 42);
        assert_eq!(v["peer"], "127.0.0.1:9");
        assert_eq!(v["reason"], "timeout");
        assert!(v["ts_ms"].as_u64().unwrap() > 0);
    }

    #[test]
    fn full_channel_drops_and_counts() {
        let (tx, rx) = channel();
        for i in 0..EVENT_QUEUE_MAX as u64 + 3 {
            tx.send(Event::new(EventKind::Online, i, 0, None));
        }
        assert_eq!(tx.dropped(), 3);
        drop(rx);
    }
}
