//! The job writer's own guarantees, against a real redis-server frozen,
//! demoted and promoted: a deadline answered honestly while the connection
//! survives, a full queue refused at once, and a node that stops taking
//! writes refused and followed, never written twice.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;
use tether_ingress::config::{Config, ServingThreads};

const KEY: &str = "user_writer";
const STREAM: &str = "tether:jobs:workflow";

/// A frozen Redis (SIGSTOP): the request is answered `JOB_STORE_UNCONFIRMED`
/// at its deadline, not when Redis wakes; Redis runs the write when it wakes
/// (so "may or may not" was the truth), and the same connection carries the
/// next request, its late reply matched to nobody's but its own.
#[tokio::test]
async fn a_frozen_redis_answers_unconfirmed_at_the_deadline_and_the_writer_recovers() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.redis.command_timeout_ms = Duration::from_millis(300);
    config.redis.stall_after_ms = Duration::ZERO;
    let ingress = Ingress::start_with(config.validate().unwrap()).await;
    let (status, _, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    signal(redis.pid(), "STOP");
    let started = Instant::now();
    let (status, headers, body) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":2}"#)
        .await;
    let waited = started.elapsed();
    signal(redis.pid(), "CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    assert_eq!(json(&body)["code"], "JOB_STORE_UNCONFIRMED");
    assert!(waited < Duration::from_millis(1_500), "{waited:?}");

    // Redis ran the timed-out write once it woke.
    assert!(
        eventually(Duration::from_secs(5), || async {
            xlen(&r, STREAM).await == 2
        })
        .await
    );
    // The next requests are answered from their own replies.
    for n in 3..6 {
        let (status, _, _) = ingress
            .workflow(Some(KEY), &format!(r#"{{"webhookId":"wh_1","n":{n}}}"#))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(xlen(&r, STREAM).await, 5);
    assert!(ingress.shutdown().await);
}

/// `redis.max_pending_commands` caps what waits on Redis: with the one
/// slot taken by a write to a frozen Redis, the next request is refused at
/// once and says nothing was enqueued.
#[tokio::test]
async fn a_full_writer_refuses_at_once_with_nothing_sent() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.redis.command_timeout_ms = Duration::from_millis(1_500);
    config.redis.max_pending_commands = 1;
    // The stall check would answer the first request early: off here.
    config.redis.stall_after_ms = Duration::ZERO;
    config.server.serving_threads = ServingThreads::Count(1);
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    signal(redis.pid(), "STOP");
    let timed = |n: u32| {
        let ingress = &ingress;
        async move {
            let started = Instant::now();
            let body = format!(r#"{{"webhookId":"wh_1","n":{n}}}"#);
            let (status, _, body) = ingress.workflow(Some(KEY), &body).await;
            (
                status,
                json(&body)["code"].as_str().unwrap_or("").to_owned(),
                started.elapsed(),
            )
        }
    };
    let (a, b) = tokio::join!(timed(1), timed(2));
    signal(redis.pid(), "CONT");
    // Whichever came second was refused at once; the other waited out its
    // deadline on the frozen Redis.
    let (sent, refused) = if a.2 < b.2 { (b, a) } else { (a, b) };
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.1, "JOB_STORE_UNAVAILABLE");
    assert!(refused.2 < Duration::from_millis(500), "{:?}", refused.2);
    assert_eq!(sent.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(sent.1, "JOB_STORE_UNCONFIRMED");
    assert!(sent.2 >= Duration::from_millis(1_000), "{:?}", sent.2);
    // Only the first request's entry was ever sent.
    assert!(
        eventually(Duration::from_secs(5), || async {
            xlen(&r, STREAM).await == 1
        })
        .await
    );
    // The late reply frees the one slot once the writer has read it, which
    // can be just after the entry shows in the stream: until then a request
    // is refused at once (nothing sent), after it the writer takes writes.
    assert!(accepted_within(&ingress, Duration::from_secs(5), 3).await);
}

/// A primary demoted to a replica answers `READONLY`: the write is refused
/// (Redis ran none of it: `JOB_STORE_UNAVAILABLE`), the writer stops using
/// that node, does not reconnect to it while it is a replica, and writes
/// again once it is a primary.
#[tokio::test]
async fn a_demoted_primary_is_refused_and_the_writer_follows_it_back() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    // The node it will replicate holds the same control-plane data.
    let (other, _o) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    let (status, _, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    redis.cli(&["REPLICAOF", "127.0.0.1", &other.port.to_string()]);
    assert!(
        eventually(Duration::from_secs(10), || async {
            redis
                .cli(&["INFO", "replication"])
                .contains("master_link_status:up")
        })
        .await
    );
    let (status, _, body) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":2}"#)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["code"], "JOB_STORE_UNAVAILABLE");
    // While it is a replica, nothing is written anywhere.
    let (status, _, _) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":3}"#)
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);

    redis.cli(&["REPLICAOF", "NO", "ONE"]);
    assert!(accepted_within(&ingress, Duration::from_secs(10), 4).await);
    // The replica took the other node's (empty) stream: exactly the one
    // accepted write is there, none of the refused ones.
    assert_eq!(xlen(&r, STREAM).await, 1);
    let entries = entries(&r, STREAM).await;
    assert!(
        field(&entries[0].1, "payload").contains("\"n\":4"),
        "{entries:?}"
    );
}

/// Without a spool, a stalled writer answers at once: the request in flight
/// hears `JOB_STORE_UNCONFIRMED` after `redis.stall_after_ms` (not the 5 s
/// deadline), the next ones `JOB_STORE_UNAVAILABLE` with `Retry-After` at
/// once (nothing sent), and the first reply after the freeze ends the stall.
#[tokio::test]
async fn without_a_spool_a_stalled_writer_answers_503_at_once() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.redis.command_timeout_ms = Duration::from_millis(5_000);
    config.redis.stall_after_ms = Duration::from_millis(200);
    config.server.serving_threads = ServingThreads::Count(1);
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    signal(redis.pid(), "STOP");
    let started = Instant::now();
    let (status, _, body) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":1}"#)
        .await;
    let first = started.elapsed();
    let started = Instant::now();
    let (next, headers, next_body) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":2}"#)
        .await;
    let second = started.elapsed();
    signal(redis.pid(), "CONT");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["code"], "JOB_STORE_UNCONFIRMED");
    assert!(first < Duration::from_millis(2_000), "{first:?}");
    assert_eq!(next, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&next_body)["code"], "JOB_STORE_UNAVAILABLE");
    assert!(headers.contains_key("retry-after"));
    assert!(second < Duration::from_millis(500), "{second:?}");

    assert!(accepted_within(&ingress, Duration::from_secs(10), 3).await);
    // The first write ran when Redis woke; the refused one never left.
    let payloads: Vec<String> = entries(&r, STREAM)
        .await
        .iter()
        .map(|(_, fields)| field(fields, "payload").to_owned())
        .collect();
    assert!(
        payloads.iter().any(|p| p.contains("\"n\":1")),
        "{payloads:?}"
    );
    assert!(
        !payloads.iter().any(|p| p.contains("\"n\":2")),
        "{payloads:?}"
    );
}

