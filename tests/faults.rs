//! Real faults under load: Redis SIGKILLed and restarted, the ingress
//! SIGKILLed and restarted. The property checked each time: every request
//! answered 202 has its jobs in the stream afterwards.
//!
//! Redis runs with `appendfsync always` here, so what *it* acknowledged
//! survives its own SIGKILL; what these tests measure is the ingress.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{collections::HashMap, time::Duration};

use http::StatusCode;
use support::*;
use tether_ingress::config::Config;

const KEY: &str = "user_faults";
const BODY: &str = r#"{"webhookId":"wh_1","email":"lead@example.com","n":12345678901234567890123}"#;
const STREAM: &str = "tether:jobs:workflow";
const WAIT: Duration = Duration::from_secs(30);

async fn seed(redis: &RedisServer) {
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    // Two workflows: each request writes two entries, so a request can be
    // half in Redis and half spooled.
    add_trigger(&r, "o_1", "wh_1", &["wf_a", "wf_b"]).await;
}

/// Every 202 of `outcomes` has both its entries in the stream (polled, as
/// the spool may still be replaying). Returns how many requests were accepted.
async fn assert_every_202_stored(redis: &RedisServer, outcomes: &[support::Outcome]) -> usize {
    let accepted: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::ACCEPTED))
        .map(|o| o.request_id.as_str())
        .collect();
    let r = redis.client().await;
    let deadline = std::time::Instant::now() + WAIT;
    let (complete, stored) = loop {
        let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
        let complete = accepted
            .iter()
            .all(|id| stored.get(*id).copied().unwrap_or(0) >= 2);
        if complete || std::time::Instant::now() > deadline {
            break (complete, stored);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let missing: Vec<_> = accepted
        .iter()
        .filter(|id| stored.get(**id).copied().unwrap_or(0) < 2)
        .take(5)
        .collect();
    assert!(
        complete,
        "{} of {} accepted requests lack jobs, e.g. {missing:?}",
        accepted
            .iter()
            .filter(|id| stored.get(**id).copied().unwrap_or(0) < 2)
            .count(),
        accepted.len()
    );
    accepted.len()
}

/// With a spool every answer is 202, whatever Redis does.
fn assert_all_accepted(outcomes: &[support::Outcome]) {
    let other: Vec<_> = outcomes
        .iter()
        .filter(|o| o.status != Some(StatusCode::ACCEPTED))
        .take(5)
        .collect();
    assert!(
        other.is_empty(),
        "with a spool every answer is 202: {other:?}"
    );
}

/// The variables of an ingress on `redis` with its spool in `dir`.
fn spooling(redis: &RedisServer, dir: impl AsRef<std::path::Path>) -> Vec<(&'static str, String)> {
    vec![
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        (
            "TETHER_INGRESS_SPOOL_DIR",
            dir.as_ref().display().to_string(),
        ),
    ]
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// A frozen Redis (SIGSTOP: its connections stay open, nothing answers).
/// Once a writer's oldest write has waited `redis.stall_after_ms`, requests
/// skip it and go straight to the spool instead of queueing behind the
/// stuck writes for the whole command deadline (2 s here); every answer is
/// a 202, and after SIGCONT nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_under_load_with_a_spool_is_skipped_after_the_stall_delay() {
    let redis = RedisServer::start_durable();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.command_timeout_ms = Duration::from_millis(2_000);
    raw.redis.stall_after_ms = Duration::from_millis(250);
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let load = Load::start(&ingress.uri(""), KEY, BODY, 8, "frozen");
    load.until_accepted(200, WAIT).await;

    signal(redis.pid(), "STOP");
    let frozen = std::time::Instant::now();
    // Without the stall, 8 senders waiting 2 s each would need 75 s for
    // these; from the spool they take a moment.
    load.until_accepted(300, Duration::from_secs(10)).await;
    let took = frozen.elapsed();
    let stalls = metric_value(&ingress, "tether_redis_stalls_total").await;
    let stalled = metric_value(&ingress, "tether_redis_stalled").await;
    signal(redis.pid(), "CONT");
    assert!(stalls >= 1.0, "no stall counted");
    assert!(stalled >= 1.0, "no writer shown stalled during the freeze");
    assert!(spool_files(spool.path()) > 0, "nothing was spooled");

    load.until_accepted(200, WAIT).await;
    assert!(
        eventually(WAIT, || async {
            metric_value(&ingress, "tether_redis_stalled").await == 0.0
        })
        .await,
        "a writer stayed stalled after Redis woke"
    );
    let outcomes = load.stop().await;
    assert_all_accepted(&outcomes);
    let accepted = assert_every_202_stored(&redis, &outcomes).await;
    eprintln!(
        "figures: 300 accepted in {took:?} with Redis frozen; {accepted} accepted, none lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_with_a_spool_loses_no_accepted_job() {
    let mut redis = RedisServer::start_durable();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(500);
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let load = Load::start(&ingress.uri(""), KEY, BODY, 16, "spool");
    let t0 = std::time::Instant::now();
    load.until_accepted(300, WAIT).await;
    let up = t0.elapsed();
    redis.kill();
    // Redis is down: the ingress keeps answering 202 from the spool.
    let t1 = std::time::Instant::now();
    load.until_accepted(300, WAIT).await;
    let down = t1.elapsed();
    assert!(spool_files(spool.path()) > 0, "nothing was spooled");
    redis.restart();
    let t2 = std::time::Instant::now();
    load.until_accepted(300, WAIT).await;
    let outcomes = load.stop().await;
    assert_all_accepted(&outcomes);
    let accepted = assert_every_202_stored(&redis, &outcomes).await;
    assert!(accepted >= 900);
    // Replayed segments are deleted once Redis acknowledged them.
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not drained"
    );
    eprintln!(
        "figures: {accepted} accepted, none lost; 300 accepted in {up:?} with Redis up, \
         300 in {down:?} from the spool with Redis down; spool drained {:?} after the restart",
        t2.elapsed()
    );
    let replayed = metric_value(&ingress, "tether_spool_jobs_replayed_total").await;
    assert!(replayed > 0.0, "no replay counted");
    // Group commit: one fsync serves many concurrent requests.
    let spooled = metric_value(&ingress, "tether_spool_jobs_written_total").await;
    let syncs = metric_value(&ingress, "tether_spool_syncs_total").await;
    assert!(
        syncs > 0.0 && spooled > syncs,
        "{spooled} spooled jobs, {syncs} syncs"
    );
    eprintln!(
        "figures: {spooled} jobs spooled with {syncs} fsyncs ({:.1} per sync), {replayed} jobs replayed",
        spooled / syncs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_without_a_spool_answers_503_with_retry_after() {
    let mut redis = RedisServer::start_durable();
    seed(&redis).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(500);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let load = Load::start(&ingress.uri(""), KEY, BODY, 16, "nospool");
    load.until_accepted(300, WAIT).await;
    redis.kill();
    load.until_answered(300, WAIT).await;
    redis.restart();
    load.until_accepted(300, WAIT).await;
    let outcomes = load.stop().await;
    let refused = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    assert!(refused > 0, "no 503 while Redis was down");
    for o in &outcomes {
        match o.status {
            Some(StatusCode::ACCEPTED) => {}
            Some(StatusCode::SERVICE_UNAVAILABLE) => {
                assert!(o.retry_after, "503 without Retry-After: {o:?}")
            }
            other => panic!("unexpected answer {other:?} for {}", o.request_id),
        }
    }
    assert_every_202_stored(&redis, &outcomes).await;
}

/// With Redis gone and no spool every request is answered 503: the log
/// says so about once a second, with how many it held back, not once per
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_logged_once_a_second_not_once_a_request() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let log_file = LogFile::new();
    let log = log_file.writer();
    let ingress = IngressProcess::spawn_logging(&[("TETHER_INGRESS_REDIS_URL", redis.url())], log);
    ingress.wait_ready().await;
    redis.kill();
    let started = std::time::Instant::now();
    let load = Load::start(&ingress.base(), KEY, BODY, 8, "outage-log");
    load.until_answered(2_000, WAIT).await;
    // Past the first second, the second line says how many it held back.
    let logged = || {
        std::fs::read_to_string(log_file.path())
            .unwrap()
            .matches("jobs not stored")
            .count()
    };
    let second_line = eventually(WAIT, || {
        let n = logged();
        async move { n >= 2 }
    })
    .await;
    let outcomes = load.stop().await;
    let seconds = started.elapsed().as_secs();
    assert!(second_line, "one line in {seconds} s of refusals");
    let refused = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::SERVICE_UNAVAILABLE))
        .count();
    assert!(
        refused >= 1_000,
        "{refused} answered 503 of {}",
        outcomes.len()
    );
    let text = log_file.text();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("jobs not stored"))
        .collect();
    assert!(!lines.is_empty(), "the outage was not logged:\n{text}");
    assert!(
        lines.len() as u64 <= seconds + 2,
        "{} lines in {seconds} s for {refused} refusals",
        lines.len()
    );
    let held_back: u64 = lines
        .iter()
        .filter_map(|l| l.split("held_back=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        held_back > 0,
        "no line says how many it held back: {lines:?}"
    );
}

