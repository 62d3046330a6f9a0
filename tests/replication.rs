//! `redis.wait_replicas` against a real primary and replica: a 2xx means
//! the replica holds the job; without the replica, no 2xx (503, or the
//! spool, replayed and confirmed once the replica is back).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;
use tether_ingress::config::Config;

const KEY: &str = "user_replicated";
const STREAM: &str = "tether:jobs:workflow";

/// Makes `replica` a replica of `primary` and waits until it is in sync.
async fn follow(replica: &RedisServer, primary: &RedisServer) {
    replica.cli(&["REPLICAOF", "127.0.0.1", &primary.port.to_string()]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            // The replica loaded the primary's data, and the primary counts
            // it online (after its first acknowledgement): only then does a
            // WAIT count it.
            replica
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
                && primary
                    .cli(&["INFO", "replication"])
                    .contains(&format!("port={},state=online", replica.port))
        })
        .await,
        "the replica never caught up"
    );
}

fn xlen_on(server: &RedisServer) -> u64 {
    server.cli(&["XLEN", STREAM]).parse().unwrap()
}

/// Seeds `primary` with the test's key and trigger; a configuration for it
/// with `redis.wait_replicas = 1`.
async fn seeded_with_wait(primary: &RedisServer) -> Config {
    let r = primary.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = primary.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.wait_replicas = 1;
    raw
}

async fn start(primary: &RedisServer, spool: Option<&std::path::Path>) -> Ingress {
    let mut raw = seeded_with_wait(primary).await;
    // The WAIT may take half of this: long enough that a loaded machine's
    // replica still confirms in time, short enough that the replica-less
    // requests below are answered in a second.
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(2000);
    if let Some(dir) = spool {
        raw.spool.dir = Some(dir.into());
    }
    Ingress::start_with(raw.validate().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_202_is_on_the_replica_and_none_is_sent_without_it() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start();
    follow(&replica, &primary).await;
    let ingress = start(&primary, None).await;
    for i in 1..=20 {
        let (status, _, _) = ingress
            .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":1}"#)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // Read at once, no polling: the 202 waited for the replica.
        assert_eq!(
            xlen_on(&replica),
            i,
            "a 202 before the replica held the job"
        );
    }
    // Concurrent requests share WAITs and each still lands on the replica.
    let answers = futures::future::join_all(
        (0..50).map(|_| ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#)),
    )
    .await;
    assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::ACCEPTED));
    assert_eq!(xlen_on(&replica), 70);

    replica.kill();
    let (status, headers, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no replica, no 202"
    );
    assert!(headers.contains_key("retry-after"));
    assert!(
        metric_value(
            &ingress,
            "tether_job_write_failures_total{reason=\"not_replicated\"}"
        )
        .await
            >= 1.0
    );

    replica.restart();
    follow(&replica, &primary).await;
    // Polled: on a loaded machine the first WAIT after the resync can still
    // miss its deadline; what matters is that 202s come back.
    assert!(
        eventually(Duration::from_secs(10), || async {
            ingress
                .workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await,
        "writes never resumed with the replica back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_spool_unconfirmed_jobs_are_replayed_and_confirmed_later() {
    let primary = RedisServer::start();
    let mut replica = RedisServer::start();
    follow(&replica, &primary).await;
    let spool = tempfile::tempdir().unwrap();
    let ingress = start(&primary, Some(spool.path())).await;
    replica.kill();
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = format!("unconfirmed-{i}");
        let req = http::Request::post(ingress.uri("/api/webhook/workflow"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-request-id", id.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"webhookId":"wh_1"}"#,
            )))
            .unwrap();
        let (status, _, _) = ingress.request(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "spooled");
        ids.push(id);
    }
    assert!(metric_value(&ingress, "tether_spool_jobs_written_total").await >= 5.0);
    replica.restart();
    follow(&replica, &primary).await;
    // Replayed into the primary and confirmed on the replica: every
    // accepted request's job is on the replica.
    let r = primary.client().await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            let on_primary = request_ids_in(&r, STREAM).await;
            let all_there = ids.iter().all(|id| on_primary.contains_key(id));
            all_there && xlen_on(&replica) == xlen_on(&primary)
        })
        .await,
        "the spooled jobs did not reach the replica"
    );
}

/// An ingress whose URL names a replica (a reader endpoint, say) loads its
/// caches from it but never becomes ready: `/readyz` says it waits for the
/// job writer, which refuses a node that is not a primary, and a webhook
/// gets 503 `NOT_READY`. Once the node is promoted, the writer's retries
/// connect and the ingress serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_naming_a_replica_waits_for_the_job_writer_until_it_is_promoted() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    let r = primary.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    follow(&replica, &primary).await;
    let ingress = Ingress::spawn(config_for(&replica.url())).await;
    let waiting = || async {
        let (status, _, body) = ingress.get("/readyz").await;
        (status, json(&body)["waiting_for"].clone())
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            waiting().await.1 == "job_writer"
        })
        .await,
        "readiness does not say it waits for the job writer: {:?}",
        waiting().await
    );
    assert_eq!(waiting().await.0, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["code"], "NOT_READY");
    assert_eq!(replica.cli(&["REPLICAOF", "NO", "ONE"]), "OK");
    assert!(
        eventually(Duration::from_secs(10), || async {
            ingress.get("/readyz").await.0 == StatusCode::OK
        })
        .await,
        "not ready after the promotion: {:?}",
        waiting().await
    );
    let (status, _, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(xlen_on(&replica), 1);
}

/// `calls` of `command` in the server's `INFO commandstats` (0 if never run).
fn calls(server: &RedisServer, command: &str) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    let prefix = format!("cmdstat_{command}:calls=");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// With `redis.wait_replicas`, an idle job writer's keep-alive `PING` goes
/// out alone: a `WAIT` confirms jobs, and a `PING` stores none (with a
/// replica down, a `WAIT` after it would hold the idle writer for the
/// `WAIT`'s timeout every period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_ping_is_not_followed_by_a_wait() {
    let primary = RedisServer::start();
    let replica = RedisServer::start();
    follow(&replica, &primary).await;
    let mut raw = seeded_with_wait(&primary).await;
    raw.redis.keepalive_ms = Duration::from_millis(200);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let (status, _, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (waits, pings) = (calls(&primary, "wait"), calls(&primary, "ping"));
    assert!(waits >= 1, "the job's WAIT was not sent");
    assert!(
        eventually(Duration::from_secs(10), || async {
            calls(&primary, "ping") >= pings + 10
        })
        .await,
        "the idle connections sent no keep-alive"
    );
    assert_eq!(calls(&primary, "wait"), waits, "a WAIT followed a PING");
}
