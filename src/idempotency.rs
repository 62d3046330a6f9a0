//! `Idempotency-Key` on the webhook routes, held in Redis so every ingress
//! instance agrees.
//!
//! The first request with a key (per org and route) claims
//! `<prefix>idempotency:<org>:<route>:<sha256 of the key>` with `SET NX` and a
//! short lease, does the work, then stores its answer there for the window
//! (default 24 h). A repeat gets that answer back (same status, body and
//! `X-Request-Id`, plus `Idempotent-Replayed: true`) and writes nothing. A
//! duplicate that arrives while the first is still working polls for the
//! answer up to `idempotency.wait_ms`, then gets 409. The same key with a
//! different body gets 422. A claim whose request failed on the server side
//! (503) or was abandoned is released, so the caller's retry does the work.
//!
//! Requests carrying the header need Redis: while it is unreachable they get
//! 503 (the spool only covers requests without the header).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use fred::{
    clients::Client,
    interfaces::{ClientLike, KeysInterface, LuaInterface},
    types::{Expiration, SetOptions, Value},
};
use http::{HeaderMap, HeaderValue, StatusCode};
use ring::digest;
use tracing::{debug, warn};

use crate::{error::Reject, hex, metrics as m, telemetry::Throttle};

/// What every record's key says after the configured prefix.
const KIND: &str = "idempotency:";
/// Header name.
pub(crate) const HEADER: &str = "idempotency-key";
/// Longest accepted key.
const MAX_KEY: usize = 255;
/// A claim expires after this if its request never finishes (crash).
const LEASE: Duration = Duration::from_secs(60);

/// Replaces our own pending claim with the answer (only if it is still ours).
const COMPLETE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false"#;
/// Deletes our own pending claim (only if it is still ours).
const RELEASE: &str = r#"if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0"#;

/// An answer kept for repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// Status sent the first time.
    pub status: StatusCode,
    /// `X-Request-Id` of the first request.
    pub request_id: HeaderValue,
    /// Body sent the first time.
    pub body: Bytes,
}

/// What a request with a key must do.
pub(crate) enum Begin {
    /// First with this key: do the work, then [`Claim::complete`].
    Fresh(Claim),
    /// A repeat: send this answer.
    Replay(Answer),
}

/// The idempotency key of a request, if it sent one.
pub(crate) fn redis_key(
    headers: &HeaderMap,
    key_prefix: &str,
    org: &str,
    route: &str,
) -> Result<Option<String>, Reject> {
    let Some(value) = headers.get(HEADER) else {
        return Ok(None);
    };
    let raw = value.as_bytes();
    if raw.is_empty() || raw.len() > MAX_KEY || !raw.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(Reject::InvalidIdempotencyKey);
    }
    let hash = digest::digest(&digest::SHA256, raw);
    let mut key = String::with_capacity(key_prefix.len() + org.len() + route.len() + 80);
    key.push_str(key_prefix);
    key.push_str(KIND);
    key.push_str(org);
    key.push(':');
    key.push_str(route);
    key.push(':');
    hex::push(&mut key, hash.as_ref());
    Ok(Some(key))
}

/// SHA-256 of the request body: a key reused for other content is refused.
pub(crate) fn fingerprint(body: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, body).as_ref());
    out
}

fn pending_value(fp: &[u8; 32], request_id: &HeaderValue) -> Bytes {
    let mut v = BytesMut::with_capacity(33 + request_id.len());
    v.put_u8(b'P');
    v.put_slice(fp);
    v.put_slice(request_id.as_bytes());
    v.freeze()
}

fn done_value(fp: &[u8; 32], answer: &Answer) -> Bytes {
    let id = answer.request_id.as_bytes();
    let mut v = BytesMut::with_capacity(37 + id.len() + answer.body.len());
    v.put_u8(b'D');
    v.put_slice(fp);
    v.put_u16(answer.status.as_u16());
    v.put_u16(id.len() as u16);
    v.put_slice(id);
    v.put_slice(&answer.body);
    v.freeze()
}

enum Seen {
    Pending([u8; 32]),
    Done([u8; 32], Answer),
}

fn parse_value(v: &[u8]) -> Option<Seen> {
    let (&tag, rest) = v.split_first()?;
    let fp: [u8; 32] = rest.get(..32)?.try_into().ok()?;
    let rest = &rest[32..];
    match tag {
        b'P' => Some(Seen::Pending(fp)),
        b'D' => {
            let status = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
            let id_len = u16::from_be_bytes(rest.get(2..4)?.try_into().ok()?) as usize;
            let id = rest.get(4..4 + id_len)?;
            let body = rest.get(4 + id_len..)?;
            Some(Seen::Done(
                fp,
                Answer {
                    status: StatusCode::from_u16(status).ok()?,
                    request_id: HeaderValue::from_bytes(id).ok()?,
                    body: Bytes::copy_from_slice(body),
                },
            ))
        }
        _ => None,
    }
}

/// Why a claim could not be made or read: debug for an outage (the
/// connections that meet it say it), a warning a second at most for a
/// refusal by Redis's ACL, which lasts until the ACL changes.
fn unavailable(key: &str, e: &fred::error::Error) -> Reject {
    static REFUSED: Throttle = Throttle::new();
    if crate::redis::not_permitted(e)
        && let Some(held_back) = REFUSED.admit()
    {
        // The key's prefix, up to its kind: the ACL's key pattern to fix.
        let under = key.find(KIND).map_or("", |at| &key[..at + KIND.len()]);
        warn!(
            error = %e.details(),
            held_back,
            "redis refuses this user the idempotency records (ACL): every request with an Idempotency-Key gets 503 until the user may SET, GET, DEL and EVALSHA on the keys under {under}"
        );
    } else {
        debug!(error = %e, "idempotency store unavailable");
    }
    Reject::IdempotencyUnavailable
}

