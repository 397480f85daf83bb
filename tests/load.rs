//! `ringbeat-load` against an in-process server: every scenario behaves,
//! silent clients are evicted and only they, and the JSON has its keys.
//! Behaviour only: latency figures are printed, never asserted.

mod common;

use std::process::Command;

use common::{start, stop, timed_args};
use ringbeat::config::IoMode;
use ringbeat::load::hold::process_state;

/// Runs `ringbeat-load` with `args`, asserts it succeeded, and returns its
/// result JSON (also printed, for the figures).
fn run_load(args: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("load.json");
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-load"))
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("run ringbeat-load");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ringbeat-load failed:\n{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    r
}

#[test]
fn a_small_mixed_run_detects_every_silent_client_and_nobody_else() {
    let events_dir = tempfile::tempdir().unwrap();
    let events = events_dir.path().join("events.jsonl");
    let mut args = timed_args(IoMode::Auto, 500, 1_500, 50);
    args.events = Some(events.clone());
    let server = start(args);
    let addr = server.local_addrs()[0].to_string();
    let r = run_load(&[
        "--server-events",
        events.to_str().unwrap(),
        "--connect",
        &addr,
        "--clients",
        "300",
        "--ramp",
        "1000",
        "--interval",
        "500ms",
        "--timeout",
        "1500ms",
        "--tick",
        "50ms",
        "--fault-after",
        "500ms",
        "--duration",
        "6s",
        "--hello",
        "--mix",
        "silent=0.2,reset=0.1,close=0.1,garbage=0.1,dribble=0.1",
    ]);
    assert_eq!(r["tool"], "ringbeat-load");
    assert_eq!(r["schema"], 3);
    assert_eq!(r["connected"], 300);
    assert_eq!(r["connect_errors"], 0);
    assert_eq!(r["false_evictions"], 0);
    assert_eq!(
        r["late_client_evictions"], 0,
        "300 clients never fall behind"
    );
    assert_eq!(r["attribution"]["by"], "server_events");
    assert!(r["send_lag_us"]["count"].as_u64().unwrap() > 300);
    assert!(r["send_lag_us"]["p99"].as_u64().unwrap() < 1_500_000);
    assert_eq!(r["unexpected_disconnects"], 0);
    assert_eq!(r["server_protocol_errors"], 0);
    let silent = r["silent_total"].as_u64().unwrap();
    assert!(
        silent > 20,
        "the mix gives about 60 silent clients: {silent}"
    );
    assert_eq!(r["silent_evicted"].as_u64().unwrap(), silent);
    assert_eq!(r["detection_ms"]["early"], 0, "evicted before the timeout");
    assert!(r["closes_by_reason"]["protocol_error"].as_u64().unwrap() > 0);
    assert!(r["closes_by_reason"]["timeout"].as_u64().unwrap() >= silent);
    assert!(r["heartbeats_answered"].as_u64().unwrap() > 300);
    for key in [
        "rtt_us",
        "detection_ms",
        "server",
        "loadgen",
        "heartbeats_per_s",
        "peak_live",
    ] {
        assert!(!r[key].is_null(), "result lacks {key}");
    }
    stop(server);
}

/// Phi with an offline grace, judged from the server's events file: every
/// silent client is suspected and evicted, and every flapper that came back
/// within the grace is one `resumed` event, not an offline/online pair.
#[test]
fn detection_quality_reads_the_server_events() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let server = start(ringbeat::config::ServeArgs {
        events: Some(events.clone()),
        detector: Some(ringbeat::config::Detector::Phi),
        offline_grace: Some(std::time::Duration::from_millis(1_500)),
        ..timed_args(IoMode::Auto, 500, 2_500, 50)
    });
    let addr = server.local_addrs()[0].to_string();
    let events_arg = events.to_string_lossy().to_string();
    let r = run_load(&[
        "--connect",
        &addr,
        "--clients",
        "200",
        "--ramp",
        "1000",
        "--interval",
        "500ms",
        "--timeout",
        "2500ms",
        "--tick",
        "50ms",
        "--jitter",
        "2",
        "--fault-at",
        "4s",
        "--duration",
        "11s",
        "--hello",
        "--mix",
        "silent=0.15",
        "--flap",
        "0.2,300ms",
        "--server-events",
        &events_arg,
    ]);
    let q = &r["detection_quality"];
    assert_eq!(q["events_unparsed"], 0);
    let silent = q["silent"]["clients"].as_u64().unwrap();
    assert!(silent > 10, "{silent}");
    assert_eq!(q["silent"]["evicted"].as_u64().unwrap(), silent);
    assert_eq!(q["silent"]["suspected"].as_u64().unwrap(), silent);
    let evict_p50 = q["silent"]["time_to_evict_ms"]["p50"].as_i64().unwrap();
    assert!(evict_p50 >= 2_500, "never before the timeout: {evict_p50}");
    let flap = &q["flap"];
    let reconnects = flap["reconnects"].as_u64().unwrap();
    assert!(reconnects > 5, "{flap}");
    assert_eq!(flap["resumed"].as_u64().unwrap(), reconnects, "{flap}");
    assert_eq!(flap["offline_online_pairs"], 0, "{flap}");
    assert!(q["live"]["client_hours"].as_f64().unwrap() > 0.1);
    stop(server);
}

