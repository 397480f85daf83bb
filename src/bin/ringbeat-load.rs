//! `ringbeat-load`: simulated heartbeat clients with faults against a
//! ringbeat server on loopback. Prints a progress line each second, stops by
//! itself at `--duration`, and writes the result JSON (schema 3; with
//! `--server-events`, detection quality from the server's events file).

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use ringbeat::load::args::{LoadArgs, LoadConfig};
use ringbeat::load::clients::Wire;
use ringbeat::load::detect;
use ringbeat::load::hold::{self, Held};
use ringbeat::load::report::{Progress, ProgressSum, Tally};
use ringbeat::load::sample::{self, ProcSample};
use ringbeat::load::worker::{self, WorkerSpec};
use ringbeat::ring::Features;
use serde_json::json;

fn main() -> ExitCode {
    let args = LoadArgs::parse();
    let config = match LoadConfig::from_args(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringbeat-load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(Arc::new(config)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ringbeat-load: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Server and kernel readings over the run.
#[derive(Default)]
struct Watch {
    pid: Option<String>,
    server_first: Option<ProcSample>,
    server_last: Option<ProcSample>,
    rss_peak: u64,
    rss_at_peak_live: u64,
    peak_live: u64,
    sock_mem_peak: u64,
    slab_start: u64,
    slab_at_peak_live: u64,
    /// Server CPU and answered heartbeats at the start of the steady window
    /// and at the latest sample.
    steady_first: Option<Mark>,
    steady_last: Option<Mark>,
}

/// A point in the run: seconds since start, server process, answered PINGs.
#[derive(Clone, Copy)]
struct Mark {
    at_s: f64,
    server: ProcSample,
    answered: u64,
}

impl Watch {
    /// Marks the steady window (once `at_s` is past `steady_after`).
    fn mark(&mut self, steady_after: Option<Duration>, at_s: f64, answered: u64) {
        let (Some(after), Some(server)) = (steady_after, self.server_last) else {
            return;
        };
        if at_s < after.as_secs_f64() {
            return;
        }
        let mark = Mark {
            at_s,
            server,
            answered,
        };
        self.steady_first.get_or_insert(mark);
        self.steady_last = Some(mark);
    }

    fn steady_json(&self) -> serde_json::Value {
        let (Some(a), Some(b)) = (self.steady_first, self.steady_last) else {
            return serde_json::Value::Null;
        };
        let seconds = b.at_s - a.at_s;
        let cpu_s =
            (b.server.cpu_user_s + b.server.cpu_sys_s) - (a.server.cpu_user_s + a.server.cpu_sys_s);
        let answered = b.answered - a.answered;
        json!({
            "from_s": a.at_s, "seconds": seconds,
            "server_cpu_s": cpu_s, "heartbeats_answered": answered,
            "heartbeats_per_s": answered as f64 / seconds.max(1e-3),
            "server_cores": cpu_s / seconds.max(1e-3),
            "server_cpu_s_per_million_heartbeats": cpu_s / (answered.max(1) as f64) * 1e6,
        })
    }
}

impl Watch {
    fn sample(&mut self, live: u64) {
        let server = self.pid.as_deref().and_then(sample::process);
        if let Some(s) = server {
            self.server_first.get_or_insert(s);
            self.server_last = Some(s);
            self.rss_peak = self.rss_peak.max(s.rss_bytes);
        }
        self.sock_mem_peak = self.sock_mem_peak.max(sample::tcp_mem_bytes().unwrap_or(0));
        if live >= self.peak_live {
            self.peak_live = live;
            self.rss_at_peak_live = server.map_or(0, |s| s.rss_bytes);
            self.slab_at_peak_live = sample::slab_bytes().unwrap_or(0);
        }
    }
}

fn run(config: Arc<LoadConfig>) -> anyhow::Result<bool> {
    let features = Features::probe();
    let fast = !config.args.compat && features.fast_mode_ready().is_ok();
    eprintln!(
        "ringbeat-load: {} clients on {} workers, {} mode ({}), mix {}",
        config.args.clients,
        config.threads,
        if fast { "fast" } else { "compat" },
        features.summary(),
        config.args.mix
    );
    if !fast {
        let nofile = ringbeat::ring::raise_nofile_limit()?;
        anyhow::ensure!(
            config.args.clients + 64 <= nofile,
            "compat mode holds one fd per client: {} clients exceed nofile {nofile}; run several processes",
            config.args.clients
        );
    } else {
        ringbeat::ring::raise_nofile_limit()?;
    }
    let start = Instant::now();
    let start_unix_ms = unix_ms();
    let start_epoch_ms = ringbeat::events::Event::now_ms();
    let stop = Arc::new(AtomicBool::new(false));
    let storm_cpu0_ns = config
        .args
        .server_pid
        .and_then(|p| sample::process_cpu_ns(&p.to_string()));
    let held = match config.args.server_pid.filter(|_| config.args.hold_server) {
        Some(pid) => Some(Held::stop(pid).context("--hold-server")?),
        None => None,
    };
    let (progress, handles) = spawn_workers(&config, fast, start, &stop)?;
    let storm = watch_storm(&config, storm_cpu0_ns, held, progress.clone(), start)?;
    let mut watch = Watch {
        pid: config.args.server_pid.map(|p| p.to_string()),
        slab_start: sample::slab_bytes().unwrap_or(0),
        ..Watch::default()
    };
    let mut last = ProgressSum::default();
    let mut last_at = Instant::now();
    while start.elapsed() < config.args.duration {
        std::thread::sleep(
            Duration::from_secs(1).min(config.args.duration.saturating_sub(start.elapsed())),
        );
        let now = ProgressSum::of(&progress);
        watch.sample(now.live);
        let at_s = start.elapsed().as_secs_f64();
        watch.mark(config.args.steady_after, at_s, now.heartbeats_answered);
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        eprintln!(
            "[{:>5.0}s] connected {:>8} live {:>8} heartbeats/s {:>8.0} answered/s {:>8.0} errors {}",
            start.elapsed().as_secs_f64(),
            now.connected,
            now.live,
            (now.heartbeats_sent - last.heartbeats_sent) as f64 / dt,
            (now.heartbeats_answered - last.heartbeats_answered) as f64 / dt,
            now.errors
        );
        last = now;
        last_at = Instant::now();
    }
    stop.store(true, Ordering::Relaxed);
    let mut tally = Tally::default();
    for h in handles {
        let t = h
            .join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        tally.merge(&t);
    }
    let refined = refine(&config, &mut tally, start_unix_ms);
    let elapsed_s = start.elapsed().as_secs_f64();
    let mut report = build_report(&config, &tally, &watch, elapsed_s);
    report["storm"] = storm
        .join()
        .map_err(|_| anyhow::anyhow!("the storm watcher panicked"))?;
    report["attribution"] = refined;
    if let Some(path) = &config.args.server_events {
        report["detection_quality"] = detection_quality(path, &tally, start_epoch_ms, elapsed_s)?;
    }
    let text = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &config.args.json {
        std::fs::write(path, &text)?;
        eprintln!("ringbeat-load: wrote {}", path.display());
    }
    println!("{text}");
    Ok(tally.false_evictions == 0 && tally.detection_early == 0)
}

/// Reads the server's events file and judges detection by it.
fn detection_quality(
    path: &std::path::Path,
    tally: &Tally,
    start_epoch_ms: u64,
    elapsed_s: f64,
) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--server-events {}", path.display()))?;
    let (events, unparsed) = detect::parse_events(&text, start_epoch_ms);
    let mut q = detect::analyze(&tally.roster, &events, (elapsed_s * 1e9) as u64);
    q["events_read"] = events.len().into();
    q["events_unparsed"] = unparsed.into();
    Ok(q)
}

/// How often the storm watcher looks whether every client was answered.
const STORM_POLL: Duration = Duration::from_millis(1);

/// In a held storm, how long after the last connect the server is resumed:
/// a worker sends a client's HELLO on the pass after its connect completes.
const HELLO_LANDING: Duration = Duration::from_millis(100);

/// The server's CPU over the connect storm: from before the first connect
/// until every client was answered (WELCOME, or an accepting CONNACK), read
/// from schedstat. Unlike the connect rate, which on loopback measures how
/// fast the load generator completes handshakes (the kernel does that
/// before the server calls `accept`) and how much CPU the server leaves it,
/// this is the server's own cost of accepting and serving a client. Null
/// unless it is a storm the server answers (`--server-pid`, every client
/// at once: `--ramp` ≥ `--clients`, and `--hello` or MQTT; otherwise no
/// watcher runs), or if not every client was answered within the run.
///
/// With `held` (`--hold-server`, the server already stopped) the watcher
/// resumes the server once every client connected (or after
/// [`hold::hold_max`]), and times and costs the storm from the resume: the
/// server's own accept rate (`answered_per_s`), see [`hold`].
fn watch_storm(
    config: &Arc<LoadConfig>,
    cpu0_ns: Option<u64>,
    held: Option<Held>,
    progress: Vec<Arc<Progress>>,
    start: Instant,
) -> anyhow::Result<std::thread::JoinHandle<serde_json::Value>> {
    let a = &config.args;
    let answered = a.hello || a.protocol == Wire::Mqtt;
    let storm = a.ramp >= a.clients && answered;
    let (pid, target, duration) = (a.server_pid.filter(|_| storm), a.clients, a.duration);
    let watcher = move || {
        let Some(pid) = pid else {
            return serde_json::Value::Null;
        };
        let (from, cpu0_ns, hold) = match held {
            Some(held) => release(held, pid, target, &progress, start, duration),
            None => (start, cpu0_ns, serde_json::Value::Null),
        };
        let Some(cpu0_ns) = cpu0_ns else {
            return serde_json::Value::Null;
        };
        while ProgressSum::of(&progress).welcomed < target {
            if start.elapsed() >= duration {
                return serde_json::Value::Null;
            }
            std::thread::sleep(STORM_POLL);
        }
        let seconds = from.elapsed().as_secs_f64();
        let Some(cpu1_ns) = sample::process_cpu_ns(&pid.to_string()) else {
            return serde_json::Value::Null;
        };
        let cpu_ns = cpu1_ns.saturating_sub(cpu0_ns);
        json!({
            "clients_answered": target, "seconds": seconds,
            "answered_per_s": target as f64 / seconds.max(1e-6),
            "server_cpu_ms": cpu_ns as f64 / 1e6,
            "server_cpu_us_per_client": cpu_ns as f64 / 1e3 / target.max(1) as f64,
            "held": hold,
        })
    };
    Ok(std::thread::Builder::new()
        .name("storm-watch".into())
        .spawn(watcher)?)
}

/// Keeps the server stopped until every client connected (or the hold's
/// limit), then resumes it. Returns when the drain starts, the server's CPU
/// then, and what the hold held: `complete` only if every client was
/// queued and none answered while the server was stopped.
fn release(
    mut held: Held,
    pid: u32,
    target: u64,
    progress: &[Arc<Progress>],
    start: Instant,
    run: Duration,
) -> (Instant, Option<u64>, serde_json::Value) {
    let limit = hold::hold_max(run);
    while ProgressSum::of(progress).connected < target && start.elapsed() < limit {
        std::thread::sleep(STORM_POLL);
    }
    let connected = ProgressSum::of(progress).connected;
    std::thread::sleep(HELLO_LANDING);
    let answered_while_held = ProgressSum::of(progress).welcomed;
    let state = hold::process_state(pid);
    let cpu0_ns = sample::process_cpu_ns(&pid.to_string());
    let from = Instant::now();
    let resumed = held.resume();
    if let Err(e) = &resumed {
        eprintln!("ringbeat-load: --hold-server: {e}");
    }
    let complete = connected == target && answered_while_held == 0 && state == Some('T');
    if !complete {
        eprintln!(
            "ringbeat-load: --hold-server: {connected} of {target} clients connected while held \
             (the accept queue: listen backlog, net.core.somaxconn), {answered_while_held} answered, \
             server state {state:?}"
        );
    }
    let hold = json!({
        "clients_held": connected, "answered_while_held": answered_while_held,
        "hold_ms": (from - start).as_secs_f64() * 1e3, "complete": complete,
    });
    (from, cpu0_ns.filter(|_| resumed.is_ok()), hold)
}

type Handles = Vec<std::thread::JoinHandle<std::io::Result<Tally>>>;

fn spawn_workers(
    config: &Arc<LoadConfig>,
    fast: bool,
    start: Instant,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Vec<Arc<Progress>>, Handles)> {
    let threads = config.threads as u64;
    let clients = config.args.clients;
    let mut progress = Vec::new();
    let mut handles = Vec::new();
    let mut first = 0;
    for id in 0..threads {
        let count = clients / threads + u64::from(id < clients % threads);
        let p = Arc::new(Progress::default());
        let spec = WorkerSpec {
            id: id as usize,
            first_client: first,
            count: count as u32,
            config: config.clone(),
            progress: p.clone(),
            stop: stop.clone(),
            start,
            ramp_per_s: config.args.ramp as f64 * count as f64 / clients as f64,
        };
        first += count;
        progress.push(p);
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{id}"))
                .spawn(move || worker::run(spec, fast))?,
        );
    }
    Ok((progress, handles))
}

fn build_report(config: &LoadConfig, t: &Tally, w: &Watch, elapsed_s: f64) -> serde_json::Value {
    let a = &config.args;
    let me = sample::process("self").unwrap_or_default();
    let server_cpu = match (w.server_first, w.server_last) {
        (Some(f), Some(l)) => (l.cpu_user_s - f.cpu_user_s, l.cpu_sys_s - f.cpu_sys_s),
        _ => (0.0, 0.0),
    };
    json!({
        "tool": "ringbeat-load",
        "schema": 3,
        "args": {
            "connect": a.connect.iter().map(|x| x.to_string()).collect::<Vec<_>>(),
            "clients": a.clients, "ramp": a.ramp,
            "interval_ms": a.interval.as_millis() as u64, "jitter_pct": a.jitter,
            "duration_s": a.duration.as_secs_f64(), "hello": a.hello, "mix": a.mix.to_string(),
            "protocol": format!("{:?}", a.protocol).to_lowercase(),
            "timeout_ms": a.timeout.as_millis() as u64, "tick_ms": a.tick.as_millis() as u64,
            "threads": config.threads, "sources": a.sources,
            "jitter_ms": a.jitter_ms.map(|(sd, f)| json!({"sd_ms": sd / 1_000_000, "fraction": f64::from(f) / 1e6})),
            "delay_episodes": a.delay_episodes.map(|(f, p, c)| json!({"fraction": f64::from(f) / 1e6, "max_pause_ms": p / 1_000_000, "chance": c})),
            "flap": a.flap.map(|(f, g)| json!({"fraction": f64::from(f) / 1e6, "gap_ms": g / 1_000_000})),
        },
        "clients_target": a.clients,
        "connected": t.connected,
        "connect_errors": t.connect_errors,
        // Measured: connections completed over the time the last one took.
        "connect_rate_per_s": t.connected as f64 / (t.last_connected_ns as f64 / 1e9).max(1e-3),
        // Clients the server answered (needs --hello, or MQTT), and how fast.
        "welcome": t.welcome_json(),
        "peak_live": w.peak_live,
        "duration_s": elapsed_s,
        "heartbeats_sent": t.heartbeats_sent,
        "heartbeats_answered": t.heartbeats_answered,
        "heartbeats_lost": t.heartbeats_lost,
        "heartbeats_per_s": t.heartbeats_sent as f64 / elapsed_s,
        "rtt_us": t.rtt_json(false),
        "rtt_ramp_us": t.rtt_json(true),
        "detection_ms": t.detection_json(&config.timing),
        "silent_total": t.silent_total,
        "silent_evicted": t.silent_evicted,
        // Healthy clients evicted by the server's fault; the load
        // generator's own lateness is counted apart (docs/LOAD.md).
        "false_evictions": t.false_evictions,
        "late_client_evictions": t.late_client_evictions,
        "send_lag_us": t.send_lag_json(),
        "unexpected_disconnects": t.unexpected_disconnects,
        "server_protocol_errors": t.server_protocol_errors,
        "recv_no_buffers": t.recv_no_buffers,
        "closes_by_reason": t.closes_by_reason,
        "server": {
            "pid": a.server_pid,
            "rss_bytes_peak": w.rss_peak,
            "rss_bytes_at_peak_live": w.rss_at_peak_live,
            "cpu_user_s": server_cpu.0,
            "cpu_sys_s": server_cpu.1,
            "sock_mem_bytes_peak": w.sock_mem_peak,
            "slab_bytes_delta": w.slab_at_peak_live.saturating_sub(w.slab_start),
            "steady": w.steady_json(),
        },
        "loadgen": {
            "cpu_user_s": me.cpu_user_s,
            "cpu_sys_s": me.cpu_sys_s,
            "rss_bytes_peak": me.rss_peak_bytes,
        },
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Re-judges late-client evictions by the server's events file, if given;
/// says in the report what was done.
fn refine(config: &LoadConfig, tally: &mut Tally, start_unix_ms: u64) -> serde_json::Value {
    let Some(path) = &config.args.server_events else {
        return json!({"by": "close_arrival"});
    };
    if !config.args.hello {
        eprintln!("ringbeat-load: --server-events needs --hello (client ids); not refined");
        return json!({"by": "close_arrival", "note": "--server-events without --hello"});
    }
    let evicted = match server_evictions(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("ringbeat-load: {}: {e}; not refined", path.display());
            return json!({"by": "close_arrival", "note": e.to_string()});
        }
    };
    let timeout_ms = config.args.timeout.as_millis() as u64;
    let moved = ringbeat::load::report::refine_with_server_events(
        tally,
        &evicted,
        start_unix_ms,
        timeout_ms,
    );
    json!({"by": "server_events", "moved_to_false_evictions": moved,
           "late_unkept": tally.late_unkept})
}

/// client id → the latest `ts_ms` of its offline/timeout event.
fn server_evictions(path: &std::path::Path) -> anyhow::Result<std::collections::HashMap<u64, u64>> {
    let mut out = std::collections::HashMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["event"] == "offline" && v["reason"] == "timeout" {
            if let (Some(id), Some(ts)) = (v["client_id"].as_u64(), v["ts_ms"].as_u64()) {
                let e = out.entry(id).or_insert(ts);
                *e = (*e).max(ts);
            }
        }
    }
    Ok(out)
}
