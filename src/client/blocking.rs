//! The blocking (std) client: a driver thread that carries out what the
//! [`Machine`] asks, plus one reader thread per connection. The application
//! talks to it through channels and never blocks on the network. With
//! feature `tls` and [`ClientConfig::tls`] set, both threads go through one
//! shared [`super::tls::TlsSession`].
//!
//! ```no_run
//! use ringbeat::client::{Client, ClientConfig, ClientEvent};
//! let client = Client::start(ClientConfig::new("127.0.0.1:7700").client_id(42)).unwrap();
//! for event in client.events() {
//!     println!("{event:?}");
//!     if let ClientEvent::Connected { .. } = event {
//!         client.send(b"hello").unwrap();
//!     }
//! }
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::machine::{Machine, Output};
use super::{check_send, ClientConfig, ClientError, ClientEvent, DisconnectReason};

#[cfg(feature = "tls")]
type Tls = Option<super::tls::TlsSession>;
/// Without feature `tls` there is never a session (an empty type).
#[cfg(not(feature = "tls"))]
#[derive(Clone)]
enum NoTls {}
#[cfg(not(feature = "tls"))]
type Tls = Option<NoTls>;

#[cfg(feature = "tls")]
type Connector = Option<super::tls::Connector>;
#[cfg(not(feature = "tls"))]
type Connector = Option<NoTls>;

/// Bytes one `read` takes from the socket.
const READ_CHUNK: usize = 4096;
/// Longest the driver sleeps when no timer runs (it wakes on any input).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

enum Command {
    Send(Vec<u8>),
    Close,
}

/// What a reader thread saw, tagged with its connection's generation so
/// input from a connection already dropped is ignored.
enum Input {
    Bytes(u64, Vec<u8>),
    End(u64, DisconnectReason),
}

/// A client with a background thread; dropping it closes the session.
#[derive(Debug)]
pub struct Client {
    commands: Sender<Command>,
    events: Receiver<ClientEvent>,
    live: Arc<AtomicBool>,
    max_payload: u32,
    thread: Option<JoinHandle<()>>,
}

impl Client {
    /// Starts connecting in the background; progress arrives as events.
    pub fn start(config: ClientConfig) -> std::io::Result<Client> {
        let (commands_tx, commands_rx) = crossbeam_channel::unbounded();
        let (events_tx, events_rx) = crossbeam_channel::unbounded();
        let live = Arc::new(AtomicBool::new(false));
        let max_payload = config.max_payload;
        let connector = connector(&config)?;
        let mut driver = Driver::new(config, commands_rx, events_tx, live.clone());
        driver.connector = connector;
        let thread = std::thread::Builder::new()
            .name("ringbeat-client".into())
            .spawn(move || driver.run())?;
        Ok(Client {
            commands: commands_tx,
            events: events_rx,
            live,
            max_payload,
            thread: Some(thread),
        })
    }

    /// Events in order; the channel ends after `Stopped`.
    pub fn events(&self) -> &Receiver<ClientEvent> {
        &self.events
    }