/// A Redis that is up but refuses every write (out of memory, with
/// `noeviction`): each request is spooled and answered 202, and the replay
/// retries on its backoff, not once per spooled request (each retry logged
/// a warning and sealed a segment file of its own: one per request). The
/// log says so when it starts and when it ends, not once per retry (a
/// refusal that lasted an hour wrote 1,800 warnings); the retries are
/// counted. Once Redis takes writes again, every accepted job reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_refusing_writes_is_retried_on_a_backoff_not_per_request() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let log_file = LogFile::new();
    let log = log_file.writer();
    let mut env = spooling(&redis, spool.path());
    // The end of the refusal is said at info.
    env.push(("TETHER_INGRESS_LOG", "info".into()));
    let ingress = IngressProcess::spawn_logging(&env, log);
    ingress.wait_ready().await;
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    let started = std::time::Instant::now();
    let load = Load::start(&ingress.base(), KEY, BODY, 8, "refusing");
    load.until_accepted(1_000, WAIT).await;
    // Several retries, so that a warning per retry would show.
    let failures = r#"tether_spool_replay_failures_total{reason="redis_error"}"#;
    assert!(
        eventually(WAIT, || async {
            ingress.metric_value(failures).await >= 8.0
        })
        .await,
        "the replay did not retry and count its failures"
    );
    let outcomes = load.stop().await;
    let seconds = started.elapsed().as_secs();
    assert_all_accepted(&outcomes);
    let retries = ingress.metric_value(failures).await as u64;
    // The backoff doubles from 50 ms to 2 s: six retries in the first
    // 3.2 s, then one every 2 s.
    let most = 7 + seconds / 2;
    assert!(
        retries <= most,
        "{retries} retries in {seconds} s for {} spooled requests",
        outcomes.len()
    );
    let files = spool_files(spool.path()) as u64;
    assert!(files <= most + 1, "{files} spool segments in {seconds} s");
    let text = log_file.text();
    assert_eq!(
        text.matches("spool replay paused").count(),
        1,
        "the refusal was not said once:\n{text}"
    );
    assert!(
        text.contains("OOM command not allowed"),
        "the log does not say why:\n{text}"
    );
    assert!(
        text.matches("spool replay still paused").count() as u64 <= seconds / 60,
        "reminded more than once a minute:\n{text}"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    let accepted = assert_every_202_stored(&redis, &outcomes).await;
    assert!(accepted >= 1_000);
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "the spool was not emptied"
    );
    assert!(
        eventually(WAIT, || async {
            log_file.text().contains("spool replay resumed")
        })
        .await,
        "the end of the refusal was not said:\n{}",
        log_file.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_sigkilled_under_load_keeps_every_accepted_job() {
    let mut redis = RedisServer::start_durable();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let env = spooling(&redis, spool.path());
    let mut ingress = IngressProcess::spawn(&env);
    ingress.wait_ready().await;
    let load = Load::start(&ingress.base(), KEY, BODY, 16, "sigkill");
    load.until_accepted(300, WAIT).await;
    // Redis goes away, so the accepted jobs now live only in the spool...
    redis.kill();
    load.until_accepted(300, WAIT).await;
    // ...and the ingress is killed mid-load with them there.
    ingress.kill9();
    let outcomes = load.stop().await;
    assert!(spool_files(spool.path()) > 0, "nothing was spooled");
    redis.restart();
    let ingress = IngressProcess::spawn(&env);
    ingress.wait_ready().await;
    let accepted = assert_every_202_stored(&redis, &outcomes).await;
    assert!(accepted >= 600);
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not drained after the restart"
    );
}

