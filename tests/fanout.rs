//! A request whose webhook matches many workflows, against a real
//! redis-server and the binary: the payload goes to Redis once per job, so
//! a large body times a large fan-out is the largest write there is.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use support::*;

const KEY: &str = "user_fanout_key";

/// A Redis holding [`KEY`] (org `o_1`) and trigger `wh_fan` of `matches`
/// workflows.
async fn redis_with_fanout(matches: usize) -> (RedisServer, fred::clients::Client) {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    let workflows: Vec<String> = (0..matches).map(|i| format!("wf_{i:04}")).collect();
    let workflows: Vec<&str> = workflows.iter().map(String::as_str).collect();
    add_trigger(&r, "o_1", "wh_fan", &workflows).await;
    (redis, r)
}

/// A `wh_fan` lead of about `bytes` bytes.
fn lead(bytes: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"webhookId":"wh_fan","notes":"{}"}}"#,
        "n".repeat(bytes)
    ))
}

async fn post(ingress: &IngressProcess, body: Bytes) -> (StatusCode, serde_json::Value) {
    let req = Request::post(format!("{}/api/webhook/workflow", ingress.base()))
        .header("authorization", format!("Bearer {KEY}"))
        .body(Full::new(body))
        .unwrap();
    let res = http_client().request(req).await.unwrap();
    let status = res.status();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, json(&body))
}

/// The binary's peak resident memory so far, bytes.
fn peak_rss(ingress: &IngressProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", ingress.pid())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

/// A 1 MB lead matching 300 workflows is 300 MB of entries. They go to
/// Redis in parts of a bounded size, each once the one before is stored,
/// so the ingress never holds them all: before, its peak memory grew by
/// about 300 MB for this one request (1.3 GB for eight at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_written_in_bounded_parts() {
    let (redis, r) = redis_with_fanout(300).await;
    let ingress = IngressProcess::spawn(&[("TETHER_INGRESS_REDIS_URL", redis.url())]);
    ingress.wait_ready().await;
    let before = peak_rss(&ingress);
    let (status, answer) = post(&ingress, lead(1_000_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["data"]["matchedCount"], 300);
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 300);
    let grew = peak_rss(&ingress) - before;
    assert!(
        grew < 120 << 20,
        "peak memory grew by {} MiB for one request",
        grew >> 20
    );
}

/// When Redis stores some of a request's jobs and refuses the rest (here
/// it runs out of memory part way), the caller is told they may be stored
/// (`JOB_STORE_UNCONFIRMED`: a retry may enqueue them twice), never that
/// nothing was enqueued. Before, this answer was `JOB_STORE_UNAVAILABLE`
/// ("Nothing was enqueued") with tens of the entries in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_partly_stored_are_answered_unconfirmed() {
    let (redis, r) = redis_with_fanout(100).await;
    let ingress = IngressProcess::spawn(&[("TETHER_INGRESS_REDIS_URL", redis.url())]);
    ingress.wait_ready().await;
    let used: u64 = redis
        .cli(&["INFO", "memory"])
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    let limit = (used + (48 << 20)).to_string();
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", &limit]), "OK");
    let (status, answer) = post(&ingress, lead(1_000_000)).await;
    let stored = xlen(&r, "tether:jobs:workflow").await;
    assert!((1..100).contains(&stored), "{stored} of 100 stored");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], "JOB_STORE_UNCONFIRMED", "{answer}");
    assert_eq!(
        ingress
            .metric_value("tether_job_write_failures_total{reason=\"partly_stored\"}")
            .await,
        1.0
    );
}

/// A request written in parts whose first part Redis holds past the
/// deadline (writes paused) is spooled whole, and every one of its jobs
/// ends up in the stream: its late reply must not count for the parts
/// never sent (a spooled copy skipped because the first part was stored
/// would lose the rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_fan_out_is_stored_whole() {
    let (redis, r) = redis_with_fanout(300).await;
    let spool = unique_dir("fanout-spool");
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        ("TETHER_INGRESS_SPOOL_DIR", spool.display().to_string()),
    ]);
    ingress.wait_ready().await;
    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "WRITE"]), "OK");
    let req = Request::post(format!("{}/api/webhook/workflow", ingress.base()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", "fanout-spooled")
        .body(Full::new(lead(1_000_000)))
        .unwrap();
    let res = http_client().request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let stored = || async {
        let mut workflows: Vec<String> = entries(&r, "tether:jobs:workflow")
            .await
            .into_iter()
            .filter(|(_, e)| field(e, "requestId") == "fanout-spooled")
            .map(|(_, e)| field(&e, "workflowId").to_owned())
            .collect();
        workflows.sort_unstable();
        workflows.dedup();
        workflows.len()
    };
    assert!(
        eventually(std::time::Duration::from_secs(30), || async {
            stored().await == 300
        })
        .await,
        "{} of 300 jobs stored",
        stored().await
    );
}

/// With Redis away, a large fan-out goes to the spool in parts too, so the
/// ingress does not hold it whole then either (before: the 300 MB of
/// records in one buffer), and once Redis is back every job is replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_spooled_in_an_outage_is_spooled_in_parts() {
    let (mut redis, _) = redis_with_fanout(300).await;
    let spool = unique_dir("fanout-outage");
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        ("TETHER_INGRESS_SPOOL_DIR", spool.display().to_string()),
    ]);
    ingress.wait_ready().await;
    redis.kill();
    let before = peak_rss(&ingress);
    let (status, answer) = post(&ingress, lead(1_000_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let grew = peak_rss(&ingress) - before;
    assert!(
        grew < 120 << 20,
        "peak memory grew by {} MiB to spool one request",
        grew >> 20
    );
    redis.restart();
    let r = redis.client().await;
    assert!(
        eventually(std::time::Duration::from_secs(30), || async {
            xlen(&r, "tether:jobs:workflow").await >= 300
        })
        .await,
        "{} of 300 jobs replayed",
        xlen(&r, "tether:jobs:workflow").await
    );
}
