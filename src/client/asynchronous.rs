//! The async client (feature `async-client`): one tokio task carries out
//! what the [`Machine`] asks. Same events and rules as the blocking client;
//! a thousand of these cost a thousand small tasks, not threads.
//!
//! ```no_run
//! # async fn demo() {
//! use ringbeat::client::{AsyncClient, ClientConfig};
//! let mut client = AsyncClient::start(ClientConfig::new("127.0.0.1:7700"));
//! while let Some(event) = client.next_event().await {
//!     println!("{event:?}");
//! }
//! # }
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::machine::{Machine, Output};
use super::{check_send, ClientConfig, ClientError, ClientEvent, DisconnectReason};

/// Bytes one read takes from the socket.
const READ_CHUNK: usize = 4096;
/// Longest the task sleeps when no timer runs (it wakes on any input).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

enum Command {
    Send(Vec<u8>),
    Close,
}

/// An async client; dropping it closes the session in the background.
#[derive(Debug)]
pub struct AsyncClient {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    live: Arc<AtomicBool>,
    max_payload: u32,
    task: Option<JoinHandle<()>>,
}

impl AsyncClient {
    /// Spawns the client task on the current tokio runtime.
    ///
    /// # Panics
    /// With feature `tls`, if `config.tls` is set: this driver has no TLS
    /// yet (use the blocking [`crate::client::Client`]); it refuses rather
    /// than send in cleartext what the caller meant to encrypt.
    pub fn start(config: ClientConfig) -> AsyncClient {
        #[cfg(feature = "tls")]
        assert!(
            config.tls.is_none(),
            "AsyncClient has no TLS yet: use the blocking Client for TLS"
        );
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let live = Arc::new(AtomicBool::new(false));
        let max_payload = config.max_payload;
        let task = Task {
            machine: Machine::new(&config),
            config,
            start: Instant::now(),
            stream: None,
            commands: commands_rx,
            events: events_tx,
            live: live.clone(),
        };
        AsyncClient {
            commands: commands_tx,
            events: events_rx,
            live,
            max_payload,
            task: Some(tokio::spawn(task.run())),
        }
    }

    /// The next event; `None` after `Stopped`.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// True while a session is up.
    pub fn is_connected(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Sends DATA on the current session (lost if the connection dies first).
    pub fn send(&self, payload: &[u8]) -> Result<(), ClientError> {
        check_send(payload, self.max_payload, &self.live)?;
        self.commands
            .send(Command::Send(payload.to_vec()))
            .map_err(|_| ClientError::Stopped)
    }

    /// Sends CLOSE(NORMAL), stops reconnecting and waits for the task.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for AsyncClient {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Close);
    }
}

struct Task {
    machine: Machine,
    config: ClientConfig,
    start: Instant,
    stream: Option<TcpStream>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<ClientEvent>,
    live: Arc<AtomicBool>,
}

impl Task {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    async fn run(mut self) {
        let mut buf = vec![0u8; READ_CHUNK];
        self.machine.start(self.now_ms());
        while self.carry_out().await {
            let wake = match self.machine.poll_timeout() {
                Some(at_ms) => self.start + Duration::from_millis(at_ms),
                None => Instant::now() + IDLE_WAIT,
            };
            tokio::select! {
                cmd = self.commands.recv() => self.on_command(cmd),
                read = read_some(&mut self.stream, &mut buf) => self.on_read(read, &buf),
                _ = tokio::time::sleep_until(wake) => {}
            }
            self.machine.handle_timeout(self.now_ms());
        }
        self.stream = None;
    }

    fn on_command(&mut self, cmd: Option<Command>) {
        match cmd {
            Some(Command::Send(payload)) => {
                let _ = self.machine.send(&payload);
            }
            Some(Command::Close) | None => self.machine.close(self.now_ms()),
        }
    }

    fn on_read(&mut self, read: std::io::Result<usize>, buf: &[u8]) {
        let now_ms = self.now_ms();
        match read {
            Ok(0) => self.machine.transport_lost(now_ms, DisconnectReason::Eof),
            Ok(n) => self.machine.received(now_ms, &buf[..n]),
            Err(e) => self
                .machine
                .transport_lost(now_ms, DisconnectReason::Io(e.kind())),
        }
    }

    async fn carry_out(&mut self) -> bool {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Connect => self.connect().await,
                Output::Transmit(bytes) => self.transmit(&bytes).await,
                Output::Disconnect => self.stream = None,
                Output::Event(event) => {
                    let stopped = matches!(event, ClientEvent::Stopped { .. });
                    self.publish(event);
                    if stopped {
                        return false;
                    }
                }
            }
        }
        true
    }

    fn publish(&mut self, event: ClientEvent) {
        super::observe(&event, &self.live, &self.config.server);
        let _ = self.events.send(event); // the application may not listen
    }

    async fn connect(&mut self) {
        let timeout = self.config.connect_timeout;
        let result = tokio::time::timeout(timeout, TcpStream::connect(&self.config.server)).await;
        let now_ms = self.now_ms();
        match result {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                self.stream = Some(stream);
                self.machine.connected(now_ms);
            }
            Ok(Err(e)) => self
                .machine
                .connect_failed(now_ms, DisconnectReason::Io(e.kind())),
            Err(_) => self
                .machine
                .connect_failed(now_ms, DisconnectReason::Io(std::io::ErrorKind::TimedOut)),
        }
    }

    async fn transmit(&mut self, bytes: &[u8]) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        // A peer that stops reading must not hang the task for ever.
        let write = tokio::time::timeout(self.config.connect_timeout, stream.write_all(bytes));
        let error = match write.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.kind(),
            Err(_) => std::io::ErrorKind::TimedOut,
        };
        let now_ms = self.now_ms();
        self.machine
            .transport_lost(now_ms, DisconnectReason::Io(error));
    }
}

/// Reads from the connection if there is one; pends for ever if not.
async fn read_some(stream: &mut Option<TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match stream {
        Some(s) => s.read(buf).await,
        None => std::future::pending().await,
    }
}
