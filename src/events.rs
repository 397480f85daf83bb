//! Online/offline events: what they say, their JSON-lines form, and the sink
//! that takes them off the shards. A shard never waits on the sink: it
//! `try_send`s into a bounded crossbeam channel and counts what is dropped;
//! the file sink writes whole lines only, reopens its path on request
//! (SIGHUP), and counts every event it could not write.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::Serialize;

/// Events buffered between shards and consumers before new ones are dropped.
pub const EVENT_QUEUE_MAX: usize = 1 << 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Online,
    Offline,
    /// A client came back within `--offline-grace`: its `offline` and the
    /// new `online` are not emitted; `previous_session` names the old one.
    Resumed,
    /// The phi detector suspects the connection (`--detector phi`).
    Suspect,
    /// A suspected connection sent a frame again.
    Recovered,
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
    /// `resumed` only: the session that went away and came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_session: Option<u64>,
}

impl Event {
    /// Milliseconds since the epoch, as events carry them.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }

    pub fn new(kind: EventKind, session: u64, client_id: u64, peer: Option<SocketAddr>) -> Event {
        let ts_ms = Event::now_ms();
        Event {
            ts_ms,
            event: kind,
            session,
            client_id,
            peer: peer.map(|p| p.to_string()),
            reason: None,
            previous_session: None,
        }
    }

    pub fn to_json_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("events serialize");
        s.push('\n');
        s
    }
}

/// Events lost, by cause; exported as `ringbeat_events_dropped_total{cause}`.
#[derive(Debug, Default)]
pub struct EventDrops {
    /// The queue between the shards and the sink was full.
    pub queue_full: AtomicU64,
    /// The sink could not write them (full disk, no reader on a FIFO, ...).
    pub write_error: AtomicU64,
    /// Still queued when shutdown stopped waiting for the sink.
    pub shutdown: AtomicU64,
}

