//! One load worker: a thread with its own io_uring driving up to
//! [`super::args::CLIENTS_PER_WORKER_MAX`] clients. Sockets are created with
//! socket2, bound to a loopback source, and (fast mode) moved into the ring's
//! fixed-file table so the process is not capped by RLIMIT_NOFILE; connect,
//! send and receive then go through the ring.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use super::args::LoadConfig;
use super::clients::{ClientState, Clients, Due, Reply, Wire};
use super::jitter::Profile;
use super::mix::Scenario;
use super::mqtt;
use super::report::{Progress, Tally};
use super::wheel::Wheel;
use crate::conn_table::NONE;
use crate::protocol;
use crate::ring::{BatchWait, Completion, Fd, Ring, RingSetup};
use crate::user_data::{Op, UserData};

/// Clients never reuse a slot, so one generation serves all.
const GENERATION: u32 = 1;
/// Timer wheel slot and the loop's longest sleep.
const WHEEL_SLOT: Duration = Duration::from_millis(10);
/// Send chunks kept free for replies (PONGs, CLOSE) when PINGs wait.
const SEND_RESERVE_CHUNKS: usize = 64;
/// Completions gathered per wake-up when `--batch-wait` is on.
const BATCH_WANT: usize = 64;
/// Most connects in flight per worker (bounds the accept backlog we cause).
const CONNECTING_MAX: u32 = 1024;

/// What one worker thread gets.
#[derive(Debug)]
pub struct WorkerSpec {
    pub id: usize,
    /// Global index of this worker's client 0.
    pub first_client: u64,
    pub count: u32,
    pub config: Arc<LoadConfig>,
    pub progress: Arc<Progress>,
    pub stop: Arc<AtomicBool>,
    pub start: Instant,
    /// This worker's share of `--ramp`.
    pub ramp_per_s: f64,
}

struct Worker {
    spec: WorkerSpec,
    ring: Ring,
    fast: bool,
    clients: Clients,
    wheel: Wheel,
    /// Compat mode: each client's raw fd.
    fds: Vec<i32>,
    fd_closed: Vec<bool>,
    send_inflight: Vec<bool>,
    next_connect: u32,
    connecting: u32,
    closed: u64,
    tally: Tally,
    rng: u64,
    tick_armed: bool,
    due: Vec<u32>,
    replies: Vec<Reply>,
    dirty: Vec<u32>,
    batch: Vec<Completion>,
    /// Receives that ended for lack of buffers.
    starved: Vec<u32>,
    /// Receive buffers given back in the current pass of the loop.
    buffers_returned: u32,
    wait: BatchWait,
    /// Flappers' second slots waiting to connect: (when, slot).
    reconnects: Vec<(u64, u32)>,
}

/// Runs a worker until `stop`; returns what it measured.
pub fn run(spec: WorkerSpec, fast: bool) -> std::io::Result<Tally> {
    let n = spec.count;
    let ring = Ring::new(RingSetup {
        sq_entries: 4096,
        cq_entries: 32_768,
        fixed_files: fast.then_some(n.max(1)),
        buf_ring: fast,
        recv_buffers: 512,
        send_chunks: 4096,
        listeners: 0,
    })?;
    let cfg = spec.config.clone();
    let scenarios = (0..u64::from(n))
        .map(|i| cfg.args.mix.scenario_of(spec.first_client + i))
        .collect();
    let horizon_ns = cfg.timing.interval_ns * 2
        + 1_000_000_000
        + cfg.timing.model.worst_delay_ns()
        + cfg.timing.model.flap_gap_ns;
    let mut clients = Clients::new(scenarios, cfg.args.protocol);
    clients.profile = profiles(&cfg, spec.first_client, n);
    for (s, p) in clients.scenario.iter_mut().zip(&clients.profile) {
        if matches!(p, Profile::FlapFirst | Profile::FlapSecond) {
            *s = Scenario::Healthy;
        }
    }
    let mut w = Worker {
        ring,
        fast,
        clients,
        wheel: Wheel::new(WHEEL_SLOT.as_nanos() as u64, horizon_ns, 0),
        fds: if fast {
            Vec::new()
        } else {
            vec![-1; n as usize]
        },
        fd_closed: vec![false; n as usize],
        send_inflight: vec![false; n as usize],
        next_connect: 0,
        connecting: 0,
        closed: 0,
        tally: Tally::default(),
        rng: 0x2545_F491_4F6C_DD1D ^ (spec.id as u64 + 1).wrapping_mul(0x9E37_79B9),
        tick_armed: false,
        due: Vec::new(),
        replies: Vec::new(),
        dirty: Vec::new(),
        batch: Vec::new(),
        starved: Vec::new(),
        buffers_returned: 0,
        // Compat (single-shot receives) stalls under a minimum wait; see
        // `server`, so only fast mode batches.
        wait: BatchWait::new(
            if fast {
                cfg.args.batch_wait.as_micros() as u32
            } else {
                0
            },
            WHEEL_SLOT.as_micros() as u64,
        ),
        reconnects: Vec::new(),
        spec,
    };
    // Compat: Ring::new queued PROVIDE_BUFFERS, and the connect targets may
    // change only with nothing in flight, so that must complete first.
    while w.ring.inflight > 0 {
        if let Some(c) = w.ring.submit_and_wait(1)?.iter().find(|c| c.result < 0) {
            return Err(std::io::Error::from_raw_os_error(-c.result));
        }
    }
    let targets: Vec<SocketAddr> = cfg.args.connect.clone();
    w.ring.set_connect_targets(&targets);
    w.run()?;
    let mut tally = std::mem::take(&mut w.tally);
    // Client index → the id its HELLO carried (and the server's events log).
    for late in &mut tally.late_evicted {
        late.0 = w.client_id(late.0 as u32);
    }
    if cfg.args.server_events.is_some() {
        tally.roster = (0..n)
            .filter_map(|c| w.clients.roster_entry(c, w.client_id(c)))
            .collect();
    }
    // The process exits right after: leave sockets and buffers to the
    // kernel instead of tearing down every connection twice.
    std::mem::forget(w);
    Ok(tally)
}

