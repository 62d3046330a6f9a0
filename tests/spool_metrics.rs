//! The spool's counters add up, in jobs, across a frozen Redis whose late
//! reply cancels a spooled copy. Alone in its own test binary: the metrics
//! registry is one per process, so another test's spool would add to them.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tether_ingress::config::ServingThreads;

const KEY: &str = "user_spool_metrics";
const STREAM: &str = "tether:jobs:workflow";

#[tokio::test]
async fn spooled_jobs_are_counted_as_replayed_or_skipped() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = config_for(&redis.url());
    raw.redis.command_timeout_ms = Duration::from_millis(5_000);
    raw.redis.stall_after_ms = Duration::from_millis(200);
    raw.server.serving_threads = ServingThreads::Count(1);
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;

    // The first request's write is in flight when the writer stalls: its
    // jobs are spooled under a ticket. The second skips the stalled writer.
    signal(redis.pid(), "STOP");
    for n in ["in flight", "skipped"] {
        let body = format!(r#"{{"webhookId":"wh_1","n":"{n}"}}"#);
        let (status, _, _) = ingress.workflow(Some(KEY), &body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{n}");
    }
    signal(redis.pid(), "CONT");
    assert!(
        eventually(Duration::from_secs(30), || async {
            metric_value(&ingress, "tether_spool_bytes").await == 0.0 && xlen(&r, STREAM).await == 4
        })
        .await,
        "the spool did not drain"
    );
    // Two jobs a request: four spooled; the first request's two cancelled
    // by the late reply, the second's two replayed.
    for (name, jobs) in [
        ("tether_spool_jobs_written_total", 4.0),
        ("tether_spool_jobs_skipped_total", 2.0),
        ("tether_spool_jobs_replayed_total", 2.0),
    ] {
        assert_eq!(metric_value(&ingress, name).await, jobs, "{name}");
    }
    assert!(ingress.shutdown().await);
}
