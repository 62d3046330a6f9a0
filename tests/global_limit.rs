//! `rate_limit.scope = "global"`: two ingress instances on one Redis keep
//! one key within one rate between them; per instance, each allows it.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;
use tether_ingress::config::Config;

const KEY: &str = "user_limited_everywhere";
/// 2 per second, a bucket of 5.
const RECORD: &str = r#"{"userId":"u_1","orgId":"o_1","rateLimitPerSec":2}"#;

async fn two_instances(scope: &str) -> (RedisServer, Ingress, Ingress) {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, RECORD).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let config = || {
        let mut raw = Config::default();
        raw.redis.url = redis.url();
        raw.server.listen = ([127, 0, 0, 1], 0).into();
        raw.rate_limit.burst = std::num::NonZeroU32::new(5);
        raw.rate_limit.scope = match scope {
            "global" => tether_ingress::config::RateLimitScope::Global,
            _ => tether_ingress::config::RateLimitScope::Instance,
        };
        raw.validate().unwrap()
    };
    let a = Ingress::start_with(config()).await;
    let b = Ingress::start_with(config()).await;
    (redis, a, b)
}

/// 30 concurrent requests split between the two; how many were admitted,
/// whether every refusal said when to retry, and how long it took.
async fn burst(a: &Ingress, b: &Ingress) -> (usize, bool, f64) {
    let started = Instant::now();
    let answers = futures::future::join_all((0..30).map(|i| {
        let target = if i % 2 == 0 { a } else { b };
        target.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#)
    }))
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::ACCEPTED)
        .count();
    let refusals_say_when = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .all(|(_, h, _)| h.contains_key("retry-after"));
    (admitted, refusals_say_when, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_scope_keeps_two_instances_within_one_rate() {
    let (redis, a, b) = two_instances("global").await;
    let (admitted, refusals_say_when, elapsed) = burst(&a, &b).await;
    // The bucket of 5, plus what 2/s refills while the burst lasts.
    let allowed = 5 + (elapsed * 2.0).ceil() as usize;
    assert!(
        (5..=allowed).contains(&admitted),
        "{admitted} admitted across both instances in {elapsed:.2} s (at most {allowed})"
    );
    assert!(refusals_say_when);
    // The state lives in Redis, under the key's digest, never the key.
    let keys = redis.cli(&["KEYS", "tether:ratelimit:*"]);
    assert_eq!(
        keys,
        format!("tether:ratelimit:{}", sha256_hex(KEY)),
        "one state per key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_scope_lets_each_instance_allow_the_rate() {
    let (_redis, a, b) = two_instances("instance").await;
    let (admitted, _, elapsed) = burst(&a, &b).await;
    assert!(
        admitted >= 10,
        "{admitted} admitted in {elapsed:.2} s: each instance has its own bucket of 5"
    );
}

/// With Redis gone, the global check falls back to the instance's own count
/// (the key is still limited, not let through) and counts each fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_instance_limits_alone_and_counts_it() {
    let (mut redis, a, _b) = two_instances("global").await;
    redis.kill();
    let answers = futures::future::join_all(
        (0..12).map(|_| a.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#)),
    )
    .await;
    let limited = answers
        .iter()
        .filter(|(s, _, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // A bucket of 5 here: the rest are refused by this instance's count.
    assert!(limited >= 12 - 5 - 1, "{limited} of 12 limited");
    assert!(metric_value(&a, "tether_rate_limit_global_fallbacks_total").await >= 1.0);
}

/// A Redis user refused the rate-limit and idempotency records (its ACL
/// names only the control plane and the job streams): the global limit
/// falls back to the instance's own count and a request with an
/// Idempotency-Key gets 503, as during an outage, but the log says why,
/// naming the keys to grant, a line a second at most and never the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_acl_refuses_are_said_in_the_log() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, RECORD).await;
    put_key(&r, "user_unlimited", r#"{"userId":"u_2","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let user = [
        "ACL",
        "SETUSER",
        "keys_only",
        "on",
        ">pw-keys-only",
        "~tether:apikey:*",
        "~tether:triggers:*",
        "~tether:org:*",
        "~tether:outreach:*",
        "~tether:jobs:*",
        "+@all",
    ];
    assert_eq!(redis.cli(&user), "OK");
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(
        &[
            (
                "TETHER_INGRESS_REDIS_URL",
                format!("redis://keys_only:pw-keys-only@127.0.0.1:{}", redis.port),
            ),
            ("TETHER_INGRESS_RATE_LIMIT_SCOPE", "global".to_owned()),
        ],
        log.writer(),
    );
    ingress.wait_ready().await;
    let http = http_client();
    let post = |key: &str, idempotency: Option<&str>| {
        let mut req = Request::post(format!("{}/api/webhook/workflow", ingress.base()))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json");
        if let Some(k) = idempotency {
            req = req.header("idempotency-key", k);
        }
        let req = req
            .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
            .unwrap();
        let http = http.clone();
        async move { http.request(req).await.unwrap().status() }
    };

    let answers = futures::future::join_all((0..12).map(|_| post(KEY, None))).await;
    let limited = answers
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // 2 per second with a bucket of one second's worth: the instance's own
    // count still limits the key.
    assert!(
        limited >= 12 - 2 - 1,
        "{limited} of 12 limited: {answers:?}"
    );
    let said = log
        .line_with(
            "refuses this user the global rate limit's script",
            SAY_WITHIN,
        )
        .await;
    assert!(
        said.contains("NOPERM") && said.contains("keys under tether:ratelimit:"),
        "{said}"
    );
    assert!(
        ingress
            .metric_value("tether_rate_limit_global_fallbacks_total")
            .await
            >= 12.0
    );

    assert_eq!(
        post("user_unlimited", Some("order-1")).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let said = log
        .line_with("refuses this user the idempotency records", SAY_WITHIN)
        .await;
    assert!(said.contains("keys under tether:idempotency:"), "{said}");
    // One line a second at most, not one per request.
    let lines = log
        .text()
        .lines()
        .filter(|l| l.contains("refuses this user"))
        .count();
    assert!((2..=4).contains(&lines), "{lines} lines:\n{}", log.text());
    assert!(!log.text().contains("pw-keys-only"), "{}", log.text());
}

const SAY_WITHIN: std::time::Duration = std::time::Duration::from_secs(10);
