//! The slice of MQTT 3.1.1 the load generator speaks, so that an MQTT broker
//! (mosquitto) can be benchmarked as a heartbeat server with the same
//! clients, faults and measurements as ringbeat.
//!
//! A client sends CONNECT with a keepalive, gets CONNACK, then sends PINGREQ
//! every interval and gets PINGRESP. The broker closes a client it has not
//! heard from for 1.5 × keepalive (MQTT 3.1.1 §3.1.2.10) without a reason on
//! the wire, so the load generator sees an eviction as EOF.

/// PINGREQ: the heartbeat.
pub const PINGREQ: [u8; 2] = [0xC0, 0x00];
/// DISCONNECT: a clean goodbye.
pub const DISCONNECT: [u8; 2] = [0xE0, 0x00];
/// Packet type 0 is reserved: a broker must close the connection.
pub const GARBAGE: [u8; 2] = [0x00, 0x00];
/// Longest fixed header: one type byte and a 4-byte remaining length.
pub const FIXED_HEADER_MAX: usize = 5;

/// Packet types the load generator reads.
pub const CONNACK: u8 = 2;
pub const PINGRESP: u8 = 13;

/// The keepalive (whole seconds) that makes a broker close a silent client
/// after `timeout_ms`: brokers allow 1.5 × keepalive.
pub fn keepalive_for_timeout(timeout_ms: u64) -> Result<u16, String> {
    let keepalive_ms = timeout_ms * 2 / 3;
    if timeout_ms * 2 % 3 != 0 || keepalive_ms % 1000 != 0 || keepalive_ms == 0 {
        return Err(format!(
            "--timeout {timeout_ms}ms: MQTT brokers close after 1.5 × a whole-second keepalive, \
             so the timeout must be a multiple of 1.5 s (e.g. 3s, 60s)"
        ));
    }
    u16::try_from(keepalive_ms / 1000).map_err(|_| "--timeout is too long for MQTT".to_string())
}

/// CONNECT with a clean session, no credentials and `client_id`.
pub fn connect_packet(client_id: &str, keepalive_s: u16) -> Vec<u8> {
    assert!(
        client_id.len() <= 23,
        "MQTT 3.1.1 brokers must accept ids up to 23 bytes"
    );
    let remaining = 10 + 2 + client_id.len();
    let mut p = Vec::with_capacity(2 + remaining);
    p.extend_from_slice(&[0x10, remaining as u8]);
    p.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02]);
    p.extend_from_slice(&keepalive_s.to_be_bytes());
    p.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    p.extend_from_slice(client_id.as_bytes());
    p
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: u8,
    pub header_len: usize,
    pub remaining_len: u32,
}

impl FixedHeader {
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len as usize
    }
}

/// A remaining length longer than four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MalformedLength;

/// Parses the fixed header at the start of `bytes`: `Ok(None)` when more
/// bytes are needed.
pub fn fixed_header(bytes: &[u8]) -> Result<Option<FixedHeader>, MalformedLength> {
    let mut remaining_len = 0u32;
    for (i, &b) in bytes.iter().enumerate().skip(1).take(FIXED_HEADER_MAX - 1) {
        remaining_len |= u32::from(b & 0x7F) << (7 * (i - 1));
        if b & 0x80 == 0 {
            return Ok(Some(FixedHeader {
                packet_type: bytes[0] >> 4,
                header_len: i + 1,
                remaining_len,
            }));
        }
    }
    if bytes.len() >= FIXED_HEADER_MAX {
        return Err(MalformedLength);
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn connect_matches_the_spec_example_layout() {
        let p = connect_packet("rb1", 2);
        assert_eq!(
            p,
            [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 2, 0, 3, b'r', b'b', b'1']
        );
        let h = fixed_header(&p).unwrap().unwrap();
        assert_eq!((h.packet_type, h.packet_len()), (1, p.len()));
    }

    #[test]
    fn keepalive_is_two_thirds_of_the_timeout_in_whole_seconds() {
        assert_eq!(keepalive_for_timeout(3_000), Ok(2));
        assert_eq!(keepalive_for_timeout(60_000), Ok(40));
        assert!(keepalive_for_timeout(2_000).is_err());
        assert!(keepalive_for_timeout(1_000).is_err());
    }

    #[test]
    fn fixed_headers_need_more_bytes_or_fail_cleanly() {
        assert_eq!(fixed_header(&[0xD0]), Ok(None));
        assert_eq!(fixed_header(&[0x30, 0x80]), Ok(None));
        let h = fixed_header(&[0x30, 0xC1, 0x02]).unwrap().unwrap();
        assert_eq!((h.header_len, h.remaining_len), (3, 321));
        assert_eq!(
            fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(MalformedLength)
        );
    }

    proptest! {
        #[test]
        fn remaining_length_round_trips(len in 0u32..268_435_456) {
            let mut bytes = vec![0x30];
            let mut x = len;
            loop {
                let mut b = (x % 128) as u8;
                x /= 128;
                if x > 0 { b |= 0x80; }
                bytes.push(b);
                if x == 0 { break; }
            }
            let h = fixed_header(&bytes).unwrap().unwrap();
            prop_assert_eq!((h.header_len, h.remaining_len), (bytes.len(), len));
            prop_assert_eq!(fixed_header(&bytes[..bytes.len() - 1]), Ok(None));
        }
    }
}