impl EventDrops {
    /// `(cause label, count)` for every cause, in a fixed order.
    pub fn by_cause(&self) -> [(&'static str, u64); 3] {
        [
            ("queue_full", self.queue_full.load(Ordering::Relaxed)),
            ("write_error", self.write_error.load(Ordering::Relaxed)),
            ("shutdown", self.shutdown.load(Ordering::Relaxed)),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_cause().iter().map(|(_, n)| n).sum()
    }
}

/// The shards' end: cheap to clone, never blocks.
#[derive(Clone, Debug)]
pub struct EventSender {
    tx: Sender<Event>,
    drops: Arc<EventDrops>,
}

impl EventSender {
    pub fn send(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.drops.queue_full.fetch_add(1, Ordering::Relaxed);
            }
            // Every receiver is gone: only after shutdown gave up on the sink.
            Err(TrySendError::Disconnected(_)) => {
                self.drops.shutdown.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Events lost so far, all causes together.
    pub fn dropped(&self) -> u64 {
        self.drops.total()
    }

    /// The loss counters this sender and its sink share.
    pub fn drops(&self) -> &Arc<EventDrops> {
        &self.drops
    }
}

/// A bounded event channel.
pub fn channel() -> (EventSender, Receiver<Event>) {
    let (tx, rx) = crossbeam_channel::bounded(EVENT_QUEUE_MAX);
    let drops = Arc::new(EventDrops::default());
    (EventSender { tx, drops }, rx)
}

/// How long shutdown waits for the file sink to write what is queued before
/// it counts the rest as lost (`cause="shutdown"`) and leaves the thread.
pub const SHUTDOWN_WAIT_MS: u64 = 3_000;
/// How long one batch waits on a full pipe before it counts as lost; after
/// one such loss, batches do not wait until a write goes through again.
pub const BLOCKED_WRITE_WAIT_MS: u64 = 1_000;
/// At most one warning about lost events per this interval.
pub const LOSS_LOG_INTERVAL_MS: u64 = 10_000;
/// Events written with one `write` loop.
const BATCH_MAX_EVENTS: usize = 1024;
/// Writes up to this size reach a pipe whole or not at all (Linux PIPE_BUF).
const PIPE_ATOMIC_BYTES: usize = 4096;
/// How often an idle writer looks at its reopen and stop flags.
const IDLE_POLL_MS: u64 = 100;
/// How long the writer waits before it tries again to open the path.
const REOPEN_RETRY_MS: u64 = 1_000;

/// Why the file sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open events file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the events thread: {0}")]
    Spawn(std::io::Error),
}

/// Flags the sink's owner and the writer thread share.
#[derive(Debug, Default)]
struct Flags {
    reopen: AtomicBool,
    stop: AtomicBool,
    /// Events taken off the queue and not yet accounted for.
    in_flight: AtomicU64,
}

/// Asks a file sink to close and reopen its path (SIGHUP after logrotate).
#[derive(Clone, Debug)]
pub struct ReopenHandle(Arc<Flags>);

impl ReopenHandle {
    /// The writer reopens before its next write, within 100 ms when idle.
    pub fn reopen(&self) {
        self.0.reopen.store(true, Ordering::Relaxed);
    }
}

/// Appends events as JSON lines to a file or FIFO from its own thread.
///
/// Only whole lines are ever left in a regular file: a batch that fails
/// part-way is cut back to its last whole line. The path is opened
/// non-blocking, so a FIFO without a reader never stalls start-up or
/// shutdown; its events count as `write_error` until a reader comes.
#[derive(Debug)]
pub struct FileSink {
    flags: Arc<Flags>,
    drops: Arc<EventDrops>,
    rx: Receiver<Event>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
}

impl FileSink {
    /// Opens `path` (created if missing) and starts writing what `rx` carries.
    /// A FIFO without a reader is not an error: the writer retries.
    pub fn spawn(
        path: &Path,
        rx: Receiver<Event>,
        drops: Arc<EventDrops>,
    ) -> Result<FileSink, SinkError> {
        let flags = Arc::new(Flags::default());
        let mut writer = Writer::new(path.to_owned(), flags.clone(), drops.clone());
        if let Err(source) = writer.open() {
            if source.raw_os_error() != Some(libc::ENXIO) {
                let path = path.to_owned();
                return Err(SinkError::Open { path, source });
            }
            writer.open_failed(&source);
            tracing::warn!(path = %path.display(), "events FIFO has no reader yet");
        }
        let (done_tx, done) = crossbeam_channel::bounded::<()>(0);
        let thread_rx = rx.clone();
        let thread = std::thread::Builder::new()
            .name("ringbeat-events".into())
            .spawn(move || writer.run(thread_rx, done_tx))
            .map_err(SinkError::Spawn)?;
        Ok(FileSink {
            flags,
            drops,
            rx,
            done,
            thread: Some(thread),
        })
    }

    pub fn reopen_handle(&self) -> ReopenHandle {
        ReopenHandle(self.flags.clone())
    }

    /// Waits at most `wait` for the writer to write everything queued (call
    /// it once every sender is gone). Past that, counts what is left as
    /// `shutdown`, tells the writer to stop and leaves its thread behind.
    /// Returns whether the writer finished.
    pub fn finish(mut self, wait: Duration) -> bool {
        if let Err(RecvTimeoutError::Disconnected) = self.done.recv_timeout(wait) {
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
            return true;
        }
        self.flags.stop.store(true, Ordering::Relaxed);
        let queued = self.rx.try_iter().count() as u64;
        let left = queued + self.flags.in_flight.swap(0, Ordering::Relaxed);
        self.drops.shutdown.fetch_add(left, Ordering::Relaxed);
        tracing::warn!(
            lost = left,
            "events sink did not finish within {} ms; leaving it",
            wait.as_millis()
        );
        false
    }
}

/// Rate-limits loss warnings: one line per [`LOSS_LOG_INTERVAL_MS`], saying
/// how many events were lost since the last line. Sans-IO: callers pass `now`.
#[derive(Debug, Default)]
struct LossLog {
    last_report: Option<Instant>,
    unreported: u64,
}

impl LossLog {
    /// Notes `lost` events; returns the count to report now, if a line is due.
    fn lost(&mut self, lost: u64, now: Instant) -> Option<u64> {
        self.unreported += lost;
        let due = self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(LOSS_LOG_INTERVAL_MS));
        if !due || self.unreported == 0 {
            return None;
        }
        self.last_report = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }
}

/// The writer thread's state.
struct Writer {
    path: PathBuf,
    file: Option<File>,
    regular: bool,
    flags: Arc<Flags>,
    drops: Arc<EventDrops>,
    log: LossLog,
    retry_open_at: Instant,
    /// Why the path is not open, for the loss report.
    open_error: String,
    /// The last pipe write timed out: do not wait again until one succeeds.
    blocked: bool,
}

/// One batch: whole JSON lines and where each ends.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    line_ends: Vec<usize>,
}

