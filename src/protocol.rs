//! Wire protocol v1 (shared/PROTOCOL.md): frame header, kinds, close reasons,
//! parse and encode. No I/O and no allocation on the parse path.
//!
//! A frame is an 8-byte header (`magic`, `version`, `kind`, `flags`, `len`
//! big-endian) followed by `len` payload bytes. [`parse_header`] validates a
//! header against a receiver's `max_payload`; [`parse_frame`] turns a complete
//! payload into a borrowed [`Frame`]. [`Decoder`] reassembles a byte stream
//! for clients; the server reassembles in place (see `engine`).

use thiserror::Error;

/// First header byte, `'R'`.
pub const MAGIC: u8 = 0x52;
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 8;
/// Payload bytes of HELLO's fixed part: `client_id u64`, `interval_ms u32`.
pub const HELLO_LEN: usize = 12;
/// Most bytes of token a HELLO may carry after its fixed part (revision 2).
pub const TOKEN_MAX: usize = 512;
/// Largest HELLO payload (fixed part plus the longest token). This limit
/// applies to HELLO whatever the receiver's `max_payload` is.
pub const HELLO_MAX_LEN: usize = HELLO_LEN + TOKEN_MAX;
/// Payload bytes of WELCOME: `session u64`, `interval_ms u32`, `timeout_ms u32`.
pub const WELCOME_LEN: usize = 16;
/// Payload bytes of PING and PONG.
pub const PING_LEN: usize = 8;
/// Most bytes of text a CLOSE may carry.
pub const CLOSE_TEXT_MAX: usize = 256;
/// Smallest CLOSE payload (`reason u16`).
pub const CLOSE_MIN_LEN: usize = 2;
/// Largest CLOSE payload.
pub const CLOSE_MAX_LEN: usize = CLOSE_MIN_LEN + CLOSE_TEXT_MAX;
/// Default `max_payload` of a server.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1024;
/// Smallest `max_payload` a ringbeat endpoint accepts: every control frame,
/// including a CLOSE with the longest text, must fit.
pub const MIN_MAX_PAYLOAD: u32 = CLOSE_MAX_LEN as u32;
/// Largest frame any control frame needs on the wire (header + CLOSE max).
pub const CONTROL_FRAME_MAX: usize = HEADER_LEN + CLOSE_MAX_LEN;

const _: () = assert!(WELCOME_LEN <= CLOSE_MAX_LEN && HELLO_LEN <= CLOSE_MAX_LEN);

/// Frame kinds of version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    Ping = 3,
    Pong = 4,
    Data = 5,
    Close = 6,
}

impl Kind {
    /// Every kind, in wire order (index = code - 1).
    pub const ALL: [Kind; 6] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::Ping,
        Kind::Pong,
        Kind::Data,
        Kind::Close,
    ];

    pub fn from_u8(code: u8) -> Option<Kind> {
        match code {
            1..=6 => Some(Kind::ALL[usize::from(code - 1)]),
            _ => None,
        }
    }

    /// Lower-case name, as used in metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Welcome => "welcome",
            Kind::Ping => "ping",
            Kind::Pong => "pong",
            Kind::Data => "data",
            Kind::Close => "close",
        }
    }

    /// The exact payload length of a fixed-size kind, and for HELLO the
    /// length of its fixed part (the token after it is variable); `None` for
    /// DATA and CLOSE. Valid lengths are [`Kind::len_range`].
    pub fn fixed_len(self) -> Option<usize> {
        match self {
            Kind::Hello => Some(HELLO_LEN),
            Kind::Welcome => Some(WELCOME_LEN),
            Kind::Ping | Kind::Pong => Some(PING_LEN),
            Kind::Data | Kind::Close => None,
        }
    }

    /// Payload lengths this kind may have, before the `max_payload` rule.
    pub fn len_range(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Kind::Hello => HELLO_LEN..=HELLO_MAX_LEN,
            Kind::Welcome => WELCOME_LEN..=WELCOME_LEN,
            Kind::Ping | Kind::Pong => PING_LEN..=PING_LEN,
            Kind::Data => 0..=usize::MAX,
            Kind::Close => CLOSE_MIN_LEN..=CLOSE_MAX_LEN,
        }
    }
}

