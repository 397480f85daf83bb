//! A real `nats-server -js` per test (a free loopback port, a temporary
//! store), and a stock NATS subscriber: what the cluster tests share.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

pub fn nats_server_bin() -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(p) = std::env::var("NATS_SERVER") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push("nats-server".into());
    if let Ok(out) = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
    {
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        candidates.push(PathBuf::from(dir).join("nats-server"));
    }
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(PathBuf::from(home).join(".local/bin/nats-server"));
    }
    candidates.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

pub struct Nats {
    bin: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Child,
}

impl Nats {
    pub fn start() -> Option<Nats> {
        let Some(bin) = nats_server_bin() else {
            eprintln!("SKIP: nats-server not found; run `bash scripts/setup.sh`");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = tempfile::tempdir().unwrap();
        let child = Self::spawn(&bin, port, &store);
        Some(Nats {
            bin,
            port,
            store,
            child,
        })
    }

    fn spawn(bin: &PathBuf, port: u16, store: &tempfile::TempDir) -> Child {
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Stops the server and starts it again on the same port with an
    /// empty store (the worst case: every bucket is gone).
    pub fn restart_empty(&mut self, down_for: Duration) {
        self.stop();
        std::thread::sleep(down_for);
        self.store = tempfile::tempdir().unwrap();
        self.resume();
    }

    /// The outage begins: the server is gone, the store stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The outage ends: the same port, the store as it was left.
    pub fn resume(&mut self) {
        self.child = Self::spawn(&self.bin, self.port, &self.store);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A stock NATS subscriber on `ringbeat.presence.>`, collecting JSON.
pub struct Consumer {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl Consumer {
    pub fn start(url: &str) -> Consumer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (url, sink) = (url.to_string(), seen.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let client = async_nats::ConnectOptions::new()
                    .max_reconnects(None)
                    .reconnect_delay_callback(|_| Duration::from_millis(100))
                    .connect(url)
                    .await
                    .unwrap();
                let mut sub = client.subscribe("ringbeat.presence.>").await.unwrap();
                client.flush().await.unwrap();
                ready_tx.send(()).unwrap();
                while let Some(msg) = sub.next().await {
                    let v = serde_json::from_slice(&msg.payload).unwrap();
                    sink.lock().unwrap().push(v);
                }
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Consumer {
            seen,
            _thread: thread,
        }
    }

    pub fn events(&self) -> Vec<serde_json::Value> {
        self.seen.lock().unwrap().clone()
    }
}
