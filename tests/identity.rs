//! Authenticated HELLO over loopback, in both io modes (PROTOCOL.md
//! revision 2, Authentication): every connection that does not prove its
//! client_id with a valid token is answered CLOSE(UNAUTHORIZED), so an
//! attacker without a token cannot take over a connected client, and two
//! key ids at once rotate keys without restarting clients.

mod common;

use std::path::Path;

use common::{metric, stop, Peer, MODES};
use ringbeat::auth::keys::{mint_from_file, KeySpec};
use ringbeat::auth::AuthMode;
use ringbeat::config::{Config, ServeArgs};
use ringbeat::protocol::{self, CloseReason, OwnedFrame};
use ringbeat::server::Server;

/// What a test connection sends first.
type Send<'a> = Box<dyn Fn(&mut Peer) + 'a>;

const UNAUTHORIZED: u16 = CloseReason::Unauthorized as u16;

fn key(dir: &Path, kid: &str, secret: &str) -> KeySpec {
    let path = dir.join(format!("{kid}.secret"));
    std::fs::write(
        &path,
        format!("{secret} padded to at least thirty-two bytes\n"),
    )
    .unwrap();
    format!("{kid}=hs256:{}", path.display()).parse().unwrap()
}

fn token(spec: &KeySpec, client_id: u64, now_s: u64, ttl_s: u64) -> Vec<u8> {
    mint_from_file(spec, client_id, now_s, ttl_s)
        .unwrap()
        .into_bytes()
}

fn now_s() -> u64 {
    ringbeat::auth::unix_now_s()
}

fn hello(peer: &mut Peer, client_id: u64, token: &[u8]) {
    peer.send(&protocol::hello_frame_with_token(client_id, 0, token).unwrap());
}

fn start(mode: ringbeat::config::IoMode, keys: Vec<KeySpec>) -> Server {
    let args = ServeArgs {
        auth_key: keys,
        auth: Some(AuthMode::Required),
        ..common::args(mode)
    };
    Server::start(Config::resolve(args).unwrap()).unwrap()
}

#[test]
fn every_unproven_connection_is_unauthorized_and_a_valid_token_welcomed() {
    let dir = tempfile::tempdir().unwrap();
    let k1 = key(dir.path(), "k1", "first secret, long enough");
    let stranger = key(dir.path(), "k1x", "a key the server never saw");
    let forged = KeySpec {
        kid: "k1".into(),
        ..stranger.clone()
    };
    for mode in MODES {
        let server = start(mode, vec![k1.clone()]);
        let addr = server.local_addrs()[0];
        let now = now_s();
        let cases: [(&str, Send<'_>); 6] = [
            ("no token", Box::new(|p| hello(p, 42, b""))),
            (
                "expired",
                Box::new(|p| hello(p, 42, &token(&k1, 42, now - 7200, 60))),
            ),
            (
                "another id",
                Box::new(|p| hello(p, 42, &token(&k1, 43, now, 600))),
            ),
            (
                "bad signature",
                Box::new(|p| hello(p, 42, &token(&forged, 42, now, 600))),
            ),
            (
                "unknown kid",
                Box::new(|p| hello(p, 42, &token(&stranger, 42, now, 600))),
            ),
            ("ping first", Box::new(|p| p.ping(1))),
        ];
        for (what, send) in &cases {
            let mut p = Peer::connect(addr);
            send(&mut p);
            match p.expect_frame() {
                OwnedFrame::Close { reason, .. } => {
                    assert_eq!(reason, UNAUTHORIZED, "{mode:?} {what}")
                }
                other => panic!("{mode:?} {what}: {other:?}"),
            }
        }
        assert_eq!(metric(server.stats(), "ringbeat_unauthorized_total"), 6);
        let mut good = Peer::connect(addr);
        hello(&mut good, 42, &token(&k1, 42, now, 600));
        good.expect_welcome();
        assert!(metric(server.stats(), "ringbeat_auth_verified_total") >= 1);
        stop(server);
    }
}

#[test]
fn an_attacker_without_a_token_cannot_take_over_and_two_kids_rotate_keys() {
    let dir = tempfile::tempdir().unwrap();
    let old = key(dir.path(), "old", "the old secret, long enough");
    let new = key(dir.path(), "new", "the new secret, long enough");
    for mode in MODES {
        let server = start(mode, vec![old.clone(), new.clone()]);
        let addr = server.local_addrs()[0];
        let now = now_s();
        let mut victim = Peer::connect(addr);
        hello(&mut victim, 7, &token(&old, 7, now, 600));
        victim.expect_welcome();
        let mut attacker = Peer::connect(addr);
        hello(&mut attacker, 7, b"");
        attacker.expect_close(UNAUTHORIZED);
        victim.ping(1);
        victim.expect_pong(1);
        // The client reconnects with a token under the new key: both kids
        // are accepted while the keys rotate, and it takes its id over.
        let mut rotated = Peer::connect(addr);
        hello(&mut rotated, 7, &token(&new, 7, now, 600));
        rotated.expect_welcome();
        victim.expect_close(CloseReason::TakenOver.code());
        stop(server);
    }
}

#[test]
fn behind_a_proxy_events_carry_the_client_address_and_a_bad_header_is_refused() {
    for mode in MODES {
        let args = ServeArgs {
            proxy_protocol: true,
            ..common::args(mode)
        };
        let config = Config::resolve(args).unwrap();
        let (server, events) = Server::start_with_events(config).unwrap();
        let addr = server.local_addrs()[0];
        let mut p = Peer::connect(addr);
        let source = "203.0.113.9:40000".parse().unwrap();
        p.send(&ringbeat::proxy_v2::encode(source, addr, b""));
        hello(&mut p, 5, b"");
        p.expect_welcome();
        let online = events.recv_timeout(common::SLACK).unwrap();
        assert_eq!(
            online.peer.as_deref(),
            Some("203.0.113.9:40000"),
            "{mode:?}"
        );
        let mut bad = Peer::connect(addr);
        bad.ping(1);
        bad.expect_close(CloseReason::ProtocolError as u16);
        assert_eq!(metric(server.stats(), "ringbeat_proxy_refused_total"), 1);
        stop(server);
    }
}
