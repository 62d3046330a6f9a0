//! BullMQ mode against a real redis-server and real BullMQ from npm, both
//! majors (5.81.5 and 6.7.0): an unchanged `Worker` runs the ingress's jobs,
//! and the job the ingress adds is the one Node's `queue.add` adds.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod support;

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use bytes::Bytes;
use fred::prelude::*;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::{node, *};
use tether_ingress::config::Config;

const KEY: &str = "user_bullmq_key";
const OPTIONS: &str = r#"{"attempts":2,"backoff":{"type":"fixed","delay":50}}"#;
const BODY: &str = r#"{"webhookId":"wh_1","email":"lead@example.com","score":1.5,"name":"caf\u00e9","big":12345678901234567890123,"x":1.10}"#;

async fn seed(redis: &RedisServer) -> Client {
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    r
}

fn bullmq_config(redis_url: &str, workflow_queue: &str) -> Config {
    let mut raw = Config::default();
    raw.redis.url = redis_url.to_owned();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.sink.kind = tether_ingress::config::SinkKind::Bullmq;
    raw.bullmq.workflow_queue = workflow_queue.into();
    raw.bullmq.job_options = OPTIONS.into();
    raw
}

async fn post(ingress: &Ingress, path: &str, request_id: &str, body: &str) -> (StatusCode, Bytes) {
    let req = Request::post(ingress.uri(path))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", request_id)
        .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let (status, _, body) = ingress.request(req).await;
    (status, body)
}

/// BODY's `payload`: BODY less its `webhookId`.
const PAYLOAD: &str = r#"{"email":"lead@example.com","score":1.5,"name":"caf\u00e9","big":12345678901234567890123,"x":1.10}"#;

/// The job id the ingress gives the job of request `request_id` with BODY
/// for `target`.
fn job_id(request_id: &str, target: &str) -> String {
    let lead = lead_digest(&["wh_1", PAYLOAD]);
    format!("{request_id}~o_1~u_1~{target}~{lead}")
}

/// The `data` the contract fixes for BODY's job on `wf_a`, as text.
fn expected_data(request_id: &str, received_at: &str) -> String {
    format!(
        r#"{{"workflowId":"wf_a","orgId":"o_1","userId":"u_1","webhookId":"wh_1","payload":{{"email":"lead@example.com","score":1.5,"name":"caf\u00e9","big":12345678901234567890123,"x":1.10}},"receivedAt":{received_at},"requestId":"{request_id}"}}"#
    )
}

async fn hgetall(r: &Client, key: &str) -> BTreeMap<String, String> {
    r.hgetall(key).await.unwrap()
}