/// CLOSE reasons of version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseReason {
    Normal = 0,
    Timeout = 1,
    ProtocolError = 2,
    FrameTooLarge = 3,
    TakenOver = 4,
    Shutdown = 5,
    Overloaded = 6,
    Unauthorized = 7,
    Limited = 8,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Normal,
        CloseReason::Timeout,
        CloseReason::ProtocolError,
        CloseReason::FrameTooLarge,
        CloseReason::TakenOver,
        CloseReason::Shutdown,
        CloseReason::Overloaded,
        CloseReason::Unauthorized,
        CloseReason::Limited,
    ];

    /// A known reason, or `None` for a code this version does not name.
    pub fn from_code(code: u16) -> Option<CloseReason> {
        CloseReason::ALL.get(usize::from(code)).copied()
    }

    pub fn code(self) -> u16 {
        self as u16
    }

    /// Lower-case name, as used in events and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Normal => "normal",
            CloseReason::Timeout => "timeout",
            CloseReason::ProtocolError => "protocol_error",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::TakenOver => "taken_over",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Overloaded => "overloaded",
            CloseReason::Unauthorized => "unauthorized",
            CloseReason::Limited => "limited",
        }
    }

    /// Text sent with a server-initiated CLOSE, for people reading logs.
    pub fn text(self) -> &'static str {
        match self {
            CloseReason::Normal => "bye",
            CloseReason::Timeout => "no frame within timeout",
            CloseReason::ProtocolError => "protocol error",
            CloseReason::FrameTooLarge => "frame larger than max_payload",
            CloseReason::TakenOver => "client_id taken over by a newer connection",
            CloseReason::Shutdown => "server shutting down",
            CloseReason::Overloaded => "server at its connection limit",
            CloseReason::Unauthorized => {
                "authentication required: no valid token for this client_id"
            }
            CloseReason::Limited => "a per-source or per-id limit was hit",
        }
    }
}

/// The CLOSE frame the server sends for `code`, in memory that lives for
/// the whole program: a connection's CLOSE needs no send-pool room, so no
/// burst of closes can lose one. Unknown codes get an empty text.
pub fn static_close_frame(code: u16) -> &'static [u8] {
    static FRAMES: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(|| {
        CloseReason::ALL
            .iter()
            .map(|r| close_frame(*r, r.text()))
            .collect()
    });
    FRAMES
        .get(usize::from(code))
        .map_or(&[][..], |f| f.as_slice())
}

/// Why a header or payload is not valid version-1 wire data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    #[error("unsupported version {0}")]
    BadVersion(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("non-zero flags {0:#04x}")]
    BadFlags(u8),
    #[error("{kind:?} frame with payload length {len}")]
    BadLength { kind: Kind, len: u32 },
    #[error("payload length {len} over max_payload {max}")]
    TooLarge { len: u32, max: u32 },
    #[error("HELLO must be the first frame and may be sent once")]
    UnexpectedHello,
    #[error("{0:?} is not valid in this direction")]
    WrongDirection(Kind),
}

impl ProtocolError {
    /// The CLOSE reason a receiver sends for this error.
    pub fn close_reason(self) -> CloseReason {
        match self {
            ProtocolError::TooLarge { .. } => CloseReason::FrameTooLarge,
            _ => CloseReason::ProtocolError,
        }
    }
}

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    /// Payload bytes that follow the header.
    pub len: u32,
}

impl Header {
    /// Bytes of the whole frame, header included.
    pub fn frame_len(self) -> usize {
        HEADER_LEN + self.len as usize
    }
}

/// Validates an 8-byte header. `len` over `max_payload` is
/// [`ProtocolError::TooLarge`] for every kind and is checked before the
/// fixed-size rules, so a huge PING is FRAME_TOO_LARGE. HELLO's limit is its
/// own ([`HELLO_MAX_LEN`]), whatever `max_payload` is.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max_payload: u32) -> Result<Header, ProtocolError> {
    if bytes[0] != MAGIC {
        return Err(ProtocolError::BadMagic(bytes[0]));
    }
    if bytes[1] != VERSION {
        return Err(ProtocolError::BadVersion(bytes[1]));
    }
    let kind = Kind::from_u8(bytes[2]).ok_or(ProtocolError::UnknownKind(bytes[2]))?;
    if bytes[3] != 0 {
        return Err(ProtocolError::BadFlags(bytes[3]));
    }
    let len = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let max = match kind {
        Kind::Hello => HELLO_MAX_LEN as u32,
        _ => max_payload,
    };
    if len > max {
        return Err(ProtocolError::TooLarge { len, max });
    }
    if !kind.len_range().contains(&(len as usize)) {
        return Err(ProtocolError::BadLength { kind, len });
    }
    Ok(Header { kind, len })
}

