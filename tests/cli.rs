//! The `ringbeat` binary as operators drive it: bad input exits 2 with one
//! line, SIGTERM closes every connection with CLOSE(SHUTDOWN) and exits 0,
//! `/metrics` and the events file carry the contract names.

mod common;

use std::process::Command;

use common::child::{http_get, sigterm, spawn_server, wait_exit, BIN};
use common::Peer;

fn bad_input_exits_2(args: &[&str], needle: &str) {
    let out = Command::new(BIN).args(args).output().expect("run ringbeat");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
}

#[test]
fn bad_flags_and_config_exit_2_with_a_clear_line() {
    bad_input_exits_2(&["serve", "--interval", "banana"], "banana");
    bad_input_exits_2(&["serve", "--no-such-flag"], "no-such-flag");
    bad_input_exits_2(&["serve", "--interval", "5s", "--timeout", "2s"], "timeout");
    bad_input_exits_2(&["serve", "--shards", "0"], "shards");
    bad_input_exits_2(&["serve", "--config", "/nonexistent/rb.toml"], "rb.toml");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "intervall = \"1s\"\n").unwrap();
    bad_input_exits_2(&["serve", "--config", path.to_str().unwrap()], "intervall");
}

#[test]
fn sigterm_closes_everyone_with_shutdown_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut server = spawn_server(&["--events", events.to_str().unwrap()]);
    let mut peers: Vec<Peer> = (0..10).map(|_| Peer::connect(server.listen)).collect();
    for (i, p) in peers.iter_mut().enumerate() {
        p.hello(i as u64 + 1, 0);
        p.expect_welcome();
    }

    let metrics = http_get(server.metrics, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for name in [
        "ringbeat_connections 10",
        "ringbeat_shard_connections{shard=",
        "ringbeat_accepted_total 10",
        "ringbeat_evicted_total",
        "ringbeat_closed_total{reason=",
        "ringbeat_frames_received_total{kind=\"hello\"} 10",
        "ringbeat_protocol_errors_total",
        "ringbeat_sweep_duration_seconds_bucket",
        "ringbeat_probe_rtt_seconds",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert!(http_get(server.metrics, "/nope").starts_with("HTTP/1.1 404"));

    let pid = server.child.id();
    assert_eq!(sigterm(pid), 0);
    for p in &mut peers {
        p.expect_close(5);
    }
    let (code, took) = wait_exit(&mut server.child);
    assert_eq!(code, Some(0));
    eprintln!("exited {took:?} after SIGTERM");

    let log = std::fs::read_to_string(&events).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let online = lines.iter().filter(|e| e["event"] == "online").count();
    let shutdown = lines
        .iter()
        .filter(|e| e["event"] == "offline" && e["reason"] == "shutdown")
        .count();
    assert_eq!((online, shutdown), (10, 10), "{log}");
    for e in &lines {
        for key in ["ts_ms", "session", "client_id", "peer"] {
            assert!(!e[key].is_null(), "event lacks {key}: {e}");
        }
    }
}

#[test]
fn a_config_file_sets_the_same_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rb.toml");
    std::fs::write(
        &path,
        "interval = \"2s\"\ntimeout = \"8s\"\ntick = \"50ms\"\n",
    )
    .unwrap();
    let mut server = spawn_server(&["--config", path.to_str().unwrap()]);
    let mut peer = Peer::connect(server.listen);
    peer.hello(9, 0);
    let (_, interval_ms, timeout_ms) = peer.expect_welcome();
    assert_eq!((interval_ms, timeout_ms), (2_000, 8_000));
    sigterm(server.child.id());
    assert_eq!(wait_exit(&mut server.child).0, Some(0));
}

fn token_cmd(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .arg("token")
        .args(args)
        .output()
        .expect("run ringbeat token")
}

#[test]
fn token_subcommand_mints_what_the_authenticator_accepts() {
    use ringbeat::auth::{AuthError, Authenticator, KeySpec};
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("k1.secret");
    std::fs::write(&secret, "a-32-byte-or-longer-shared-secret!!\n").unwrap();
    let key = format!("k1=hs256:{}", secret.display());
    let out = token_cmd(&["--key", &key, "--client-id", "42", "--ttl", "1h"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(token.split('.').count(), 3, "compact JWT: {token}");
    let spec: KeySpec = key.parse().unwrap();
    let auth = Authenticator::new(&[spec], None).unwrap();
    let now = ringbeat::auth::unix_now_s();
    assert_eq!(auth.verify(42, token.as_bytes(), now), Ok(()));
    assert_eq!(
        auth.verify(43, token.as_bytes(), now),
        Err(AuthError::WrongSubject)
    );
    assert_eq!(
        auth.verify(42, token.as_bytes(), now + 3600),
        Err(AuthError::Expired)
    );
}

#[test]
fn a_bad_key_file_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.secret");
    std::fs::write(&short, "short\n").unwrap();
    let short_key = format!("k1=hs256:{}", short.display());
    let absent_key = format!("k2=eddsa:{}", dir.path().join("absent.pem").display());
    for key in [&short_key, &absent_key] {
        for args in [
            vec!["token", "--key", key, "--client-id", "1"],
            vec!["serve", "--listen", "127.0.0.1:0", "--auth-key", key],
        ] {
            let out = Command::new(BIN).args(&args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
            let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("ringbeat:")).collect();
            assert_eq!(lines.len(), 1, "{stderr}");
            assert!(lines[0].contains("\"k"), "names the kid: {stderr}");
        }
    }
    bad_input_exits_2(&["serve", "--auth", "required"], "--auth-key");
    bad_input_exits_2(
        &["token", "--key", "k1", "--client-id", "1"],
        "KID=hs256:FILE",
    );
}
