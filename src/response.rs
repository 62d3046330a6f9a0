//! Responses: the body type every route answers with, static bodies where
//! possible, the 202 body written into one pre-sized buffer, and the
//! request id.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// Response body type of every route: the ingress's own, or the upstream's streamed.
pub(crate) type ResponseBody = Either<Full<Bytes>, Incoming>;

/// Wraps the ingress's own body.
pub(crate) fn full(body: Bytes) -> ResponseBody {
    Either::Left(Full::new(body))
}

/// A JSON response with the ingress's own body.
pub(crate) fn json(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut res = Response::new(full(body));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res
}

/// Header carrying the request id, both ways.
pub(crate) const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");
/// Longest caller-supplied request id that is kept.
const MAX_REQUEST_ID: usize = 128;

/// A request id as a log field's text, without the quotes `Debug` puts
/// round a header value: a JSON log's `request_id` must equal the
/// caller's `X-Request-Id` to be found by it. Ids are visible ASCII (a
/// caller's is checked, ours are hex), so the text is the id.
pub(crate) fn id_text(id: &HeaderValue) -> &str {
    id.to_str().unwrap_or("")
}

/// Decimal text of `n` in a stack buffer; returns the buffer and the start.
pub(crate) fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &out[i..]
}

/// `{"success":true,"message":"Webhook accepted","data":{"webhookId":"…","matchedCount":N}}`.
/// `webhook_id_json` is the id's JSON string content as the caller sent it.
pub(crate) fn workflow_accepted(webhook_id_json: &[u8], matched: usize) -> Bytes {
    const HEAD: &[u8] = br#"{"success":true,"message":"Webhook accepted","data":{"webhookId":""#;
    const MID: &[u8] = br#"","matchedCount":"#;
    const TAIL: &[u8] = b"}}";
    let mut digits = [0u8; 20];
    let count = decimal(matched as u64, &mut digits);
    let mut buf = BytesMut::with_capacity(
        HEAD.len() + webhook_id_json.len() + MID.len() + count.len() + TAIL.len(),
    );
    buf.put_slice(HEAD);
    buf.put_slice(webhook_id_json);
    buf.put_slice(MID);
    buf.put_slice(count);
    buf.put_slice(TAIL);
    buf.freeze()
}

// === impl RequestIds ===

/// Issues request ids: the caller's own when it sent a usable one, else
/// `<16 hex process seed><16 hex counter>`, unique per process and, by the
/// random seed, across instances.
pub(crate) struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    /// A generator with a random seed.
    pub(crate) fn new() -> Self {
        let mut seed = [0u8; 8];
        // ring's system RNG; a failure only weakens cross-instance uniqueness.
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed);
        Self {
            seed: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }

    /// The request's id: the caller's `X-Request-Id` when it is 1..=128
    /// visible ASCII characters, else a fresh one.
    pub(crate) fn for_request(&self, headers: &HeaderMap) -> HeaderValue {
        if let Some(v) = headers.get(REQUEST_ID) {
            let b = v.as_bytes();
            if !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(|c| c.is_ascii_graphic())
            {
                return v.clone();
            }
        }
        self.fresh()
    }

    fn fresh(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::with_capacity(32);
        for word in [self.seed, n] {
            for b in word.to_be_bytes() {
                buf.put_slice(&crate::hex::byte(b));
            }
        }
        HeaderValue::from_maybe_shared(buf.freeze())
            .unwrap_or_else(|_| HeaderValue::from_static("0"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_text() {
        let mut b = [0u8; 20];
        assert_eq!(decimal(0, &mut b), b"0");
        assert_eq!(decimal(1234567890123, &mut b), b"1234567890123");
        assert_eq!(decimal(u64::MAX, &mut b), u64::MAX.to_string().as_bytes());
    }

    #[test]
    fn accepted_body_is_json() {
        let b = workflow_accepted(br#"w\"1"#, 12);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["data"]["webhookId"], "w\"1");
        assert_eq!(v["data"]["matchedCount"], 12);
        assert_eq!(v["success"], true);
    }

    #[test]
    fn request_ids() {
        let ids = RequestIds::new();
        let a = ids.for_request(&HeaderMap::new());
        let b = ids.for_request(&HeaderMap::new());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-1"));
        assert_eq!(ids.for_request(&h), "abc-1");
        h.insert(REQUEST_ID, HeaderValue::from_static("has space"));
        assert_ne!(ids.for_request(&h), "has space");
    }
}
