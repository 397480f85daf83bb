//! The lean epoll peer: what a skilled engineer writes without io_uring and
//! without a runtime. One thread per core, each with its own SO_REUSEPORT
//! non-blocking listener and level-triggered epoll set; flat per-fd arrays
//! (last-seen tick, a 16-byte partial frame); one `read` and one `write` per
//! readable event; a coarse sweep per tick with ringbeat's semantics (evict
//! when `now_tick - last_seen_tick > timeout_ticks`: CLOSE(TIMEOUT), close).
//! Speaks PROTOCOL.md v1 anonymously (no takeover). For the bench suite only.
//!
//!   epoll --listen 127.0.0.1:7720 --interval 10s --timeout 30s
// A bench binary over raw libc: every unsafe block names its invariant.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, RawFd};
use std::time::Instant;

use ringbeat::protocol::{self, CloseReason, Kind, DEFAULT_MAX_PAYLOAD, HEADER_LEN, PING_LEN};
use socket2::{Domain, Protocol, Socket, Type};

mod args;

/// The sweep period, as ringbeat's default `--tick`.
const TICK_MS: u64 = 100;
/// Events taken per `epoll_wait`.
const EVENTS_MAX: usize = 1024;
/// Bytes read per readable event (one `read`).
const READ_BYTES: usize = 4096;
/// Header plus a PING payload: the only payload kept; others are skipped.
const PARTIAL_BYTES: usize = HEADER_LEN + PING_LEN;

/// Per-fd frame reassembly state, kept in a flat array indexed by fd.
#[derive(Clone, Copy, Default)]
struct Partial {
    buf: [u8; PARTIAL_BYTES],
    have_bytes: u8,
    skip_bytes: u32,
    skip_kind: u8,
    seen_frame: bool,
}

/// What to do with a connection after its bytes were handled.
#[derive(PartialEq, Eq)]
enum After {
    Keep,
    Close,
}

/// One thread's listener, epoll set and flat per-fd tables.
struct Shard {
    listener: Socket,
    epfd: RawFd,
    live: Vec<bool>,
    last_seen_tick: Vec<u32>,
    partial: Vec<Partial>,
    max_fd: usize,
    /// Out of fds (EMFILE): the listener is out of the epoll set until the
    /// next tick, so a level-triggered listener does not spin.
    accept_paused: bool,
    interval_ms: u32,
    timeout_ms: u32,
    timeout_ticks: u32,
}

fn nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the call's duration.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit");
    (lim.rlim_cur as usize).min(1 << 21)
}

fn listener(addr: std::net::SocketAddr) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(args::LISTEN_BACKLOG)?;
    Ok(s)
}

fn epoll_add(epfd: RawFd, fd: RawFd) -> bool {
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `ev` is valid for the call; the kernel copies it.
    unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 }
}

fn write_all_once(fd: RawFd, bytes: &[u8]) -> bool {
    // SAFETY: `bytes` is a live slice of `bytes.len()` readable bytes.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    n == bytes.len() as isize
}

impl Shard {
    fn new(a: &args::PeerArgs) -> std::io::Result<Shard> {
        let listener = listener(a.listen)?;
        // SAFETY: plain syscall, no pointers.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 || !epoll_add(epfd, listener.as_raw_fd()) {
            return Err(std::io::Error::last_os_error());
        }
        let fds = nofile_limit();
        let timeout_ms = a.timeout.as_millis() as u32;
        Ok(Shard {
            listener,
            epfd,
            live: vec![false; fds],
            last_seen_tick: vec![0; fds],
            partial: vec![Partial::default(); fds],
            max_fd: 0,
            accept_paused: false,
            interval_ms: a.interval.as_millis() as u32,
            timeout_ms,
            timeout_ticks: (u64::from(timeout_ms) / TICK_MS) as u32,
        })
    }

    fn accept_all(&mut self, now_tick: u32) {
        loop {
            let lfd = self.listener.as_raw_fd();
            let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
            // SAFETY: null addr/len are allowed: we do not want the peer address.
            let fd =
                unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
            if fd < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if matches!(errno, Some(libc::EMFILE | libc::ENFILE)) {
                    self.pause_accept();
                }
                return; // EAGAIN (drained), ECONNABORTED: try on the next event
            }
            let one: libc::c_int = 1;
            // SAFETY: `one` is a live c_int and its size is passed.
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            let slot = fd as usize;
            if slot >= self.live.len() || !epoll_add(self.epfd, fd) {
                // SAFETY: `fd` was just accepted and is owned here.
                unsafe { libc::close(fd) };
                continue;
            }
            self.live[slot] = true;
            self.last_seen_tick[slot] = now_tick;
            self.partial[slot] = Partial::default();
            self.max_fd = self.max_fd.max(slot);
        }
    }

    fn pause_accept(&mut self) {
        let lfd = self.listener.as_raw_fd();
        // SAFETY: plain syscall; a null event is allowed for EPOLL_CTL_DEL.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, lfd, std::ptr::null_mut()) };
        self.accept_paused = true;
    }

    fn close(&mut self, fd: RawFd) {
        self.live[fd as usize] = false;
        // SAFETY: `fd` is a live connection owned by this shard; close also
        // removes it from the epoll set.
        unsafe { libc::close(fd) };
    }

    fn on_readable(&mut self, fd: RawFd, now_tick: u32, buf: &mut [u8; READ_BYTES]) {
        // SAFETY: `buf` is a live, writable buffer of READ_BYTES bytes.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), READ_BYTES) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                self.close(fd);
            }
            return;
        }
        if n == 0 {
            self.close(fd);
            return;
        }
        let mut out = Vec::new();
        let slot = fd as usize;
        let mut seen = false;
        let after = feed(
            &mut self.partial[slot],
            &buf[..n as usize],
            &mut out,
            &mut seen,
            (self.interval_ms, self.timeout_ms),
        );
        if seen {
            self.last_seen_tick[slot] = now_tick;
        }
        let wrote = out.is_empty() || write_all_once(fd, &out);
        if after == After::Close || !wrote {
            self.close(fd);
        }
    }

    fn sweep(&mut self, now_tick: u32) {
        let close = protocol::close_frame(CloseReason::Timeout, "timeout");
        for slot in 0..=self.max_fd {
            if self.live[slot]
                && now_tick.wrapping_sub(self.last_seen_tick[slot]) > self.timeout_ticks
            {
                write_all_once(slot as RawFd, &close);
                self.close(slot as RawFd);
            }
        }
    }

    fn run(mut self) -> ! {
        let start = Instant::now();
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS_MAX];
        let mut buf = [0u8; READ_BYTES];
        let mut swept_tick = 0u32;
        let lfd = self.listener.as_raw_fd();
        loop {
            let elapsed_ms = start.elapsed().as_millis() as u64;
            let wait_ms = TICK_MS - elapsed_ms % TICK_MS;
            // SAFETY: `events` holds EVENTS_MAX writable entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epfd,
                    events.as_mut_ptr(),
                    EVENTS_MAX as i32,
                    wait_ms as i32,
                )
            };
            let now_tick = (start.elapsed().as_millis() as u64 / TICK_MS) as u32;
            for ev in events.iter().take(n.max(0) as usize) {
                let fd = ev.u64 as RawFd;
                if fd == lfd {
                    self.accept_all(now_tick);
                } else if self.live[fd as usize] {
                    self.on_readable(fd, now_tick, &mut buf);
                }
            }
            if now_tick != swept_tick {
                swept_tick = now_tick;
                self.sweep(now_tick);
                if self.accept_paused {
                    self.accept_paused = !epoll_add(self.epfd, lfd);
                }
            }
        }
    }
}