/// Profiles of this worker's clients; a flapper pair cut by the worker's
/// range becomes regular.
fn profiles(cfg: &LoadConfig, first: u64, n: u32) -> Vec<Profile> {
    let mut p: Vec<Profile> = (0..u64::from(n))
        .map(|i| cfg.timing.model.profile_of(first + i))
        .collect();
    if p.first() == Some(&Profile::FlapSecond) {
        p[0] = Profile::Regular;
    }
    if p.last() == Some(&Profile::FlapFirst) {
        p[n as usize - 1] = Profile::Regular;
    }
    p
}

impl Worker {
    /// Client `c`'s client_id: a flapper's second slot reuses the first's.
    fn client_id(&self, c: u32) -> u64 {
        let id = self.spec.first_client + u64::from(c) + 1;
        match self.clients.profile[c as usize] {
            Profile::FlapSecond => id - 1,
            _ => id,
        }
    }

    fn now_ns(&self) -> u64 {
        self.spec.start.elapsed().as_nanos() as u64
    }

    fn unit(&mut self) -> f64 {
        // xorshift64*: plenty for jitter.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        (self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn fd(&self, c: u32) -> Fd {
        if self.fast {
            Fd::Fixed(c)
        } else {
            Fd::Raw(self.fds[c as usize])
        }
    }

    fn run(&mut self) -> std::io::Result<()> {
        while !self.spec.stop.load(Ordering::Relaxed) {
            let now_ns = self.now_ns();
            self.start_connects(now_ns)?;
            self.fire_due(now_ns)?;
            self.flush_sends()?;
            if !self.tick_armed {
                self.ring.tick_after(WHEEL_SLOT)?;
                self.tick_armed = true;
            }
            self.batch.clear();
            let cqes = self
                .ring
                .submit_and_wait_batched(BATCH_WANT, self.batch_window_us())?;
            self.batch.extend_from_slice(cqes);
            self.wait.record(self.batch.len());
            self.buffers_returned = 0;
            for i in 0..self.batch.len() {
                let cqe = self.batch[i];
                self.on_completion(cqe)?;
            }
            // Receives that ran out of buffers go again once some came back.
            if self.buffers_returned > 0 {
                self.rearm_starved()?;
            }
            self.publish();
        }
        Ok(())
    }

    /// The batch window, cut short at the next wheel slot so PINGs leave
    /// on time.
    fn batch_window_us(&self) -> u32 {
        let window_us = self.wait.window_us();
        if window_us == 0 {
            return 0;
        }
        let slot_ns = WHEEL_SLOT.as_nanos() as u64;
        let until_slot_us = (slot_ns - self.now_ns() % slot_ns) / 1_000;
        window_us.min(until_slot_us as u32)
    }

    fn publish(&self) {
        let p = &self.spec.progress;
        p.connected.store(self.tally.connected, Ordering::Relaxed);
        p.welcomed.store(self.tally.welcomed, Ordering::Relaxed);
        p.live
            .store(self.tally.connected - self.closed, Ordering::Relaxed);
        p.heartbeats_sent
            .store(self.tally.heartbeats_sent, Ordering::Relaxed);
        p.heartbeats_answered
            .store(self.tally.heartbeats_answered, Ordering::Relaxed);
        let errors = self.tally.connect_errors + self.tally.false_evictions;
        p.errors.store(errors, Ordering::Relaxed);
    }

