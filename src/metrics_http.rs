//! `GET /metrics` (Prometheus text) and `GET /healthz` over HTTP/1.1, served
//! by hyper on a current-thread tokio runtime in one background thread. Many
//! connections are served at once, each within a whole-request deadline and
//! a bounded buffer, and the number of connections is capped: a slow or idle
//! client cannot blind monitoring, and the endpoint cannot stall a shard.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::stats::Stats;

/// Connections served at once; more are closed at once and counted.
pub const CONNECTIONS_MAX: usize = 512;
/// Everything about one connection (headers, answer) must be done by then.
pub const REQUEST_DEADLINE_MS: u64 = 5_000;
/// The request head must have arrived by then.
pub const HEADER_READ_TIMEOUT_MS: u64 = 2_000;
/// Read buffer per connection, which bounds the request head.
pub const REQUEST_BUF_MAX_BYTES: usize = 16 * 1024;
/// Pause after a failed accept (EMFILE, ...) so the loop does not spin.
const ACCEPT_ERROR_PAUSE_MS: u64 = 50;

const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The endpoint's own bounds; tests lower them.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub connections_max: usize,
    pub request_deadline_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections_max: CONNECTIONS_MAX,
            request_deadline_ms: REQUEST_DEADLINE_MS,
        }
    }
}

/// What the endpoint shares between connections.
#[derive(Debug)]
struct Endpoint {
    stats: Arc<Stats>,
    /// Connections closed unanswered because [`Limits::connections_max`] were open.
    refused: AtomicU64,
    /// Connections cut at [`Limits::request_deadline_ms`].
    timed_out: AtomicU64,
    /// Connections hyper ended with an error: a bad or oversized request
    /// head, a head not in within [`HEADER_READ_TIMEOUT_MS`], a client gone.
    failed: AtomicU64,
}

/// Binds `addr` and serves the metrics page from a background thread.
pub fn spawn(addr: SocketAddr, stats: Arc<Stats>) -> std::io::Result<SocketAddr> {
    spawn_with(addr, stats, Limits::default())
}

/// [`spawn`] with explicit limits.
pub fn spawn_with(
    addr: SocketAddr,
    stats: Arc<Stats>,
    limits: Limits,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let endpoint = Arc::new(Endpoint {
        stats,
        refused: AtomicU64::new(0),
        timed_out: AtomicU64::new(0),
        failed: AtomicU64::new(0),
    });
    std::thread::Builder::new()
        .name("ringbeat-metrics".into())
        .spawn(move || runtime.block_on(serve(listener, endpoint, limits)))?;
    Ok(local)
}

async fn serve(listener: std::net::TcpListener, endpoint: Arc<Endpoint>, limits: Limits) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "metrics endpoint cannot start");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(limits.connections_max));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_PAUSE_MS)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            endpoint.refused.fetch_add(1, Ordering::Relaxed);
            continue; // dropping the stream closes it
        };
        let deadline = Duration::from_millis(limits.request_deadline_ms);
        tokio::spawn(connection(stream, endpoint.clone(), deadline, slot));
    }
}

async fn connection(
    stream: TcpStream,
    endpoint: Arc<Endpoint>,
    deadline: Duration,
    _slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let ep = endpoint.clone();
    let service = service_fn(move |req| {
        let answer = respond(&req, &ep);
        async move { Ok::<_, Infallible>(answer) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
        .max_buf_size(REQUEST_BUF_MAX_BYTES)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(deadline, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            endpoint.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "metrics request failed");
        }
        Err(_) => {
            endpoint.timed_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn respond(req: &Request<Incoming>, endpoint: &Endpoint) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, METRICS_CONTENT_TYPE, render(endpoint)),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /metrics\n".to_owned(),
        ),
    };
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer
        .headers_mut()
        .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
    answer
}

/// The shards' metrics plus the endpoint's own counters, before `# EOF`.
fn render(endpoint: &Endpoint) -> String {
    let mut out = endpoint.stats.render();
    if out.ends_with("# EOF\n") {
        out.truncate(out.len() - "# EOF\n".len());
    }
    let own = [
        (
            "ringbeat_metrics_connections_refused",
            "Metrics connections closed unanswered: too many open",
            &endpoint.refused,
        ),
        (
            "ringbeat_metrics_requests_timed_out",
            "Metrics connections cut at the request deadline",
            &endpoint.timed_out,
        ),
        (
            "ringbeat_metrics_requests_failed",
            "Metrics connections ended by a bad, oversized or slow request head, or the client leaving",
            &endpoint.failed,
        ),
    ];
    for (name, help, n) in own {
        let n = n.load(Ordering::Relaxed);
        out.push_str(&format!(
            "# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total {n}\n"
        ));
    }
    out.push_str("# EOF\n");
    out
}
