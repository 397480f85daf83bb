//! The blocking client over TLS (feature `tls`): a throw-away certificate
//! from `openssl` (the test skips with a note if it is absent), a TLS
//! endpoint in this process playing the server, the extra root CA in the
//! client config. The HELLO, with its token, must arrive decrypted, and a
//! PING/PONG session must run. A client that does not trust the CA must
//! never connect.
#![cfg(feature = "tls")]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use ringbeat::client::tls::TlsConfig;
use ringbeat::client::{Backoff, Client, ClientConfig, ClientEvent};
use ringbeat::protocol::{self, Decoder, OwnedFrame};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

const SLACK: Duration = Duration::from_secs(10);

fn cert(dir: &std::path::Path) -> Option<(Vec<u8>, Vec<u8>)> {
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost"])
        // A leaf, not a CA: webpki refuses a CA certificate as the server's.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then(|| {
        (
            std::fs::read(dir.join("cert.pem")).unwrap(),
            std::fs::read(dir.join("key.pem")).unwrap(),
        )
    })
}

/// Serves one TLS connection: WELCOME after HELLO, PONG for each PING.
/// Returns the HELLO's token.
fn serve_one(listener: TcpListener, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Vec<u8> {
    let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&cert_pem)
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let (tcp, _) = listener.accept().unwrap();
    tcp.set_read_timeout(Some(SLACK)).unwrap();
    let conn = rustls::ServerConnection::new(Arc::new(config)).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut decoder = Decoder::new(1024);
    let mut token = None;
    let mut pongs = 0;
    let mut buf = [0u8; 4096];
    while pongs < 3 {
        let n = tls.read(&mut buf).expect("TLS read");
        assert!(n > 0, "client closed early");
        decoder.feed(&buf[..n]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            match frame {
                OwnedFrame::Hello { token: t, .. } => {
                    token = Some(t);
                    tls.write_all(&protocol::welcome_frame(1, 100, 300))
                        .unwrap();
                }
                OwnedFrame::Ping(p) => {
                    tls.write_all(&protocol::pong_frame(p)).unwrap();
                    pongs += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    token.expect("HELLO came first")
}

fn config(port: u16) -> ClientConfig {
    ClientConfig::new(format!("127.0.0.1:{port}"))
        .client_id(5)
        .interval(Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(200),
            max_attempts: Some(2),
        })
        .token("header.claims.sig")
}

#[test]
fn hello_token_and_pings_travel_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert_pem, key_pem)) = cert(dir.path()) else {
        eprintln!("client_tls: openssl not found; skipping");
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || serve_one(listener, cert_pem.clone(), key_pem));
    let ca = std::fs::read(dir.path().join("cert.pem")).unwrap();
    let tls = TlsConfig::new("localhost").extra_roots_pem(ca);
    let client = Client::start(config(port).tls(tls)).unwrap();
    let first = client.events().recv_timeout(SLACK).unwrap();
    assert!(
        matches!(first, ClientEvent::Connected { session: 1, .. }),
        "{first:?}"
    );
    assert_eq!(server.join().unwrap(), b"header.claims.sig");
    client.close();
}

#[test]
fn an_untrusted_certificate_never_connects() {
    let dir = tempfile::tempdir().unwrap();
    let Some((cert_pem, key_pem)) = cert(dir.path()) else {
        eprintln!("client_tls: openssl not found; skipping");
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The server side: accept and attempt handshakes until the client gives up.
    std::thread::spawn(move || {
        let certs: Vec<CertificateDer> = CertificateDer::pem_slice_iter(&cert_pem)
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_slice(&key_pem).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        for _ in 0..3 {
            let Ok((tcp, _)) = listener.accept() else {
                return;
            };
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let _ = tls.read(&mut [0u8; 64]);
        }
    });
    // No extra root: the self-signed certificate is not trusted.
    let client = Client::start(config(port).tls(TlsConfig::new("localhost"))).unwrap();
    let mut events = Vec::new();
    while let Ok(e) = client.events().recv_timeout(SLACK) {
        let stopped = matches!(e, ClientEvent::Stopped { .. });
        events.push(e);
        if stopped {
            break;
        }
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ClientEvent::Connected { .. })),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(ClientEvent::Stopped { .. })),
        "{events:?}"
    );
    let _ = TcpStream::connect(("127.0.0.1", port));
}