/// Reassembles frames from `bytes` into `p`, appends replies to `out`, sets
/// `seen` when a complete valid frame arrived. Keeps only PING payloads.
fn feed(
    p: &mut Partial,
    bytes: &[u8],
    out: &mut Vec<u8>,
    seen: &mut bool,
    ms: (u32, u32),
) -> After {
    let mut i = 0;
    while i < bytes.len() {
        if p.skip_bytes > 0 {
            let take = (p.skip_bytes as usize).min(bytes.len() - i);
            i += take;
            p.skip_bytes -= take as u32;
            if p.skip_bytes == 0 && complete(p, p.skip_kind, out, seen, ms) == After::Close {
                return After::Close;
            }
            continue;
        }
        let have = p.have_bytes as usize;
        let need = if have < HEADER_LEN {
            HEADER_LEN
        } else {
            PARTIAL_BYTES
        };
        let take = (need - have).min(bytes.len() - i);
        p.buf[have..have + take].copy_from_slice(&bytes[i..i + take]);
        i += take;
        p.have_bytes += take as u8;
        if p.have_bytes as usize == PARTIAL_BYTES {
            p.have_bytes = 0;
            let mut ping = [0u8; PING_LEN];
            ping.copy_from_slice(&p.buf[HEADER_LEN..]);
            out.extend_from_slice(&protocol::pong_frame(ping));
            p.seen_frame = true;
            *seen = true;
        } else if p.have_bytes as usize == HEADER_LEN {
            let head: [u8; HEADER_LEN] = p.buf[..HEADER_LEN].try_into().unwrap();
            match protocol::parse_header(&head, DEFAULT_MAX_PAYLOAD) {
                Err(e) => {
                    out.extend(protocol::close_frame(e.close_reason(), "protocol error"));
                    return After::Close;
                }
                Ok(h) if h.kind == Kind::Ping => {}
                Ok(h) => {
                    p.have_bytes = 0;
                    p.skip_bytes = h.len;
                    p.skip_kind = h.kind as u8;
                    if h.len == 0 && complete(p, h.kind as u8, out, seen, ms) == After::Close {
                        return After::Close;
                    }
                }
            }
        }
    }
    After::Keep
}

/// A complete non-PING frame of `kind` arrived.
fn complete(
    p: &mut Partial,
    kind: u8,
    out: &mut Vec<u8>,
    seen: &mut bool,
    ms: (u32, u32),
) -> After {
    let first = !p.seen_frame;
    p.seen_frame = true;
    *seen = true;
    match Kind::from_u8(kind) {
        Some(Kind::Hello) if first => {
            out.extend_from_slice(&protocol::welcome_frame(0, ms.0, ms.1));
            After::Keep
        }
        Some(Kind::Close) => After::Close,
        Some(Kind::Hello) | Some(Kind::Welcome) => {
            out.extend(protocol::close_frame(
                CloseReason::ProtocolError,
                "protocol error",
            ));
            After::Close
        }
        _ => After::Keep,
    }
}

fn main() -> std::io::Result<()> {
    let a = args::PeerArgs::parse_or_exit("epoll");
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for _ in 0..threads {
        let shard = Shard::new(&a)?;
        handles.push(std::thread::spawn(move || shard.run()));
    }
    eprintln!("epoll listening on {} ({threads} threads)", a.listen);
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}
