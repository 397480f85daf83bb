//! What this kernel's io_uring can do, probed at start-up: the fast io mode
//! needs multishot accept and recv, a registered buffer ring and direct
//! descriptors; compat mode needs what kernel 5.10 has.

use io_uring::{opcode, IoUring, Probe};

/// io_uring features found on this machine.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Features {
    /// `uname -r`.
    pub kernel_release: String,
    /// (major, minor) parsed from the release.
    pub kernel: (u32, u32),
    /// io_uring_setup works (not disabled by sysctl or seccomp).
    pub io_uring: bool,
    /// Multishot accept (5.19).
    pub multishot_accept: bool,
    /// Multishot recv with provided buffers (6.0).
    pub multishot_recv: bool,
    /// Registered provided-buffer rings (5.19).
    pub buf_ring: bool,
    /// Sparse fixed-file tables with auto-allocated slots (5.19).
    pub direct_descriptors: bool,
    /// PROVIDE_BUFFERS, ACCEPT, RECV, SEND, ASYNC_CANCEL, CLOSE (5.7+).
    pub compat_ops: bool,
}

fn parse_kernel(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let major = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor)
}

impl Features {
    pub fn probe() -> Features {
        let kernel_release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let kernel = parse_kernel(&kernel_release);
        let mut f = Features {
            kernel_release,
            kernel,
            ..Features::default()
        };
        let Ok(ring) = IoUring::new(8) else { return f };
        f.io_uring = true;
        let mut probe = Probe::new();
        if ring.submitter().register_probe(&mut probe).is_err() {
            return f;
        }
        let has = |code: u8| probe.is_supported(code);
        f.compat_ops = [
            opcode::ProvideBuffers::CODE,
            opcode::Accept::CODE,
            opcode::Recv::CODE,
            opcode::Send::CODE,
            opcode::AsyncCancel::CODE,
            opcode::Close::CODE,
            opcode::Timeout::CODE,
            opcode::Read::CODE,
        ]
        .into_iter()
        .all(has);
        // Multishot flags are not opcodes; their kernels first shipped these
        // opcodes, so an opcode probe tells which (backports included).
        let v519 = kernel >= (5, 19) && has(opcode::Socket::CODE);
        let v60 = kernel >= (6, 0) && has(opcode::SendZc::CODE);
        f.multishot_accept = v519;
        f.multishot_recv = v60;
        f.buf_ring = v519;
        f.direct_descriptors = v519 && ring.submitter().register_files_sparse(4).is_ok();
        f
    }

    /// Why fast mode cannot run here, if it cannot.
    pub fn fast_mode_ready(&self) -> Result<(), String> {
        let missing: Vec<&str> = [
            (self.io_uring, "io_uring"),
            (self.multishot_accept, "multishot accept (5.19)"),
            (self.multishot_recv, "multishot recv (6.0)"),
            (self.buf_ring, "buffer rings (5.19)"),
            (self.direct_descriptors, "direct descriptors (5.19)"),
        ]
        .into_iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, name)| name)
        .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "kernel {} lacks {}",
                self.kernel_release,
                missing.join(", ")
            ))
        }
    }

    /// Why compat mode cannot run here, if it cannot.
    pub fn compat_mode_ready(&self) -> Result<(), String> {
        if !self.io_uring {
            return Err("io_uring is not available (kernel < 5.1, or disabled)".into());
        }
        if self.kernel < (5, 10) || !self.compat_ops {
            return Err(format!(
                "kernel {} is older than 5.10 or lacks PROVIDE_BUFFERS/ACCEPT/RECV ops",
                self.kernel_release
            ));
        }
        Ok(())
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "kernel {} io_uring={} multishot_accept={} multishot_recv={} buf_ring={} direct_descriptors={}",
            self.kernel_release,
            self.io_uring,
            self.multishot_accept,
            self.multishot_recv,
            self.buf_ring,
            self.direct_descriptors
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parses() {
        assert_eq!(parse_kernel("6.18.44-fc-v782"), (6, 18));
        assert_eq!(parse_kernel("5.10.0-28-amd64"), (5, 10));
        assert_eq!(parse_kernel("garbage"), (0, 0));
    }

    #[test]
    fn fast_mode_names_what_is_missing() {
        let f = Features {
            kernel_release: "5.10.0".into(),
            kernel: (5, 10),
            io_uring: true,
            compat_ops: true,
            ..Features::default()
        };
        let why = f.fast_mode_ready().unwrap_err();
        assert!(why.contains("multishot recv"), "{why}");
        assert!(f.compat_mode_ready().is_ok());
    }
}