impl Batch {
    fn push(&mut self, ev: &Event) {
        self.bytes.extend_from_slice(ev.to_json_line().as_bytes());
        self.line_ends.push(self.bytes.len());
    }

    /// Lines wholly inside the first `bytes` bytes.
    fn whole_lines(&self, bytes: usize) -> usize {
        self.line_ends.partition_point(|&end| end <= bytes)
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.line_ends.clear();
    }
}

impl Writer {
    fn new(path: PathBuf, flags: Arc<Flags>, drops: Arc<EventDrops>) -> Writer {
        Writer {
            path,
            file: None,
            regular: true,
            flags,
            drops,
            log: LossLog::default(),
            retry_open_at: Instant::now(),
            open_error: String::new(),
            blocked: false,
        }
    }

    fn open(&mut self) -> std::io::Result<()> {
        self.file = None;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)?;
        self.regular = file.metadata()?.file_type().is_file();
        self.file = Some(file);
        self.blocked = false;
        Ok(())
    }

    fn run(mut self, rx: Receiver<Event>, _done: Sender<()>) {
        let mut batch = Batch::default();
        while !self.flags.stop.load(Ordering::Relaxed) {
            if self.flags.reopen.swap(false, Ordering::Relaxed) {
                self.reopen();
            }
            match rx.recv_timeout(Duration::from_millis(IDLE_POLL_MS)) {
                Ok(ev) => batch.push(&ev),
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => break,
            }
            while batch.line_ends.len() < BATCH_MAX_EVENTS {
                let Ok(ev) = rx.try_recv() else { break };
                batch.push(&ev);
            }
            let n = batch.line_ends.len() as u64;
            self.flags.in_flight.store(n, Ordering::Relaxed);
            let lost = self.write(&batch);
            // Zero here means shutdown gave up and counted this batch already.
            if self.flags.in_flight.swap(0, Ordering::Relaxed) != 0 && lost > 0 {
                self.drops.write_error.fetch_add(lost, Ordering::Relaxed);
            }
            batch.clear();
        }
        // Stopped by shutdown: what arrived since it counted the queue.
        let late = rx.try_iter().count() as u64;
        self.drops.shutdown.fetch_add(late, Ordering::Relaxed);
    }

    fn reopen(&mut self) {
        match self.open() {
            Ok(()) => tracing::info!(path = %self.path.display(), "events file reopened"),
            Err(e) => self.open_failed(&e),
        }
    }

    fn open_failed(&mut self, e: &std::io::Error) {
        self.retry_open_at = Instant::now() + Duration::from_millis(REOPEN_RETRY_MS);
        self.open_error = format!("cannot open: {e}");
        tracing::debug!(path = %self.path.display(), error = %e, "cannot open events file");
    }

    /// Writes a batch; returns how many of its events were lost.
    fn write(&mut self, batch: &Batch) -> u64 {
        if self.file.is_none() && Instant::now() >= self.retry_open_at {
            if let Err(e) = self.open() {
                self.open_failed(&e);
            }
        }
        let result = match self.file.as_mut() {
            None => Err((0, std::io::Error::other(self.open_error.clone()))),
            Some(f) if self.regular => write_regular(f, batch),
            Some(f) => {
                let wait_ms = if self.blocked {
                    0
                } else {
                    BLOCKED_WRITE_WAIT_MS
                };
                write_pipe(f, batch, wait_ms, &self.flags)
            }
        };
        let (written, err) = match result {
            Ok(()) => {
                self.blocked = false;
                return 0;
            }
            Err(e) => e,
        };
        let lost = (batch.line_ends.len() - written) as u64;
        self.blocked = err.kind() == ErrorKind::WouldBlock;
        if err.raw_os_error() == Some(libc::EPIPE) {
            self.file = None; // the reader left; reopen once one is back
            self.open_error = "the FIFO reader left".to_owned();
        }
        if let Some(n) = self.log.lost(lost, Instant::now()) {
            tracing::warn!(
                lost = n,
                path = %self.path.display(),
                error = %err,
                "events not written (one report per {} s at most)",
                LOSS_LOG_INTERVAL_MS / 1000
            );
        }
        lost
    }
}

