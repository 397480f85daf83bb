//! Token rules, each with a token built to break exactly one of them.

use super::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const ED_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIMi3OrXydilAZyPqTYpb3dIg/TAjTZ5/US1erU6H0i1K
-----END PRIVATE KEY-----
";
const ED_PUBLIC: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEA6M6Pth//tQZzOHK4t91NFWctmfvg5/Uv+qpfr2lRIl4=
-----END PUBLIC KEY-----
";
/// Another Ed25519 key (its public half is not configured).
const ED_OTHER_PRIVATE: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIEH34fwKCBgLet4/H2j1f0f1qhLPQP35s4ZUcHvfNg3x
-----END PRIVATE KEY-----
";
const SECRET_A: &[u8] = b"0123456789abcdef0123456789abcdef-a";
const SECRET_B: &[u8] = b"0123456789abcdef0123456789abcdef-b";
const NOW: u64 = 1_800_000_000;

struct Fixture {
    _dir: tempfile::TempDir,
    auth: Authenticator,
}

/// Keys "a" (HS256), "b" (HS256, rotation) and "ed" (EdDSA public).
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let mut a = SECRET_A.to_vec();
    a.push(b'\n'); // a trailing newline is not part of the secret
    let specs: Vec<KeySpec> = [
        format!("a=hs256:{}", write("a.key", &a)),
        format!("b=hs256:{}", write("b.key", SECRET_B)),
        format!("ed=eddsa:{}", write("ed.pub.pem", ED_PUBLIC.as_bytes())),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let auth = Authenticator::new(&specs, None).unwrap();
    Fixture { _dir: dir, auth }
}

fn hs(kid: &str, secret: &[u8], claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    encode(&h, &claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn ed(kid: &str, private_pem: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::EdDSA);
    h.kid = Some(kid.into());
    let key = EncodingKey::from_ed_pem(private_pem.as_bytes()).unwrap();
    encode(&h, &claims, &key).unwrap()
}

fn claims(sub: &str, exp: u64) -> serde_json::Value {
    json!({ "sub": sub, "exp": exp })
}

fn b64(v: serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[test]
fn valid_hs256_and_eddsa_tokens_pass() {
    let f = fixture();
    let t = hs("a", SECRET_A, claims("42", NOW + 60));
    assert_eq!(f.auth.verify(42, t.as_bytes(), NOW), Ok(()));
    let t = ed("ed", ED_PRIVATE, claims("42", NOW + 60));
    assert_eq!(f.auth.verify(42, t.as_bytes(), NOW), Ok(()));
    assert_eq!(f.auth.stats().verified.load(Ordering::Relaxed), 2);
}

#[test]
fn two_kids_both_verify_so_keys_rotate() {
    let f = fixture();
    for (kid, secret) in [("a", SECRET_A), ("b", SECRET_B)] {
        let t = hs(kid, secret, claims("7", NOW + 60));
        assert_eq!(f.auth.verify(7, t.as_bytes(), NOW), Ok(()), "kid {kid}");
    }
}

#[test]
fn expired_at_and_after_exp() {
    let f = fixture();
    let t = hs("a", SECRET_A, claims("42", NOW));
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::Expired)
    );
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW + 1),
        Err(AuthError::Expired)
    );
    assert_eq!(f.auth.verify(42, t.as_bytes(), NOW - 1), Ok(()));
}

#[test]
fn nbf_in_the_future_is_not_yet_valid() {
    let f = fixture();
    let nbf = NOW + NBF_LEEWAY_S + 1;
    let t = hs(
        "a",
        SECRET_A,
        json!({"sub": "42", "exp": NOW + 600, "nbf": nbf}),
    );
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::NotYetValid)
    );
    assert_eq!(f.auth.verify(42, t.as_bytes(), nbf), Ok(()));
}

#[test]
fn wrong_subject_is_refused_even_from_the_cache() {
    let f = fixture();
    let t = hs("a", SECRET_A, claims("42", NOW + 60));
    assert_eq!(
        f.auth.verify(43, t.as_bytes(), NOW),
        Err(AuthError::WrongSubject)
    );
    assert_eq!(f.auth.verify(42, t.as_bytes(), NOW), Ok(()));
    assert_eq!(
        f.auth.verify(43, t.as_bytes(), NOW),
        Err(AuthError::WrongSubject)
    );
    let t = hs("a", SECRET_A, claims("042", NOW + 60));
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::WrongSubject)
    );
}

#[test]
fn bad_signature_names_the_kid_only() {
    let f = fixture();
    let t = hs("a", SECRET_B, claims("42", NOW + 60));
    let err = f.auth.verify(42, t.as_bytes(), NOW).unwrap_err();
    assert_eq!(err, AuthError::BadSignature { kid: "a".into() });
    let text = err.to_string();
    assert!(!text.contains("0123456789abcdef"), "{text}");
    let t = ed("ed", ED_OTHER_PRIVATE, claims("42", NOW + 60));
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::BadSignature { kid: "ed".into() })
    );
}

#[test]
fn unknown_or_absent_kid() {
    let f = fixture();
    let t = hs("zz", SECRET_A, claims("42", NOW + 60));
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::UnknownKid)
    );
    let no_kid = encode(
        &Header::new(Algorithm::HS256),
        &claims("42", NOW + 60),
        &EncodingKey::from_secret(SECRET_A),
    )
    .unwrap();
    assert_eq!(
        f.auth.verify(42, no_kid.as_bytes(), NOW),
        Err(AuthError::UnknownKid)
    );
}