/// Whether a workflow request (`"n"` set to `n`) is answered 202 within
/// `within`, asked again until it is.
async fn accepted_within(ingress: &Ingress, within: Duration, n: u32) -> bool {
    let body = format!(r#"{{"webhookId":"wh_1","n":{n}}}"#);
    eventually(within, || async {
        ingress.workflow(Some(KEY), &body).await.0 == StatusCode::ACCEPTED
    })
    .await
}

/// A Redis whose trigger `wh_1` starts `n` workflows, a client of it, and a
/// configuration for it with a 20 s command deadline (for big writes).
async fn with_workflows(n: usize) -> (RedisServer, fred::clients::Client, Config) {
    let workflows: Vec<String> = (0..n).map(|i| format!("wf_{i:03}")).collect();
    let names: Vec<&str> = workflows.iter().map(String::as_str).collect();
    let (redis, r) = redis_with_key_and_trigger(KEY, &names).await;
    let mut config = config_for(&redis.url());
    config.redis.command_timeout_ms = Duration::from_millis(20_000);
    (redis, r, config)
}

/// A Redis that is answering, only slowly (one request whose jobs take it
/// longer than `redis.stall_after_ms` to store), is not a stalled one: a
/// reply to part of the batch starts the wait again, so the request is
/// answered 202 when its last job is stored, not 503 at the stall delay.
#[tokio::test]
async fn a_slow_but_answering_redis_is_not_stalled() {
    let (_redis, r, mut config) = with_workflows(400).await;
    config.redis.stall_after_ms = Duration::from_millis(20);
    config.server.max_body_bytes = 1 << 20;
    config.server.serving_threads = ServingThreads::Count(1);
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    // 400 entries of 256 KiB each: about 100 MiB for Redis to take in.
    let body = format!(r#"{{"webhookId":"wh_1","x":"{}"}}"#, "a".repeat(256 << 10));
    let started = Instant::now();
    let (status, _, answer) = ingress.workflow(Some(KEY), &body).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::ACCEPTED, "after {took:?}: {answer:?}");
    assert_eq!(json(&answer)["data"]["matchedCount"], 400);
    assert_eq!(xlen(&r, STREAM).await, 400);
    eprintln!("figures: 400 entries of 256 KiB stored in {took:?} with stall_after_ms = 20");
}

/// What waits behind the batch in flight is capped in bytes too: with a
/// frozen Redis, requests of large bodies matching ten workflows are taken
/// until about 64 MiB wait, and then refused at once (nothing sent) instead
/// of growing the queue; when Redis wakes every accepted request's jobs are
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_queued_behind_a_frozen_redis_are_capped_in_bytes() {
    let (redis, r, mut config) = with_workflows(10).await;
    config.redis.stall_after_ms = Duration::ZERO;
    config.server.serving_threads = ServingThreads::Count(1);
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    // About 9 MiB of entries a request: a dozen is well over the cap.
    let body = format!(r#"{{"webhookId":"wh_1","x":"{}"}}"#, "a".repeat(900 << 10));
    let answered = std::sync::atomic::AtomicUsize::new(0);
    signal(redis.pid(), "STOP");
    let sends = futures::future::join_all((0..12).map(|_| async {
        let (status, _, answer) = ingress.workflow(Some(KEY), &body).await;
        answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (
            status,
            json(&answer)["code"].as_str().unwrap_or("").to_owned(),
        )
    }));
    // Redis wakes once the first refusal is in (or after 20 s without one).
    let wake = async {
        eventually(Duration::from_secs(20), || async {
            answered.load(std::sync::atomic::Ordering::SeqCst) > 0
        })
        .await;
        signal(redis.pid(), "CONT");
    };
    let (outcomes, ()) = tokio::join!(sends, wake);
    let refused = outcomes
        .iter()
        .filter(|(s, code)| {
            *s == StatusCode::SERVICE_UNAVAILABLE && code == "JOB_STORE_UNAVAILABLE"
        })
        .count();
    let accepted = outcomes
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .count();
    assert_eq!(refused + accepted, 12, "{outcomes:?}");
    assert!(refused >= 1, "nothing refused: {outcomes:?}");
    assert!(accepted >= 5, "{outcomes:?}");
    assert_eq!(xlen(&r, STREAM).await, 10 * accepted as u64);
    eprintln!(
        "figures: {accepted} requests of about 9 MiB taken behind a frozen Redis, {refused} refused at once"
    );
}

/// The process's resident memory in KiB: now, and at its peak.
fn resident_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What `work` returns, and how far `pid`'s resident memory rose above its
/// level before it at its peak while it ran, in KiB.
async fn peak_growth_kib<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (T, u64) {
    let (before, _) = resident_kib(pid);
    // Starts the peak (VmHWM) again from now.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let out = work.await;
    let (_, peak) = resident_kib(pid);
    (out, peak.saturating_sub(before))
}

/// POSTs `body` to the workflow route of `ingress` with the test key.
async fn post_workflow(ingress: &IngressProcess, body: String) -> StatusCode {
    let req = http::Request::post(format!("{}/api/webhook/workflow", ingress.base()))
        .header("authorization", format!("Bearer {KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    http_client().request(req).await.unwrap().status()
}

/// After one small request (so the writers and buffers exist), a body of
/// almost 1 MiB for `wh_1`.
async fn warmed_up_with_a_large_body(ingress: &IngressProcess) -> String {
    assert_eq!(
        post_workflow(ingress, r#"{"webhookId":"wh_1"}"#.to_owned()).await,
        StatusCode::ACCEPTED
    );
    format!(
        r#"{{"webhookId":"wh_1","x":"{}"}}"#,
        "a".repeat((1 << 20) - 100)
    )
}

/// One request whose entries are large (a 1 MiB body matching 36
/// workflows: 36 MiB on the wire) costs the ingress about their size at its
/// peak, written to Redis or to the spool, not three times it: the writer makes room for a request's
/// entries at once instead of doubling its buffer (copying all so far) at
/// each power of two. Before, the peak was 2.7x the entries (300 workflows:
/// 900 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_large_entries_costs_about_their_size_at_its_peak() {
    const WORKFLOWS: u64 = 36;
    let (mut redis, r, config) = with_workflows(WORKFLOWS as usize).await;
    let spool = tempfile::tempdir().unwrap();
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", config.redis.url),
        (
            "TETHER_INGRESS_SPOOL_DIR",
            spool.path().display().to_string(),
        ),
    ]);
    ingress.wait_ready().await;
    let send = |body: String| post_workflow(&ingress, body);
    let body = warmed_up_with_a_large_body(&ingress).await;
    let entries_kib = WORKFLOWS * body.len() as u64 / 1024;
    let (status, grew) = peak_growth_kib(ingress.pid(), send(body.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(xlen(&r, STREAM).await, 2 * WORKFLOWS);
    eprintln!("figures: {entries_kib} KiB of entries, resident memory grew {grew} KiB at its peak");
    assert!(
        grew < entries_kib * 8 / 5,
        "grew {grew} KiB at the peak for {entries_kib} KiB of entries"
    );

    // The same request spooled, Redis gone: its records are made with
    // room for all at once and handed to the spool's writer, not copied
    // (before: 3.7x the entries at the peak).
    redis.kill();
    let (status, grew) = peak_growth_kib(ingress.pid(), send(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eprintln!("figures: spooled, resident memory grew {grew} KiB at its peak");
    assert!(
        grew < entries_kib * 8 / 5,
        "spooling grew {grew} KiB at the peak for {entries_kib} KiB of entries"
    );
    assert!(
        ingress
            .metric_value("tether_spool_jobs_written_total")
            .await
            >= WORKFLOWS as f64
    );
}

/// The same in BullMQ mode, where a request's jobs go as script runs of at
/// most 4 MiB of `data` each, a run carrying the payload once for all its
/// jobs: a request of large jobs costs less than their size at its peak
/// (about half of it: twelve runs of one payload each, plus room), where
/// building each job's `data` in the ingress would cost it more than once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bullmq_request_of_large_jobs_costs_about_their_size_at_its_peak() {
    const WORKFLOWS: u64 = 36;
    let (_redis, r, config) = with_workflows(WORKFLOWS as usize).await;
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", config.redis.url),
        ("TETHER_INGRESS_SINK", "bullmq".into()),
    ]);
    ingress.wait_ready().await;
    let send = |body: String| post_workflow(&ingress, body);
    let body = warmed_up_with_a_large_body(&ingress).await;
    let jobs_kib = WORKFLOWS * body.len() as u64 / 1024;
    let (status, grew) = peak_growth_kib(ingress.pid(), send(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting: u64 = fred::interfaces::ListInterface::llen(&r, "bull:workflow-runs:wait")
        .await
        .unwrap();
    assert_eq!(waiting, 2 * WORKFLOWS);
    eprintln!("figures: {jobs_kib} KiB of jobs, resident memory grew {grew} KiB at its peak");
    assert!(
        grew < jobs_kib,
        "grew {grew} KiB at the peak for {jobs_kib} KiB of jobs"
    );
}

/// A Redis user that may not make a route's job write is said when the
/// writers connect, before any request, naming the stream or queue and
/// Redis's refusal (not the password); the check writes nothing, and a user
/// that may write hears nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_that_may_not_write_jobs_is_said_when_the_writers_connect() {
    const SAID: &str = "the redis user may not write these jobs";
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let password = "pw-7c21e0";
    // Streams mode: every command but XADD. BullMQ mode: no BullMQ key.
    let users = [
        ("noxadd", vec!["~*", "+@all", "-xadd"], "streams"),
        ("nobull", vec!["~tether:*", "+@all"], "bullmq"),
        ("all", vec!["~*", "+@all"], "streams"),
    ];
    for (user, rules, sink) in users {
        let mut acl = vec!["ACL", "SETUSER", user, "on"];
        let pass = format!(">{password}");
        acl.push(&pass);
        acl.extend(rules);
        assert_eq!(redis.cli(&acl), "OK");
        let url = redis
            .url()
            .replacen("redis://", &format!("redis://{user}:{password}@"), 1);
        let log = LogFile::new();
        let ingress = IngressProcess::spawn_logging(
            &[
                ("TETHER_INGRESS_REDIS_URL", url),
                ("TETHER_INGRESS_SINK", sink.into()),
            ],
            log.writer(),
        );
        ingress.wait_ready().await;
        match user {
            "noxadd" => {
                for stream in [STREAM, "tether:jobs:outreach"] {
                    let line = log
                        .line_with(&format!("to=stream {stream}"), Duration::from_secs(10))
                        .await;
                    assert!(line.contains(SAID) && line.contains("NOPERM"), "{line}");
                }
            }
            "nobull" => {
                for queue in ["bull:workflow-runs", "bull:outreach-runs"] {
                    let line = log
                        .line_with(&format!("to=queue {queue} "), Duration::from_secs(10))
                        .await;
                    assert!(line.contains(SAID) && line.contains("NOPERM"), "{line}");
                }
            }
            _ => {
                let body = r#"{"webhookId":"wh_1"}"#.to_owned();
                assert_eq!(post_workflow(&ingress, body).await, StatusCode::ACCEPTED);
                assert!(!log.text().contains(SAID), "{}", log.text());
            }
        }
        assert!(!log.text().contains(password));
    }
    // The checks wrote nothing: the only job is the permitted user's.
    assert_eq!(redis.cli(&["XLEN", STREAM]), "1");
    assert_eq!(redis.cli(&["EXISTS", "tether:jobs:outreach"]), "0");
    assert_eq!(redis.cli(&["KEYS", "bull:*"]), "");
}

/// Entries `MAXLEN` trimming removes before a consumer group read them are
/// jobs answered 202 that its workers will never see: they are counted per
/// group and said, and a group that kept up is shown losing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_trimmed_before_a_group_read_them_are_counted_and_said() {
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    assert_eq!(
        redis.cli(&["XGROUP", "CREATE", STREAM, "idle", "0", "MKSTREAM"]),
        "OK"
    );
    assert_eq!(
        redis.cli(&["XGROUP", "CREATE", STREAM, "reader", "0"]),
        "OK"
    );
    let (ingress, log, _dir) = trimming_ingress(&redis).await;
    for _ in 0..60 {
        let body = r#"{"webhookId":"wh_1"}"#.to_owned();
        assert_eq!(post_workflow(&ingress, body).await, StatusCode::ACCEPTED);
        // "reader" keeps up; "idle" reads nothing.
        redis.cli(&[
            "XREADGROUP",
            "GROUP",
            "reader",
            "c",
            "COUNT",
            "100",
            "STREAMS",
            STREAM,
            ">",
        ]);
    }
    let length: f64 = redis.cli(&["XLEN", STREAM]).parse().unwrap();
    assert!(length < 60.0, "nothing was trimmed: {length}");
    let series = |group: &str| {
        format!("tether_stream_group_trimmed_unread{{stream=\"{STREAM}\",group=\"{group}\"}}")
    };
    assert!(
        eventually(Duration::from_secs(30), || async {
            ingress.metric_value(&series("idle")).await == 60.0 - length
        })
        .await,
        "idle's trimmed entries were not counted: {}",
        ingress.metric_value(&series("idle")).await
    );
    // The group that kept up is shown, losing nothing and behind by nothing.
    let text = ingress.metrics_text().await;
    let lag = format!("tether_stream_group_lag{{stream=\"{STREAM}\",group=\"reader\"}}");
    for shown in [format!("{} 0", series("reader")), format!("{lag} 0")] {
        assert!(text.lines().any(|l| l == shown), "{shown} not in:\n{text}");
    }
    let said = log
        .line_with(
            "before this consumer group read them",
            Duration::from_secs(5),
        )
        .await;
    assert!(said.contains("group=idle"), "{said}");
    assert!(!log.text().contains("group=reader"), "{}", log.text());
}

/// A Redis that may evict keys without a TTL may drop a job queue or stream
/// when its memory runs short, jobs answered 202 among them: said soon after
/// start and shown, in BullMQ mode as in streams mode, until the policy is
/// changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_that_may_drop_jobs_is_said_and_shown() {
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]),
        "OK"
    );
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(
        &[
            ("TETHER_INGRESS_REDIS_URL", redis.url()),
            ("TETHER_INGRESS_SINK", "bullmq".into()),
        ],
        log.writer(),
    );
    ingress.wait_ready().await;
    let said = log
        .line_with(
            "redis may evict job streams and queues",
            Duration::from_secs(10),
        )
        .await;
    assert!(said.contains("maxmemory_policy=allkeys-lru"), "{said}");
    const SHOWN: &str = "tether_redis_may_evict_jobs";
    assert_eq!(ingress.metric_value(SHOWN).await, 1.0);
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]),
        "OK"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            ingress
                .metrics_text()
                .await
                .lines()
                .any(|l| l == format!("{SHOWN} 0"))
        })
        .await,
        "the policy's change was not shown"
    );
    assert_eq!(
        log.text().matches("redis may evict").count(),
        1,
        "{}",
        log.text()
    );
}

