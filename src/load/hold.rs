//! A held storm (`--hold-server`): the server process is stopped
//! (SIGSTOP) while every client connects and says HELLO, then resumed.
//!
//! A stopped process still has its listening sockets: the kernel completes
//! each handshake and queues the connection, with its HELLO, in the
//! listener's accept queue. On resume the server finds the whole storm
//! waiting, so the time until the last client is answered is the server's
//! own accept-and-answer rate. In a plain storm it is the load generator's
//! connect rate whenever the server keeps up (on a small box the clients'
//! core runs out first).
//!
//! The stop is undone on every path the load generator lives through:
//! [`Held`] resumes the server when it is dropped (an error, a panic), and
//! SIGINT, SIGTERM or SIGHUP resume it before the load generator exits. Only
//! SIGKILL leaves it stopped; the project's scripts send SIGCONT before they
//! kill a server.

use std::process::Command;
use std::time::Duration;

/// The longest a held storm keeps the server stopped: clients a full accept
/// queue turned away retry their SYN after 1 s, 3 s, 7 s, so waiting longer
/// would only time the kernel's retries. Half the run at most, so that the
/// rest of the run can see every client answered.
pub fn hold_max(run: Duration) -> Duration {
    Duration::from_secs(5).min(run / 2)
}

/// A server process stopped by this load generator.
#[derive(Debug)]
pub struct Held {
    pid: u32,
    stopped: bool,
}

impl Held {
    /// Stops `pid` (SIGSTOP). From here until the process exits, SIGINT,
    /// SIGTERM or SIGHUP to the load generator resume the server before
    /// the load generator exits (status 130): an interrupted run must not
    /// leave it stopped.
    pub fn stop(pid: u32) -> std::io::Result<Held> {
        resume_on_interrupt(pid)?;
        signal(pid, "-STOP")?;
        Ok(Held { pid, stopped: true })
    }

    /// Resumes the server (SIGCONT); once.
    pub fn resume(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.stopped) {
            signal(self.pid, "-CONT")?;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Err(e) = self.resume() {
            eprintln!("ringbeat-load: could not resume server {}: {e}", self.pid);
        }
    }
}

fn resume_on_interrupt(pid: u32) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("hold-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                let resumed = signal(pid, "-CONT");
                eprintln!(
                    "ringbeat-load: signal {sig}: server {pid} resumed ({resumed:?}); exiting"
                );
                std::process::exit(130);
            }
        })?;
    Ok(())
}

fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("kill {sig} {pid}: {status}")));
    }
    Ok(())
}

/// A process's state letter from /proc/PID/stat (`T` when stopped).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the state follows its ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_process_is_stopped_and_resumed_when_dropped() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let held = Held::stop(pid).unwrap();
        let stopped = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            process_state(pid) == Some('T')
        });
        drop(held);
        let resumed = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            process_state(pid) == Some('S')
        });
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(stopped, "SIGSTOP did not stop the process");
        assert!(resumed, "dropping the hold did not resume the process");
    }

    #[test]
    fn stopping_a_process_that_is_gone_is_an_error() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(Held::stop(pid).is_err());
    }
}
