//! Authentication: `Authorization: Bearer <token>` → [`Principal`].
//!
//! An API key is hashed (SHA-256, ring) on arrival and looked up by digest in
//! the [`KeyTable`], a live view of `<prefix>apikey:<sha256 hex>` kept by the
//! replica; the plain key is never stored or logged. A bearer token shaped like
//! a JWT (three base64url parts) is told apart by shape. Everything here is
//! synchronous and allocation-free on success: the digest lives on the stack
//! and the principal's ids are reference-counted.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use dashmap::DashMap;
use http::{HeaderMap, header::AUTHORIZATION};
use ring::digest;

use crate::{
    error::Reject,
    id::Id,
    replica::{BadValue, Fetched, KeyKind, View},
};

pub(crate) mod jwt;
mod principal;

pub(crate) use principal::Principal;

/// What a bearer token turned out to be.
#[derive(Debug)]
pub enum Credential {
    /// A known, active API key.
    ApiKey(Arc<Principal>),
    /// A JWT verified with the configured secret.
    Jwt(Arc<Principal>),
    /// A token shaped like a JWT, with no secret to verify it here.
    UnverifiedJwt,
}

/// A SHA-256 digest of an API key.
pub(crate) type KeyDigest = [u8; 32];

/// Hashes a [`KeyDigest`] by its first 8 bytes: a SHA-256 output is already
/// uniform, and a caller controls only the preimage, so collisions cannot be
/// aimed. Much cheaper than SipHash on the hot path and during a load.
#[derive(Clone, Copy, Default)]
pub(crate) struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length prefix (write_usize) then its bytes.
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_usize(&mut self, _: usize) {}
}

/// Builds [`DigestHasher`]s.
pub(crate) type DigestHash = std::hash::BuildHasherDefault<DigestHasher>;