/// Two processes on one spool directory would write segments of the same
/// numbers and replay (and delete) each other's: the second is refused at
/// start, naming the directory, and the first keeps serving.
#[tokio::test]
async fn a_second_process_on_the_same_spool_directory_is_refused_at_start() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().display().to_string();
    let env = spooling(&redis, &dir);
    let first = IngressProcess::spawn(&env);
    first.wait_ready().await;
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_SPOOL_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let exited = eventually(Duration::from_secs(20), || {
        let done = matches!(second.try_wait(), Ok(Some(_)));
        async move { done }
    })
    .await;
    if !exited {
        let _ = second.kill();
    }
    let second = second.wait_with_output().unwrap();
    assert!(
        exited,
        "a second process started on the same spool directory"
    );
    assert_eq!(second.status.code(), Some(1));
    let load = Load::start(&first.base(), KEY, BODY, 4, "one-spool");
    load.until_accepted(50, WAIT).await;
    let outcomes = load.stop().await;
    assert_every_202_stored(&redis, &outcomes).await;
}

/// Appends, as the spool frames it, one workflow entry with request id `id`.
fn spool_entry(out: &mut Vec<u8>, id: &str) {
    tether_ingress::spool_record(
        out,
        STREAM.as_bytes(),
        [
            (&b"workflowId"[..], &b"wf_a"[..]),
            (b"orgId", b"o_1"),
            (b"userId", b"u_1"),
            (b"webhookId", b"wh_1"),
            (b"payload", br#"{"n":1.10}"#),
            (b"receivedAt", b"1700000000000"),
            (b"requestId", id.as_bytes()),
        ]
        .into_iter(),
    );
}

#[tokio::test]
async fn a_torn_tail_left_by_a_crash_is_skipped_and_the_rest_replayed() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    // What a crash mid-write leaves: two whole records, then half of a third.
    let mut data = Vec::new();
    for id in ["torn-1", "torn-2", "torn-3"] {
        spool_entry(&mut data, id);
    }
    let cut = data.len() - 20;
    std::fs::write(
        spool.path().join("spool-00000000000000000007.log"),
        &data[..cut],
    )
    .unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not replayed at start-up"
    );
    let r = redis.client().await;
    let e = entries(&r, STREAM).await;
    let ids: Vec<&str> = e.iter().map(|(_, f)| field(f, "requestId")).collect();
    assert_eq!(ids, ["torn-1", "torn-2"]);
    assert_eq!(field(&e[0].1, "payload"), r#"{"n":1.10}"#);
    assert_eq!(
        metric_value(&ingress, "tether_spool_corrupt_records_total").await,
        1.0
    );
}

