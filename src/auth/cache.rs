//! A fixed-size, 2-way set-associative cache of verified tokens, so a reconnect storm
//! re-verifies no signature. An entry is (SHA-256 of the token bytes, first
//! 16 bytes) → (client_id, exp). A hit needs the same digest, the same
//! client_id and `now < exp`: the cache can only answer "yes" where a full
//! verification a moment ago said "yes", never past `exp`, never for
//! another id.

use sha2::{Digest, Sha256};

/// Default entries: 64 Ki × 32 bytes = 2 MiB per cache.
pub const DEFAULT_CACHE_ENTRIES: usize = 1 << 16;

/// Bytes of the token digest kept per entry (128 bits: a collision needs
/// ~2^64 work even for an attacker who can choose token bytes).
const DIGEST_BYTES: usize = 16;

/// A token's cache key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenDigest([u8; DIGEST_BYTES]);

impl TokenDigest {
    pub fn of(token: &[u8]) -> TokenDigest {
        let full = Sha256::digest(token);
        let mut d = [0u8; DIGEST_BYTES];
        d.copy_from_slice(&full[..DIGEST_BYTES]);
        TokenDigest(d)
    }

    /// The first of the two slots of this digest's set.
    fn set(&self, mask: usize) -> usize {
        u64::from_le_bytes(self.0[..8].try_into().expect("8 bytes")) as usize & mask & !1
    }
}

#[derive(Clone, Copy, Default)]
struct Entry {
    digest: [u8; DIGEST_BYTES],
    client_id: u64,
    /// 0 = empty (a token with `exp` 0 is never valid, so never stored).
    exp_unix_s: u64,
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Verified before, for this client_id, and not expired.
    Hit,
    /// Verify in full.
    Miss,
}

/// The cache. One per shard (it sits behind the shard's own lock).
pub struct TokenCache {
    entries: Box<[Entry]>,
    mask: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("entries", &self.entries.len())
            .finish()
    }
}

impl TokenCache {
    /// `entries` is rounded up to a power of two (at least 2: one set).
    pub fn new(entries: usize) -> TokenCache {
        let n = entries.max(2).next_power_of_two();
        TokenCache {
            entries: vec![Entry::default(); n].into_boxed_slice(),
            mask: n - 1,
        }
    }

    pub fn lookup(&self, digest: &TokenDigest, client_id: u64, now_unix_s: u64) -> Lookup {
        let set = digest.set(self.mask);
        let hit = self.entries[set..set + 2].iter().any(|e| {
            e.exp_unix_s != 0
                && e.digest == digest.0
                && e.client_id == client_id
                && now_unix_s < e.exp_unix_s
        });
        if hit {
            Lookup::Hit
        } else {
            Lookup::Miss
        }
    }

    /// Remembers a token that just verified: in the slot holding the same
    /// digest, else the one expiring first (an empty slot has exp 0).
    /// Returns whether it replaced another token's entry (the set is full).
    pub fn insert(&mut self, digest: &TokenDigest, client_id: u64, exp_unix_s: u64) -> bool {
        let set = digest.set(self.mask);
        let pair = &mut self.entries[set..set + 2];
        let slot = match pair.iter().position(|e| e.digest == digest.0) {
            Some(i) => i,
            None => usize::from(pair[1].exp_unix_s < pair[0].exp_unix_s),
        };
        let e = &mut pair[slot];
        let replaced = e.exp_unix_s != 0 && e.digest != digest.0;
        *e = Entry {
            digest: digest.0,
            client_id,
            exp_unix_s,
        };
        replaced
    }
}