/// SHA-256 of `key`, on the stack.
pub fn digest_key(key: &[u8]) -> KeyDigest {
    let d = digest::digest(&digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Extracts the bearer token. Scheme is case-insensitive (RFC 7235);
/// surrounding spaces are ignored.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&[u8], Reject> {
    let value = headers.get(AUTHORIZATION).ok_or(Reject::NoCredentials)?;
    let raw = trim(value.as_bytes());
    if raw.is_empty() {
        return Err(Reject::NoCredentials);
    }
    let (scheme, rest) = match raw.iter().position(|&b| b == b' ') {
        Some(i) => (&raw[..i], &raw[i + 1..]),
        None => (raw, &raw[raw.len()..]),
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(Reject::BadScheme);
    }
    let token = trim(rest);
    if token.is_empty() {
        return Err(Reject::NoCredentials);
    }
    Ok(token)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// True when `token` has the shape of a JWT: three non-empty base64url parts.
pub(crate) fn looks_like_jwt(token: &[u8]) -> bool {
    let mut parts = 0;
    for part in token.split(|&b| b == b'.') {
        if part.is_empty()
            || !part
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
        {
            return false;
        }
        parts += 1;
    }
    parts == 3
}

// === impl KeyTable ===

/// Live view of the API keys: SHA-256 digest → principal. Inactive keys are
/// not held, so they fail exactly like unknown ones.
///
/// Slots hold an `Arc<Principal>` (48 bytes with the digest and generation),
/// and org ids are interned: a million keys share their orgs' ids.
pub struct KeyTable {
    prefix: String,
    /// Keep each key's digest in its principal (global rate limits).
    keep_digests: bool,
    entries: DashMap<KeyDigest, (Arc<Principal>, u64), DigestHash>,
    /// Org id interner; touched only by the replica task (never across an await).
    orgs: Mutex<HashMap<Box<str>, Id, foldhash::fast::RandomState>>,
}

/// The JSON record stored under an API key's digest, as the ingress uses it.
struct KeyRecord {
    user_id: String,
    org_id: String,
    rate_limit_per_sec: Option<u32>,
}

impl KeyTable {
    /// An empty table for keys under `<key_prefix>apikey:`.
    pub fn new(key_prefix: &str) -> Self {
        Self::with_digests(key_prefix, false)
    }

    /// An empty table whose principals keep their key's digest when
    /// `keep_digests` (for `rate_limit.scope = "global"`).
    pub fn with_digests(key_prefix: &str, keep_digests: bool) -> Self {
        Self {
            prefix: format!("{key_prefix}apikey:"),
            keep_digests,
            entries: DashMap::with_hasher(DigestHash::default()),
            orgs: Mutex::new(HashMap::with_hasher(foldhash::fast::RandomState::default())),
        }
    }

    /// The principal of an active key with this digest.
    pub fn lookup(&self, digest: &KeyDigest) -> Option<Arc<Principal>> {
        self.entries.get(digest).map(|e| e.0.clone())
    }

    fn intern_org(&self, org: &str) -> Id {
        let mut orgs = self.orgs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = orgs.get(org) {
            return id.clone();
        }
        let id = Id::from_str_copy(org);
        orgs.insert(org.into(), id.clone());
        id
    }
}

fn parse_hex_digest(s: &str) -> Option<KeyDigest> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Reads a key record as `JSON.parse` would (a member named twice: the
/// last counts): the record of an active key, `None` for one that is
/// inactive or unusable, and what could not be used as written. Fails
/// closed: a record whose ids or `active` cannot be read refuses its key; a
/// `rateLimitPerSec` that is not a whole number leaves the key working at
/// the default limit.
fn read_record(raw: &[u8]) -> (Option<KeyRecord>, Option<BadValue>) {
    use serde_json::Value as J;
    let Ok(mut record) = serde_json::from_slice::<serde_json::Map<String, J>>(raw) else {
        return (
            None,
            Some(BadValue("is not a JSON object: the key is refused")),
        );
    };
    let mut id = |name: &str| match record.remove(name) {
        Some(J::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    };
    let (Some(user_id), Some(org_id)) = (id("userId"), id("orgId")) else {
        return (
            None,
            Some(BadValue(
                "lacks a userId or orgId that is a non-empty string: the key is refused",
            )),
        );
    };
    match record.get("active") {
        None | Some(J::Bool(true)) => {}
        Some(J::Bool(false)) => return (None, None),
        Some(_) => {
            return (
                None,
                Some(BadValue(
                    "has an active that is neither true nor false: the key is refused",
                )),
            );
        }
    }
    // 0 and null mean none; a limit beyond u32 is as good as none too.
    let (rate_limit_per_sec, bad) = match record.get("rateLimitPerSec") {
        None | Some(J::Null) => (None, None),
        Some(J::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => (Some(u32::try_from(n).unwrap_or(u32::MAX)), None),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 => (
                Some(if f > f64::from(u32::MAX) {
                    u32::MAX
                } else {
                    f as u32
                }),
                None,
            ),
            _ => (None, Some(())),
        },
        Some(_) => (None, Some(())),
    };
    let record = KeyRecord {
        user_id,
        org_id,
        rate_limit_per_sec: rate_limit_per_sec.filter(|r| *r > 0),
    };
    let bad = bad.map(|()| {
        BadValue(
            "has a rateLimitPerSec that is not a whole number of requests per second: the key works at the default limit",
        )
    });
    (Some(record), bad)
}

impl View for KeyTable {
    fn name(&self) -> &'static str {
        "api_keys"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn kind(&self) -> KeyKind {
        KeyKind::String
    }

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) -> Result<(), BadValue> {
        // The contract says lowercase hex; upper case is accepted too.
        let Some(digest) = parse_hex_digest(suffix) else {
            // A backend that names keys otherwise (base64, a `sha256:`
            // tag) would see every caller refused with nothing said.
            return match value {
                Fetched::Absent => Ok(()),
                _ => Err(BadValue(
                    "is not named by a SHA-256 in hex (64 hex digits) after the prefix: no API key can match it",
                )),
            };
        };
        let (record, bad) = match value {
            Fetched::String(raw) => read_record(&raw),
            _ => (None, None),
        };
        match record {
            Some(rec) => {
                let principal = Principal {
                    user_id: Id::from_str_copy(&rec.user_id),
                    org_id: self.intern_org(&rec.org_id),
                    rate_limit_per_sec: rec.rate_limit_per_sec,
                    limiter: Default::default(),
                    digest: self.keep_digests.then(|| Box::new(digest)),
                };
                // An unchanged record (a resync) keeps its principal, and so
                // its rate state.
                if let Some(mut e) = self.entries.get_mut(&digest)
                    && *e.0 == principal
                {
                    e.1 = generation;
                } else {
                    self.entries
                        .insert(digest, (Arc::new(principal), generation));
                }
            }
            None => {
                self.entries.remove(&digest);
            }
        }
        bad.map_or(Ok(()), Err)
    }

    fn sweep(&self, generation: u64) {
        self.entries.retain(|_, e| e.1 >= generation);
        // Capacity left over from growth or removals is given back.
        self.entries.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

// === impl Authenticator ===

/// Turns request headers into a [`Credential`].
pub struct Authenticator {
    keys: std::sync::Arc<KeyTable>,
}

impl Authenticator {
    /// Authenticates API keys against `keys`.
    pub fn new(keys: std::sync::Arc<KeyTable>) -> Self {
        Self { keys }
    }

    /// Bearer → JWT (verified with `jwt` when a secret is configured) or
    /// SHA-256 → key table.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        jwt: Option<&jwt::JwtVerifier>,
    ) -> Result<Credential, Reject> {
        let token = bearer_token(headers)?;
        if looks_like_jwt(token) {
            return match jwt {
                Some(v) => v
                    .verify(token, crate::clock::now_ms() / 1000)
                    .map(|p| Credential::Jwt(Arc::new(p))),
                None => Ok(Credential::UnverifiedJwt),
            };
        }
        self.keys
            .lookup(&digest_key(token))
            .map(Credential::ApiKey)
            .ok_or(Reject::InvalidKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::HeaderValue;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    fn hex(d: &KeyDigest) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn table_with(key: &str, record: &str) -> std::sync::Arc<KeyTable> {
        let t = KeyTable::new("tether:");
        let _ = t.apply(
            &hex(&digest_key(key.as_bytes())),
            Fetched::String(Bytes::copy_from_slice(record.as_bytes())),
            1,
        );
        std::sync::Arc::new(t)
    }

    #[test]
    fn bearer_parsing() {
        assert!(matches!(
            bearer_token(&HeaderMap::new()),
            Err(Reject::NoCredentials)
        ));
        assert!(matches!(
            bearer_token(&headers("Basic abc")),
            Err(Reject::BadScheme)
        ));
        assert!(matches!(
            bearer_token(&headers("Bearer")),
            Err(Reject::NoCredentials)
        ));
        assert!(matches!(
            bearer_token(&headers("Bearer   ")),
            Err(Reject::NoCredentials)
        ));
        assert_eq!(bearer_token(&headers("bearer  k1 ")).unwrap(), b"k1");
        assert_eq!(bearer_token(&headers("Bearer k1")).unwrap(), b"k1");
    }

    #[test]
    fn hex_is_lowercase_and_complete() {
        let mut s = String::from("x:");
        crate::hex::push(&mut s, &[0x00, 0x0f, 0xa5, 0xff]);
        assert_eq!(s, "x:000fa5ff");
        let d = digest_key(b"k");
        let mut h = String::new();
        crate::hex::push(&mut h, &d);
        assert_eq!(h, hex(&d));
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt(b"eyJh.eyJz.c2ln"));
        assert!(!looks_like_jwt(b"eyJh.eyJz"));
        assert!(!looks_like_jwt(b"a..b"));
        assert!(!looks_like_jwt(b"user_abc"));
        assert!(!looks_like_jwt(b"a.b.c+d"));
    }

    #[test]
    fn known_inactive_and_unknown_keys() {
        let auth = Authenticator::new(table_with("k1", r#"{"userId":"u","orgId":"o","x":1}"#));
        match auth.authenticate(&headers("Bearer k1"), None).unwrap() {
            Credential::ApiKey(p) => assert_eq!(p.org_id.as_str(), "o"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            auth.authenticate(&headers("Bearer k2"), None),
            Err(Reject::InvalidKey)
        ));
        let auth = Authenticator::new(table_with(
            "k1",
            r#"{"userId":"u","orgId":"o","active":false}"#,
        ));
        assert!(matches!(
            auth.authenticate(&headers("Bearer k1"), None),
            Err(Reject::InvalidKey)
        ));
        let auth = Authenticator::new(table_with("k1", "not json"));
        assert!(matches!(
            auth.authenticate(&headers("Bearer k1"), None),
            Err(Reject::InvalidKey)
        ));
    }

    /// A record is read as `JSON.parse` reads it, failing closed on its ids
    /// and `active`, and open on its rate limit: the key works at the
    /// default limit and the value is reported.
    #[test]
    fn key_records_are_read_leniently_only_where_safe() {
        let limit = |record: &str| {
            let (rec, bad) = read_record(record.as_bytes());
            (rec.map(|r| r.rate_limit_per_sec), bad.is_some())
        };
        let base = r#""userId":"u","orgId":"o""#;
        for (extra, want) in [
            ("", (Some(None), false)),
            (r#","rateLimitPerSec":null"#, (Some(None), false)),
            (r#","rateLimitPerSec":0"#, (Some(None), false)),
            (r#","rateLimitPerSec":50"#, (Some(Some(50)), false)),
            (r#","rateLimitPerSec":50.0"#, (Some(Some(50)), false)),
            (r#","rateLimitPerSec":1e12"#, (Some(Some(u32::MAX)), false)),
            (
                r#","rateLimitPerSec":5000000000"#,
                (Some(Some(u32::MAX)), false),
            ),
            (r#","rateLimitPerSec":2.5"#, (Some(None), true)),
            (r#","rateLimitPerSec":-3"#, (Some(None), true)),
            (r#","rateLimitPerSec":"100""#, (Some(None), true)),
            (r#","active":true"#, (Some(None), false)),
            (r#","active":false"#, (None, false)),
            (r#","active":null"#, (None, true)),
            (r#","active":"false""#, (None, true)),
            (r#","active":0"#, (None, true)),
            (r#","active":false,"active":true"#, (Some(None), false)),
            (r#","active":true,"active":false"#, (None, false)),
            (r#","userId":"""#, (None, true)),
            (r#","orgId":7"#, (None, true)),
        ] {
            let record = format!("{{{base}{extra}}}");
            assert_eq!(limit(&record), want, "{record}");
        }
        assert_eq!(limit(r#"{"userId":"u"}"#), (None, true));
        assert_eq!(limit("[]"), (None, true));
        assert_eq!(limit("not json"), (None, true));
    }

    #[test]
    fn sweep_removes_unseen_generations() {
        let t = table_with("k1", r#"{"userId":"u","orgId":"o"}"#);
        t.sweep(1);
        assert_eq!(t.len(), 1);
        t.sweep(2);
        assert_eq!(t.len(), 0);
    }
}