/// A complete frame, borrowing its variable payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `token` is empty when the HELLO carries none.
    Hello {
        client_id: u64,
        interval_ms: u32,
        token: &'a [u8],
    },
    Welcome {
        session: u64,
        interval_ms: u32,
        timeout_ms: u32,
    },
    Ping([u8; PING_LEN]),
    Pong([u8; PING_LEN]),
    Data(&'a [u8]),
    /// `reason` is the raw code: a receiver must not fail on a code it does
    /// not know. `text` is not checked for UTF-8 (receivers ignore it).
    Close {
        reason: u16,
        text: &'a [u8],
    },
}

impl Frame<'_> {
    pub fn kind(&self) -> Kind {
        match self {
            Frame::Hello { .. } => Kind::Hello,
            Frame::Welcome { .. } => Kind::Welcome,
            Frame::Ping(_) => Kind::Ping,
            Frame::Pong(_) => Kind::Pong,
            Frame::Data(_) => Kind::Data,
            Frame::Close { .. } => Kind::Close,
        }
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// Interprets a complete payload. `payload.len()` must equal `header.len`
/// (guaranteed by the caller's reassembly; asserted).
pub fn parse_frame(header: Header, payload: &[u8]) -> Frame<'_> {
    assert_eq!(
        payload.len(),
        header.len as usize,
        "payload/header mismatch"
    );
    match header.kind {
        Kind::Hello => Frame::Hello {
            client_id: be_u64(payload),
            interval_ms: be_u32(&payload[8..]),
            token: &payload[HELLO_LEN..],
        },
        Kind::Welcome => Frame::Welcome {
            session: be_u64(payload),
            interval_ms: be_u32(&payload[8..]),
            timeout_ms: be_u32(&payload[12..]),
        },
        Kind::Ping => Frame::Ping(payload.try_into().expect("fixed length checked")),
        Kind::Pong => Frame::Pong(payload.try_into().expect("fixed length checked")),
        Kind::Data => Frame::Data(payload),
        Kind::Close => Frame::Close {
            reason: u16::from_be_bytes([payload[0], payload[1]]),
            text: &payload[2..],
        },
    }
}

/// The header bytes of a frame of `kind` with `len` payload bytes.
pub const fn header_bytes(kind: Kind, len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [MAGIC, VERSION, kind as u8, 0, l[0], l[1], l[2], l[3]]
}

/// Static header of every PONG: a PONG is these bytes plus the PING payload.
pub const PONG_HEADER: [u8; HEADER_LEN] = header_bytes(Kind::Pong, PING_LEN as u32);
/// Static header of every PING.
pub const PING_HEADER: [u8; HEADER_LEN] = header_bytes(Kind::Ping, PING_LEN as u32);

/// Bytes on the wire of a PING frame.
pub const PING_FRAME_LEN: usize = HEADER_LEN + PING_LEN;
/// Bytes on the wire of a HELLO frame.
pub const HELLO_FRAME_LEN: usize = HEADER_LEN + HELLO_LEN;
/// Bytes on the wire of a WELCOME frame.
pub const WELCOME_FRAME_LEN: usize = HEADER_LEN + WELCOME_LEN;

fn frame_with<const N: usize>(header: [u8; HEADER_LEN], payload: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out[..HEADER_LEN].copy_from_slice(&header);
    out[HEADER_LEN..].copy_from_slice(payload);
    out
}

pub fn ping_frame(payload: [u8; PING_LEN]) -> [u8; PING_FRAME_LEN] {
    frame_with(PING_HEADER, &payload)
}

pub fn pong_frame(payload: [u8; PING_LEN]) -> [u8; PING_FRAME_LEN] {
    frame_with(PONG_HEADER, &payload)
}

pub fn hello_frame(client_id: u64, interval_ms: u32) -> [u8; HELLO_FRAME_LEN] {
    let mut p = [0u8; HELLO_LEN];
    p[..8].copy_from_slice(&client_id.to_be_bytes());
    p[8..].copy_from_slice(&interval_ms.to_be_bytes());
    frame_with(header_bytes(Kind::Hello, HELLO_LEN as u32), &p)
}

