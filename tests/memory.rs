//! Memory stays bounded under load with nobody scraping `/metrics`: the
//! recorder's histogram samples are drained by the ingress's own upkeep.
//!
//! Its own test binary: a counting global allocator (the `cap` crate) gives
//! the process's live heap bytes exactly, and the process-wide recorder
//! belongs to this test alone (nothing here renders it).
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod support;

use std::{alloc::System, time::Duration};

use bytes::Bytes;
use cap::Cap;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// Concurrent keep-alive connections sending requests.
const CONNECTIONS: usize = 32;

/// Sends `total` one-match workflow requests over [`CONNECTIONS`]
/// connections and checks each was accepted.
async fn drive(http: &Http, uri: &str, total: usize) {
    let per = total / CONNECTIONS;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (http, uri) = (http.clone(), uri.to_owned());
            tokio::spawn(async move {
                for _ in 0..per {
                    let req = Request::post(uri.as_str())
                        .header("authorization", format!("Bearer {TEST_KEY}"))
                        .body(Full::new(Bytes::from_static(
                            br#"{"webhookId":"wh_1","lead":{"name":"Alex"}}"#,
                        )))
                        .unwrap();
                    let res = http.request(req).await.unwrap();
                    assert_eq!(res.status(), StatusCode::ACCEPTED);
                    res.into_body().collect().await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn live() -> usize {
    ALLOCATOR.allocated()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn histogram_samples_are_drained_without_a_scrape() {
    let (redis, _r) = redis_with_key_and_trigger(TEST_KEY, &["wf_a"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    let http = http_client();
    let uri = ingress.uri("/api/webhook/workflow");

    // Warm up: connections, pools, buffers and every histogram's buckets.
    drive(&http, &uri, 10_000).await;
    let baseline = live();

    // Each request records three histogram samples (request duration, sink
    // duration, batch size), 8 bytes each at least: kept until something
    // drains them, 60k requests hold 1.4 MB or more. With the ingress's
    // upkeep the heap comes back near where it was.
    drive(&http, &uri, 60_000).await;
    let after_load = live();
    eprintln!("live heap: {baseline} after the warm-up, {after_load} after 60k more requests");
    let bounded = eventually(Duration::from_secs(10), || async {
        live() < baseline + 256 * 1024
    })
    .await;
    assert!(
        bounded,
        "live heap grew from {baseline} to {} bytes over 60k requests ({after_load} right after them)",
        live()
    );
    assert!(ingress.shutdown().await);
}