    fn start_connects(&mut self, now_ns: u64) -> std::io::Result<()> {
        let allowed = (self.spec.ramp_per_s * now_ns as f64 / 1e9) as u64 + 1;
        let allowed = allowed.min(u64::from(self.spec.count)) as u32;
        if self.next_connect == self.spec.count && self.connecting == 0 {
            self.tally.steady = true;
        }
        let mut i = 0;
        while i < self.reconnects.len() {
            if self.reconnects[i].0 <= now_ns {
                let (_, c) = self.reconnects.swap_remove(i);
                self.try_connect(c);
            } else {
                i += 1;
            }
        }
        while self.next_connect < allowed && self.connecting < CONNECTING_MAX {
            let c = self.next_connect;
            self.next_connect += 1;
            // A flapper's second slot connects when its first one flaps.
            if self.clients.profile[c as usize] != Profile::FlapSecond {
                self.try_connect(c);
            }
        }
        Ok(())
    }

    fn try_connect(&mut self, c: u32) {
        {
            if let Err(e) = self.connect(c) {
                if self.tally.connect_errors == 0 {
                    eprintln!("ringbeat-load: worker {}: connect: {e}", self.spec.id);
                }
                self.tally.connect_errors += 1;
                self.clients.state[c as usize] = ClientState::Done;
            }
        }
    }

    fn connect(&mut self, c: u32) -> std::io::Result<()> {
        let global = self.spec.first_client + u64::from(c);
        let (source, target) = self.spec.config.endpoints(global);
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.bind(&SocketAddr::from((source, 0)).into())?;
        sock.set_nodelay(true)?;
        if self.clients.scenario[c as usize] == Scenario::Reset {
            sock.set_linger(Some(Duration::ZERO))?;
        }
        if self.fast {
            self.ring.install_fixed(c, sock.as_raw_fd())?;
            drop(sock); // the fixed-file table keeps the socket open
        } else {
            self.fds[c as usize] = sock.into_raw_fd();
        }
        self.ring.connect(self.fd(c), c, GENERATION, target)?;
        self.clients.state[c as usize] = ClientState::Connecting;
        self.connecting += 1;
        Ok(())
    }

    fn on_completion(&mut self, cqe: Completion) -> std::io::Result<()> {
        let ud = UserData::decode(cqe.user_data).expect("our user_data");
        match ud.op {
            Op::Connect => self.on_connect(ud.slot, cqe.result),
            Op::Recv => self.on_recv(ud.slot, cqe),
            Op::Send => self.on_send(ud.slot, cqe.result, self.now_ns()),
            Op::Tick => {
                self.tick_armed = false;
                self.wait.on_tick();
                self.rearm_starved()
            }
            Op::Close | Op::Cancel | Op::ProvideBuffers => Ok(()),
            op => unreachable!("a load worker never submits {op:?}"),
        }
    }

    fn rearm_starved(&mut self) -> std::io::Result<()> {
        for c in std::mem::take(&mut self.starved) {
            if !self.fd_closed[c as usize] {
                self.ring.recv(self.fd(c), c, GENERATION, self.fast)?;
            }
        }
        Ok(())
    }

    fn on_connect(&mut self, c: u32, result: i32) -> std::io::Result<()> {
        self.connecting -= 1;
        let now_ns = self.now_ns();
        if result < 0 {
            if self.tally.connect_errors == 0 {
                let e = std::io::Error::from_raw_os_error(-result);
                eprintln!("ringbeat-load: worker {}: connect: {e}", self.spec.id);
            }
            self.tally.connect_errors += 1;
            self.clients.state[c as usize] = ClientState::Done;
            return self.close_fd(c);
        }
        self.tally.connected += 1;
        self.tally.last_connected_ns = now_ns;
        if self.clients.scenario[c as usize] == Scenario::Silent {
            self.tally.silent_total += 1;
        }
        let timing = self.spec.config.timing;
        self.clients.on_connected(c, now_ns, &timing);
        self.ring.recv(self.fd(c), c, GENERATION, self.fast)?;
        let id = self.client_id(c);
        match self.spec.config.args.protocol {
            Wire::Mqtt => {
                let keepalive_s = self.spec.config.mqtt_keepalive_s;
                self.queue(c, &mqtt::connect_packet(&format!("rb{id}"), keepalive_s));
            }
            Wire::Ringbeat if self.spec.config.args.hello => {
                self.queue(c, &protocol::hello_frame(id, 0));
            }
            Wire::Ringbeat => {}
        }
        // Spread first PINGs over one interval.
        let first = now_ns + (self.unit() * timing.interval_ns as f64) as u64;
        self.wheel.schedule(c, first);
        self.clients.set_due(c, first);
        Ok(())
    }

