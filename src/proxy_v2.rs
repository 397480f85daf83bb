//! PROXY protocol version 2 header parser (haproxy's proxy-protocol.txt,
//! section 2.2), sans-IO: given the first bytes a connection sent, it says
//! "need more", "here is the client's real address and how many bytes to
//! skip", or why the header is refused.
//!
//! Accepted: the 12-byte signature, version 2, command LOCAL (health checks
//! from the balancer itself: keep the socket's own address) or PROXY with
//! AF_INET/AF_INET6 over STREAM, or AF_UNSPEC (address unknown). TLVs after
//! the address block are skipped unread. Refused: a version 1 text header,
//! UDP or unix-socket addresses, and a header over [`HEADER_MAX_BYTES`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// The v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Fixed part: signature, version/command, family/transport, length.
pub const FIXED_BYTES: usize = 16;
/// Largest header accepted. 536 bytes is the smallest MSS every IPv4 path
/// carries (RFC 879), so a conforming balancer's header arrives in one
/// segment; it holds the address block (36 bytes for IPv6) and the TLVs
/// haproxy sends in practice (ALPN, authority, CRC32C, unique id up to 128
/// bytes, SSL). Above it the header is refused: an unidentified connection
/// must not make the server buffer up to the 64 KiB the length field allows.
pub const HEADER_MAX_BYTES: usize = 536;

const INET_ADDR_BYTES: usize = 12;
const INET6_ADDR_BYTES: usize = 36;
const V1_PREFIX: &[u8] = b"PROXY ";

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A valid prefix: read more and call again with all the bytes.
    Incomplete,
    /// The whole header is `buf[..header_len]`; protocol bytes follow.
    /// `source` is `None` for LOCAL and AF_UNSPEC: use the socket's peer.
    Done {
        source: Option<SocketAddr>,
        header_len: usize,
    },
}

/// Why a connection's first bytes are not an acceptable v2 header. The
/// connection is closed and the refusal counted by its [`ProxyError::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ProxyError {
    #[error("no PROXY v2 signature")]
    BadSignature,
    #[error("PROXY protocol version 1 (text) header; only version 2 is accepted")]
    Version1,
    #[error("PROXY header version {0}, expected 2")]
    BadVersion(u8),
    #[error("PROXY command {0}, expected LOCAL or PROXY")]
    BadCommand(u8),
    #[error("PROXY address family/transport {0:#04x} is not TCP over IPv4/IPv6")]
    Unsupported(u8),
    #[error("PROXY header of {0} bytes is over the {HEADER_MAX_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("PROXY header length {0} is shorter than its address block")]
    Truncated(usize),
}

impl ProxyError {
    /// Metrics label.
    pub fn name(self) -> &'static str {
        match self {
            ProxyError::BadSignature => "bad_signature",
            ProxyError::Version1 => "version1",
            ProxyError::BadVersion(_) => "bad_version",
            ProxyError::BadCommand(_) => "bad_command",
            ProxyError::Unsupported(_) => "unsupported",
            ProxyError::TooLarge(_) => "too_large",
            ProxyError::Truncated(_) => "truncated",
        }
    }
}

/// Parses the header at the start of `buf` (all bytes received so far).
/// Refuses as early as the bytes allow, so a wrong first byte is an error
/// at once, not after 16 bytes.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(SIGNATURE.len());
    if buf[..n] != SIGNATURE[..n] {
        let m = buf.len().min(V1_PREFIX.len());
        if buf[..m] == V1_PREFIX[..m] {
            return Err(ProxyError::Version1);
        }
        return Err(ProxyError::BadSignature);
    }
    if buf.len() < FIXED_BYTES {
        return Ok(Parsed::Incomplete);
    }
    let (version, command) = (buf[12] >> 4, buf[12] & 0x0f);
    if version != 2 {
        return Err(ProxyError::BadVersion(version));
    }
    if command > 1 {
        return Err(ProxyError::BadCommand(command));
    }
    let fam = buf[13];
    let body_len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let header_len = FIXED_BYTES + body_len;
    if header_len > HEADER_MAX_BYTES {
        return Err(ProxyError::TooLarge(header_len));
    }
    let local = command == 0;
    let addr_bytes = match fam {
        _ if local => 0,
        0x00 => 0,
        0x11 => INET_ADDR_BYTES,
        0x21 => INET6_ADDR_BYTES,
        _ => return Err(ProxyError::Unsupported(fam)),
    };
    if body_len < addr_bytes {
        return Err(ProxyError::Truncated(body_len));
    }
    if buf.len() < header_len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[FIXED_BYTES..header_len];
    let source = match addr_bytes {
        INET_ADDR_BYTES => Some(inet(body)),
        INET6_ADDR_BYTES => Some(inet6(body)),
        _ => None,
    };
    Ok(Parsed::Done { source, header_len })
}

fn port(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn inet(body: &[u8]) -> SocketAddr {
    let ip: [u8; 4] = body[..4].try_into().expect("4 bytes");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port(&body[8..10]))
}

fn inet6(body: &[u8]) -> SocketAddr {
    let ip: [u8; 16] = body[..16].try_into().expect("16 bytes");
    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port(&body[32..34]))
}

/// Encodes a PROXY v2 header for `source` → `dest` (tests, load tools and
/// the demo script's checks). Both addresses must be the same family.
pub fn encode(source: SocketAddr, dest: SocketAddr, tlv_bytes: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    let fam = match (source, dest) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x11
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            body.extend_from_slice(&s.ip().octets());
            body.extend_from_slice(&d.ip().octets());
            0x21
        }
        _ => panic!("source and destination must be the same address family"),
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&dest.port().to_be_bytes());
    body.extend_from_slice(tlv_bytes);
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    out.push(fam);
    out.extend_from_slice(&u16::try_from(body.len()).expect("fits").to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests;