/// A HELLO carrying `token` (revision 2). Fails if the token is longer than
/// [`TOKEN_MAX`]. An empty token gives the same bytes as [`hello_frame`].
pub fn hello_frame_with_token(
    client_id: u64,
    interval_ms: u32,
    token: &[u8],
) -> Result<Vec<u8>, ProtocolError> {
    let len = HELLO_LEN + token.len();
    if token.len() > TOKEN_MAX {
        return Err(ProtocolError::TooLarge {
            len: u32::try_from(len).unwrap_or(u32::MAX),
            max: HELLO_MAX_LEN as u32,
        });
    }
    let mut v = Vec::with_capacity(HEADER_LEN + len);
    v.extend_from_slice(&header_bytes(Kind::Hello, len as u32));
    v.extend_from_slice(&client_id.to_be_bytes());
    v.extend_from_slice(&interval_ms.to_be_bytes());
    v.extend_from_slice(token);
    Ok(v)
}

pub fn welcome_frame(session: u64, interval_ms: u32, timeout_ms: u32) -> [u8; WELCOME_FRAME_LEN] {
    let mut p = [0u8; WELCOME_LEN];
    p[..8].copy_from_slice(&session.to_be_bytes());
    p[8..12].copy_from_slice(&interval_ms.to_be_bytes());
    p[12..].copy_from_slice(&timeout_ms.to_be_bytes());
    frame_with(header_bytes(Kind::Welcome, WELCOME_LEN as u32), &p)
}

/// Writes a CLOSE frame into `out` and returns its length. Text longer than
/// [`CLOSE_TEXT_MAX`] is cut at a char boundary.
pub fn encode_close(reason: u16, text: &str, out: &mut [u8; CONTROL_FRAME_MAX]) -> usize {
    let mut cut = text.len().min(CLOSE_TEXT_MAX);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let text = &text.as_bytes()[..cut];
    let len = CLOSE_MIN_LEN + text.len();
    out[..HEADER_LEN].copy_from_slice(&header_bytes(Kind::Close, len as u32));
    out[HEADER_LEN..HEADER_LEN + 2].copy_from_slice(&reason.to_be_bytes());
    out[HEADER_LEN + 2..HEADER_LEN + len].copy_from_slice(text);
    HEADER_LEN + len
}

/// A CLOSE frame as an owned vector (clients; the server uses [`encode_close`]).
pub fn close_frame(reason: CloseReason, text: &str) -> Vec<u8> {
    let mut buf = [0u8; CONTROL_FRAME_MAX];
    let n = encode_close(reason.code(), text, &mut buf);
    buf[..n].to_vec()
}

/// A DATA frame as an owned vector. Fails if `payload` exceeds `max_payload`.
pub fn data_frame(payload: &[u8], max_payload: u32) -> Result<Vec<u8>, ProtocolError> {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if len > max_payload {
        return Err(ProtocolError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&header_bytes(Kind::Data, len));
    v.extend_from_slice(payload);
    Ok(v)
}

/// An owned frame, as [`Decoder`] yields it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OwnedFrame {
    Hello {
        client_id: u64,
        interval_ms: u32,
        token: Vec<u8>,
    },
    Welcome {
        session: u64,
        interval_ms: u32,
        timeout_ms: u32,
    },
    Ping([u8; PING_LEN]),
    Pong([u8; PING_LEN]),
    Data(Vec<u8>),
    Close {
        reason: u16,
        text: Vec<u8>,
    },
}

impl From<Frame<'_>> for OwnedFrame {
    fn from(f: Frame<'_>) -> Self {
        match f {
            Frame::Hello {
                client_id,
                interval_ms,
                token,
            } => OwnedFrame::Hello {
                client_id,
                interval_ms,
                token: token.to_vec(),
            },
            Frame::Welcome {
                session,
                interval_ms,
                timeout_ms,
            } => OwnedFrame::Welcome {
                session,
                interval_ms,
                timeout_ms,
            },
            Frame::Ping(p) => OwnedFrame::Ping(p),
            Frame::Pong(p) => OwnedFrame::Pong(p),
            Frame::Data(d) => OwnedFrame::Data(d.to_vec()),
            Frame::Close { reason, text } => OwnedFrame::Close {
                reason,
                text: text.to_vec(),
            },
        }
    }
}

/// Stream reassembly for clients and tools: feed bytes as they arrive, take
/// complete frames out. Buffers at most one partial frame plus what was fed.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    max_payload: u32,
}

