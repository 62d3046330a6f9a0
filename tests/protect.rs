//! What protects the ingress and its callers: Idempotency-Key, per-key rate
//! limits, fail-closed key checks, and hostile input (oversized heads, slow
//! bodies, too many connections, idle and trickling clients).
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tether_ingress::config::Config;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const KEY: &str = "user_protect";
const KEY_2: &str = "user_protect_other_org";
const WAIT: Duration = Duration::from_secs(10);

async fn seed(redis: &RedisServer) -> fred::clients::Client {
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    put_key(&r, KEY_2, r#"{"userId":"u_2","orgId":"o_2"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
    add_trigger(&r, "o_2", "wh_1", &["wf_c"]).await;
    r
}

fn raw_for(redis: &RedisServer) -> Config {
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw
}

fn post(
    ingress: &Ingress,
    key: &str,
    idempotency: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut b = Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {key}"));
    if let Some(k) = idempotency {
        b = b.header("idempotency-key", k);
    }
    b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap()
}

// === Idempotency-Key ===

/// Sends 20 concurrent duplicates with one Idempotency-Key, dealt to
/// `instances` in turn; returns every answer.
async fn twenty_duplicates(
    instances: &[std::sync::Arc<Ingress>],
    key: &'static str,
    body: &'static str,
) -> Vec<(StatusCode, http::HeaderMap, Bytes)> {
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let ingress = instances[i % instances.len()].clone();
            tokio::spawn(async move { ingress.request(post(&ingress, KEY, Some(key), body)).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_duplicates_write_once_and_get_one_answer() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let ingress =
        std::sync::Arc::new(Ingress::start_with(raw_for(&redis).validate().unwrap()).await);
    let body = r#"{"webhookId":"wh_1","lead":42}"#;
    let answers = twenty_duplicates(std::slice::from_ref(&ingress), "lead-42", body).await;
    // Exactly one request did the work: two workflows, two entries.
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 2);
    let first: Vec<_> = answers
        .iter()
        .filter(|(_, h, _)| !h.contains_key("idempotent-replayed"))
        .collect();
    assert_eq!(first.len(), 1, "one original answer");
    let (status, headers, body_0) = first[0];
    assert_eq!(*status, StatusCode::ACCEPTED);
    let id = headers.get("x-request-id").unwrap();
    for (s, h, b) in &answers {
        assert_eq!(
            (s, b),
            (status, body_0),
            "every duplicate gets the same answer"
        );
        assert_eq!(h.get("x-request-id"), Some(id));
    }
    let e = entries(&r, "tether:jobs:workflow").await;
    assert_eq!(field(&e[0].1, "requestId"), id.to_str().unwrap());

    // A later repeat: same answer, nothing written.
    let (s, h, b) = ingress
        .request(post(&ingress, KEY, Some("lead-42"), body))
        .await;
    assert_eq!((s, &b), (StatusCode::ACCEPTED, body_0));
    assert_eq!(h.get("idempotent-replayed").unwrap(), "true");
    // The same key with other content is refused.
    let (s, _, b) = ingress
        .request(post(
            &ingress,
            KEY,
            Some("lead-42"),
            r#"{"webhookId":"wh_1","lead":43}"#,
        ))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(&b)["code"], "IDEMPOTENCY_KEY_REUSED");
    // Keys are scoped to the caller's org: another org's same key is its own.
    let (s, h, _) = ingress
        .request(post(&ingress, KEY_2, Some("lead-42"), body))
        .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert!(!h.contains_key("idempotent-replayed"));
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 3);
    // A refused request's answer is kept too.
    let (s, _, b) = ingress
        .request(post(&ingress, KEY, Some("bad-1"), r#"{"nope":1}"#))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s2, h2, b2) = ingress
        .request(post(&ingress, KEY, Some("bad-1"), r#"{"nope":1}"#))
        .await;
    assert_eq!((s2, b2), (s, b));
    assert!(h2.contains_key("idempotent-replayed"));
    // A malformed key.
    for bad in ["has space", &"x".repeat(256)] {
        let (s, _, b) = ingress.request(post(&ingress, KEY, Some(bad), body)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        assert_eq!(json(&b)["code"], "INVALID_IDEMPOTENCY_KEY");
    }
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_across_two_instances_write_once() {
    // Two ingress instances on one Redis, as behind a load balancer.
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let a = std::sync::Arc::new(Ingress::start_with(raw_for(&redis).validate().unwrap()).await);
    let b = std::sync::Arc::new(Ingress::start_with(raw_for(&redis).validate().unwrap()).await);
    let body = r#"{"webhookId":"wh_1","lead":7}"#;
    let answers = twenty_duplicates(&[a, b], "lead-7-both", body).await;
    // One request, on one of the two, did the work: two workflows, two entries.
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 2);
    let originals = answers
        .iter()
        .filter(|(_, h, _)| !h.contains_key("idempotent-replayed"))
        .count();
    assert_eq!(originals, 1, "one original answer across both instances");
    let id = &answers
        .iter()
        .find(|(_, h, _)| !h.contains_key("idempotent-replayed"))
        .unwrap()
        .1["x-request-id"];
    for (s, h, _) in &answers {
        assert_eq!(*s, StatusCode::ACCEPTED);
        assert_eq!(
            &h["x-request-id"], id,
            "every duplicate gets the first answer"
        );
    }
}

#[tokio::test]
async fn idempotent_requests_need_redis_and_say_so() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let ingress = Ingress::start_with(raw_for(&redis).validate().unwrap()).await;
    redis.kill();
    let body = r#"{"webhookId":"wh_1"}"#;
    assert!(
        eventually(WAIT, || async {
            let (s, h, b) = ingress
                .request(post(&ingress, KEY, Some("k-1"), body))
                .await;
            s == StatusCode::SERVICE_UNAVAILABLE
                && json(&b)["code"] == "IDEMPOTENCY_UNAVAILABLE"
                && h.contains_key("retry-after")
        })
        .await,
        "no 503 IDEMPOTENCY_UNAVAILABLE while Redis is down"
    );
}

/// An answer Redis does not store (here its user may `SET` and `GET` the
/// idempotency keys, so the claim works, but not run a script on them, so
/// storing the answer is refused) is counted and
/// logged without the user's password: a repeat of the key then gets 409
/// until the claim lapses, which an operator could not otherwise tell from
/// a caller's real concurrent duplicate.
#[tokio::test]
async fn an_answer_redis_does_not_store_is_counted_and_said() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let password = "pw-3f9a1c";
    redis.cli(&[
        "ACL",
        "SETUSER",
        "noanswers",
        "on",
        &format!(">{password}"),
        "+@all",
        "~tether:[^i]*",
        "(+set +get ~tether:idempotency:*)",
    ]);
    let log_file = LogFile::new();
    let url = redis
        .url()
        .replacen("redis://", &format!("redis://noanswers:{password}@"), 1);
    let ingress = IngressProcess::spawn_logging(
        &[
            ("TETHER_INGRESS_REDIS_URL", url),
            ("TETHER_INGRESS_LOG", "warn".into()),
        ],
        log_file.writer(),
    );
    ingress.wait_ready().await;
    let http = http_client();
    let send = |key: &'static str| {
        let req = Request::post(format!("{}/api/webhook/workflow", ingress.base()))
            .header("authorization", format!("Bearer {KEY}"))
            .header("idempotency-key", key)
            .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
            .unwrap();
        let http = http.clone();
        async move { http.request(req).await.unwrap().status() }
    };
    assert_eq!(send("unstored-1").await, StatusCode::ACCEPTED);
    assert_eq!(send("unstored-2").await, StatusCode::ACCEPTED);
    let series = "tether_idempotency_answers_unstored_total";
    assert!(
        eventually(WAIT, || async { ingress.metric_value(series).await == 2.0 }).await,
        "the unstored answers were not counted"
    );
    // The repeat finds the claim, not an answer.
    assert_eq!(send("unstored-1").await, StatusCode::CONFLICT);
    let text = log_file.text();
    assert!(
        text.contains("idempotency answer not stored") && text.contains("NOPERM"),
        "not said, or not why:\n{text}"
    );
    assert!(!text.contains(password), "the password was logged:\n{text}");
}

// === rate limits ===

#[tokio::test]
async fn keys_over_their_rate_get_429_with_retry_after() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    // KEY_2 has its own rate; KEY takes the configured default.
    put_key(
        &r,
        KEY_2,
        r#"{"userId":"u_2","orgId":"o_2","rateLimitPerSec":1}"#,
    )
    .await;
    let mut raw = raw_for(&redis);
    raw.rate_limit.default_per_sec = std::num::NonZeroU32::new(2);
    raw.rate_limit.burst = std::num::NonZeroU32::new(3);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    for (key, per_sec) in [(KEY, 2.0), (KEY_2, 1.0)] {
        let started = Instant::now();
        let mut accepted = 0;
        let mut limited = 0;
        for _ in 0..12 {
            let (s, h, b) = ingress.workflow(Some(key), r#"{"webhookId":"wh_1"}"#).await;
            match s {
                StatusCode::ACCEPTED => accepted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    limited += 1;
                    assert_eq!(json(&b)["code"], "RATE_LIMITED");
                    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
                    assert!(retry >= 1);
                }
                other => panic!("{other}"),
            }
        }
        // The bucket (3), plus what the rate refilled while we sent.
        let allowed = 3.0 + (started.elapsed().as_secs_f64() * per_sec).ceil();
        assert!(accepted >= 3, "{key}: {accepted} accepted");
        assert!(
            f64::from(accepted) <= allowed,
            "{key}: {accepted} accepted, at most {allowed} allowed"
        );
        assert_eq!(accepted + limited, 12);
    }
    assert!(
        metric_value(
            &ingress,
            "tether_http_rejected_total{code=\"RATE_LIMITED\"}"
        )
        .await
            >= 1.0,
        "429s are counted"
    );
}

// === fail-closed ===

#[tokio::test]
async fn fail_closed_refuses_keys_once_out_of_touch_and_recovers() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let mut raw = raw_for(&redis);
    raw.auth.fail_closed_after_secs = Some(std::time::Duration::from_secs(1));
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let body = r#"{"webhookId":"wh_1"}"#;
    assert_eq!(
        ingress.workflow(Some(KEY), body).await.0,
        StatusCode::ACCEPTED
    );
    redis.save();
    redis.kill();
    assert!(
        eventually(WAIT, || async {
            let (s, _, b) = ingress.workflow(Some(KEY), body).await;
            s == StatusCode::SERVICE_UNAVAILABLE && json(&b)["code"] == "AUTH_UNAVAILABLE"
        })
        .await,
        "keys still accepted with the cache out of touch"
    );
    assert_eq!(
        metric_value(&ingress, "tether_auth_fail_closed ").await,
        1.0
    );
    let age = metric_value(&ingress, "tether_replica_age_seconds ").await;
    assert!(age >= 1.0, "cache age {age}");
    redis.restart();
    assert!(
        eventually(WAIT, || async {
            ingress.workflow(Some(KEY), body).await.0 == StatusCode::ACCEPTED
        })
        .await,
        "keys not accepted again after Redis came back"
    );
}

