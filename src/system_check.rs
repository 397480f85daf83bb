//! `ringbeat check-system`: what would stop this machine from holding N
//! connections, and the fix for each. [`Inputs::gather`] reads the facts
//! (rlimits, sysctls, memory, io_uring features); [`report`] is pure and
//! turns facts and a [`Target`] into findings, so tests feed it any machine.

use std::fmt::Write as _;
use std::path::Path;

use crate::config::IoMode;
use crate::ring::Features;

/// Kernel memory of one idle TCP socket (socket, tcp_sock, file, inode,
/// dentry, epoll-free): ≈ 4.5 KB measured on loopback (docs/DESIGN.md).
pub const KERNEL_BYTES_PER_CONN: u64 = 4608;
/// User-space bytes per connection: the conn_table arrays (~30 B) plus
/// touched pages of pools; measured ~87 B of RSS at 60K connections.
pub const USER_BYTES_PER_CONN: u64 = 128;
/// Kernel TCP buffer memory one connection may hold under a burst (one
/// small skb queued): what `net.ipv4.tcp_mem` must leave room for.
pub const TCP_MEM_BYTES_PER_CONN: u64 = 1024;
/// Descriptors the server keeps for listeners, eventfds, logs.
pub const RESERVED_FDS: u64 = 64;
/// Entries of one ring's fixed-file table at most (IORING_MAX_FIXED_FILES).
pub const FIXED_FILES_MAX: u64 = 1 << 20;
/// A listen backlog below this overflows when many clients reconnect.
pub const BACKLOG_MIN: u64 = 4096;
/// Sockets per established-hash bucket above which lookups slow down.
const EHASH_SOCKETS_PER_BUCKET_MAX: f64 = 2.0;
/// Locked memory one shard's ring needs on kernels that charge io_uring to
/// RLIMIT_MEMLOCK (< 5.12): SQ/CQ rings plus default receive buffers.
pub const RING_LOCKED_BYTES: u64 = 2048 * 64 + 16_384 * 16 + 512 * 2048;

/// An rlimit; `u64::MAX` is unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub soft: u64,
    pub hard: u64,
}

