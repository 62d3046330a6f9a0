//! A 503 never claims more than the ingress knows: `JOB_STORE_UNAVAILABLE`
//! ("nothing was enqueued") only when nothing reached Redis, and
//! `JOB_STORE_UNCONFIRMED` ("may or may not have been enqueued") when the
//! jobs were sent and their storage could not be confirmed. Read back from
//! a real Redis each time.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use http::StatusCode;
use support::*;

const KEY: &str = "user_store_answers";
const STREAM: &str = "tether:jobs:workflow";

#[tokio::test]
async fn unconfirmed_when_the_jobs_are_on_the_primary_without_a_replica() {
    // wait_replicas = 1 against a Redis with no replica: every write reaches
    // the primary, and none is ever confirmed.
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a", "wf_b"]).await;
    let mut config = config_for(&redis.url());
    config.redis.wait_replicas = 1;
    config.redis.command_timeout_ms = std::time::Duration::from_millis(400);
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    let (status, headers, body) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let body = json(&body);
    assert_eq!(body["code"], "JOB_STORE_UNCONFIRMED");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("may or may not"), "{message}");
    assert!(!message.contains("Nothing was enqueued"), "{message}");
    // And indeed both jobs are in the stream.
    assert_eq!(xlen(&r, STREAM).await, 2);
}

#[tokio::test]
async fn unavailable_when_nothing_reached_redis() {
    let mut redis = RedisServer::start_durable();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
    let ingress = Ingress::start_with(config_for(&redis.url())).await;
    assert_eq!(ingress.wh_1_status(KEY).await, StatusCode::ACCEPTED);
    redis.save();
    drop(r);
    redis.kill();
    // Once the writer knows its connection is gone, nothing is sent (a
    // request racing the close may still hear "unconfirmed", never 2xx).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let body = loop {
        let (status, headers, body) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
        let body = json(&body);
        if body["code"] == "JOB_STORE_UNAVAILABLE" || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(body["code"], "JOB_STORE_UNAVAILABLE");
    assert_eq!(
        body["message"],
        "Nothing was enqueued; retry after the Retry-After delay."
    );
    // Redis back: only the first request's two jobs are there.
    redis.restart();
    let r = redis.client().await;
    assert_eq!(xlen(&r, STREAM).await, 2);
}