#[tokio::test]
async fn a_full_spool_answers_503_with_retry_after() {
    let mut redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.spool.dir = Some(spool.path().into());
    raw.spool.max_bytes = 1 << 20;
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    redis.kill();
    // 200 KB per request (two jobs of 100 KB): the 1 MiB spool takes five.
    let body = format!(r#"{{"webhookId":"wh_1","blob":"{}"}}"#, "x".repeat(100_000));
    let mut spooled = 0;
    let mut full = None;
    for _ in 0..20 {
        let (s, h, b) = ingress.workflow(Some(KEY), &body).await;
        match s {
            StatusCode::ACCEPTED => spooled += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(h.contains_key("retry-after"));
                full = Some(json(&b)["code"].clone());
                break;
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(spooled, 5, "the spool took {spooled} requests");
    assert_eq!(full.unwrap(), "JOB_STORE_UNAVAILABLE");
}

/// A small tmpfs mounted for a test (it needs root), unmounted on drop.
struct TinyDisk(tempfile::TempDir);

impl TinyDisk {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Self(dir))
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// The spool's disk fills up (a 256 KiB tmpfs) while Redis refuses writes:
/// a request whose jobs did not fit gets 503 and no 202 is lost. The write
/// that failed half-way is cut off its segment, so the replay finds no torn
/// record to warn about: before, every full disk left one, reported as
/// `spool segment has torn or corrupt records` and counted in
/// `tether_spool_corrupt_records_total`, though nothing had been lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_disk_answers_503_and_leaves_no_torn_record() {
    let Some(disk) = TinyDisk::mount("256k") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = disk.0.path().join("spool");
    let env = spooling(&redis, &spool);
    let ingress = IngressProcess::spawn(&env);
    ingress.wait_ready().await;
    redis.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "1"]), "OK");
    // 40 KB of jobs a request: the disk takes about six.
    let body = format!(r#"{{"webhookId":"wh_1","blob":"{}"}}"#, "x".repeat(20_000));
    let http = http_client();
    let mut outcomes = Vec::new();
    for i in 0..20 {
        let request_id = format!("full-disk-{i}");
        let req = http::Request::post(format!("{}/api/webhook/workflow", ingress.base()))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-request-id", request_id.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(body.clone())))
            .unwrap();
        let status = http.request(req).await.unwrap().status();
        outcomes.push(support::Outcome {
            request_id,
            status: Some(status),
            retry_after: false,
        });
    }
    let (accepted, refused) = accepted_ids(&outcomes);
    assert!(!accepted.is_empty(), "nothing was spooled");
    assert!(
        refused > 0,
        "the disk never filled: {} accepted",
        accepted.len()
    );
    assert!(
        outcomes.iter().all(|o| matches!(
            o.status,
            Some(StatusCode::ACCEPTED | StatusCode::SERVICE_UNAVAILABLE)
        )),
        "{outcomes:?}"
    );
    assert_eq!(redis.cli(&["CONFIG", "SET", "maxmemory", "0"]), "OK");
    assert_every_202_stored(&redis, &outcomes).await;
    assert!(
        eventually(WAIT, || async { spool_files(&spool) == 0 }).await,
        "the spool was not emptied"
    );
    let corrupt = ingress
        .metric_value("tether_spool_corrupt_records_total")
        .await;
    assert_eq!(corrupt, 0.0, "a torn record was left behind");
    drop(ingress);
    drop(disk);
}