/// Claims `key` for this request, or finds the answer of an earlier one.
pub(crate) async fn begin(
    client: &Client,
    key: String,
    fp: [u8; 32],
    request_id: &HeaderValue,
    wait: Duration,
) -> Result<Begin, Reject> {
    if !client.is_connected() {
        return Err(Reject::IdempotencyUnavailable);
    }
    let pending = pending_value(&fp, request_id);
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(10);
    loop {
        let claimed: Option<String> = client
            .set(
                key.as_str(),
                pending.clone(),
                Some(Expiration::PX(LEASE.as_millis() as i64)),
                Some(SetOptions::NX),
                false,
            )
            .await
            .map_err(|e| unavailable(&key, &e))?;
        if claimed.is_some() {
            return Ok(Begin::Fresh(Claim {
                client: client.clone(),
                key,
                pending,
                fp,
                open: true,
            }));
        }
        let current: Option<Bytes> = client
            .get(key.as_str())
            .await
            .map_err(|e| unavailable(&key, &e))?;
        match current.as_deref().and_then(parse_value) {
            // Gone since the SET (expired, released): try to claim again.
            None if current.is_none() => continue,
            None => return Err(Reject::IdempotencyInProgress),
            Some(Seen::Pending(other) | Seen::Done(other, _)) if other != fp => {
                return Err(Reject::IdempotencyKeyReused);
            }
            Some(Seen::Done(_, answer)) => {
                metrics::counter!(m::IDEMPOTENT_REPLAYS).increment(1);
                return Ok(Begin::Replay(answer));
            }
            Some(Seen::Pending(_)) => {
                if tokio::time::Instant::now() + pause > deadline {
                    return Err(Reject::IdempotencyInProgress);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

/// This request's claim on a key; released if dropped unfinished.
pub(crate) struct Claim {
    client: Client,
    key: String,
    pending: Bytes,
    fp: [u8; 32],
    open: bool,
}

impl Claim {
    /// Stores the answer for repeats within `window`.
    pub(crate) async fn complete(mut self, answer: &Answer, window: Duration) {
        self.open = false;
        let value = done_value(&self.fp, answer);
        let stored: Result<Value, _> = self
            .client
            .eval(
                COMPLETE,
                vec![self.key.clone()],
                vec![
                    Value::Bytes(self.pending.clone()),
                    Value::Bytes(value),
                    Value::from(i64::try_from(window.as_millis()).unwrap_or(i64::MAX)),
                ],
            )
            .await;
        if let Err(e) = stored {
            // The claim lapses after its lease; a repeat then does the work
            // again (at least once, like any retry), and until then waits
            // and gets 409. Rare (Redis took the claim a moment ago) unless
            // Redis refuses the script (a user without `+@scripting`), when
            // it is every request: counted, and logged once a second.
            static UNSTORED: Throttle = Throttle::new();
            metrics::counter!(m::IDEMPOTENCY_UNSTORED).increment(1);
            if let Some(held_back) = UNSTORED.admit() {
                warn!(error = %e, held_back, "idempotency answer not stored; a repeat of this key gets 409 until its claim lapses (60 s), then does the work again");
            }
        }
    }

    /// Gives the key up so a retry does the work (the request failed on our side).
    pub(crate) async fn release(mut self) {
        self.open = false;
        release(&self.client, &self.key, &self.pending).await;
    }
}

async fn release(client: &Client, key: &str, pending: &Bytes) {
    let _: Result<Value, _> = client
        .eval(
            RELEASE,
            vec![key.to_owned()],
            vec![Value::Bytes(pending.clone())],
        )
        .await;
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        // The request was abandoned mid-way (client gone): free the key now
        // rather than after the lease.
        let (client, key, pending) = (
            self.client.clone(),
            std::mem::take(&mut self.key),
            self.pending.clone(),
        );
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { release(&client, &key, &pending).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let fp = fingerprint(b"{}");
        let answer = Answer {
            status: StatusCode::ACCEPTED,
            request_id: HeaderValue::from_static("r-1"),
            body: Bytes::from_static(b"{\"ok\":1}"),
        };
        match parse_value(&done_value(&fp, &answer)) {
            Some(Seen::Done(f, a)) => {
                assert_eq!(f, fp);
                assert_eq!(a, answer);
            }
            _ => panic!("not parsed"),
        }
        assert!(matches!(
            parse_value(&pending_value(&fp, &answer.request_id)),
            Some(Seen::Pending(f)) if f == fp
        ));
        assert!(parse_value(b"Dshort").is_none());
    }

    #[test]
    fn header_rules() {
        let mut h = HeaderMap::new();
        assert_eq!(redis_key(&h, "t:", "o", "workflow").unwrap(), None);
        h.insert(HEADER, HeaderValue::from_static("abc-123"));
        let k = redis_key(&h, "t:", "o", "workflow").unwrap().unwrap();
        assert!(k.starts_with("t:idempotency:o:workflow:") && !k.contains("abc"));
        for bad in ["", "a b", &"x".repeat(256)] {
            h.insert(HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(matches!(
                redis_key(&h, "t:", "o", "workflow"),
                Err(Reject::InvalidIdempotencyKey)
            ));
        }
    }
}