// === hostile input ===

#[tokio::test]
async fn oversized_heads_and_slow_bodies_get_json_answers() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let mut raw = raw_for(&redis);
    raw.server.body_read_timeout_ms = std::time::Duration::from_millis(300);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    // A head over server.max_header_bytes (16 KiB).
    let req = Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-filler", "a".repeat(20_000))
        .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
        .unwrap();
    let (s, h, b) = ingress.request(req).await;
    assert_eq!(s, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(json(&b)["code"], "HEADERS_TOO_LARGE");
    assert!(h.contains_key("x-request-id"));
    // The same over HTTP/2, whose own 431 (for a head over the limit it
    // advertises) has no body.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-filler", "a".repeat(20_000))
        .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
        .unwrap();
    let res = h2.request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let b = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(json(&b)["code"], "HEADERS_TOO_LARGE");
    // A body that stops arriving: 408 once the body deadline passes.
    let mut s = TcpStream::connect(ingress.addr).await.unwrap();
    s.write_all(
        format!(
            "POST /api/webhook/workflow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: 100\r\n\r\n{{\"webhookId\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 408, "{head}");
    assert!(head.contains("x-request-id"));
    assert!(body.contains("BODY_TIMEOUT"), "{body}");
}

#[tokio::test]
async fn connections_beyond_the_cap_queue_then_get_503() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let mut raw = raw_for(&redis);
    raw.server.max_connections = 4;
    raw.server.connection_queue_timeout_ms = std::time::Duration::from_millis(200);
    let ingress = Ingress::spawn(raw.validate().unwrap()).await;
    // Four connections take every slot (each has sent a byte of a request).
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(ingress.addr).await.unwrap();
        s.write_all(b"G").await.unwrap();
        held.push(s);
    }
    let mut extra = TcpStream::connect(ingress.addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, head, body) = read_response(&mut extra).await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.contains("retry-after") && head.contains("x-request-id"),
        "{head}"
    );
    assert!(body.contains("\"code\":\"OVERLOADED\""), "{body}");
    // Once slots free up, new connections are served again.
    drop(held);
    assert!(
        eventually(WAIT, || async {
            let Ok(mut s) = TcpStream::connect(ingress.addr).await else {
                return false;
            };
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .is_ok()
                && read_response(&mut s).await.0 == 200
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_or_trickling_connections_do_not_stop_anybody_else() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let mut raw = raw_for(&redis);
    raw.server.first_byte_timeout_ms = std::time::Duration::from_millis(2_000);
    raw.server.header_read_timeout_ms = std::time::Duration::from_millis(2_000);
    let ingress = std::sync::Arc::new(Ingress::start_with(raw.validate().unwrap()).await);
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut hostile = Vec::new();
    for i in 0..500 {
        let mut s = TcpStream::connect(ingress.addr).await.unwrap();
        let closed = closed.clone();
        hostile.push(tokio::spawn(async move {
            if i % 2 == 0 {
                // Idle: connect and say nothing.
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await;
            } else {
                // Trickle a head that never ends, a line at a time.
                let _ = s
                    .write_all(b"POST /api/webhook/workflow HTTP/1.1\r\n")
                    .await;
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                        break;
                    }
                }
            }
            closed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }));
    }
    // Meanwhile 200 ordinary requests are all served.
    let normal: Vec<_> = (0..200)
        .map(|_| {
            let ingress = ingress.clone();
            tokio::spawn(async move {
                ingress
                    .workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#)
                    .await
                    .0
            })
        })
        .collect();
    for t in normal {
        assert_eq!(t.await.unwrap(), StatusCode::ACCEPTED);
    }
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 400);
    // And the hostile connections are closed by the server's timeouts.
    assert!(
        eventually(Duration::from_secs(30), || async {
            closed.load(std::sync::atomic::Ordering::Acquire) == 500
        })
        .await,
        "only {} of 500 hostile connections closed",
        closed.load(std::sync::atomic::Ordering::Acquire)
    );
}