#[tokio::test]
async fn outreach_is_spooled_too_and_says_so() {
    let mut redis = RedisServer::start_durable();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    put_outreach_config(
        &r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    )
    .await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    redis.kill();
    let req = http::Request::post(ingress.uri("/api/webhook/outreach"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", "outreach-spooled-1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"configurationId":"cfg_1","email":"a@b.c","phone":12345678901234567890}"#,
        )))
        .unwrap();
    let (s, _, b) = ingress.request(req).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b:?}");
    let v = json(&b);
    assert_eq!(v["success"], true);
    assert_eq!(v["data"]["configurationId"], "cfg_1");
    assert!(v["data"]["jobId"].is_null(), "{v}");
    redis.restart();
    let r = redis.client().await;
    assert!(
        eventually(WAIT, || async {
            xlen(&r, "tether:jobs:outreach").await == 1
        })
        .await,
        "spooled outreach job not replayed"
    );
    let e = entries(&r, "tether:jobs:outreach").await;
    assert_eq!(field(&e[0].1, "requestId"), "outreach-spooled-1");
    assert_eq!(
        field(&e[0].1, "contacts"),
        r#"{"email":"a@b.c","phone":12345678901234567890}"#
    );
    assert_eq!(field(&e[0].1, "format"), "raw");
}

/// What a previous run left: a write spooled under a ticket that its late
/// reply settled as stored (its settlement in a later segment), one whose
/// ticket was never settled, and a plain record. At start-up the settled
/// copy is skipped, the unsettled one replayed (at least once), and the
/// plain one replayed.
#[tokio::test]
async fn a_copy_cancelled_by_a_late_reply_stays_cancelled_across_a_restart() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let marker = |out: &mut Vec<u8>, ticket: &str| {
        tether_ingress::spool_record(
            out,
            b"\0pending",
            [(&b"ticket"[..], ticket.as_bytes()), (b"records", b"1")].into_iter(),
        );
    };
    let mut first = Vec::new();
    marker(&mut first, "5");
    spool_entry(&mut first, "cancelled-1");
    marker(&mut first, "6");
    spool_entry(&mut first, "replayed-2");
    spool_entry(&mut first, "plain-3");
    let mut second = Vec::new();
    tether_ingress::spool_record(
        &mut second,
        b"\0settled",
        [(&b"ticket"[..], &b"5"[..])].into_iter(),
    );
    std::fs::write(spool.path().join("spool-00000000000000000007.log"), &first).unwrap();
    std::fs::write(spool.path().join("spool-00000000000000000008.log"), &second).unwrap();

    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.spool.dir = Some(spool.path().into());
    let _ingress = Ingress::start_with(raw.validate().unwrap()).await;
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not replayed at start-up"
    );
    let r = redis.client().await;
    let e = entries(&r, STREAM).await;
    let ids: Vec<&str> = e.iter().map(|(_, f)| field(f, "requestId")).collect();
    assert_eq!(ids, ["replayed-2", "plain-3"]);
}

