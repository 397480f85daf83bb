//! HELLO token verification (PROTOCOL.md revision 2, "Authentication"):
//! sans-IO, given the HELLO's client_id, its token bytes and the time.
//!
//! A token is a compact JWT: `kid` in the header picks a configured key, the
//! header's `alg` must be that key's (HS256 for a secret, EdDSA for an
//! Ed25519 public key; `none` and every other alg are refused), `sub` is the
//! client_id in decimal, `exp` is required. A token that verified once is
//! remembered in a bounded [`cache::TokenCache`] until its `exp`, so a
//! reconnect storm costs one SHA-256 per HELLO, not a signature check.
//!
//! Tokens and secrets are never logged or put in errors; errors name the kid
//! of a configured key at most.

pub mod cache;
pub mod keys;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use clap::ValueEnum;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;
use thiserror::Error;

use crate::protocol::TOKEN_MAX;
use cache::{Lookup, TokenCache, TokenDigest, DEFAULT_CACHE_ENTRIES};
pub use keys::{KeyAlg, KeyError, KeySpec};

/// How much `nbf` may lie in the future (clock skew between the minter and
/// this server). `exp` gets no slack: a token is never accepted at or after
/// its `exp`.
pub const NBF_LEEWAY_S: u64 = 30;

/// Whether HELLO must carry a valid token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Tokens are ignored (the default when no key is configured).
    Off,
    /// A HELLO without a token is accepted; a token that is present must be
    /// valid.
    Optional,
    /// Every connection must say HELLO with a valid token (the default when
    /// a key is configured).
    Required,
}

/// Why a HELLO's token was refused. The engine answers CLOSE(UNAUTHORIZED).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token alg is not HS256 or EdDSA")]
    UnsupportedAlg,
    #[error("token kid is absent or not a configured key")]
    UnknownKid,
    #[error("token alg does not match the type of key {kid:?}")]
    AlgMismatch { kid: Arc<str> },
    #[error("bad signature for key {kid:?}")]
    BadSignature { kid: Arc<str> },
    #[error("token has no {0} claim")]
    MissingClaim(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    #[error("token sub is not this HELLO's client_id")]
    WrongSubject,
}

impl AuthError {
    /// Every metrics label, in [`AuthError::index`] order.
    pub const NAMES: [&'static str; 10] = [
        "missing",
        "malformed",
        "unsupported_alg",
        "unknown_kid",
        "alg_mismatch",
        "bad_signature",
        "missing_claim",
        "expired",
        "not_yet_valid",
        "wrong_subject",
    ];

    pub fn index(&self) -> usize {
        match self {
            AuthError::Missing => 0,
            AuthError::Malformed => 1,
            AuthError::UnsupportedAlg => 2,
            AuthError::UnknownKid => 3,
            AuthError::AlgMismatch { .. } => 4,
            AuthError::BadSignature { .. } => 5,
            AuthError::MissingClaim(_) => 6,
            AuthError::Expired => 7,
            AuthError::NotYetValid => 8,
            AuthError::WrongSubject => 9,
        }
    }

    /// Metrics label.
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }
}

/// Counters shared by every clone of an [`Authenticator`]; the lead exports
/// them on /metrics.
#[derive(Debug, Default)]
pub struct AuthStats {
    /// Tokens accepted by a full signature check.
    pub verified: AtomicU64,
    /// Tokens accepted from the cache.
    pub cache_hits: AtomicU64,
    /// Live cache entries overwritten by another token (cache too small).
    pub cache_evictions: AtomicU64,
    /// Refusals, indexed like [`AuthError::NAMES`].
    pub rejected: [AtomicU64; AuthError::NAMES.len()],
}

struct Key {
    kid: Arc<str>,
    alg: KeyAlg,
    decoding: DecodingKey,
}

/// Verifies HELLO tokens. Clone it once per shard: clones share keys and
/// stats, each has its own cache (so no lock is ever contended).
pub struct Authenticator {
    mode: AuthMode,
    keys: Arc<HashMap<String, Key>>,
    cache: Mutex<TokenCache>,
    cache_entries: usize,
    stats: Arc<AuthStats>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.keys.keys().collect();
        kids.sort();
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

impl Clone for Authenticator {
    fn clone(&self) -> Self {
        Authenticator {
            mode: self.mode,
            keys: Arc::clone(&self.keys),
            cache: Mutex::new(TokenCache::new(self.cache_entries)),
            cache_entries: self.cache_entries,
            stats: Arc::clone(&self.stats),
        }
    }
}

#[derive(Deserialize)]
struct JwtHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: Option<u64>,
    nbf: Option<u64>,
}