    /// True while a session is up (WELCOME received, not yet lost).
    pub fn is_connected(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Sends DATA on the current session. Like any TCP write, DATA in
    /// flight when the connection dies is lost.
    pub fn send(&self, payload: &[u8]) -> Result<(), ClientError> {
        check_send(payload, self.max_payload, &self.live)?;
        self.commands
            .send(Command::Send(payload.to_vec()))
            .map_err(|_| ClientError::Stopped)
    }

    /// Sends CLOSE(NORMAL), stops reconnecting and waits for the driver.
    pub fn close(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.commands.send(Command::Close);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shut_down();
    }
}

struct Connection {
    stream: TcpStream,
    tls: Tls,
    generation: u64,
}

#[cfg(feature = "tls")]
fn connector(config: &ClientConfig) -> std::io::Result<Connector> {
    let make = |t| super::tls::Connector::new(t).map_err(std::io::Error::other);
    config.tls.as_ref().map(make).transpose()
}

#[cfg(not(feature = "tls"))]
fn connector(_config: &ClientConfig) -> std::io::Result<Connector> {
    Ok(None)
}

struct Driver {
    machine: Machine,
    config: ClientConfig,
    start: Instant,
    conn: Option<Connection>,
    generation: u64,
    commands: Receiver<Command>,
    input_tx: Sender<Input>,
    input_rx: Receiver<Input>,
    events: Sender<ClientEvent>,
    live: Arc<AtomicBool>,
    connector: Connector,
}

impl Driver {
    fn new(
        config: ClientConfig,
        commands: Receiver<Command>,
        events: Sender<ClientEvent>,
        live: Arc<AtomicBool>,
    ) -> Driver {
        let (input_tx, input_rx) = crossbeam_channel::unbounded();
        Driver {
            machine: Machine::new(&config),
            config,
            start: Instant::now(),
            conn: None,
            generation: 0,
            commands,
            input_tx,
            input_rx,
            events,
            live,
            connector: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn run(mut self) {
        self.machine.start(self.now_ms());
        while self.carry_out() {
            let wait = match self.machine.poll_timeout() {
                Some(at_ms) => Duration::from_millis(at_ms.saturating_sub(self.now_ms())),
                None => IDLE_WAIT,
            };
            select! {
                recv(self.commands) -> cmd => self.on_command(cmd.ok()),
                recv(self.input_rx) -> input => self.on_input(input.expect("driver holds a sender")),
                default(wait) => {}
            }
            self.machine.handle_timeout(self.now_ms());
        }
        self.disconnect();
    }

    fn on_command(&mut self, cmd: Option<Command>) {
        match cmd {
            // The machine re-checks the state; a send racing a disconnect
            // is dropped like any unsent TCP data.
            Some(Command::Send(payload)) => {
                let _ = self.machine.send(&payload);
            }
            Some(Command::Close) | None => self.machine.close(self.now_ms()),
        }
    }

    fn on_input(&mut self, input: Input) {
        let now_ms = self.now_ms();
        match input {
            Input::Bytes(generation, bytes) if generation == self.generation => {
                self.machine.received(now_ms, &bytes);
            }
            Input::End(generation, reason) if generation == self.generation => {
                self.machine.transport_lost(now_ms, reason);
            }
            _ => {} // from a connection already dropped
        }
    }

    /// Does everything the machine asked. False once it has stopped.
    fn carry_out(&mut self) -> bool {
        while let Some(output) = self.machine.poll_output() {
            match output {
                Output::Connect => self.connect(),
                Output::Transmit(bytes) => self.transmit(&bytes),
                Output::Disconnect => self.disconnect(),
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

    fn connect(&mut self) {
        let now_ms = self.now_ms();
        let opened = open(&self.config.server, self.config.connect_timeout)
            .and_then(|mut stream| Ok((start_tls(&self.connector, &mut stream)?, stream)));
        match opened {
            Ok((tls, stream)) => match self.spawn_reader(&stream, tls.clone()) {
                Ok(()) => {
                    self.conn = Some(Connection {
                        stream,
                        tls,
                        generation: self.generation,
                    });
                    self.machine.connected(now_ms);
                }
                Err(e) => self
                    .machine
                    .connect_failed(now_ms, DisconnectReason::Io(e.kind())),
            },
            Err(e) => self
                .machine
                .connect_failed(now_ms, DisconnectReason::Io(e.kind())),
        }
    }

    fn spawn_reader(&mut self, stream: &TcpStream, tls: Tls) -> std::io::Result<()> {
        self.generation += 1;
        let generation = self.generation;
        let mut reader = stream.try_clone()?;
        let tx = self.input_tx.clone();
        std::thread::Builder::new()
            .name("ringbeat-client-read".into())
            .spawn(move || read_loop(&mut reader, tls, generation, &tx))?;
        Ok(())
    }

    fn transmit(&mut self, bytes: &[u8]) {
        let Some(conn) = &mut self.conn else { return };
        if let Err(e) = write_to(&mut conn.stream, &conn.tls, bytes) {
            let now_ms = self.now_ms();
            self.machine
                .transport_lost(now_ms, DisconnectReason::Io(e.kind()));
        }
    }

    fn disconnect(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Wakes the reader (its read returns 0); its End is then stale.
            let _ = conn.stream.shutdown(Shutdown::Both);
            debug_assert_eq!(conn.generation, self.generation);
            self.generation += 1;
        }
    }
}

/// Resolves `server` and connects to the first address that answers.
fn open(server: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let addrs: Vec<SocketAddr> = server.to_socket_addrs()?.collect();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                // A peer that stops reading must not hang the driver.
                stream.set_write_timeout(Some(timeout))?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

#[cfg(feature = "tls")]
fn start_tls(connector: &Connector, stream: &mut TcpStream) -> std::io::Result<Tls> {
    connector.as_ref().map(|c| c.start(stream)).transpose()
}

#[cfg(not(feature = "tls"))]
fn start_tls(_connector: &Connector, _stream: &mut TcpStream) -> std::io::Result<Tls> {
    Ok(None)
}

#[cfg(feature = "tls")]
fn write_to(stream: &mut TcpStream, tls: &Tls, bytes: &[u8]) -> std::io::Result<()> {
    match tls {
        Some(session) => session.write_plain(bytes, stream),
        None => stream.write_all(bytes),
    }
}

#[cfg(not(feature = "tls"))]
fn write_to(stream: &mut TcpStream, _tls: &Tls, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes)
}

/// Plaintext from what one `read` returned.
#[cfg(feature = "tls")]
fn decrypt(stream: &mut TcpStream, tls: &Tls, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    match tls {
        Some(session) => session.on_ciphertext(bytes, stream),
        None => Ok(bytes.to_vec()),
    }
}

#[cfg(not(feature = "tls"))]
fn decrypt(_stream: &mut TcpStream, _tls: &Tls, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    Ok(bytes.to_vec())
}

fn read_loop(stream: &mut TcpStream, tls: Tls, generation: u64, tx: &Sender<Input>) {
    let mut buf = [0u8; READ_CHUNK];
    loop {
        let input = match stream.read(&mut buf) {
            Ok(0) => Input::End(generation, DisconnectReason::Eof),
            Ok(n) => match decrypt(stream, &tls, &buf[..n]) {
                Ok(plain) if plain.is_empty() => continue,
                Ok(plain) => Input::Bytes(generation, plain),
                Err(e) => Input::End(generation, DisconnectReason::Io(e.kind())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => Input::End(generation, DisconnectReason::Io(e.kind())),
        };
        let end = matches!(input, Input::End(..));
        if tx.send(input).is_err() || end {
            return;
        }
    }
}
