//! Auth key specs (`KID=hs256:FILE`, `KID=eddsa:FILE`), loading them from
//! files into verifying and signing keys, and minting tokens. Errors name the
//! kid and the file, never the key bytes.

use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Serialize;
use thiserror::Error;

/// Shortest HS256 secret accepted: 256 bits, the hash's own size (RFC 7518
/// section 3.2 requires a key at least as long as the hash output).
pub const HS256_SECRET_MIN_BYTES: usize = 32;

/// Which kind of key a kid names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlg {
    /// Shared secret, HMAC-SHA256.
    Hs256,
    /// Ed25519 (public key on the server, private key to mint).
    EdDsa,
}

impl KeyAlg {
    /// The JWT `alg` a token signed with this key must carry.
    pub fn jwt_alg(self) -> Algorithm {
        match self {
            KeyAlg::Hs256 => Algorithm::HS256,
            KeyAlg::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::Hs256 => "HS256",
            KeyAlg::EdDsa => "EdDSA",
        }
    }
}

/// One `--auth-key` / `--key` value: `KID=hs256:FILE` or `KID=eddsa:FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub kid: String,
    pub alg: KeyAlg,
    pub path: PathBuf,
}

/// A key that cannot be used. The message names the kid and the file only.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("auth key {0:?}: expected KID=hs256:FILE or KID=eddsa:FILE")]
    Syntax(String),
    #[error("auth key {kid:?}: cannot read {path}: {source}")]
    Read {
        kid: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("auth key {kid:?} ({path}): {problem}")]
    Bad {
        kid: String,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("auth key id {0:?} is given twice")]
    DuplicateKid(String),
    #[error("--auth required needs at least one --auth-key")]
    RequiredWithoutKey,
    #[error("cannot sign a token with key {kid:?}")]
    Sign { kid: String },
}

impl FromStr for KeySpec {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || KeyError::Syntax(s.chars().take(64).collect());
        let (kid, rest) = s.split_once('=').ok_or_else(syntax)?;
        let (alg, path) = rest.split_once(':').ok_or_else(syntax)?;
        let alg = match alg.to_ascii_lowercase().as_str() {
            "hs256" => KeyAlg::Hs256,
            "eddsa" => KeyAlg::EdDsa,
            _ => return Err(syntax()),
        };
        let kid_ok =
            !kid.is_empty() && kid.len() <= 64 && kid.bytes().all(|b| b.is_ascii_graphic());
        if !kid_ok || path.is_empty() {
            return Err(syntax());
        }
        Ok(KeySpec {
            kid: kid.to_owned(),
            alg,
            path: PathBuf::from(path),
        })
    }
}

impl std::fmt::Display for KeySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alg = match self.alg {
            KeyAlg::Hs256 => "hs256",
            KeyAlg::EdDsa => "eddsa",
        };
        write!(f, "{}={alg}:{}", self.kid, self.path.display())
    }
}

impl KeySpec {
    fn read(&self) -> Result<Vec<u8>, KeyError> {
        let mut bytes = std::fs::read(&self.path).map_err(|source| KeyError::Read {
            kid: self.kid.clone(),
            path: self.path.clone(),
            source,
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        Ok(bytes)
    }

    fn bad(&self, problem: &'static str) -> KeyError {
        KeyError::Bad {
            kid: self.kid.clone(),
            path: self.path.clone(),
            problem,
        }
    }

    fn secret(&self) -> Result<Vec<u8>, KeyError> {
        let secret = self.read()?;
        if secret.len() < HS256_SECRET_MIN_BYTES {
            return Err(self.bad("HS256 secret shorter than 32 bytes"));
        }
        Ok(secret)
    }

    /// The verifying key: the HS256 secret, or an Ed25519 public key PEM.
    pub fn load_verifying(&self) -> Result<DecodingKey, KeyError> {
        match self.alg {
            KeyAlg::Hs256 => Ok(DecodingKey::from_secret(&self.secret()?)),
            KeyAlg::EdDsa => {
                let pem = self.read()?;
                if !contains(&pem, b"PUBLIC KEY") {
                    return Err(self.bad("not an Ed25519 public key PEM"));
                }
                DecodingKey::from_ed_pem(&pem)
                    .map_err(|_| self.bad("not an Ed25519 public key PEM"))
            }
        }
    }

    /// The signing key: the HS256 secret, or an Ed25519 private key PEM
    /// (PKCS#8, as `openssl genpkey -algorithm ed25519` writes it).
    pub fn load_signing(&self) -> Result<EncodingKey, KeyError> {
        match self.alg {
            KeyAlg::Hs256 => Ok(EncodingKey::from_secret(&self.secret()?)),
            KeyAlg::EdDsa => EncodingKey::from_ed_pem(&self.read()?)
                .map_err(|_| self.bad("not an Ed25519 private key PEM (PKCS#8)")),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[derive(Serialize)]
struct MintClaims {
    sub: String,
    iat: u64,
    exp: u64,
}

/// A compact JWT for `client_id`, valid from `now_unix_s` for `ttl_s`, with
/// `kid` in its header.
pub fn mint(
    spec: &KeySpec,
    key: &EncodingKey,
    client_id: u64,
    now_unix_s: u64,
    ttl_s: u64,
) -> Result<String, KeyError> {
    let mut header = jsonwebtoken::Header::new(spec.alg.jwt_alg());
    header.kid = Some(spec.kid.clone());
    let claims = MintClaims {
        sub: client_id.to_string(),
        iat: now_unix_s,
        exp: now_unix_s.saturating_add(ttl_s),
    };
    jsonwebtoken::encode(&header, &claims, key).map_err(|_| KeyError::Sign {
        kid: spec.kid.clone(),
    })
}

/// Reads `spec` for signing and mints one token (the `ringbeat token` path).
pub fn mint_from_file(
    spec: &KeySpec,
    client_id: u64,
    now_unix_s: u64,
    ttl_s: u64,
) -> Result<String, KeyError> {
    mint(spec, &spec.load_signing()?, client_id, now_unix_s, ttl_s)
}
