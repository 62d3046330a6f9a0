//! A Sentinel primary frozen past the sentinels' down-after time (its own
//! test binary: the process-wide metrics must not mix with the other
//! Sentinel tests'). The sentinels fail over while it sleeps; woken, it
//! still takes writes as a primary until they demote it, and the demotion
//! discards them. The writers follow the sentinels, not their old
//! connection: every 202's job is on the new primary, and an
//! Idempotency-Key's record (the shared client's) is there too, and the
//! control-plane replica sees a key revoked there at once.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use fred::prelude::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::{sentinel::Sentinels, *};

const KEY: &str = "user_sentinel_thaw";
const OTHER: &str = "user_sentinel_thaw_other";
const STREAM: &str = "tether:jobs:workflow";
const WAIT: Duration = Duration::from_secs(40);
const SWITCHES: &str = "tether_redis_primary_switches_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_woken_after_its_failover_is_left_and_no_202_is_lost() {
    let deployment = Sentinels::start().await;
    let old = deployment.primary.port;
    let r = deployment.primary.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    put_key(&r, OTHER, r#"{"userId":"u_2","orgId":"o_1"}"#).await;
    drop(r);
    let ingress = Ingress::start(&deployment.url()).await;
    let other = || async {
        ingress
            .workflow(Some(OTHER), r#"{"webhookId":"wh_1"}"#)
            .await
            .0
    };
    assert_eq!(other().await, StatusCode::ACCEPTED);

    let load = Load::start(&ingress.uri(""), KEY, r#"{"webhookId":"wh_1"}"#, 8, "thaw");
    load.until_accepted(200, WAIT).await;
    let switches_before = metric_value(&ingress, SWITCHES).await;
    let pid = deployment.primary.pid();
    signal(pid, "STOP");
    assert!(
        eventually(WAIT, || async { deployment.primary_port() != old }).await,
        "the sentinels never failed over from the frozen primary"
    );
    // The ingress learns it from the sentinels while the old primary
    // sleeps, and its writers leave it.
    assert!(
        eventually(WAIT, || async {
            metric_value(&ingress, SWITCHES).await > switches_before
        })
        .await,
        "the ingress never saw the sentinels name a new primary"
    );
    signal(pid, "CONT");
    // A key revoked on the new primary stops working within the usual
    // second, while the old one still answers as a primary: the replica
    // followed the switch too.
    let r = client_at(&deployment.url()).await;
    let _: i64 = r
        .del(format!("tether:apikey:{}", sha256_hex(OTHER)))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            other().await == StatusCode::UNAUTHORIZED
        })
        .await,
        "a key revoked on the new primary still worked after 1 s"
    );
    // An Idempotency-Key's record goes where the jobs go: the shared
    // client reconnected on the switch too.
    let (status, first) = send_idempotent(&ingress).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    load.until_accepted(200, WAIT).await;
    // Until the sentinels demote it, the old primary takes writes as one.
    let old_server = deployment.server(old);
    assert!(
        eventually(WAIT, || async {
            old_server.cli(&["ROLE"]).starts_with("slave")
        })
        .await,
        "the sentinels never demoted the old primary"
    );
    let (status, repeat) = send_idempotent(&ingress).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        repeat.get("idempotent-replayed").map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "the repeat was not answered from the record: the record was lost"
    );
    load.until_accepted(200, WAIT).await;
    let outcomes = load.stop().await;
    let (accepted, others) = accepted_ids(&outcomes);

    let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
    let id = first.get("x-request-id").unwrap().to_str().unwrap();
    assert_eq!(stored.get(id), Some(&1), "the idempotent request's job");
    let missing: Vec<&str> = accepted
        .iter()
        .copied()
        .filter(|id| !stored.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} 202s have no job on the new primary, e.g. {:?}",
        missing.len(),
        accepted.len(),
        &missing[..missing.len().min(5)]
    );
    eprintln!(
        "figures: {} requests acknowledged (202), lost 0, {others} answered otherwise \
         (while the primary was frozen)",
        accepted.len()
    );
}

/// Sends the request with the Idempotency-Key as a caller does: again
/// after a 503. Until the shared client has reconnected to the new primary
/// (it may take longer than the replica and the writers, above all on a
/// busy machine) such a request gets 503 with nothing enqueued and no claim
/// kept, and the caller is told to retry.
async fn send_idempotent(ingress: &Ingress) -> (StatusCode, http::HeaderMap) {
    let last = std::sync::Mutex::new(None);
    eventually(WAIT, || async {
        let (status, headers, _) = ingress.request(with_idempotency_key(ingress)).await;
        *last.lock().unwrap() = Some((status, headers));
        status != StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    last.into_inner().unwrap().unwrap()
}

/// The same workflow request each time, under one Idempotency-Key.
fn with_idempotency_key(ingress: &Ingress) -> Request<Full<Bytes>> {
    Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("idempotency-key", "thaw-lead-1")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
        .unwrap()
}
