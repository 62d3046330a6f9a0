//! The worker side against a real redis-server: consumer group, duplicates
//! dropped, abandoned entries taken over, failures retried.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{sync::Mutex, time::Duration};

use fred::prelude::*;
use http::StatusCode;
use support::*;
use tether_ingress::Worker;

const STREAM: &str = "tether:jobs:workflow";

#[tokio::test]
async fn each_job_is_handled_once_even_when_written_twice() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_w", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    for i in 0..5 {
        let (status, _, _) = ingress
            .workflow(
                Some("user_w"),
                &format!(r#"{{"webhookId":"wh_1","i":{i}}}"#),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    // At-least-once: replay every entry once more, as a retried write would.
    for (_, fields) in entries(&r, STREAM).await {
        let _: String = r.xadd(STREAM, false, None, "*", fields).await.unwrap();
    }
    assert_eq!(xlen(&r, STREAM).await, 20);

    let worker = Worker::join(redis.client().await, STREAM, "workers", "w1", "tether:")
        .await
        .unwrap();
    let seen = Mutex::new(Vec::new());
    let mut total = tether_ingress::Polled::default();
    while total.handled + total.duplicates < 20 {
        let p = worker
            .poll(7, Duration::from_millis(100), |e| {
                seen.lock().unwrap().push((
                    e.get("requestId").unwrap().to_owned(),
                    e.get("workflowId").unwrap().to_owned(),
                ));
                async { Ok(()) }
            })
            .await
            .unwrap();
        total.handled += p.handled;
        total.duplicates += p.duplicates;
    }
    assert_eq!((total.handled, total.duplicates), (10, 10));
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        10,
        "every (requestId, workflowId) handled exactly once"
    );
    let pending: Value = r.xpending(STREAM, "workers", ()).await.unwrap();
    assert_eq!(
        pending.into_array().first().and_then(|v| v.as_i64()),
        Some(0),
        "all acknowledged"
    );
}

/// A caller that sends one `X-Request-Id` with several leads (a batch's
/// id on each of its leads) sends several leads: the worker handles each
/// once, and drops only the true duplicate (a retry of the same lead).
/// Before, its duplicate key was the request id and workflow id alone, and
/// every lead after the first of such a batch was dropped.
#[tokio::test]
async fn leads_sharing_a_callers_request_id_are_each_handled() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_w", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    for lead in ["Alex", "Sam", "Alex"] {
        let req = http::Request::post(ingress.uri("/api/webhook/workflow"))
            .header("authorization", "Bearer user_w")
            .header("x-request-id", "batch-2026-12-07")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                r#"{{"webhookId":"wh_1","name":"{lead}"}}"#
            ))))
            .unwrap();
        assert_eq!(ingress.request(req).await.0, StatusCode::ACCEPTED);
    }
    let worker = Worker::join(redis.client().await, STREAM, "workers", "w1", "tether:")
        .await
        .unwrap();
    let seen = Mutex::new(Vec::new());
    let mut total = tether_ingress::Polled::default();
    while total.handled + total.duplicates < 3 {
        let p = worker
            .poll(7, Duration::from_millis(100), |e| {
                seen.lock()
                    .unwrap()
                    .push(e.get("payload").unwrap().to_owned());
                async { Ok(()) }
            })
            .await
            .unwrap();
        total.handled += p.handled;
        total.duplicates += p.duplicates;
    }
    assert_eq!((total.handled, total.duplicates), (2, 1));
    assert_eq!(
        seen.into_inner().unwrap(),
        [r#"{"name":"Alex"}"#, r#"{"name":"Sam"}"#]
    );
}

#[tokio::test]
async fn entries_of_a_dead_consumer_are_taken_over_and_failures_retried() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    for i in 0..3 {
        let _: String = r
            .xadd(
                STREAM,
                false,
                None,
                "*",
                vec![
                    ("workflowId", "wf".to_owned()),
                    ("requestId", format!("req-{i}")),
                ],
            )
            .await
            .unwrap();
    }
    // A consumer reads everything and dies without acknowledging.
    let dead = Worker::join(redis.client().await, STREAM, "workers", "dead", "tether:")
        .await
        .unwrap();
    let p = dead
        .poll(10, Duration::from_millis(100), |_| async {
            Err("crashed".to_owned())
        })
        .await
        .unwrap();
    assert_eq!(p.failed, 3);

    let alive = Worker::join(redis.client().await, STREAM, "workers", "alive", "tether:")
        .await
        .unwrap()
        .claim_idle(Duration::from_millis(0));
    let mut calls = 0;
    let p = alive
        .poll(10, Duration::from_millis(100), |e| {
            calls += 1;
            let fail = e.get("requestId") == Some("req-1");
            async move {
                if fail {
                    Err("transient".to_owned())
                } else {
                    Ok(())
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(
        (p.handled, p.failed, calls),
        (2, 1, 3),
        "took over the dead consumer's three entries"
    );
    // The failed one stays pending and succeeds on the next pass.
    let p = alive
        .poll(10, Duration::from_millis(100), |_| async { Ok(()) })
        .await
        .unwrap();
    assert_eq!((p.handled, p.duplicates), (1, 0));
    let pending: Value = r.xpending(STREAM, "workers", ()).await.unwrap();
    assert_eq!(
        pending.into_array().first().and_then(|v| v.as_i64()),
        Some(0)
    );
}