impl Decoder {
    pub fn new(max_payload: u32) -> Decoder {
        Decoder {
            buf: Vec::with_capacity(256),
            start: 0,
            max_payload,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes fed but not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or the
    /// first protocol error (after which the stream is unusable).
    pub fn next_frame(&mut self) -> Result<Option<OwnedFrame>, ProtocolError> {
        let avail = &self.buf[self.start..];
        if avail.len() < HEADER_LEN {
            self.compact();
            return Ok(None);
        }
        let head: &[u8; HEADER_LEN] = avail[..HEADER_LEN].try_into().expect("8 bytes");
        let header = parse_header(head, self.max_payload)?;
        if avail.len() < header.frame_len() {
            self.compact();
            return Ok(None);
        }
        let frame = parse_frame(header, &avail[HEADER_LEN..header.frame_len()]).into();
        self.start += header.frame_len();
        Ok(Some(frame))
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: u32 = DEFAULT_MAX_PAYLOAD;

    fn head(b: &[u8]) -> [u8; 8] {
        b[..8].try_into().unwrap()
    }

    #[test]
    fn header_rejects_each_bad_field() {
        let good = ping_frame([1; 8]);
        assert!(parse_header(&head(&good), MAX).is_ok());
        let mut b = head(&good);
        b[0] = 0x53;
        assert_eq!(parse_header(&b, MAX), Err(ProtocolError::BadMagic(0x53)));
        let mut b = head(&good);
        b[1] = 2;
        assert_eq!(parse_header(&b, MAX), Err(ProtocolError::BadVersion(2)));
        let mut b = head(&good);
        b[2] = 7;
        assert_eq!(parse_header(&b, MAX), Err(ProtocolError::UnknownKind(7)));
        b[2] = 0;
        assert_eq!(parse_header(&b, MAX), Err(ProtocolError::UnknownKind(0)));
        let mut b = head(&good);
        b[3] = 1;
        assert_eq!(parse_header(&b, MAX), Err(ProtocolError::BadFlags(1)));
    }

    #[test]
    fn fixed_sizes_are_exact() {
        for (kind, ok) in [(Kind::Welcome, 16), (Kind::Ping, 8), (Kind::Pong, 8)] {
            assert!(parse_header(&header_bytes(kind, ok), MAX).is_ok());
            for bad in [0, ok - 1, ok + 1] {
                assert_eq!(
                    parse_header(&header_bytes(kind, bad), MAX),
                    Err(ProtocolError::BadLength { kind, len: bad })
                );
            }
        }
    }

    #[test]
    fn hello_carries_a_token_of_0_to_512_bytes_whatever_max_payload_is() {
        let min_max = MIN_MAX_PAYLOAD;
        for max in [min_max, MAX] {
            for token_len in [0usize, 1, 512] {
                let token = vec![b'x'; token_len];
                let bytes = hello_frame_with_token(42, 7, &token).unwrap();
                let h = parse_header(&head(&bytes), max).unwrap();
                assert_eq!(h.frame_len(), bytes.len());
                let f = parse_frame(h, &bytes[HEADER_LEN..]);
                assert_eq!(
                    f,
                    Frame::Hello {
                        client_id: 42,
                        interval_ms: 7,
                        token: &token
                    }
                );
            }
            let too_long = parse_header(&header_bytes(Kind::Hello, 12 + 513), max).unwrap_err();
            assert_eq!(too_long.close_reason(), CloseReason::FrameTooLarge);
            let short = parse_header(&header_bytes(Kind::Hello, 11), max).unwrap_err();
            assert_eq!(short.close_reason(), CloseReason::ProtocolError);
        }
        assert!(hello_frame_with_token(1, 0, &[0u8; 513]).is_err());
        assert_eq!(
            hello_frame_with_token(1, 2, b"").unwrap(),
            hello_frame(1, 2)
        );
    }

    #[test]
    fn close_reasons_round_trip_through_their_codes() {
        for r in CloseReason::ALL {
            assert_eq!(CloseReason::from_code(r.code()), Some(r));
        }
        assert_eq!(CloseReason::from_code(7), Some(CloseReason::Unauthorized));
        assert_eq!(CloseReason::from_code(8), Some(CloseReason::Limited));
        assert_eq!(CloseReason::from_code(9), None);
    }

    #[test]
    fn close_length_bounds() {
        assert!(parse_header(&header_bytes(Kind::Close, 1), MAX).is_err());
        assert!(parse_header(&header_bytes(Kind::Close, 2), MAX).is_ok());
        assert!(parse_header(&header_bytes(Kind::Close, 258), MAX).is_ok());
        assert_eq!(
            parse_header(&header_bytes(Kind::Close, 259), MAX)
                .unwrap_err()
                .close_reason(),
            CloseReason::ProtocolError
        );
    }

    #[test]
    fn over_max_payload_is_frame_too_large_for_every_kind() {
        for kind in Kind::ALL {
            let over = if kind == Kind::Hello { 525 } else { MAX + 1 };
            let err = parse_header(&header_bytes(kind, over), MAX).unwrap_err();
            assert_eq!(err.close_reason(), CloseReason::FrameTooLarge, "{kind:?}");
        }
        assert!(parse_header(&header_bytes(Kind::Data, MAX), MAX).is_ok());
        assert!(parse_header(&header_bytes(Kind::Data, 0), MAX).is_ok());
    }

    #[test]
    fn close_text_is_cut_at_char_boundary() {
        let text = "é".repeat(200); // 400 bytes
        let mut buf = [0u8; CONTROL_FRAME_MAX];
        let n = encode_close(1, &text, &mut buf);
        let h = parse_header(&head(&buf), MAX).unwrap();
        assert_eq!(n, h.frame_len());
        match parse_frame(h, &buf[8..n]) {
            Frame::Close { reason, text } => {
                assert_eq!(reason, 1);
                assert_eq!(text.len(), 256);
                assert!(std::str::from_utf8(text).is_ok());
            }
            f => panic!("{f:?}"),
        }
    }

    #[test]
    fn unknown_close_code_parses() {
        let mut buf = [0u8; CONTROL_FRAME_MAX];
        let n = encode_close(999, "", &mut buf);
        let h = parse_header(&head(&buf), MAX).unwrap();
        assert!(matches!(
            parse_frame(h, &buf[8..n]),
            Frame::Close { reason: 999, .. }
        ));
        assert_eq!(CloseReason::from_code(999), None);
    }

    fn any_frame() -> impl Strategy<Value = OwnedFrame> {
        prop_oneof![
            (
                any::<u64>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..=TOKEN_MAX)
            )
                .prop_map(|(c, i, t)| OwnedFrame::Hello {
                    client_id: c,
                    interval_ms: i,
                    token: t,
                }),
            (any::<u64>(), any::<u32>(), any::<u32>()).prop_map(|(s, i, t)| {
                OwnedFrame::Welcome {
                    session: s,
                    interval_ms: i,
                    timeout_ms: t,
                }
            }),
            any::<[u8; 8]>().prop_map(OwnedFrame::Ping),
            any::<[u8; 8]>().prop_map(OwnedFrame::Pong),
            proptest::collection::vec(any::<u8>(), 0..=MAX as usize).prop_map(OwnedFrame::Data),
            (any::<u16>(), "[a-z ]{0,256}").prop_map(|(r, t)| OwnedFrame::Close {
                reason: r,
                text: t.into_bytes()
            }),
        ]
    }

    fn encode(f: &OwnedFrame) -> Vec<u8> {
        match f {
            OwnedFrame::Hello {
                client_id,
                interval_ms,
                token,
            } => hello_frame_with_token(*client_id, *interval_ms, token).unwrap(),
            OwnedFrame::Welcome {
                session,
                interval_ms,
                timeout_ms,
            } => welcome_frame(*session, *interval_ms, *timeout_ms).to_vec(),
            OwnedFrame::Ping(p) => ping_frame(*p).to_vec(),
            OwnedFrame::Pong(p) => pong_frame(*p).to_vec(),
            OwnedFrame::Data(d) => data_frame(d, MAX).unwrap(),
            OwnedFrame::Close { reason, text } => {
                let mut buf = [0u8; CONTROL_FRAME_MAX];
                let n = encode_close(*reason, std::str::from_utf8(text).unwrap(), &mut buf);
                buf[..n].to_vec()
            }
        }
    }

    proptest! {
        #[test]
        fn roundtrip_any_split(frames in proptest::collection::vec(any_frame(), 1..8),
                               cuts in proptest::collection::vec(any::<usize>(), 0..16)) {
            let wire: Vec<u8> = frames.iter().flat_map(encode).collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort_unstable();
            let mut dec = Decoder::new(MAX);
            let mut got = Vec::new();
            for w in points.windows(2) {
                dec.feed(&wire[w[0]..w[1]]);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got, frames);
            prop_assert_eq!(dec.pending(), 0);
        }

        #[test]
        fn random_headers_never_panic(bytes in any::<[u8; 8]>(), max in 0u32..4096) {
            if let Ok(h) = parse_header(&bytes, max) {
                prop_assert!(h.len <= max);
                let payload = vec![0u8; h.len as usize];
                let _ = parse_frame(h, &payload);
            }
        }
    }
}