#[test]
fn alg_none_and_other_algs_are_refused() {
    let f = fixture();
    let body = b64(claims("42", NOW + 60));
    for alg in ["none", "None", "HS512", "RS256", "ES256"] {
        let t = format!("{}.{body}.", b64(json!({"alg": alg, "kid": "a"})));
        assert_eq!(
            f.auth.verify(42, t.as_bytes(), NOW),
            Err(AuthError::UnsupportedAlg),
            "{alg}"
        );
    }
}

#[test]
fn alg_confusion_hs256_signed_with_the_ed25519_public_key_is_refused() {
    // The classic attack: the public key is public, so an attacker signs an
    // HS256 token with its bytes and names the EdDSA kid.
    let f = fixture();
    for secret in [ED_PUBLIC.as_bytes(), ED_PUBLIC.trim_end().as_bytes()] {
        let t = hs("ed", secret, claims("42", NOW + 60));
        assert_eq!(
            f.auth.verify(42, t.as_bytes(), NOW),
            Err(AuthError::AlgMismatch { kid: "ed".into() })
        );
    }
    // And the reverse: an EdDSA token naming an HS256 kid.
    let t = ed("a", ED_PRIVATE, claims("42", NOW + 60));
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW),
        Err(AuthError::AlgMismatch { kid: "a".into() })
    );
}

#[test]
fn malformed_and_missing() {
    let f = fixture();
    assert_eq!(f.auth.verify(42, b"", NOW), Err(AuthError::Missing));
    for junk in [&b"abc"[..], b"a.b.c", b"\xff\xfe.x.y", &[b'a'; 600]] {
        assert_eq!(f.auth.verify(42, junk, NOW), Err(AuthError::Malformed));
    }
    let good = hs("a", SECRET_A, claims("42", NOW + 60));
    let mut parts: Vec<&str> = good.split('.').collect();
    let tampered = b64(claims("43", NOW + 60));
    parts[1] = &tampered;
    assert!(matches!(
        f.auth.verify(43, parts.join(".").as_bytes(), NOW),
        Err(AuthError::BadSignature { .. })
    ));
    let no_exp = hs("a", SECRET_A, json!({"sub": "42"}));
    assert_eq!(
        f.auth.verify(42, no_exp.as_bytes(), NOW),
        Err(AuthError::MissingClaim("exp"))
    );
    assert_eq!(
        f.auth.stats().rejected[AuthError::Malformed.index()].load(Ordering::Relaxed),
        4
    );
}

#[test]
fn cache_serves_repeats_but_never_extends_exp() {
    let f = fixture();
    let t = hs("a", SECRET_A, claims("42", NOW + 10));
    assert_eq!(f.auth.verify(42, t.as_bytes(), NOW), Ok(()));
    for s in 0..10 {
        assert_eq!(f.auth.verify(42, t.as_bytes(), NOW + s), Ok(()));
    }
    assert_eq!(f.auth.stats().verified.load(Ordering::Relaxed), 1);
    assert_eq!(f.auth.stats().cache_hits.load(Ordering::Relaxed), 10);
    assert_eq!(
        f.auth.verify(42, t.as_bytes(), NOW + 10),
        Err(AuthError::Expired)
    );
}

#[test]
fn a_tiny_cache_stays_bounded_and_correct() {
    let f = fixture();
    let auth = f.auth.clone().with_cache_entries(2);
    let tokens: Vec<String> = (1..=8u64)
        .map(|id| hs("a", SECRET_A, claims(&id.to_string(), NOW + 60)))
        .collect();
    for _ in 0..3 {
        for (id, t) in (1..=8u64).zip(&tokens) {
            assert_eq!(auth.verify(id, t.as_bytes(), NOW), Ok(()));
            assert_eq!(
                auth.verify(id + 100, t.as_bytes(), NOW),
                Err(AuthError::WrongSubject)
            );
        }
    }
    assert!(auth.stats().cache_evictions.load(Ordering::Relaxed) > 0);
}

#[test]
fn modes_and_key_errors() {
    let f = fixture();
    assert!(matches!(
        Authenticator::new(&[], Some(AuthMode::Required)),
        Err(KeyError::RequiredWithoutKey)
    ));
    let off = Authenticator::new(&[], None).unwrap();
    assert_eq!(off.mode(), AuthMode::Off);
    assert_eq!(off.check_hello(42, b"garbage", NOW), Ok(()));
    assert_eq!(f.auth.mode(), AuthMode::Required);
    assert_eq!(f.auth.check_hello(42, b"", NOW), Err(AuthError::Missing));
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, b"tooshort\n").unwrap();
    let priv_pem = dir.path().join("priv.pem");
    std::fs::write(&priv_pem, ED_PRIVATE).unwrap();
    for spec in [
        format!("k=hs256:{}", short.display()),
        format!("k=eddsa:{}", priv_pem.display()),
        format!("k=hs256:{}", dir.path().join("absent").display()),
    ] {
        let err = Authenticator::new(&[spec.parse().unwrap()], None).unwrap_err();
        assert!(err.to_string().contains("\"k\""), "{err}");
    }
    for bad in ["k", "k=rsa:/x", "=hs256:/x", "k=hs256:"] {
        assert!(bad.parse::<KeySpec>().is_err(), "{bad}");
    }
}

#[test]
fn minted_tokens_verify() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ed.pem");
    std::fs::write(&p, ED_PRIVATE).unwrap();
    let spec: KeySpec = format!("ed=eddsa:{}", p.display()).parse().unwrap();
    let t = keys::mint_from_file(&spec, 9, NOW, 3600).unwrap();
    assert_eq!(f.auth.verify(9, t.as_bytes(), NOW + 3599), Ok(()));
    assert_eq!(
        f.auth.verify(9, t.as_bytes(), NOW + 3600),
        Err(AuthError::Expired)
    );
}