/// Appends a batch to a regular file. On failure, cuts the file back to the
/// last whole line written and returns `(whole lines kept, error)`.
fn write_regular(file: &mut File, batch: &Batch) -> Result<(), (usize, std::io::Error)> {
    let len_before = file.metadata().map_err(|e| (0, e))?.len();
    let mut done = 0;
    while done < batch.bytes.len() {
        match file.write(&batch.bytes[done..]) {
            Ok(0) => {
                return Err(cut_back(
                    file,
                    batch,
                    len_before,
                    done,
                    ErrorKind::WriteZero.into(),
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(cut_back(file, batch, len_before, done, e)),
        }
    }
    Ok(())
}

fn cut_back(
    file: &File,
    batch: &Batch,
    len_before: u64,
    done: usize,
    err: std::io::Error,
) -> (usize, std::io::Error) {
    let kept = batch.whole_lines(done);
    let keep_bytes = kept.checked_sub(1).map_or(0, |i| batch.line_ends[i]);
    if let Err(e) = file.set_len(len_before + keep_bytes as u64) {
        tracing::error!(error = %e, "cannot cut a partial event line from the events file");
    }
    (kept, err)
}

/// Writes a batch to a pipe in chunks of whole lines no larger than
/// [`PIPE_ATOMIC_BYTES`], so each chunk arrives whole or not at all. Waits on
/// a full pipe until `wait_ms` has passed; returns `(lines written, error)`.
fn write_pipe(
    file: &mut File,
    batch: &Batch,
    wait_ms: u64,
    flags: &Flags,
) -> Result<(), (usize, std::io::Error)> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let ends = &batch.line_ends;
    let mut line = 0;
    while line < ends.len() {
        let start = line.checked_sub(1).map_or(0, |i| ends[i]);
        let mut last = line;
        while last + 1 < ends.len() && ends[last + 1] - start <= PIPE_ATOMIC_BYTES {
            last += 1;
        }
        let chunk = &batch.bytes[start..ends[last]];
        write_chunk(file, chunk, deadline, &flags.stop).map_err(|e| (line, e))?;
        // Written: no longer shutdown's to count if it gives up meanwhile.
        let whole = (last + 1 - line) as u64;
        let _ = (flags.in_flight).fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            n.checked_sub(whole)
        });
        line = last + 1;
    }
    Ok(())
}

fn write_chunk(
    file: &mut File,
    mut chunk: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    while !chunk.is_empty() {
        match file.write(chunk) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => chunk = &chunk[n..],
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline || stop.load(Ordering::Relaxed) {
                    return Err(e);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

    #[test]
    fn loss_log_reports_once_per_interval_with_the_count_since_the_last_report() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut log = LossLog::default();
        assert_eq!(log.lost(3, ms(0)), Some(3), "the first loss is reported");
        for i in 1..1_000 {
            assert_eq!(log.lost(2, ms(i)), None, "one report per interval");
        }
        assert_eq!(log.lost(1, ms(LOSS_LOG_INTERVAL_MS - 1)), None);
        assert_eq!(log.lost(1, ms(LOSS_LOG_INTERVAL_MS)), Some(2 * 999 + 2));
        assert_eq!(
            log.lost(0, ms(3 * LOSS_LOG_INTERVAL_MS)),
            None,
            "nothing to say"
        );
    }

    #[test]
    fn batch_counts_only_whole_lines() {
        let mut b = Batch::default();
        b.push(&Event::new(EventKind::Online, 1, 1, None));
        b.push(&Event::new(EventKind::Online, 2, 2, None));
        let first = b.line_ends[0];
        assert_eq!(b.whole_lines(0), 0);
        assert_eq!(b.whole_lines(first - 1), 0);
        assert_eq!(b.whole_lines(first), 1);
        assert_eq!(b.whole_lines(b.bytes.len() - 1), 1);
        assert_eq!(b.whole_lines(b.bytes.len()), 2);
    }

    #[test]
    fn senders_count_losses_by_cause() {
        let (tx, rx) = channel();
        drop(rx);
        tx.send(Event::new(EventKind::Online, 1, 1, None));
        assert_eq!(tx.drops().shutdown.load(Ordering::Relaxed), 1);
        assert_eq!(tx.dropped(), 1);
    }
}