impl Authenticator {
    /// Loads every key. `mode` `None` means: `Required` if a key is given,
    /// else `Off`. `Required` without a key is an error.
    pub fn new(specs: &[KeySpec], mode: Option<AuthMode>) -> Result<Authenticator, KeyError> {
        let mode = mode.unwrap_or(if specs.is_empty() {
            AuthMode::Off
        } else {
            AuthMode::Required
        });
        if mode != AuthMode::Off && specs.is_empty() {
            return Err(KeyError::RequiredWithoutKey);
        }
        let mut keys = HashMap::new();
        for spec in specs {
            let key = Key {
                kid: Arc::from(spec.kid.as_str()),
                alg: spec.alg,
                decoding: spec.load_verifying()?,
            };
            if keys.insert(spec.kid.clone(), key).is_some() {
                return Err(KeyError::DuplicateKid(spec.kid.clone()));
            }
        }
        Ok(Authenticator {
            mode,
            keys: Arc::new(keys),
            cache: Mutex::new(TokenCache::new(DEFAULT_CACHE_ENTRIES)),
            cache_entries: DEFAULT_CACHE_ENTRIES,
            stats: Arc::default(),
        })
    }

    /// From a checked server [`crate::config::Config`].
    pub fn from_config(c: &crate::config::Config) -> Result<Authenticator, KeyError> {
        Authenticator::new(&c.auth_keys, Some(c.auth))
    }

    /// The same keys with a cache of `entries` (rounded up to a power of 2).
    pub fn with_cache_entries(mut self, entries: usize) -> Authenticator {
        self.cache_entries = entries;
        self.cache = Mutex::new(TokenCache::new(entries));
        self
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether a connection must start with an authenticated HELLO: a
    /// PING-first (anonymous) connection is then answered UNAUTHORIZED.
    pub fn requires_hello(&self) -> bool {
        self.mode == AuthMode::Required
    }

    pub fn stats(&self) -> &Arc<AuthStats> {
        &self.stats
    }

    /// The engine's call at HELLO: applies the mode (off ignores the token,
    /// optional accepts none), else [`Authenticator::verify`]. Refusals are
    /// counted.
    pub fn check_hello(
        &self,
        client_id: u64,
        token: &[u8],
        now_unix_s: u64,
    ) -> Result<(), AuthError> {
        match self.mode {
            AuthMode::Off => Ok(()),
            AuthMode::Optional if token.is_empty() => Ok(()),
            _ => self.verify(client_id, token, now_unix_s),
        }
    }

    /// Verifies `token` for `client_id` at `now_unix_s`, whatever the mode.
    pub fn verify(&self, client_id: u64, token: &[u8], now_unix_s: u64) -> Result<(), AuthError> {
        let result = self.verify_uncounted(client_id, token, now_unix_s);
        if let Err(e) = &result {
            self.stats.rejected[e.index()].fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn verify_uncounted(
        &self,
        client_id: u64,
        token: &[u8],
        now_unix_s: u64,
    ) -> Result<(), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > TOKEN_MAX {
            return Err(AuthError::Malformed);
        }
        let digest = TokenDigest::of(token);
        if self.lock_cache().lookup(&digest, client_id, now_unix_s) == Lookup::Hit {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let exp_unix_s = self.verify_full(client_id, token, now_unix_s)?;
        self.stats.verified.fetch_add(1, Ordering::Relaxed);
        if self.lock_cache().insert(&digest, client_id, exp_unix_s) {
            self.stats.cache_evictions.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Signature and claims; returns `exp`.
    fn verify_full(&self, client_id: u64, token: &[u8], now_unix_s: u64) -> Result<u64, AuthError> {
        let token = std::str::from_utf8(token).map_err(|_| AuthError::Malformed)?;
        let key = self.key_for(token)?;
        let mut validation = Validation::new(key.alg.jwt_alg());
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation).map_err(
            |e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::BadSignature {
                    kid: Arc::clone(&key.kid),
                },
                jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthError::AlgMismatch {
                    kid: Arc::clone(&key.kid),
                },
                _ => AuthError::Malformed,
            },
        )?;
        check_claims(&data.claims, client_id, now_unix_s)
    }

    /// Reads the header (untrusted until the signature checks) and picks the
    /// key; refuses any alg but the key's own.
    fn key_for(&self, token: &str) -> Result<&Key, AuthError> {
        let header_b64 = token.split('.').next().ok_or(AuthError::Malformed)?;
        let header_json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| AuthError::Malformed)?;
        let header: JwtHeader =
            serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed)?;
        let alg = match header.alg.as_str() {
            "HS256" => KeyAlg::Hs256,
            "EdDSA" => KeyAlg::EdDsa,
            _ => return Err(AuthError::UnsupportedAlg),
        };
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(AuthError::UnknownKid)?;
        if key.alg != alg {
            return Err(AuthError::AlgMismatch {
                kid: Arc::clone(&key.kid),
            });
        }
        Ok(key)
    }
}

fn check_claims(c: &Claims, client_id: u64, now_unix_s: u64) -> Result<u64, AuthError> {
    let exp = c.exp.ok_or(AuthError::MissingClaim("exp"))?;
    let sub = c.sub.as_deref().ok_or(AuthError::MissingClaim("sub"))?;
    if sub != client_id.to_string() {
        return Err(AuthError::WrongSubject);
    }
    if now_unix_s >= exp {
        return Err(AuthError::Expired);
    }
    if c.nbf
        .is_some_and(|nbf| nbf > now_unix_s.saturating_add(NBF_LEEWAY_S))
    {
        return Err(AuthError::NotYetValid);
    }
    Ok(exp)
}

/// Seconds since the Unix epoch, for callers at the edge (the engine passes
/// its own clock in tests).
pub fn unix_now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
