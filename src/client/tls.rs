//! TLS for the blocking client (feature `tls`, rustls with the ring
//! provider): the settings, and a session that two threads share, the
//! reader feeding it ciphertext and the driver writing plaintext, each over
//! its own clone of the TCP socket.
//!
//! ringbeat itself speaks cleartext; TLS ends at a proxy in front of it
//! (docs/DEPLOY.md, "Security"). Roots are the Mozilla set (webpki-roots)
//! plus any CA given in PEM, e.g. a private CA or a test's self-signed cert.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConnection, RootCertStore};
use thiserror::Error;

/// How to reach the server over TLS.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// The name the server's certificate must carry (SNI and verification).
    pub server_name: String,
    /// Extra trusted CA certificates, PEM (one or more).
    pub extra_roots_pem: Option<Vec<u8>>,
}

impl TlsConfig {
    pub fn new(server_name: impl Into<String>) -> TlsConfig {
        TlsConfig {
            server_name: server_name.into(),
            extra_roots_pem: None,
        }
    }

    /// Also trusts the CA certificates in `pem`.
    pub fn extra_roots_pem(mut self, pem: impl Into<Vec<u8>>) -> TlsConfig {
        self.extra_roots_pem = Some(pem.into());
        self
    }
}

/// TLS settings that cannot work.
#[derive(Debug, Error)]
pub enum TlsError {
    #[error("TLS server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    #[error("extra root CA PEM: {0}")]
    Roots(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A checked client configuration, built once per client.
#[derive(Clone, Debug)]
pub struct Connector {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

impl Connector {
    pub fn new(tls: &TlsConfig) -> Result<Connector, TlsError> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(pem) = &tls.extra_roots_pem {
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| TlsError::Roots(e.to_string()))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Roots(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(TlsError::Roots("no CERTIFICATE block".into()));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(tls.server_name.clone())
            .map_err(|_| TlsError::ServerName(tls.server_name.clone()))?;
        Ok(Connector {
            config: Arc::new(config),
            name,
        })
    }

    /// A session for a freshly connected socket; sends the ClientHello.
    pub fn start(&self, stream: &mut TcpStream) -> std::io::Result<TlsSession> {
        let conn = ClientConnection::new(Arc::clone(&self.config), self.name.clone())
            .map_err(std::io::Error::other)?;
        let session = TlsSession {
            conn: Arc::new(Mutex::new(conn)),
        };
        session.flush(&mut session.lock(), stream)?;
        Ok(session)
    }
}

/// One TLS connection, shared by the reader thread and the driver.
#[derive(Clone)]
pub struct TlsSession {
    conn: Arc<Mutex<ClientConnection>>,
}

impl TlsSession {
    fn lock(&self) -> MutexGuard<'_, ClientConnection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn flush(&self, conn: &mut ClientConnection, stream: &mut TcpStream) -> std::io::Result<()> {
        while conn.wants_write() {
            conn.write_tls(stream)?;
        }
        Ok(())
    }

    /// Reader thread: `ciphertext` came from the socket. Returns the
    /// plaintext it completes (often none during the handshake) and sends
    /// whatever TLS wants to answer on `stream`.
    pub fn on_ciphertext(
        &self,
        mut ciphertext: &[u8],
        stream: &mut TcpStream,
    ) -> std::io::Result<Vec<u8>> {
        let mut conn = self.lock();
        let mut plain = Vec::new();
        while !ciphertext.is_empty() {
            conn.read_tls(&mut ciphertext)?;
            let state = conn
                .process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if state.plaintext_bytes_to_read() > 0 {
                let start = plain.len();
                plain.resize(start + state.plaintext_bytes_to_read(), 0);
                conn.reader().read_exact(&mut plain[start..])?;
            }
        }
        self.flush(&mut conn, stream)?;
        Ok(plain)
    }

    /// Driver: encrypts `plaintext` (buffered until the handshake is done)
    /// and writes what can go now.
    pub fn write_plain(&self, plaintext: &[u8], stream: &mut TcpStream) -> std::io::Result<()> {
        let mut conn = self.lock();
        conn.writer().write_all(plaintext)?;
        self.flush(&mut conn, stream)
    }
}
