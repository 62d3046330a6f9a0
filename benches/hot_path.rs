//! Criterion benchmarks of the request path's synchronous stages.
//!
//! Inputs (key tables, trigger indexes, bodies) are built outside the timed
//! loop; `iter_batched` hands each iteration a fresh body buffer because the
//! parser consumes it.
#![allow(missing_docs, clippy::unwrap_used)]

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use std::hint::black_box;
use tether_ingress::{
    digest_key,
    hot_path::{Authenticator, Credential, Fetched, KeyTable, View, WebhookIndex, parse_envelope},
};

/// A typical aggregator lead: 440 bytes.
pub const LEAD_440: &str = r#"{"webhookId":"wh_64d2f9c5e8a1d4e001a0b1c3","source":"zillow","receivedVia":"premier-agent","lead":{"id":"zl_8f2c61d0-5d2e-4b8e-9c1e-7a9b3f2d1e44","name":"Alex Nguyen","email":"alex.nguyen@example.com","phone":"+14155551234","message":"Hi, I am interested in 1234 Market St #5. Is it still available for a viewing this weekend?","budget":{"min":850000,"max":1100000.00,"currency":"USD"},"tags":["buyer","pre-approved","vip"],"score":0.8712}}"#;

/// Table sizes: the issue's million in release; small when the benchmarks run
/// once in debug as part of the test suite.
const fn scale(n: usize) -> usize {
    if cfg!(debug_assertions) { n / 100 } else { n }
}

fn hex(d: &[u8; 32]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn key_table(n: usize) -> std::sync::Arc<KeyTable> {
    let t = KeyTable::new("tether:");
    for i in 0..n {
        let rec = format!(r#"{{"userId":"u_{i}","orgId":"o_{}"}}"#, i % 10_000);
        t.apply(
            &hex(&digest_key(format!("user_key_{i}").as_bytes())),
            Fetched::String(Bytes::from(rec)),
            1,
        )
        .unwrap();
    }
    std::sync::Arc::new(t)
}

fn trigger_index(n: usize, orgs: usize) -> WebhookIndex {
    let idx = WebhookIndex::new("tether:");
    for i in 0..n {
        idx.apply(
            &format!("o_{}:wh_{i}", i % orgs),
            Fetched::Set(vec![Bytes::from(format!("wf_{i}"))]),
            1,
        )
        .unwrap();
    }
    idx.apply(
        "o_7:wh_64d2f9c5e8a1d4e001a0b1c3",
        Fetched::Set(vec![Bytes::from_static(b"wf_lead")]),
        1,
    )
    .unwrap();
    idx
}

fn bearer(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    h
}

fn body_of(size: usize) -> String {
    if size <= LEAD_440.len() {
        return LEAD_440.to_owned();
    }
    let pad = size - LEAD_440.len() - 10;
    format!(
        r#"{},"pad":"{}"}}"#,
        &LEAD_440[..LEAD_440.len() - 1],
        "x".repeat(pad)
    )
}

fn auth(c: &mut Criterion) {
    let mut g = c.benchmark_group("auth");
    for n in [1_000usize, scale(1_000_000)] {
        let auth = Authenticator::new(key_table(n));
        let known = bearer("user_key_7");
        let unknown = bearer("user_key_unknown");
        g.bench_with_input(BenchmarkId::new("known_key", n), &known, |b, h| {
            b.iter(|| black_box(auth.authenticate(black_box(h), None).is_ok()))
        });
        g.bench_with_input(BenchmarkId::new("unknown_key", n), &unknown, |b, h| {
            b.iter(|| black_box(auth.authenticate(black_box(h), None).is_err()))
        });
    }
    g.finish();
}

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    for size in [440usize, 4 * 1024, 64 * 1024] {
        let body = body_of(size);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("envelope", size), &body, |b, body| {
            b.iter_batched(
                || BytesMut::from(body.as_bytes()),
                |buf| black_box(parse_envelope(buf).unwrap()),
                BatchSize::SmallInput,
            )
        });
        // Baselines in the same run: a serde_json Value (what a straightforward
        // implementation does, losing number text) and a plain simd-json parse.
        g.bench_with_input(
            BenchmarkId::new("baseline_serde_json_value", size),
            &body,
            |b, body| {
                b.iter_batched(
                    || BytesMut::from(body.as_bytes()),
                    |buf| black_box(serde_json::from_slice::<serde_json::Value>(&buf).unwrap()),
                    BatchSize::SmallInput,
                )
            },
        );
        g.bench_with_input(
            BenchmarkId::new("baseline_simd_json_borrowed", size),
            &body,
            |b, body| {
                b.iter_batched(
                    || body.as_bytes().to_vec(),
                    |mut buf| {
                        let v = simd_json::to_borrowed_value(&mut buf).unwrap();
                        black_box(
                            simd_json::prelude::ValueAsScalar::as_str(&v["webhookId"]).is_some(),
                        );
                    },
                    BatchSize::SmallInput,
                )
            },
        );
    }
    g.finish();
}

fn route(c: &mut Criterion) {
    let mut g = c.benchmark_group("match");
    let idx = trigger_index(scale(1_000_000), 10_000);
    g.bench_function("lookup_hit_1m", |b| {
        b.iter(|| black_box(idx.lookup(black_box("o_7"), black_box("wh_64d2f9c5e8a1d4e001a0b1c3"))))
    });
    g.bench_function("lookup_miss_1m", |b| {
        b.iter(|| black_box(idx.lookup(black_box("o_7"), black_box("wh_none"))))
    });
    g.finish();
}

/// auth + parse + match on the 440-byte lead: the in-memory part of a request.
fn auth_parse_match(c: &mut Criterion) {
    let auth = Authenticator::new(key_table(1_000));
    let idx = trigger_index(scale(1_000_000), 10_000);
    let headers = bearer("user_key_7");
    c.bench_function("auth_parse_match/lead_440", |b| {
        b.iter_batched(
            || BytesMut::from(LEAD_440.as_bytes()),
            |buf| {
                let Ok(Credential::ApiKey(p)) = auth.authenticate(&headers, None) else {
                    unreachable!()
                };
                let env = parse_envelope(buf).unwrap();
                black_box(idx.lookup(p.org_id.as_str(), env.webhook_id.as_str()))
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, auth, parse, route, auth_parse_match);
criterion_main!(benches);