/// Each of the ingress's connections is named in Redis, so `CLIENT LIST`
/// (and `ACL LOG`, and a slow log's client) tells them apart from other
/// clients, and one from another: the job writers, the replica and the
/// shared client; named again when they reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_connections_are_named_in_redis() {
    let (mut redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.server.serving_threads = ServingThreads::Count(2);
    let _ingress = Ingress::start_with(config.validate().unwrap()).await;
    let names = |redis: &RedisServer| {
        let list = redis.cli(&["CLIENT", "LIST"]);
        let mut names: Vec<String> = list
            .lines()
            .filter_map(|l| l.split(' ').find_map(|f| f.strip_prefix("name=")))
            .filter(|n| n.starts_with("tether-ingress:"))
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    };
    let all = [
        "tether-ingress:main",
        "tether-ingress:replica",
        "tether-ingress:serve-0",
        "tether-ingress:serve-1",
        "tether-ingress:shared",
    ];
    assert!(
        eventually(Duration::from_secs(10), || async { names(&redis) == all }).await,
        "{:?}",
        names(&redis)
    );
    redis.kill();
    assert!(names(&redis).is_empty());
    redis.restart();
    assert!(
        eventually(Duration::from_secs(20), || async { names(&redis) == all }).await,
        "after a restart: {:?}",
        names(&redis)
    );
}