/// An idle Worker of `major` runs the job at once (the marker woke it, not
/// its 5 s drain timeout) with the exact name and data, the configured
/// attempts and backoff retry its failing first attempt, and it ends in
/// `completed` with `finishedOn`. A repeat of the request adds nothing.
async fn a_worker_runs_the_job(major: u8) {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let queue = format!("runs{major}");
    let ingress =
        Ingress::start_with(bullmq_config(&redis.url(), &queue).validate().unwrap()).await;
    let mut worker =
        node::Worker::start_idle(major, &r, &redis.url(), &queue, &["--fail-first"]).await;

    let sent = Instant::now();
    let (status, body) = post(&ingress, "/api/webhook/workflow", "req-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(json(&body)["data"]["matchedCount"], 1);
    let first = worker.next("job", Duration::from_secs(10)).await;
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "an idle worker took {waited:?}: was the marker set?"
    );
    let id = job_id("req-1", "wf_a");
    let hash = hgetall(&r, &format!("bull:{queue}:{id}")).await;
    // Byte for byte as the contract says, the caller's numbers untouched.
    assert_eq!(hash["data"], expected_data("req-1", &hash["timestamp"]));
    assert_eq!(first["id"], id.as_str());
    assert_eq!(first["name"], "webhook");
    assert_eq!(first["attemptsMade"], 0);
    let data: serde_json::Value = serde_json::from_str(&hash["data"]).unwrap();
    assert_eq!(first["data"], data, "the worker's job.data");
    assert_eq!(first["opts"]["attempts"], 2);

    let retry = worker.next("job", Duration::from_secs(10)).await;
    assert_eq!(
        (retry["id"].clone(), retry["attemptsMade"].clone()),
        (id.clone().into(), 1.into())
    );
    let done = worker.next("completed", Duration::from_secs(10)).await;
    assert_eq!(done["id"], id.as_str());
    assert!(done["finishedOn"].as_u64().is_some());
    let completed: Option<f64> = r
        .zscore(format!("bull:{queue}:completed"), &id)
        .await
        .unwrap();
    assert!(completed.is_some(), "not in completed");
    let finished: Option<String> = r
        .hget(format!("bull:{queue}:{id}"), "finishedOn")
        .await
        .unwrap();
    assert!(finished.is_some());

    // The same request again: the job exists, so nothing is added. Redis's
    // script cache emptied first: the write sends the script's body instead.
    let _: String = r
        .custom(
            fred::types::CustomCommand::new_static(
                "SCRIPT",
                fred::types::ClusterHash::Random,
                false,
            ),
            vec!["FLUSH"],
        )
        .await
        .unwrap();
    let (status, _) = post(&ingress, "/api/webhook/workflow", "req-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let waiting: u64 = r.llen(format!("bull:{queue}:wait")).await.unwrap();
    assert_eq!(waiting, 0);
    let events = event_fields(&r, &queue).await;
    assert_eq!(events.last().unwrap()["event"], "duplicated");
    let counter: String = r.get(format!("bull:{queue}:id")).await.unwrap();
    assert_eq!(
        counter, "2",
        "the id counter moves on a duplicate, as in BullMQ"
    );
}

/// `jobs tail` in BullMQ mode prints the queue's jobs, data as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_tail_shows_the_queue_s_jobs() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let ingress =
        Ingress::start_with(bullmq_config(&redis.url(), "tailed").validate().unwrap()).await;
    let (status, _) = post(&ingress, "/api/webhook/workflow", "tail-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["jobs", "tail", "workflow", "--from-start", "--limit", "1"])
        .env("TETHER_INGRESS_REDIS_URL", redis.url())
        .env("TETHER_INGRESS_SINK", "bullmq")
        .env("TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE", "tailed")
        .output()
        .unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let ts: String = r
        .hget(
            format!("bull:tailed:{}", job_id("tail-1", "wf_a")),
            "timestamp",
        )
        .await
        .unwrap();
    assert!(
        line.contains(&format!(r#""data":{}"#, expected_data("tail-1", &ts))),
        "{line}"
    );
    let job: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(job["id"], job_id("tail-1", "wf_a").as_str());
    assert_eq!(job["name"], "webhook");
    assert_eq!(job["opts"]["attempts"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bullmq_6_worker_runs_the_job() {
    a_worker_runs_the_job(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bullmq_5_worker_runs_the_job() {
    a_worker_runs_the_job(5).await;
}

/// Each entry of `<queue>:events`, its fields without the entry id.
async fn event_fields(r: &Client, queue: &str) -> Vec<HashMap<String, String>> {
    let entries: Vec<(String, HashMap<String, String>)> = r
        .xrange(format!("bull:{queue}:events"), "-", "+", None)
        .await
        .unwrap();
    entries.into_iter().map(|(_, f)| f).collect()
}

/// A request whose jobs hold a lot of `data` (a 1 MiB body matching 150
/// workflows) is added by several script runs, each answered as it ends,
/// so Redis is never held long and the job writer does not take one long
/// run for a stall. Before, one run held Redis for about 0.4 s, the writer
/// (`stall_after_ms = 100`) answered 503 `JOB_STORE_UNCONFIRMED`, and
/// Redis then stored every job anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_many_large_jobs_is_added_in_short_runs() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    let workflows: Vec<String> = (0..150).map(|i| format!("wf_{i:03}")).collect();
    let names: Vec<&str> = workflows.iter().map(String::as_str).collect();
    add_trigger(&r, "o_1", "wh_1", &names).await;
    let mut raw = bullmq_config(&redis.url(), "big");
    raw.redis.stall_after_ms = Duration::from_millis(100);
    raw.redis.command_timeout_ms = Duration::from_secs(20);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let body = format!(
        r#"{{"webhookId":"wh_1","x":"{}"}}"#,
        "a".repeat((1 << 20) - 100)
    );
    let (status, answer) = post(&ingress, "/api/webhook/workflow", "req_big", &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer:?}");
    let waiting: i64 = r.llen("bull:big:wait").await.unwrap();
    assert_eq!(waiting, 150);
}

/// What one queue holds, made comparable: the job hash (timestamp left
/// out, JSON fields parsed), the lists, the marker, meta (version left
/// out), the events and the id counter.
async fn snapshot(r: &Client, queue: &str, id: &str) -> serde_json::Value {
    let mut job = hgetall(r, &format!("bull:{queue}:{id}")).await;
    assert!(
        job.remove("timestamp")
            .is_some_and(|t| t.parse::<u64>().is_ok())
    );
    let parsed: BTreeMap<String, serde_json::Value> = job
        .into_iter()
        .map(|(k, v)| {
            let v = match k.as_str() {
                "data" | "opts" => serde_json::from_str(&v).unwrap(),
                _ => serde_json::Value::String(v),
            };
            (k, v)
        })
        .collect();
    let mut meta = hgetall(r, &format!("bull:{queue}:meta")).await;
    meta.remove("version");
    let wait: Vec<String> = r.lrange(format!("bull:{queue}:wait"), 0, -1).await.unwrap();
    let paused: Vec<String> = r
        .lrange(format!("bull:{queue}:paused"), 0, -1)
        .await
        .unwrap();
    let marker: Vec<(String, f64)> = r
        .zrange(
            format!("bull:{queue}:marker"),
            0,
            -1,
            None,
            false,
            None,
            true,
        )
        .await
        .unwrap();
    let counter: Option<String> = r.get(format!("bull:{queue}:id")).await.unwrap();
    let mut keys: Vec<String> = r
        .custom(
            fred::types::CustomCommand::new_static("KEYS", fred::types::ClusterHash::Random, false),
            vec![format!("bull:{queue}:*")],
        )
        .await
        .unwrap();
    for k in &mut keys {
        *k = k.replacen(&format!("bull:{queue}:"), "", 1);
    }
    keys.sort();
    serde_json::json!({
        "job": parsed,
        "meta": meta,
        "wait": wait,
        "paused": paused,
        "marker": marker,
        "events": event_fields(r, queue).await,
        "id": counter,
        "keys": keys,
    })
}

/// The ingress's job and Node's `queue.add` of the same name, data and
/// opts (same custom id, on a twin queue): the same hash fields and values
/// but the timestamp, the same lists, marker, meta, events and counter; and
/// again after each adds the same id a second time.
async fn golden(major: u8) {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let ingress =
        Ingress::start_with(bullmq_config(&redis.url(), "ours").validate().unwrap()).await;
    // Both queues opened by a Queue of this major first, as a backend does.
    node::queue(major, &["open", &redis.url(), "ours"]).await;
    node::queue(major, &["open", &redis.url(), "node"]).await;
    let id = job_id("golden-1", "wf_a");
    let (status, _) = post(&ingress, "/api/webhook/workflow", "golden-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let data: String = r.hget(format!("bull:ours:{id}"), "data").await.unwrap();
    let mut opts: serde_json::Value = serde_json::from_str(OPTIONS).unwrap();
    opts["jobId"] = id.clone().into();
    let add = |data: String, opts: String| {
        let (url, id) = (redis.url(), id.clone());
        async move {
            let added = node::queue(major, &["add", &url, "node", "webhook", &data, &opts]).await;
            assert_eq!(added["id"], id.as_str());
        }
    };
    add(data.clone(), opts.to_string()).await;
    let (ours, theirs) = (
        snapshot(&r, "ours", &id).await,
        snapshot(&r, "node", &id).await,
    );
    assert_eq!(
        ours, theirs,
        "ingress (left) and Node's queue.add (right) differ"
    );
    assert_eq!(ours["events"].as_array().unwrap().len(), 2, "{ours}");

    // The same id once more on both: a `duplicated` event, nothing else.
    let (status, _) = post(&ingress, "/api/webhook/workflow", "golden-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    add(data, opts.to_string()).await;
    let (ours, theirs) = (
        snapshot(&r, "ours", &id).await,
        snapshot(&r, "node", &id).await,
    );
    assert_eq!(
        ours, theirs,
        "after a duplicate: ingress (left), Node (right)"
    );
    assert_eq!(ours["events"][2]["event"], "duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_the_ingress_adds_what_bullmq_6_queue_add_adds() {
    golden(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_the_ingress_adds_what_bullmq_5_queue_add_adds() {
    golden(5).await;
}

/// A queue paused through Node's `Queue` holds the job (no marker, no
/// processing) until `queue.resume()`. 6.x keeps it on `wait`; a queue last
/// opened by 5.x gets it on `paused`, which 5.x renames over `wait` on
/// resume.
async fn paused_queue_holds_the_job(major: u8) {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let queue = format!("held{major}");
    let ingress =
        Ingress::start_with(bullmq_config(&redis.url(), &queue).validate().unwrap()).await;
    let mut worker = node::Worker::start_idle(major, &r, &redis.url(), &queue, &[]).await;
    node::queue(major, &["pause", &redis.url(), &queue]).await;
    let (status, _) = post(&ingress, "/api/webhook/workflow", "held-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = job_id("held-1", "wf_a");
    let list = if major == 5 { "paused" } else { "wait" };
    let held: Vec<String> = r
        .lrange(format!("bull:{queue}:{list}"), 0, -1)
        .await
        .unwrap();
    assert_eq!(held, vec![id.clone()]);
    let markers: u64 = r.zcard(format!("bull:{queue}:marker")).await.unwrap();
    assert_eq!(markers, 0, "a paused queue gets no marker");
    let early = worker.lines_within(Duration::from_millis(1500)).await;
    assert!(
        early.iter().all(|l| l["event"] != "job"),
        "processed while paused: {early:?}"
    );
    node::queue(major, &["resume", &redis.url(), &queue]).await;
    let job = worker.next("job", Duration::from_secs(10)).await;
    assert_eq!(job["id"], id.as_str());
    worker.next("completed", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_bullmq_6_queue_holds_the_job_until_resumed() {
    paused_queue_holds_the_job(6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_bullmq_5_queue_holds_the_job_until_resumed() {
    paused_queue_holds_the_job(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outreach_jobs_go_to_their_queue_and_answer_the_bullmq_id() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    put_outreach_config(
        &r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    )
    .await;
    let mut raw = bullmq_config(&redis.url(), "wf-runs");
    raw.bullmq.outreach_queue = "out-runs".into();
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let mut worker = node::Worker::start_idle(6, &r, &redis.url(), "out-runs", &[]).await;
    let body =
        r#"{"configurationId":"cfg_1","contacts":{"email":"a@b.c","n":12345678901234567890123}}"#;
    let (status, answer) = post(&ingress, "/api/webhook/outreach", "out-1", body).await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    let contacts = r#"{"email":"a@b.c","n":12345678901234567890123}"#;
    let lead = lead_digest(&["fixed", contacts, "{}", "{}"]);
    let id = format!("out-1~o_1~u_1~cfg_1~{lead}");
    assert_eq!(json(&answer)["data"]["jobId"], id.as_str());
    let job = worker.next("job", Duration::from_secs(10)).await;
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["name"], "outreach");
    let data: String = r.hget(format!("bull:out-runs:{id}"), "data").await.unwrap();
    let ts: String = r
        .hget(format!("bull:out-runs:{id}"), "timestamp")
        .await
        .unwrap();
    assert_eq!(
        data,
        format!(
            r#"{{"configurationId":"cfg_1","userId":"u_1","orgId":"o_1","format":"fixed","contacts":{{"email":"a@b.c","n":12345678901234567890123}},"applications":{{}},"conversations":{{}},"receivedAt":{ts},"requestId":"out-1"}}"#
        )
    );
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| d.filter_map(Result::ok).count())
        .unwrap_or(0)
}

/// Redis SIGKILLed under load with a spool: every 202's job is run by a
/// Worker exactly once (spooled jobs replayed; a replay of a job that did
/// land finds its id and adds nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_every_accepted_job_runs_exactly_once() {
    const WAIT: Duration = Duration::from_secs(30);
    let mut redis = RedisServer::start_durable();
    let r = seed(&redis).await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = bullmq_config(&redis.url(), "faults");
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(500);
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let body = r#"{"webhookId":"wh_1","email":"lead@example.com"}"#;
    let load = Load::start(&ingress.uri(""), KEY, body, 16, "bq");
    load.until_accepted(200, WAIT).await;
    redis.kill();
    load.until_accepted(200, WAIT).await;
    assert!(spool_files(spool.path()) > 0, "nothing was spooled");
    redis.restart();
    load.until_accepted(200, WAIT).await;
    let outcomes = load.stop().await;
    drop(r);
    let accepted: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::ACCEPTED))
        .map(|o| o.request_id.as_str())
        .collect();
    assert!(accepted.len() >= 600);
    assert!(
        eventually(WAIT, || async { spool_files(spool.path()) == 0 }).await,
        "spool not drained"
    );
    let r = redis.client().await;
    let queued: u64 = r.llen("bull:faults:wait").await.unwrap();
    eprintln!("{queued} jobs waiting");
    let mut worker = node::Worker::start(6, &redis.url(), "faults", &[]).await;
    let mut runs: HashMap<String, usize> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while accepted.iter().any(|id| !runs.contains_key(*id)) {
        assert!(Instant::now() < deadline, "not every accepted job ran");
        let Some(job) = worker.next_within("job", Duration::from_secs(30)).await else {
            // Say what the queue looked like, so a stall can be told apart
            // from a job the layout got wrong.
            for command in [
                &["LLEN", "bull:faults:wait"][..],
                &["LLEN", "bull:faults:active"],
                &["ZRANGE", "bull:faults:marker", "0", "-1", "WITHSCORES"],
                &["HGETALL", "bull:faults:meta"],
                &["XREVRANGE", "bull:faults:events", "+", "-", "COUNT", "5"],
                &["CLIENT", "LIST"],
            ] {
                eprintln!("{command:?}: {}", redis.cli(command));
            }
            let missing: Vec<&&str> = accepted
                .iter()
                .filter(|id| !runs.contains_key(**id))
                .take(5)
                .collect();
            for id in &missing {
                let key = format!("bull:faults:{}", job_id(id, "wf_a"));
                eprintln!("{key}: {}", redis.cli(&["HGETALL", &key]));
            }
            eprintln!(
                "queue keys: {}",
                redis.cli(&["EVAL", "local out = {} for _, k in ipairs(redis.call('KEYS', 'bull:faults:*')) do if not string.find(k, '~') then table.insert(out, k .. '=' .. redis.call('TYPE', k).ok) end end return out", "0"])
            );
            panic!(
                "{} jobs still to run ({missing:?}), and the worker ran none for 30 s",
                accepted.len() - runs.len()
            );
        };
        *runs
            .entry(job["data"]["requestId"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    // Anything still queued would show up now.
    let waiting: u64 = r.llen("bull:faults:wait").await.unwrap();
    assert_eq!(waiting, 0, "jobs left in wait");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    let spooled = metric_value(&ingress, "tether_spool_jobs_written_total").await;
    eprintln!(
        "figures: {} accepted, {} jobs run once each, {spooled} jobs spooled",
        accepted.len(),
        runs.len()
    );
}

/// The README's loop: the ingress in BullMQ mode with its default queues,
/// and `examples/bullmq-worker.js` (a plain BullMQ Worker) prints the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_worker_prints_the_ingress_s_job() {
    use tokio::io::AsyncBufReadExt;
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.sink.kind = tether_ingress::config::SinkKind::Bullmq;
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bullmq-worker.js");
    let mut child = tokio::process::Command::new("node")
        .arg(example)
        .arg(redis.url())
        .env("NODE_PATH", node::dir().join("node_modules"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Both of its workers wait for a marker.
    assert!(
        eventually(Duration::from_secs(30), || async {
            let list: String = r.client_list::<String, String>(None, None).await.unwrap();
            list.matches("cmd=bzpopmin").count() >= 2
        })
        .await
    );
    let (status, _) = post(&ingress, "/api/webhook/workflow", "example-1", BODY).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let job: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(job["queue"], "workflow-runs");
    assert_eq!(job["name"], "webhook");
    assert_eq!(job["data"]["requestId"], "example-1");
    assert_eq!(job["data"]["payload"]["email"], "lead@example.com");
}

/// A queue at its global concurrency limit (meta `concurrency`, as many
/// active jobs) gets the job on `wait` but no marker, as in BullMQ; the
/// rest of the ingress works the same in this mode: an `Idempotency-Key`
/// repeat adds nothing and gets the first answer, and the jobs are counted
/// (the binary as a process, so the metrics are its own).
/// One `X-Request-Id` with two different leads (a caller's batch id on
/// each of its leads) makes two jobs, and the same lead again (a retry)
/// none: the job id holds the lead's digest. Before, the second lead found
/// the first's job, the script recorded a `duplicated` event, and the lead
/// was dropped behind a 202.
#[tokio::test]
async fn leads_sharing_a_callers_request_id_are_each_added() {
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let ingress =
        Ingress::start_with(bullmq_config(&redis.url(), "batched").validate().unwrap()).await;
    let other = BODY.replace("lead@example.com", "second@example.com");
    for body in [BODY, other.as_str(), BODY] {
        let (status, answer) = post(&ingress, "/api/webhook/workflow", "batch-7", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer:?}");
    }
    let mut waiting: Vec<String> = r.lrange("bull:batched:wait", 0, -1).await.unwrap();
    waiting.sort();
    let payload = PAYLOAD.replace("lead@example.com", "second@example.com");
    let mut want = vec![
        job_id("batch-7", "wf_a"),
        format!("batch-7~o_1~u_1~wf_a~{}", lead_digest(&["wh_1", &payload])),
    ];
    want.sort();
    assert_eq!(waiting, want);
    let events = event_fields(&r, "batched").await;
    assert_eq!(events.last().unwrap()["event"], "duplicated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_maxed_queue_gets_no_marker_and_idempotency_and_metrics_hold() {
    use http_body_util::BodyExt;
    let redis = RedisServer::start();
    let r = seed(&redis).await;
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        ("TETHER_INGRESS_SINK", "bullmq".into()),
        ("TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE", "maxed".into()),
    ]);
    ingress.wait_ready().await;
    let _: () = r.hset("bull:maxed:meta", ("concurrency", 1)).await.unwrap();
    let _: () = r.lpush("bull:maxed:active", "busy").await.unwrap();
    let http = http_client();
    let send = |request_id: &'static str| {
        let req = Request::post(format!("{}/api/webhook/workflow", ingress.base()))
            .header("authorization", format!("Bearer {KEY}"))
            .header("x-request-id", request_id)
            .header("idempotency-key", "lead-77")
            .body(Full::new(Bytes::from_static(BODY.as_bytes())))
            .unwrap();
        let http = http.clone();
        async move {
            let res = http.request(req).await.unwrap();
            let status = res.status();
            (status, res.into_body().collect().await.unwrap().to_bytes())
        }
    };
    let (status, first) = send("idem-1").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let wait: Vec<String> = r.lrange("bull:maxed:wait", 0, -1).await.unwrap();
    assert_eq!(wait, vec![job_id("idem-1", "wf_a")]);
    let markers: u64 = r.zcard("bull:maxed:marker").await.unwrap();
    assert_eq!(markers, 0, "a maxed queue gets no marker");

    // Another request id, the same Idempotency-Key: the first answer, no job.
    let (status, again) = send("idem-2").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again, first);
    let wait: u64 = r.llen("bull:maxed:wait").await.unwrap();
    assert_eq!(wait, 1);
    let req = Request::get(format!("{}/metrics", ingress.base()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let text = http
        .request(req)
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.lines()
            .any(|l| l == "tether_jobs_written_total{stream=\"workflow\"} 1"),
        "{text}"
    );
}
