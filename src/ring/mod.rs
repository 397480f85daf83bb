//! io_uring: feature probe, ring setup and SQE builders. This module tree and
//! `buf_ring` are the crate's unsafe fence: every `unsafe` block in ringbeat
//! lives there, each with a `// SAFETY:` comment.
//!
//! [`Ring`] owns every piece of memory it hands the kernel — send chunks,
//! receive buffers, accept addresses, the tick timespec, the wake counter —
//! so an SQE can never outlive what it points at while the ring lives. The
//! shard drains all operations before dropping it; if it could not, `Drop`
//! leaks the memory rather than free what the kernel may still write.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buf_ring::{RecvBuffers, BGID, BUF_LEN};
use crate::send_pool::{SendPool, GATHER_MAX};
use crate::user_data::{Op, UserData};

mod batch;
mod probe;
pub use batch::BatchWait;
pub use probe::Features;

/// Single-shot accepts kept in flight per listener (each owns an address
/// buffer, so the peer address is known).
pub const ACCEPTS_PER_LISTENER: u32 = 16;
/// Most listeners per shard (listener index lives in 24 − 8 bits).
pub const LISTENERS_MAX: usize = 64;

/// A descriptor as the ring addresses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fd {
    /// Index in the ring's fixed-file table (a direct descriptor).
    Fixed(u32),
    Raw(RawFd),
}

/// One completion, copied out of the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    pub fn buffer_id(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }
}

#[repr(C)]
struct AcceptAddr {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

/// The msghdr and iovecs of one gathered send, kept until its completion.
#[repr(C)]
struct SendMsg {
    hdr: libc::msghdr,
    iov: [libc::iovec; GATHER_MAX],
}

// SAFETY: the raw pointers inside point into the same Ring's send arena and
// this struct; they are only dereferenced by the kernel while the Ring (and
// so both allocations) is alive, and the Ring moves between threads whole.
unsafe impl Send for SendMsg {}

/// A shard's io_uring and the memory its operations use.
pub struct Ring {
    // Field order matters: `uring` drops first, so the kernel is done with
    // the memory below before it is freed.
    uring: IoUring,
    pub sends: SendPool,
    /// One per send chunk, indexed by the queue's head chunk.
    send_msgs: Box<[SendMsg]>,
    pub recv: RecvBuffers,
    accept_addrs: Box<[AcceptAddr]>,
    timespec: Box<types::Timespec>,
    wake_buf: Box<u64>,
    /// Addresses CONNECT reads (load generator); fixed once set.
    connect_targets: Box<[socket2::SockAddr]>,
    /// Operations submitted whose last completion has not arrived.
    pub inflight: usize,
    cqes: Vec<Completion>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("inflight", &self.inflight)
            .finish()
    }
}

/// How to set up a ring.
#[derive(Clone, Copy, Debug)]
pub struct RingSetup {
    pub sq_entries: u32,
    pub cq_entries: u32,
    /// Fixed-file table size (fast mode), or `None` for regular fds.
    pub fixed_files: Option<u32>,
    /// Use a registered buffer ring (fast) rather than PROVIDE_BUFFERS.
    pub buf_ring: bool,
    pub recv_buffers: u16,
    pub send_chunks: u32,
    pub listeners: usize,
}

fn fixed(entry: squeue::Entry, fd: Fd) -> squeue::Entry {
    match fd {
        Fd::Fixed(_) => entry.flags(squeue::Flags::FIXED_FILE),
        Fd::Raw(_) => entry,
    }
}

fn raw(fd: Fd) -> types::Fd {
    match fd {
        Fd::Fixed(i) => types::Fd(i as RawFd),
        Fd::Raw(f) => types::Fd(f),
    }
}

/// Builds the ring. On 6.1+ it is single-issuer with deferred task work:
/// completions are run only when the owning thread waits for them, in one
/// batch, instead of interrupting it for each. The ring must then be created,
/// registered and used on one thread. Older kernels get a plain ring.
fn build_uring(setup: &RingSetup) -> io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_cqsize(setup.cq_entries)
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Pending task work shows in the SQ flags: a thread driving several
        // rings sees which to enter without entering each.
        .setup_taskrun_flag()
        .build(setup.sq_entries);
    match deferred {
        Ok(uring) => Ok(uring),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(setup.cq_entries)
            .build(setup.sq_entries),
        Err(e) => Err(e),
    }
}