/// `streams.maxlen = 0` never trims: workers that delete what they handled
/// (or trim by their own rule) keep every job until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maxlen_of_0_never_trims_the_stream() {
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "stream-node-max-entries", "2"]),
        "OK"
    );
    let mut config = config_for(&redis.url());
    config.streams.maxlen = 0;
    let ingress = Ingress::start_with(config.validate().unwrap()).await;
    for _ in 0..30 {
        let (status, _, _) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    assert_eq!(redis.cli(&["XLEN", STREAM]), "30");
    let mut negative = config_for(&redis.url());
    negative.streams.maxlen = -1;
    let refused = negative.validate().unwrap_err().to_string();
    assert!(
        refused.contains("streams.maxlen: must be 0 (never trimmed) or more"),
        "{refused}"
    );
}

/// A stream trimmed with no consumer group on it is said: if its workers
/// read with a group, none was made (or under another name), and what is
/// trimmed meanwhile is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trimmed_stream_no_group_reads_is_said() {
    let (redis, _r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let (ingress, log, _dir) = trimming_ingress(&redis).await;
    for _ in 0..30 {
        let body = r#"{"webhookId":"wh_1"}"#.to_owned();
        assert_eq!(post_workflow(&ingress, body).await, StatusCode::ACCEPTED);
    }
    let said = log
        .line_with(
            "no consumer group reads this job stream",
            Duration::from_secs(30),
        )
        .await;
    assert!(said.contains(&format!("stream={STREAM}")), "{said}");
    let shown = format!("tether_stream_groups{{stream=\"{STREAM}\"}} 0");
    assert!(
        ingress.metrics_text().await.lines().any(|l| l == shown),
        "{shown}"
    );
}

/// The binary against `redis` with `streams.maxlen = 5`, logging to the
/// returned file, Redis's stream nodes made small so that `MAXLEN ~ 5`
/// trims by tens (the directory holds its configuration).
async fn trimming_ingress(redis: &RedisServer) -> (IngressProcess, LogFile, tempfile::TempDir) {
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "stream-node-max-entries", "10"]),
        "OK"
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingress.toml");
    std::fs::write(&config, "[streams]\nmaxlen = 5\n").unwrap();
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_configured(
        Some(&config),
        &[("TETHER_INGRESS_REDIS_URL", redis.url())],
        log.writer(),
    );
    ingress.wait_ready().await;
    (ingress, log, dir)
}