/// A frozen Redis with a spool, its connection kept: the write in flight
/// when the writer stalls is answered 202 from the spool, and when Redis
/// wakes and runs it, its late reply cancels the spooled copy. Requests
/// that skipped the stalled writer are replayed once. Nothing is written
/// twice.
#[tokio::test]
async fn a_late_reply_cancels_the_spooled_copy() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.command_timeout_ms = Duration::from_millis(5_000);
    raw.redis.stall_after_ms = Duration::from_millis(200);
    raw.server.serving_threads = tether_ingress::config::ServingThreads::Count(1);
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;

    signal(redis.pid(), "STOP");
    let (in_flight, _, _) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":"in flight"}"#)
        .await;
    let (skipped, _, _) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":"skipped"}"#)
        .await;
    assert!(spool_files(spool.path()) > 0, "nothing was spooled");
    signal(redis.pid(), "CONT");
    assert_eq!(in_flight, StatusCode::ACCEPTED);
    assert_eq!(skipped, StatusCode::ACCEPTED);

    let r = redis.client().await;
    assert!(
        eventually(WAIT, || async {
            metric_value(&ingress, "tether_spool_bytes").await == 0.0 && xlen(&r, STREAM).await >= 4
        })
        .await,
        "the spool did not drain"
    );
    let e = entries(&r, STREAM).await;
    let payloads: Vec<&str> = e.iter().map(|(_, f)| field(f, "payload")).collect();
    let count = |n: &str| payloads.iter().filter(|p| p.contains(n)).count();
    // Two matches each (seed's trigger): two entries per request, once.
    assert_eq!(count("in flight"), 2, "{payloads:?}");
    assert_eq!(count("skipped"), 2, "{payloads:?}");
    assert!(ingress.shutdown().await);
}

/// `DEBUG SLEEP` freezes Redis from the inside for a second while 8 senders
/// write through a spool: every answer is a 202, every 202's jobs are in
/// the stream, and none twice (the late replies cancel the spooled copies
/// of the writes that were in flight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_sleep_under_load_loses_nothing_and_writes_nothing_twice() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let load = Load::start(&ingress.uri(""), KEY, BODY, 8, "sleep");
    load.until_accepted(200, WAIT).await;
    // redis-cli blocks for the second Redis sleeps: run it on a thread.
    let port = redis.port;
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1"])
            .output()
            .unwrap()
    });
    let slept = std::time::Instant::now();
    load.until_accepted(300, WAIT).await;
    let out = sleeper.join().unwrap();
    // redis-cli exits 0 on an error reply: check it said OK.
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert!(
        slept.elapsed() >= Duration::from_millis(900),
        "Redis did not sleep"
    );
    load.until_accepted(200, WAIT).await;
    let outcomes = load.stop().await;
    assert_all_accepted(&outcomes);
    assert_every_202_stored(&redis, &outcomes).await;
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not drained"
    );
    let r = redis.client().await;
    let twice: Vec<(String, usize)> = request_ids_in(&r, STREAM)
        .await
        .into_iter()
        .filter(|(_, n)| *n > 2)
        .take(5)
        .collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
}