impl Ring {
    /// A ring for the calling thread (the only thread that may use it).
    pub fn new(setup: RingSetup) -> io::Result<Ring> {
        assert!(setup.listeners <= LISTENERS_MAX);
        let uring = build_uring(&setup)?;
        if !uring.params().is_feature_nodrop() {
            return Err(io::Error::other(
                "io_uring lacks IORING_FEAT_NODROP (kernel < 5.5)",
            ));
        }
        if let Some(n) = setup.fixed_files {
            uring.submitter().register_files_sparse(n)?;
        }
        let recv = RecvBuffers::new(setup.recv_buffers, setup.buf_ring.then_some(&uring))?;
        let addrs = setup.listeners * ACCEPTS_PER_LISTENER as usize;
        let mut ring = Ring {
            uring,
            sends: SendPool::new(setup.send_chunks),
            // SAFETY: msghdr and iovec are plain C data for which all-zero
            // bytes are a valid value (null pointers, zero lengths).
            send_msgs: (0..setup.send_chunks)
                .map(|_| unsafe { std::mem::zeroed() })
                .collect(),
            recv,
            // SAFETY: sockaddr_storage and socklen_t are plain C data for
            // which all-zero bytes are a valid value.
            accept_addrs: (0..addrs).map(|_| unsafe { std::mem::zeroed() }).collect(),
            timespec: Box::new(types::Timespec::new()),
            wake_buf: Box::new(0),
            connect_targets: Box::new([]),
            inflight: 0,
            cqes: Vec::with_capacity(setup.cq_entries as usize),
        };
        if !setup.buf_ring {
            ring.provide_all_buffers()?;
        }
        Ok(ring)
    }

