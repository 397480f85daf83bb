//! Header examples from the spec's layout, every refusal, and proptests.

use super::*;
use proptest::prelude::*;

fn v4() -> (SocketAddr, SocketAddr) {
    (
        "203.0.113.7:51000".parse().unwrap(),
        "10.0.0.1:7700".parse().unwrap(),
    )
}

#[test]
fn ipv4_and_ipv6_proxy_headers_give_the_source() {
    let (s, d) = v4();
    let mut buf = encode(s, d, &[]);
    let len = buf.len();
    assert_eq!(len, 28);
    buf.extend_from_slice(b"R\x01rest of the stream");
    assert_eq!(
        parse(&buf),
        Ok(Parsed::Done {
            source: Some(s),
            header_len: 28
        })
    );
    let s6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
    let d6: SocketAddr = "[2001:db8::2]:7700".parse().unwrap();
    let buf = encode(s6, d6, &[]);
    assert_eq!(
        parse(&buf),
        Ok(Parsed::Done {
            source: Some(s6),
            header_len: 52
        })
    );
}

#[test]
fn tlvs_are_skipped() {
    let (s, d) = v4();
    // PP2_TYPE_ALPN (0x01), 2 bytes "h2"; PP2_TYPE_NOOP (0x04), 3 bytes.
    let tlvs = [0x01, 0, 2, b'h', b'2', 0x04, 0, 3, 0, 0, 0];
    let buf = encode(s, d, &tlvs);
    assert_eq!(
        parse(&buf),
        Ok(Parsed::Done {
            source: Some(s),
            header_len: 28 + tlvs.len()
        })
    );
}

fn raw(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
    let mut v = SIGNATURE.to_vec();
    v.extend_from_slice(&[ver_cmd, fam]);
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[test]
fn local_and_unspec_keep_the_socket_address() {
    // LOCAL with no address (haproxy health checks), and with one (ignored).
    assert_eq!(
        parse(&raw(0x20, 0x00, &[])),
        Ok(Parsed::Done {
            source: None,
            header_len: 16
        })
    );
    assert_eq!(
        parse(&raw(0x20, 0x11, &[0; 12])),
        Ok(Parsed::Done {
            source: None,
            header_len: 28
        })
    );
    assert_eq!(
        parse(&raw(0x21, 0x00, &[9; 4])),
        Ok(Parsed::Done {
            source: None,
            header_len: 20
        })
    );
}

#[test]
fn every_refusal() {
    assert_eq!(
        parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
        Err(ProxyError::Version1)
    );
    assert_eq!(parse(b"PRO"), Err(ProxyError::Version1));
    assert_eq!(parse(b"R\x01\x03\x00"), Err(ProxyError::BadSignature));
    assert_eq!(parse(b"\r\n\r\n\x01"), Err(ProxyError::BadSignature));
    assert_eq!(
        parse(&raw(0x11, 0x11, &[0; 12])),
        Err(ProxyError::BadVersion(1))
    );
    assert_eq!(
        parse(&raw(0x22, 0x11, &[0; 12])),
        Err(ProxyError::BadCommand(2))
    );
    assert_eq!(
        parse(&raw(0x21, 0x12, &[0; 12])),
        Err(ProxyError::Unsupported(0x12)),
        "UDP"
    );
    assert_eq!(
        parse(&raw(0x21, 0x31, &[0; 216])),
        Err(ProxyError::Unsupported(0x31)),
        "unix"
    );
    assert_eq!(
        parse(&raw(0x21, 0x11, &[0; 11])),
        Err(ProxyError::Truncated(11))
    );
    assert_eq!(
        parse(&raw(0x21, 0x21, &[0; 12])),
        Err(ProxyError::Truncated(12))
    );
    let big = raw(0x21, 0x11, &[0; HEADER_MAX_BYTES - FIXED_BYTES + 1]);
    assert_eq!(parse(&big), Err(ProxyError::TooLarge(HEADER_MAX_BYTES + 1)));
    // Refused from the fixed part alone: no waiting for 64 KiB.
    assert_eq!(
        parse(&big[..FIXED_BYTES]),
        Err(ProxyError::TooLarge(HEADER_MAX_BYTES + 1))
    );
    let max = raw(0x21, 0x11, &[0; HEADER_MAX_BYTES - FIXED_BYTES]);
    assert!(matches!(
        parse(&max),
        Ok(Parsed::Done {
            header_len: HEADER_MAX_BYTES,
            ..
        })
    ));
}

fn any_valid_header() -> impl Strategy<Value = (Vec<u8>, Option<SocketAddr>)> {
    let v4 = (
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<[u8; 4]>(),
        any::<u16>(),
    )
        .prop_map(|(a, p, b, q)| {
            let s = SocketAddr::from((a, p));
            (s, SocketAddr::from((b, q)))
        });
    let v6 = (
        any::<[u8; 16]>(),
        any::<u16>(),
        any::<[u8; 16]>(),
        any::<u16>(),
    )
        .prop_map(|(a, p, b, q)| {
            let s = SocketAddr::from((a, p));
            (s, SocketAddr::from((b, q)))
        });
    (
        prop_oneof![v4, v6],
        proptest::collection::vec(any::<u8>(), 0..400),
    )
        .prop_map(|((s, d), tlv)| (encode(s, d, &tlv), Some(s)))
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = parse(&bytes);
        let mut sig = SIGNATURE.to_vec();
        sig.extend_from_slice(&bytes);
        if let Ok(Parsed::Done { header_len, .. }) = parse(&sig) {
            prop_assert!(header_len <= sig.len() && header_len <= HEADER_MAX_BYTES);
        }
    }

    #[test]
    fn a_valid_header_split_anywhere_parses_identically(
        (header, source) in any_valid_header(),
        trailing in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut stream = header.clone();
        stream.extend_from_slice(&trailing);
        let whole = parse(&stream);
        prop_assert_eq!(whole, Ok(Parsed::Done { source, header_len: header.len() }));
        for cut in 0..header.len() {
            prop_assert_eq!(parse(&stream[..cut]), Ok(Parsed::Incomplete), "cut at {}", cut);
        }
        prop_assert_eq!(parse(&header), whole);
    }
}
