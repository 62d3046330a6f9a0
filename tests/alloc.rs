//! Allocations on the in-memory hot path (auth + parse + match), counted by
//! `allocation-counter`'s global allocator, which counts per thread: only the
//! measuring thread's own allocations count, never the test harness's other
//! threads. Its own test binary so the allocator affects nothing else.
#![allow(clippy::unwrap_used, missing_docs)]

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use tether_ingress::{
    digest_key,
    hot_path::{Authenticator, Credential, Fetched, KeyTable, View, WebhookIndex, parse_envelope},
};

/// Allocations this thread makes while running `f`.
fn allocations<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let mut out = None;
    let info = allocation_counter::measure(|| out = Some(f()));
    (out.expect("measured closure ran"), info.count_total)
}

const LEAD: &str = r#"{"webhookId":"wh_64d2f9c5e8a1d4e001a0b1c3","source":"zillow","lead":{"name":"Alex Nguyen","phone":12345678901234567890123,"budget":1.10,"message":"caf\u00e9"}}"#;

#[test]
fn auth_parse_match_allocates_only_the_shared_body_handle() {
    let keys = KeyTable::new("tether:");
    let hex: String = digest_key(b"user_key_1")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    keys.apply(
        &hex,
        Fetched::String(Bytes::from_static(br#"{"userId":"u_1","orgId":"o_1"}"#)),
        1,
    )
    .unwrap();
    let auth = Authenticator::new(std::sync::Arc::new(keys));
    let index = WebhookIndex::new("tether:");
    index
        .apply(
            "o_1:wh_64d2f9c5e8a1d4e001a0b1c3",
            Fetched::Set(vec![Bytes::from_static(b"wf_1")]),
            1,
        )
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer user_key_1"));

    let run = |body: BytesMut| {
        let Ok(Credential::ApiKey(p)) = auth.authenticate(&headers, None) else {
            panic!("auth")
        };
        let env = parse_envelope(body).unwrap();
        let w = index
            .lookup(p.org_id.as_str(), env.webhook_id.as_str())
            .unwrap();
        (p, env, w)
    };
    // Warm the per-thread parser scratch.
    drop(run(BytesMut::from(LEAD.as_bytes())));

    let mut counts = Vec::new();
    for _ in 0..100 {
        let body = BytesMut::from(LEAD.as_bytes()); // the request's own buffer, not counted
        let (out, n) = allocations(|| run(body));
        assert_eq!(out.2.len(), 1);
        drop(out);
        counts.push(n);
    }
    // One allocation remains: the reference-count header `Bytes` creates when
    // the body buffer is shared between the payload and the webhookId slices.
    assert!(
        counts.iter().all(|&n| n == 1),
        "allocations per request: {counts:?}"
    );
    // A refused key allocates nothing at all.
    let mut bad = HeaderMap::new();
    bad.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer user_key_unknown"),
    );
    let (r, n) = allocations(|| auth.authenticate(&bad, None).is_err());
    assert!(r);
    assert_eq!(n, 0);
}
