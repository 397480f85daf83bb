//! `ringbeat serve` as a child process: its own descriptor table (so the
//! test process can hold as many client sockets as the server holds), an
//! optional `prlimit` to shrink its nofile, and what it logged.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::SLACK;

pub const BIN: &str = env!("CARGO_BIN_EXE_ringbeat");

/// A running `ringbeat serve` child and the addresses it logged.
pub struct Running {
    pub child: Child,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `ringbeat serve` on ephemeral ports with 2 shards and `extra`
/// flags; with `nofile`, under that RLIMIT_NOFILE (soft and hard).
pub fn spawn_server_limited(extra: &[&str], nofile: Option<u32>) -> Running {
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = cmd
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
        ])
        .args(["--shards", "2"])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ringbeat");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut listen, mut metrics) = (None, None);
    while listen.is_none() || metrics.is_none() {
        let line = lines.next().expect("server exited early").unwrap();
        if let Some(rest) = line
            .split("addr=")
            .nth(1)
            .filter(|_| line.contains("listening"))
        {
            listen = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
        if let Some(rest) = line.split("http://").nth(1) {
            metrics = rest.split('/').next().and_then(|a| a.parse().ok());
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    Running {
        child,
        listen: listen.unwrap(),
        metrics: metrics.unwrap(),
    }
}

pub fn spawn_server(extra: &[&str]) -> Running {
    spawn_server_limited(extra, None)
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(SLACK)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// One series of the child's `/metrics` (0 when absent).
pub fn child_metric(addr: SocketAddr, series: &str) -> u64 {
    http_get(addr, "/metrics")
        .lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Waits for the child to exit; returns its code and how long it took.
pub fn wait_exit(child: &mut Child) -> (Option<i32>, Duration) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status.code(), started.elapsed());
        }
        if started.elapsed() > SLACK * 2 {
            let _ = child.kill();
            panic!("server did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends SIGTERM with the `kill` command (tests stay free of `unsafe`).
pub fn sigterm(pid: u32) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    status.code().unwrap_or(-1)
}