/// The spool holds callers' leads: a directory the ingress makes is its
/// user's alone (0700) and so is each segment (0600), where the umask made
/// them readable by everyone (0755, 0644); a directory found open to
/// others is said at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spool_is_private_to_the_ingress_user() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let mut redis = RedisServer::start();
    seed(&redis).await;
    let parent = tempfile::tempdir().unwrap();
    let spool = parent.path().join("spool");
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(&spooling(&redis, &spool), log.writer());
    ingress.wait_ready().await;
    redis.kill();
    let req = http::Request::post(format!("{}/api/webhook/workflow", ingress.base()))
        .header("authorization", format!("Bearer {KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            BODY.as_bytes(),
        )))
        .unwrap();
    let status = http_client().request(req).await.unwrap().status();
    assert_eq!(status, StatusCode::ACCEPTED, "not spooled");
    assert_eq!(mode(&spool), 0o700);
    let segments: Vec<_> = std::fs::read_dir(&spool)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!segments.is_empty());
    for segment in &segments {
        assert_eq!(mode(segment), 0o600, "{}", segment.display());
    }
    assert!(
        !log.text().contains("open to other users"),
        "{}",
        log.text()
    );
    drop(ingress);

    // A directory the operator made open to everyone is said.
    let open = parent.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(&spooling(&redis, &open), log.writer());
    assert!(
        eventually(WAIT, || async {
            log.text()
                .contains("the spool directory is open to other users")
        })
        .await,
        "not said: {}",
        log.text()
    );
    assert!(log.text().contains("mode=755"), "{}", log.text());
    drop(ingress);
}

/// A spool cap larger than its filesystem has free is said at start: the
/// disk would fill before the cap, failing every append and whatever else
/// writes there. (No filesystem has an exbibyte free.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_cap_the_disk_cannot_hold_is_said() {
    let redis = RedisServer::start();
    seed(&redis).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ingress.toml");
    let spool = dir.path().join("spool").display().to_string();
    let start = |max_bytes: u64| {
        std::fs::write(&file, format!("[spool]\nmax_bytes = {max_bytes}\n")).unwrap();
        let log = LogFile::new();
        let ingress = IngressProcess::spawn_configured(
            Some(&file),
            &[
                ("TETHER_INGRESS_REDIS_URL", redis.url()),
                ("TETHER_INGRESS_SPOOL_DIR", spool.clone()),
            ],
            log.writer(),
        );
        (ingress, log)
    };
    let (ingress, log) = start(1 << 60);
    ingress.wait_ready().await;
    let said = log
        .line_with(
            "spool.max_bytes is more than the spool's filesystem has left",
            WAIT,
        )
        .await;
    assert!(said.contains("free_bytes="), "{said}");
    drop(ingress);

    // A cap the disk holds is not.
    let (ingress, log) = start(1 << 20);
    ingress.wait_ready().await;
    assert!(!log.text().contains("spool.max_bytes"), "{}", log.text());
}

/// The harness's own fault: a port found free and taken before redis-server
/// binds it. The next try must start in a directory of its own (the failed
/// try's directory goes with it), or every later try fails too, as one did
/// in CI.
#[test]
fn a_redis_port_taken_before_it_is_bound_is_tried_again() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let redis = RedisServer::start_on(false, [busy, free_port(), free_port()]);
    assert_ne!(redis.port, busy);
    assert_eq!(redis.cli(&["PING"]), "PONG");
}

/// Jobs still in the spool when the ingress stops (Redis away) were
/// acknowledged: the stop says so, naming the directory, and the next
/// process on it says what it found and replays them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_left_in_the_spool_at_a_stop_are_said_and_replayed_by_the_next_process() {
    let mut redis = RedisServer::start_durable();
    seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let dir = spool.path().display().to_string();
    let mut env = spooling(&redis, &dir);
    env.push(("TETHER_INGRESS_LOG", "info".to_owned()));
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(&env, log.writer());
    ingress.wait_ready().await;
    redis.kill();
    let load = Load::start(&ingress.base(), KEY, BODY, 2, "left");
    load.until_accepted(5, WAIT).await;
    let outcomes = load.stop().await;
    assert_all_accepted(&outcomes);
    assert_eq!(ingress.terminate().await, Some(0));
    let said = log
        .line_with("acknowledged jobs still in the spool", WAIT)
        .await;
    assert!(said.contains(&dir), "{said}");

    redis.restart();
    let next_log = LogFile::new();
    let next = IngressProcess::spawn_logging(&env, next_log.writer());
    let found = next_log
        .line_with("the spool holds jobs an earlier process acknowledged", WAIT)
        .await;
    assert!(found.contains(&dir), "{found}");
    next.wait_ready().await;
    assert_every_202_stored(&redis, &outcomes).await;
    // Once replayed, stopping says nothing of the spool.
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not drained"
    );
    assert_eq!(next.terminate().await, Some(0));
    assert!(
        !next_log.text().contains("still in the spool"),
        "{}",
        next_log.text()
    );
}