#[test]
fn bad_flags_exit_2() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-load"))
        .args(["--connect", "10.1.2.3:7700"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"));
}

/// Every client at once, saying HELLO, against a server with a 1 s
/// interval and a 3 s timeout: the held storms' load.
const STORM: [&str; 7] = [
    "--ramp",
    "1000000",
    "--hello",
    "--interval",
    "1s",
    "--timeout",
    "3s",
];

/// A held storm (`--hold-server`): the server is stopped while every client
/// connects and says HELLO, nobody is answered meanwhile, and once resumed
/// the server answers them all; it is running again at the end.
#[test]
fn a_held_storm_queues_every_client_then_times_the_servers_answers() {
    let server = common::child::spawn_server(&["--interval", "1s", "--timeout", "3s"]);
    let pid = server.child.id();
    let listen = server.listen.to_string();
    let pid_arg = pid.to_string();
    let mut args = vec!["--connect", &listen, "--clients", "300"];
    args.extend(STORM);
    args.extend([
        "--duration",
        "4s",
        "--server-pid",
        &pid_arg,
        "--hold-server",
    ]);
    let r = run_load(&args);
    let held = &r["storm"]["held"];
    assert_eq!(held["clients_held"], 300, "every client queued: {held}");
    assert_eq!(
        held["answered_while_held"], 0,
        "the server was stopped: {held}"
    );
    assert_eq!(held["complete"], true);
    assert_eq!(r["storm"]["clients_answered"], 300);
    assert!(r["storm"]["answered_per_s"].as_f64().unwrap() > 0.0);
    let state = process_state(pid);
    assert_ne!(state, Some('T'), "the server was left stopped");
}

/// An interrupted held storm (Ctrl-C while the server is stopped) resumes
/// the server before the load generator exits.
#[test]
fn an_interrupted_held_storm_resumes_the_server() {
    let server = common::child::spawn_server(&["--interval", "1s", "--timeout", "3s"]);
    let pid = server.child.id();
    let state = || process_state(pid);
    // The clients connect to a listener that never accepts, so they cannot
    // all be queued and the hold lasts its limit (seconds), long enough to
    // interrupt it.
    let queue = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut load = Command::new(env!("CARGO_BIN_EXE_ringbeat-load"))
        .args(["--connect", &queue.local_addr().unwrap().to_string()])
        .args(["--clients", "1000"])
        .args(STORM)
        .args([
            "--duration",
            "60s",
            "--server-pid",
            &pid.to_string(),
            "--hold-server",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while state() != Some('T') {
        assert!(
            started.elapsed() < common::SLACK,
            "the server was never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let sent = Command::new("kill")
        .args(["-INT", &load.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = load.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit status after SIGINT");
    let resumed = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(5));
        state() != Some('T')
    });
    assert!(
        resumed,
        "the interrupted load generator left the server stopped"
    );
}

#[test]
fn a_held_storm_needs_a_server_pid_and_every_client_at_once() {
    for (args, says) in [
        (&["--hello", "--hold-server"][..], "--server-pid"),
        (
            &[
                "--hello",
                "--hold-server",
                "--server-pid",
                "1",
                "--ramp",
                "10",
            ][..],
            "--ramp",
        ),
        (
            &["--hold-server", "--server-pid", "1", "--ramp", "1000"][..],
            "--hello",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringbeat-load"))
            .args(["--connect", "127.0.0.1:7700", "--clients", "100"])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{args:?} should name {says}: {stderr}"
        );
    }
}

/// A minimal MQTT 3.1.1 broker, one thread per client: CONNECT → CONNACK,
/// PINGREQ → PINGRESP, and close after 1.5 × keepalive of silence (read
/// timeout), on DISCONNECT, or on a reserved packet type.
fn tiny_broker(listener: std::net::TcpListener) {
    use std::io::{Read, Write};
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { return };
        std::thread::spawn(move || {
            let mut connect = [0u8; 64];
            let mut head = [0u8; 2];
            if s.read_exact(&mut head).is_err() || head[0] != 0x10 {
                return;
            }
            let rest = &mut connect[..usize::from(head[1])];
            if s.read_exact(rest).is_err() {
                return;
            }
            let keepalive_s = u16::from_be_bytes([rest[8], rest[9]]);
            let silence = std::time::Duration::from_millis(u64::from(keepalive_s) * 1500);
            s.set_read_timeout(Some(silence)).unwrap();
            s.write_all(&[0x20, 0x02, 0x00, 0x00]).unwrap();
            while s.read_exact(&mut head).is_ok() {
                match head {
                    [0xC0, 0x00] if s.write_all(&[0xD0, 0x00]).is_ok() => {}
                    _ => return, // DISCONNECT, a reserved type, or a write error
                }
            }
            // Timed out or EOF: dropping `s` closes it.
        });
    }
}

#[test]
fn mqtt_mode_pings_a_broker_and_detects_silent_clients_by_eof() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || tiny_broker(listener));
    let r = run_load(&[
        "--connect",
        &addr,
        "--clients",
        "40",
        "--ramp",
        "1000",
        "--protocol",
        "mqtt",
        "--interval",
        "300ms",
        "--timeout",
        "1500ms",
        "--fault-after",
        "300ms",
        "--duration",
        "5s",
        "--mix",
        "silent=0.25,close=0.1,garbage=0.1,dribble=0.1",
    ]);
    assert_eq!(r["args"]["protocol"], "mqtt");
    assert_eq!(r["connected"], 40);
    assert_eq!(r["false_evictions"], 0);
    assert_eq!(r["unexpected_disconnects"], 0);
    let silent = r["silent_total"].as_u64().unwrap();
    assert!(silent > 0);
    assert_eq!(r["silent_evicted"].as_u64().unwrap(), silent);
    assert!(r["heartbeats_answered"].as_u64().unwrap() > 40);
    assert_eq!(
        r["detection_ms"]["early"], 0,
        "closed before 1.5 × keepalive"
    );
}

/// `--compat` (regular fds, provided buffers: the kernel 5.10 path) was
/// never run here: its ring queues PROVIDE_BUFFERS at creation, and setting
/// the connect targets asserted that nothing was in flight, so every worker
/// panicked. The kernel matrix (scripts/kernels.sh) found it on 5.10.
#[test]
fn compat_mode_load_connects_and_detects_silent_clients() {
    let server = start(timed_args(IoMode::Auto, 500, 1_500, 50));
    let addr = server.local_addrs()[0].to_string();
    let r = run_load(&[
        "--connect",
        &addr,
        "--compat",
        "--clients",
        "60",
        "--ramp",
        "1000",
        "--interval",
        "500ms",
        "--timeout",
        "1500ms",
        "--tick",
        "50ms",
        "--fault-after",
        "500ms",
        "--duration",
        "4s",
        "--hello",
        "--mix",
        "silent=0.2,reset=0.1,garbage=0.1",
    ]);
    assert_eq!(r["connected"], 60);
    assert_eq!(r["false_evictions"], 0);
    let silent = r["silent_total"].as_u64().unwrap();
    assert!(silent > 0);
    assert_eq!(r["silent_evicted"].as_u64().unwrap(), silent);
    assert!(r["heartbeats_answered"].as_u64().unwrap() > 60);
    stop(server);
}