    fn on_recv(&mut self, c: u32, cqe: Completion) -> std::io::Result<()> {
        let now_ns = self.now_ns();
        let timing = self.spec.config.timing;
        if let Some(bid) = cqe.buffer_id() {
            if cqe.result > 0 {
                let data = self.ring.recv.data(bid, cqe.result as usize);
                self.clients
                    .on_bytes(c, data, now_ns, &timing, &mut self.tally, &mut self.replies);
            }
            self.ring.return_buffer(bid)?;
            self.buffers_returned += 1;
        }
        for reply in std::mem::take(&mut self.replies) {
            match reply {
                Reply::Pong(p) => self.queue(c, &protocol::pong_frame(p)),
                Reply::Close => self.close_client(c)?,
            }
        }
        if cqe.more() {
            return Ok(());
        }
        let open = matches!(
            self.clients.state[c as usize],
            ClientState::Live | ClientState::Closing
        ) && !self.fd_closed[c as usize];
        match cqe.result {
            r if r > 0 && open => self.ring.recv(self.fd(c), c, GENERATION, self.fast)?,
            // No buffer: re-arm once buffers came back, rather than spin.
            r if r == -libc::ENOBUFS && open => {
                self.tally.recv_no_buffers += 1;
                self.starved.push(c);
            }
            r if r > 0 || r == -libc::ECANCELED || r == -libc::ENOBUFS => {}
            r => {
                if self.clients.state[c as usize] != ClientState::Done {
                    let reset = r < 0;
                    self.clients
                        .on_eof(c, reset, now_ns, &timing, &mut self.tally);
                }
                self.close_client(c)?;
            }
        }
        Ok(())
    }

    fn on_send(&mut self, c: u32, result: i32, now_ns: u64) -> std::io::Result<()> {
        self.send_inflight[c as usize] = false;
        if result > 0 {
            self.clients.on_send_done(c, now_ns);
        }
        let head = &mut self.clients.send_head[c as usize];
        if result >= 0 {
            if self.ring.sends.complete_send(head, result as usize) {
                self.dirty.push(c);
            }
        } else {
            self.ring.sends.complete_send_failed(head);
        }
        Ok(())
    }

    fn fire_due(&mut self, now_ns: u64) -> std::io::Result<()> {
        self.wheel.expire(now_ns, &mut self.due);
        let timing = self.spec.config.timing;
        for c in std::mem::take(&mut self.due) {
            // No room to queue a frame: try again next slot rather than drop
            // a heartbeat the server would then miss.
            if self.ring.sends.available() < SEND_RESERVE_CHUNKS {
                self.wheel
                    .schedule(c, now_ns + WHEEL_SLOT.as_nanos() as u64);
                continue;
            }
            let unit = self.unit();
            match self
                .clients
                .on_due(c, now_ns, unit, &timing, &mut self.tally)
            {
                Due::Send { bytes, next_ns } => {
                    self.queue(c, &bytes);
                    if let Some(at) = next_ns {
                        self.wheel.schedule(c, at);
                    }
                }
                Due::Reset => self.close_client(c)?,
                Due::Flap { gap_ns } => {
                    self.close_client(c)?;
                    self.reconnects.push((now_ns + gap_ns, c + 1));
                }
                Due::Nothing => {}
            }
        }
        Ok(())
    }

    fn queue(&mut self, c: u32, bytes: &[u8]) {
        let head = &mut self.clients.send_head[c as usize];
        if self.ring.sends.queue(head, bytes).is_err() {
            self.tally.count_close_name("load_send_queue_full");
            return;
        }
        self.dirty.push(c);
    }

    fn flush_sends(&mut self) -> std::io::Result<()> {
        for c in std::mem::take(&mut self.dirty) {
            let i = c as usize;
            let head = self.clients.send_head[i];
            if self.send_inflight[i] || head == NONE || self.fd_closed[i] {
                continue;
            }
            self.ring.send(self.fd(c), c, GENERATION, head)?;
            self.send_inflight[i] = true;
        }
        Ok(())
    }

    /// Ends client `c`: stops its receive and closes its socket (an RST for
    /// reset clients, whose linger is 0).
    fn close_client(&mut self, c: u32) -> std::io::Result<()> {
        if self.fd_closed[c as usize] {
            return Ok(());
        }
        self.closed += 1;
        self.clients.state[c as usize] = ClientState::Done;
        self.ring.cancel(UserData::new(Op::Recv, c, GENERATION))?;
        self.close_fd(c)
    }

    fn close_fd(&mut self, c: u32) -> std::io::Result<()> {
        if std::mem::replace(&mut self.fd_closed[c as usize], true) {
            return Ok(());
        }
        self.ring.close(self.fd(c), c, GENERATION)
    }
}