/// Facts about this machine. `None`: could not be read (reported as such).
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub nofile: Option<Limit>,
    pub memlock: Option<Limit>,
    pub nr_open: Option<u64>,
    pub file_max: Option<u64>,
    pub somaxconn: Option<u64>,
    pub tcp_max_syn_backlog: Option<u64>,
    /// `net.ipv4.tcp_mem` in pages: min, pressure, max.
    pub tcp_mem_pages: Option<[u64; 3]>,
    pub port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_ehash_entries` (5.19+): buckets of the established
    /// hash, negative when this netns shares the global one.
    pub tcp_ehash_entries: Option<i64>,
    /// `kernel.io_uring_disabled` (6.6+; absent before).
    pub io_uring_disabled: Option<u64>,
    pub mem_available_bytes: Option<u64>,
    pub page_bytes: u64,
    pub features: Features,
}

/// What the machine should hold.
#[derive(Clone, Copy, Debug)]
pub struct Target {
    pub connections: u64,
    pub shards: usize,
    pub io_mode: IoMode,
    /// The clients run on this machine too (load tests): their sockets cost
    /// kernel memory and ephemeral ports here.
    pub local_clients: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Ok,
    Warn,
    Block,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Block => "BLOCK",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub check: &'static str,
    pub status: Status,
    pub detail: String,
    pub fix: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub target: Target,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True if something stops the machine from holding the target.
    pub fn blocked(&self) -> bool {
        self.findings.iter().any(|f| f.status == Status::Block)
    }

    pub fn finding(&self, check: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.check == check)
    }

    /// The text the command prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "ringbeat check-system: {} connections, {} shards{}\n",
            self.target.connections,
            self.target.shards,
            if self.target.local_clients {
                ", clients on this machine"
            } else {
                ""
            }
        );
        for f in &self.findings {
            let _ = writeln!(
                out,
                "[{:>5}] {:<12} {}",
                f.status.label(),
                f.check,
                f.detail
            );
            if let Some(fix) = &f.fix {
                let _ = writeln!(out, "        {:<12} fix: {fix}", "");
            }
        }
        let verdict = if self.blocked() {
            "BLOCKED: fix the BLOCK lines first"
        } else if self.findings.iter().any(|f| f.status == Status::Warn) {
            "can hold the target; WARN lines are risks under load"
        } else {
            "can hold the target"
        };
        let _ = writeln!(out, "{verdict}");
        out
    }
}

fn finding(check: &'static str, status: Status, detail: String, fix: Option<String>) -> Finding {
    Finding {
        check,
        status,
        detail,
        fix,
    }
}

fn unknown(check: &'static str, what: &str) -> Finding {
    finding(check, Status::Warn, format!("could not read {what}"), None)
}

/// Checks `inputs` against `target`.
pub fn report(inputs: &Inputs, target: &Target) -> Report {
    let (io, fast) = check_io_uring(inputs, target);
    let findings = vec![
        io,
        check_nofile(inputs, target, fast),
        check_nr_open(inputs, target, fast),
        check_file_max(inputs, target),
        check_memory(inputs, target),
        check_memlock(inputs, target),
        check_tcp_mem(inputs, target),
        check_backlog(inputs),
        check_port_range(inputs, target),
        check_ehash(inputs, target),
    ];
    Report {
        target: *target,
        findings,
    }
}

/// The io_uring finding, and whether fast mode (direct descriptors) runs.
fn check_io_uring(inputs: &Inputs, target: &Target) -> (Finding, bool) {
    let f = &inputs.features;
    let check = "io_uring";
    if inputs.io_uring_disabled == Some(2) || !f.io_uring {
        let fix = "kernel 5.10+ with io_uring; `sysctl -w kernel.io_uring_disabled=0`; \
                   allow io_uring_setup/enter/register in seccomp or the container policy";
        let detail = format!("io_uring is not available (kernel {})", f.kernel_release);
        return (
            finding(check, Status::Block, detail, Some(fix.into())),
            false,
        );
    }
    if let Err(why) = f.compat_mode_ready() {
        let fix = "run on kernel 5.10 or newer";
        return (finding(check, Status::Block, why, Some(fix.into())), false);
    }
    let fast_ready = f.fast_mode_ready();
    match (target.io_mode, fast_ready) {
        (IoMode::Compat, _) => {
            let detail = "compat mode (forced): every connection is a file descriptor".into();
            (finding(check, Status::Ok, detail, None), false)
        }
        (_, Ok(())) => {
            let detail = format!("fast mode: {}", f.summary());
            (finding(check, Status::Ok, detail, None), true)
        }
        (mode, Err(why)) => {
            let status = if mode == IoMode::Fast {
                Status::Block
            } else {
                Status::Warn
            };
            let detail = format!("{why}: compat mode, every connection is a file descriptor");
            let fix = "kernel 6.0+ for multishot recv, buffer rings and direct descriptors";
            (finding(check, status, detail, Some(fix.into())), false)
        }
    }
}

fn check_nofile(inputs: &Inputs, target: &Target, fast: bool) -> Finding {
    let check = "nofile";
    let Some(limit) = inputs.nofile else {
        return unknown(check, "RLIMIT_NOFILE");
    };
    let n = target.connections;
    // The server raises the soft limit to the hard one at start.
    let usable = limit.hard.saturating_sub(RESERVED_FDS);
    let (capacity, how) = if fast {
        let per_ring = usable.min(FIXED_FILES_MAX);
        let capacity = per_ring.saturating_mul(target.shards as u64);
        (
            capacity,
            format!("{} rings × {per_ring} direct descriptors", target.shards),
        )
    } else {
        (usable, "one fd per connection".to_owned())
    };
    let detail = format!(
        "hard limit {} (soft {}): {how} = {capacity} connections",
        show(limit.hard),
        show(limit.soft)
    );
    if capacity >= n {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = if fast {
        let per_ring = usable.clamp(1, FIXED_FILES_MAX);
        let shards = n.div_ceil(per_ring);
        let nofile = (n.div_ceil(target.shards as u64) + RESERVED_FDS).min(FIXED_FILES_MAX);
        format!(
            "--shards {shards} (at this limit), or raise the hard limit to {nofile} \
             (systemd LimitNOFILE={nofile}; ulimit -Hn {nofile})"
        )
    } else {
        let nofile = n + RESERVED_FDS;
        format!("raise the hard limit to {nofile} (systemd LimitNOFILE={nofile}; ulimit -Hn {nofile}) and fs.nr_open with it")
    };
    finding(check, Status::Block, detail, Some(fix))
}

fn check_nr_open(inputs: &Inputs, target: &Target, fast: bool) -> Finding {
    let check = "fs.nr_open";
    let Some(nr_open) = inputs.nr_open else {
        return unknown(check, "fs.nr_open");
    };
    let detail = format!("{nr_open}: the most any RLIMIT_NOFILE can be raised to");
    // Fast mode needs nofile ≥ connections per ring, compat ≥ connections.
    let per_process = if fast {
        target.connections.div_ceil(target.shards as u64)
    } else {
        target.connections
    };
    let need = (per_process + RESERVED_FDS).min(if fast { FIXED_FILES_MAX } else { u64::MAX });
    if nr_open >= need {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = format!(
        "sysctl -w fs.nr_open={} (scripts/tune-sysctl.sh)",
        need.next_power_of_two()
    );
    // Fast mode can still get there with more shards.
    let status = if fast { Status::Warn } else { Status::Block };
    finding(check, status, detail, Some(fix))
}

fn check_file_max(inputs: &Inputs, target: &Target) -> Finding {
    let check = "fs.file-max";
    let Some(file_max) = inputs.file_max else {
        return unknown(check, "fs.file-max");
    };
    let need = target.connections * if target.local_clients { 2 } else { 1 };
    let detail = format!("{file_max} open files system-wide; this needs ~{need}");
    if file_max >= need {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = format!(
        "sysctl -w fs.file-max={} (root processes may exceed it; others may not)",
        need * 2
    );
    finding(check, Status::Warn, detail, Some(fix))
}

fn check_memory(inputs: &Inputs, target: &Target) -> Finding {
    let check = "memory";
    let Some(available) = inputs.mem_available_bytes else {
        return unknown(check, "MemAvailable in /proc/meminfo");
    };
    let sides = if target.local_clients { 2 } else { 1 };
    let need = target.connections * (KERNEL_BYTES_PER_CONN * sides + USER_BYTES_PER_CONN);
    let detail = format!(
        "needs ≈ {} ({} B kernel{} + {} B user per connection); {} available",
        gib(need),
        KERNEL_BYTES_PER_CONN,
        if sides == 2 { " × 2 sides" } else { "" },
        USER_BYTES_PER_CONN,
        gib(available)
    );
    let fix = Some(
        "more RAM, fewer connections per box, or smaller socket buffers \
         (the first field of net.ipv4.tcp_rmem / tcp_wmem)"
            .to_owned(),
    );
    if need > available {
        finding(check, Status::Block, detail, fix)
    } else if need > available / 10 * 8 {
        finding(check, Status::Warn, format!("{detail} (over 80%)"), fix)
    } else {
        finding(check, Status::Ok, detail, None)
    }
}

fn check_memlock(inputs: &Inputs, target: &Target) -> Finding {
    let check = "memlock";
    let kernel = inputs.features.kernel;
    if kernel >= (5, 12) {
        let detail = "io_uring memory is charged to the memory cgroup (kernel 5.12+)".into();
        return finding(check, Status::Ok, detail, None);
    }
    let Some(limit) = inputs.memlock else {
        return unknown(check, "RLIMIT_MEMLOCK");
    };
    let need = RING_LOCKED_BYTES * target.shards as u64;
    let detail = format!(
        "kernel {}.{} charges rings to RLIMIT_MEMLOCK: {} shards need ≈ {}, limit {}",
        kernel.0,
        kernel.1,
        target.shards,
        gib(need),
        show(limit.hard)
    );
    if limit.hard >= need {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = "systemd LimitMEMLOCK=infinity (or ulimit -l unlimited)".to_owned();
    finding(check, Status::Block, detail, Some(fix))
}

fn check_tcp_mem(inputs: &Inputs, target: &Target) -> Finding {
    let check = "tcp_mem";
    let Some([min, pressure, max]) = inputs.tcp_mem_pages else {
        return unknown(check, "net.ipv4.tcp_mem");
    };
    let page = inputs.page_bytes.max(1);
    let want_pages = (target.connections * TCP_MEM_BYTES_PER_CONN).div_ceil(page);
    let detail = format!(
        "{min} {pressure} {max} pages: pressure at {}, limit {}; a burst across all connections needs ≈ {}",
        gib(pressure * page),
        gib(max * page),
        gib(want_pages * page)
    );
    if pressure >= want_pages {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = format!(
        "sysctl -w net.ipv4.tcp_mem=\"{} {} {}\" (scripts/tune-sysctl.sh)",
        min.max(want_pages / 2),
        want_pages,
        max.max(want_pages * 3 / 2)
    );
    finding(check, Status::Warn, detail, Some(fix))
}

fn check_backlog(inputs: &Inputs) -> Finding {
    let check = "backlog";
    let (Some(somaxconn), Some(syn)) = (inputs.somaxconn, inputs.tcp_max_syn_backlog) else {
        return unknown(check, "net.core.somaxconn / net.ipv4.tcp_max_syn_backlog");
    };
    let detail = format!(
        "net.core.somaxconn {somaxconn}, net.ipv4.tcp_max_syn_backlog {syn} \
         (the server asks for 65535 per listener)"
    );
    if somaxconn >= BACKLOG_MIN && syn >= BACKLOG_MIN {
        return finding(check, Status::Ok, detail, None);
    }
    let fix = "sysctl -w net.core.somaxconn=65535 net.ipv4.tcp_max_syn_backlog=65535 \
               (a restart makes every client reconnect; a short backlog drops SYNs)";
    finding(check, Status::Warn, detail, Some(fix.into()))
}

fn check_port_range(inputs: &Inputs, target: &Target) -> Finding {
    let check = "port range";
    let Some((lo, hi)) = inputs.port_range else {
        return unknown(check, "net.ipv4.ip_local_port_range");
    };
    let ports = hi.saturating_sub(lo) + 1;
    let detail =
        format!("{lo}-{hi}: {ports} connections per (client address, server address:port)");
    if !target.local_clients || ports >= target.connections {
        let note = if target.local_clients {
            detail
        } else {
            format!("{detail}; limits clients on this box or behind one NAT address")
        };
        return finding(check, Status::Ok, note, None);
    }
    let sources = target.connections.div_ceil(ports.max(1));
    let fix = format!(
        "spread clients over {sources} source addresses (127.0.0.1–127.0.0.{sources}) or \
         as many --listen ports; widen with sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\""
    );
    finding(check, Status::Warn, detail, Some(fix))
}

/// Every inbound segment looks its socket up in the established hash; past
/// about two sockets per bucket the chains become cache misses. Measured at
/// 1M loopback pairs in 262,144 buckets: `__inet_lookup_established` was the
/// top symbol, 14.5% of the server's CPU.
fn check_ehash(inputs: &Inputs, target: &Target) -> Finding {
    let check = "tcp ehash";
    let Some(entries) = inputs.tcp_ehash_entries else {
        return unknown(check, "net.ipv4.tcp_ehash_entries");
    };
    let buckets = entries.unsigned_abs();
    let sockets = target.connections * if target.local_clients { 2 } else { 1 };
    let per_bucket = sockets as f64 / buckets.max(1) as f64;
    let detail = format!("{buckets} buckets: {per_bucket:.1} sockets per bucket at the target");
    if per_bucket <= EHASH_SOCKETS_PER_BUCKET_MAX {
        return finding(check, Status::Ok, detail, None);
    }
    let want = sockets.next_power_of_two();
    let fix = format!(
        "boot with thash_entries={want}, or run in a network namespace created after \
         sysctl -w net.ipv4.tcp_child_ehash_entries={want} (6.1+)"
    );
    finding(check, Status::Warn, detail, Some(fix))
}

fn show(limit: u64) -> String {
    if limit == u64::MAX {
        "unlimited".into()
    } else {
        limit.to_string()
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

impl Inputs {
    /// Reads this machine: /proc/self/limits, /proc/sys, /proc/meminfo, and
    /// an io_uring probe.
    pub fn gather() -> Inputs {
        Inputs::gather_from(Path::new("/proc"), Features::probe())
    }

    /// [`Inputs::gather`] from another proc tree (tests).
    pub fn gather_from(proc: &Path, features: Features) -> Inputs {
        let read = |rel: &str| std::fs::read_to_string(proc.join(rel)).ok();
        let number = |rel: &str| read(rel).and_then(|s| s.trim().parse().ok());
        let numbers = |rel: &str| -> Option<Vec<u64>> {
            read(rel)?
                .split_whitespace()
                .map(|w| w.parse().ok())
                .collect()
        };
        let limits = read("self/limits").unwrap_or_default();
        Inputs {
            nofile: parse_limit(&limits, "Max open files"),
            memlock: parse_limit(&limits, "Max locked memory"),
            nr_open: number("sys/fs/nr_open"),
            file_max: number("sys/fs/file-max"),
            somaxconn: number("sys/net/core/somaxconn"),
            tcp_max_syn_backlog: number("sys/net/ipv4/tcp_max_syn_backlog"),
            tcp_mem_pages: numbers("sys/net/ipv4/tcp_mem").and_then(|v| v.try_into().ok()),
            port_range: numbers("sys/net/ipv4/ip_local_port_range").and_then(|v| match v[..] {
                [lo, hi] => Some((lo, hi)),
                _ => None,
            }),
            tcp_ehash_entries: read("sys/net/ipv4/tcp_ehash_entries")
                .and_then(|s| s.trim().parse().ok()),
            io_uring_disabled: number("sys/kernel/io_uring_disabled"),
            mem_available_bytes: read("meminfo").and_then(|m| parse_meminfo(&m, "MemAvailable")),
            page_bytes: 4096,
            features,
        }
    }
}

/// One row of /proc/self/limits: `Max open files  1024  4096  files`.
fn parse_limit(limits: &str, name: &str) -> Option<Limit> {
    let row = limits.lines().find(|l| l.starts_with(name))?;
    let mut fields = row[name.len()..].split_whitespace();
    let value = |s: &str| match s {
        "unlimited" => Some(u64::MAX),
        s => s.parse().ok(),
    };
    Some(Limit {
        soft: value(fields.next()?)?,
        hard: value(fields.next()?)?,
    })
}

/// A `Name:  123 kB` row of /proc/meminfo, in bytes.
fn parse_meminfo(meminfo: &str, name: &str) -> Option<u64> {
    let row = meminfo.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = row.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests;