    /// Pushes one SQE, submitting first if the SQ is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // Entries built here point only at memory `self` owns (send
            // arena and msghdrs, receive arena, accept and connect addresses,
            // timespec, wake counter), at `'static` memory (CLOSE frames),
            // or at nothing.
            // SAFETY: that memory lives until the ring is dropped, and the
            // ring (field order, and Drop's leak when ops are in flight)
            // goes first.
            let pushed = unsafe { self.uring.submission().push(&entry) };
            if pushed.is_ok() {
                self.inflight += 1;
                return Ok(());
            }
            self.uring.submit()?;
        }
    }

    fn provide_all_buffers(&mut self) -> io::Result<()> {
        let count = self.recv.count();
        let addr = self.recv.addr(0);
        let entry = opcode::ProvideBuffers::new(addr, BUF_LEN as i32, count, BGID, 0)
            .build()
            .user_data(UserData::new(Op::ProvideBuffers, 0, 0).encode());
        self.push(entry)
    }

    /// Returns receive buffer `bid` to the kernel.
    pub fn return_buffer(&mut self, bid: u16) -> io::Result<()> {
        if self.recv.is_ring() {
            self.recv.give_back(bid);
            return Ok(());
        }
        let addr = self.recv.addr(bid);
        let entry = opcode::ProvideBuffers::new(addr, BUF_LEN as i32, 1, BGID, bid)
            .build()
            .user_data(UserData::new(Op::ProvideBuffers, 0, 0).encode());
        self.push(entry)
    }

    /// Multishot accept; with `direct`, into an auto-allocated fixed slot.
    pub fn accept_multi(&mut self, listener: RawFd, index: u32, direct: bool) -> io::Result<()> {
        // The kernel rejects SOCK_CLOEXEC with a direct descriptor (EINVAL):
        // a fixed-file slot has no fd to close on exec.
        let flags = if direct { 0 } else { libc::SOCK_CLOEXEC };
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(direct)
            .flags(flags)
            .build()
            .user_data(UserData::new(Op::AcceptMulti, index, 0).encode());
        self.push(entry)
    }

    /// Single-shot accept that records the peer address in buffer `addr`.
    pub fn accept(
        &mut self,
        listener: RawFd,
        index: u32,
        addr: u32,
        direct: bool,
    ) -> io::Result<()> {
        let a = &mut self.accept_addrs[(index * ACCEPTS_PER_LISTENER + addr) as usize];
        a.len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        let storage = std::ptr::addr_of_mut!(a.storage).cast::<libc::sockaddr>();
        let mut op = opcode::Accept::new(types::Fd(listener), storage, &mut a.len);
        if direct {
            op = op.file_index(Some(types::DestinationSlot::auto_target()));
        } else {
            op = op.flags(libc::SOCK_CLOEXEC);
        }
        let ud = UserData::new(Op::Accept, (index << 8) | addr, 0);
        self.push(op.build().user_data(ud.encode()))
    }

    /// The peer address a completed single-shot accept wrote.
    pub fn accept_peer(&self, index: u32, addr: u32) -> Option<SocketAddr> {
        let a = &self.accept_addrs[(index * ACCEPTS_PER_LISTENER + addr) as usize];
        socket2_addr(&a.storage, a.len)
    }

    /// Receive into a kernel-picked buffer: multishot (fast) or single-shot.
    pub fn recv(&mut self, fd: Fd, slot: u32, generation: u32, multishot: bool) -> io::Result<()> {
        let entry = if multishot {
            opcode::RecvMulti::new(raw(fd), BGID).build()
        } else {
            opcode::Recv::new(raw(fd), std::ptr::null_mut(), BUF_LEN as u32)
                .buf_group(BGID)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT)
        };
        let ud = UserData::new(Op::Recv, slot, generation);
        self.push(fixed(entry, fd).user_data(ud.encode()))
    }

    /// Sends the unsent part of `slot`'s queue, up to [`GATHER_MAX`] chunks
    /// in one SENDMSG.
    pub fn send(&mut self, fd: Fd, slot: u32, generation: u32, head: u32) -> io::Result<()> {
        let mut pieces = [(0, 0); GATHER_MAX];
        let n = self.sends.start_send(head, &mut pieces);
        assert!(n > 0, "send of an empty queue");
        let base = self.sends.arena().as_ptr();
        let ud = UserData::new(Op::Send, slot, generation);
        if n == 1 {
            // One piece (a PONG, a WELCOME): plain SEND, no msghdr for the
            // kernel to copy (SENDMSG's header copy showed in the profile).
            let (at, len) = pieces[0];
            // SAFETY: `at + len` lies within the arena (see below).
            let ptr = unsafe { base.add(at) };
            let entry = opcode::Send::new(raw(fd), ptr, len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build();
            return self.push(fixed(entry, fd).user_data(ud.encode()));
        }
        let msg = &mut self.send_msgs[head as usize];
        for (iov, &(at, len)) in msg.iov.iter_mut().zip(&pieces[..n]) {
            // SAFETY: `at + len` lies within the arena (SendPool hands out
            // ranges of its own chunks), so the pointer stays in bounds.
            iov.iov_base = unsafe { base.add(at) }.cast_mut().cast();
            iov.iov_len = len;
        }
        msg.hdr.msg_iov = msg.iov.as_mut_ptr();
        msg.hdr.msg_iovlen = n;
        let entry = opcode::SendMsg::new(raw(fd), &msg.hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        self.push(fixed(entry, fd).user_data(ud.encode()))
    }

    /// Sends `bytes`, which live for the whole program (a connection's
    /// CLOSE frame: it must not depend on the send arena having room).
    pub fn send_static(
        &mut self,
        fd: Fd,
        slot: u32,
        generation: u32,
        bytes: &'static [u8],
    ) -> io::Result<()> {
        let entry = opcode::Send::new(raw(fd), bytes.as_ptr(), bytes.len() as u32)
            .flags(libc::MSG_NOSIGNAL)
            .build();
        let ud = UserData::new(Op::CloseFrame, slot, generation);
        self.push(fixed(entry, fd).user_data(ud.encode()))
    }

    /// Sets the addresses [`Ring::connect`] may target. Only while no
    /// CONNECT is in flight (the kernel reads them until completion).
    pub fn set_connect_targets(&mut self, targets: &[SocketAddr]) {
        assert_eq!(self.inflight, 0, "targets change under a CONNECT");
        self.connect_targets = targets.iter().map(|&a| a.into()).collect();
    }

    /// Connects `fd` to connect target `target`.
    pub fn connect(&mut self, fd: Fd, slot: u32, generation: u32, target: u32) -> io::Result<()> {
        let addr = &self.connect_targets[target as usize];
        let entry = opcode::Connect::new(raw(fd), addr.as_ptr(), addr.len()).build();
        let ud = UserData::new(Op::Connect, slot, generation);
        self.push(fixed(entry, fd).user_data(ud.encode()))
    }

    /// Puts an open descriptor into fixed-file slot `slot`; the caller may
    /// then close its fd (the table holds its own reference).
    pub fn install_fixed(&mut self, slot: u32, fd: RawFd) -> io::Result<()> {
        let n = self.uring.submitter().register_files_update(slot, &[fd])?;
        if n != 1 {
            return Err(io::Error::other("fixed-file update took no file"));
        }
        Ok(())
    }

    /// Cancels the operation whose user_data is `target`.
    pub fn cancel(&mut self, target: UserData) -> io::Result<()> {
        let ud = UserData::new(Op::Cancel, target.slot, target.generation);
        self.push(
            opcode::AsyncCancel::new(target.encode())
                .build()
                .user_data(ud.encode()),
        )
    }

    /// Closes a connection's descriptor.
    pub fn close(&mut self, fd: Fd, slot: u32, generation: u32) -> io::Result<()> {
        let entry = match fd {
            Fd::Fixed(i) => opcode::Close::new(types::Fixed(i)).build(),
            Fd::Raw(f) => opcode::Close::new(types::Fd(f)).build(),
        };
        let ud = UserData::new(Op::Close, slot, generation);
        self.push(entry.user_data(ud.encode()))
    }

    /// Arms the tick timer to fire after `after`.
    pub fn tick_after(&mut self, after: Duration) -> io::Result<()> {
        *self.timespec = types::Timespec::from(after);
        let ts: *const types::Timespec = &*self.timespec;
        let entry = opcode::Timeout::new(ts).build();
        self.push(entry.user_data(UserData::new(Op::Tick, 0, 0).encode()))
    }

    /// Reads the wake eventfd (completes when another thread writes it).
    pub fn wake_read(&mut self, eventfd: RawFd) -> io::Result<()> {
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(eventfd), buf.cast(), 8).build();
        self.push(entry.user_data(UserData::new(Op::Wake, 0, 0).encode()))
    }

    /// Whether [`Ring::submit_and_wait_batched`] can batch (kernel 6.12+,
    /// IORING_FEAT_MIN_TIMEOUT).
    pub fn can_batch_wait(&self) -> bool {
        self.uring.params().is_feature_min_timeout()
    }

    /// Submits and waits for at least `want` completions, then copies every
    /// available completion out. EINTR and EBUSY count as zero waited.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<&[Completion]> {
        let waited = self.uring.submit_and_wait(want);
        self.reap(waited)
    }

    /// Like `submit_and_wait(want)`, except that once `min_wait_us` has
    /// passed, one completion is enough. A busy thread so wakes once per
    /// batch instead of once per completion, and an idle one still sleeps
    /// until its first completion. Without kernel support (see
    /// [`Ring::can_batch_wait`]) it waits for one completion.
    pub fn submit_and_wait_batched(
        &mut self,
        want: usize,
        min_wait_us: u32,
    ) -> io::Result<&[Completion]> {
        if min_wait_us == 0 || want <= 1 || !self.can_batch_wait() {
            return self.submit_and_wait(1);
        }
        let args = types::SubmitArgs::new().min_wait_usec(min_wait_us);
        let waited = self.uring.submitter().submit_with_args(want, &args);
        self.reap(waited)
    }

    /// Has the kernel signal `eventfd` for every completion it posts or
    /// queues as task work (a thread driving several rings sleeps on it).
    pub fn notify(&self, eventfd: RawFd) -> io::Result<()> {
        self.uring.submitter().register_eventfd(eventfd)
    }

    /// Turns the [`Ring::notify`] signals on (before its thread sleeps) or
    /// off (while it is awake and will look anyway: each signal costs the
    /// kernel a wake-up check). After turning them on, check
    /// [`Ring::has_work`] before sleeping: what came while they were off
    /// signalled nothing.
    pub fn set_notify(&mut self, on: bool) {
        let cq = self.uring.completion();
        if on {
            cq.enable_eventfd();
            // The kernel sets a flag, then reads ours; we wrote ours and
            // read its flags next: a full fence on both sides.
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        } else {
            cq.disable_eventfd();
        }
    }

    /// Whether entering would find something: SQEs to submit, task work
    /// to run (deferred completions), completions ready or overflowed.
    /// Reads shared ring memory only; no syscall.
    pub fn has_work(&mut self) -> bool {
        let (taskrun, overflow, unsubmitted) = {
            let sq = self.uring.submission();
            (sq.taskrun(), sq.cq_overflow(), !sq.is_empty())
        };
        taskrun || overflow || unsubmitted || !self.uring.completion().is_empty()
    }

    /// Submits, runs pending task work (deferred completions of data that
    /// already reached the kernel) and copies out what is ready, without
    /// waiting: a zero timeout makes the enter carry GETEVENTS. When nothing
    /// has completed that enter walks the kernel's wait path and arms a
    /// timer; entering with no minimum instead costs a group thread less
    /// CPU per accepted client but lets it block on its eventfd seven
    /// times as often in a connect storm, each a wake-up the clients' core
    /// pays for (measured: docs/BENCH.md, bench/experiments/).
    pub fn reap_ready(&mut self) -> io::Result<&[Completion]> {
        let zero = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&zero);
        let waited = self.uring.submitter().submit_with_args(1, &args);
        self.reap(waited)
    }

    fn reap(&mut self, waited: io::Result<usize>) -> io::Result<&[Completion]> {
        match waited {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::ETIME)
                ) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        for cqe in self.uring.completion() {
            if !cqueue::more(cqe.flags()) {
                self.inflight -= 1;
            }
            self.cqes.push(Completion {
                user_data: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
        Ok(&self.cqes)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.inflight > 0 {
            // The kernel may still write into our buffers after the ring fd
            // closes; leak them rather than free memory in use.
            tracing::warn!(
                inflight = self.inflight,
                "ring dropped with operations in flight; leaking its buffers"
            );
            let sends = std::mem::replace(&mut self.sends, SendPool::new(1));
            std::mem::forget(sends);
            std::mem::forget(std::mem::take(&mut self.send_msgs));
            let addrs = std::mem::take(&mut self.accept_addrs);
            std::mem::forget(addrs);
            let recv = RecvBuffers::new(1, None).expect("plain buffers");
            std::mem::forget(std::mem::replace(&mut self.recv, recv));
            std::mem::forget(std::mem::replace(
                &mut self.timespec,
                Box::new(types::Timespec::new()),
            ));
            std::mem::forget(std::mem::replace(&mut self.wake_buf, Box::new(0)));
            std::mem::forget(std::mem::take(&mut self.connect_targets));
        }
    }
}

fn socket2_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    // SAFETY: `storage` is a sockaddr_storage the kernel filled with `len`
    // valid bytes (len ≤ its size, checked by SockAddr::new's contract).
    let addr = unsafe { socket2::SockAddr::new(*storage, len) };
    addr.as_socket()
}

/// A new eventfd for waking a shard's ring from another thread.
pub fn eventfd() -> io::Result<std::fs::File> {
    // SAFETY: eventfd takes no pointers; a non-negative result is a new fd.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(std::fs::File::from(unsafe {
        <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
    }))
}

/// Closes a compat-mode connection's descriptor outside the ring: a shard
/// whose ring failed cannot queue the close, and a socket left open would
/// keep its client connected to no one until the process exits.
pub fn close_raw(fd: std::os::fd::RawFd) {
    assert!(fd >= 0, "no descriptor to close");
    // SAFETY: the caller owns `fd` (a compat slot's accepted socket) and
    // forgets it; the OwnedFd closes it once, here.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft
/// limit. The fixed-file table of each ring is capped by it.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Sets an IPPROTO_TCP option that socket2 does not have.
pub fn set_tcp_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a valid c_int for the call's duration; the kernel
    // copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads an IPPROTO_TCP option that socket2 does not have (tests check what
/// the listener set).
#[cfg(test)]
pub fn tcp_option(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid and writable for the call's
    // duration, and `len` is `value`'s size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}
