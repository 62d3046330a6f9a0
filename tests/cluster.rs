//! Redis Cluster (three primaries, real `redis-server` processes joined by
//! `redis-cli --cluster create` on free ports): keys and triggers on every
//! primary authenticate and match, and their changes are seen within a
//! second; job writes reach the stream's own node; the admin CLI and the
//! import walk every primary; the primary holding the job stream SIGKILLed
//! under load loses no 202, writes resume, and revocations are still seen.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    collections::HashMap,
    io::Write,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use fred::prelude::*;
use http::StatusCode;
use support::{cluster::Cluster, *};
use tether_ingress::config::Config;

const STREAM: &str = "tether:jobs:workflow";

/// One cluster at a time: each is six to nine redis-server processes, and
/// the tests measure second-long bounds on a two-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const ORG: &str = "o_c";
const WAIT: Duration = Duration::from_secs(40);

fn apikey(name: &str) -> String {
    format!("tether:apikey:{}", sha256_hex(name))
}

/// Names (made from `stem` and a counter) whose Redis key, `key_of(name)`,
/// lives on each primary in turn: one name per primary, in `primaries`'
/// order.
fn one_per_primary(cluster: &Cluster, stem: &str, key_of: impl Fn(&str) -> String) -> Vec<String> {
    let primaries = cluster.primaries();
    let mut found: Vec<Option<String>> = vec![None; primaries.len()];
    for i in 0.. {
        let name = format!("{stem}_{i}");
        let port = cluster.primary_of(&key_of(&name));
        if let Some(at) = primaries.iter().position(|p| *p == port)
            && found[at].is_none()
        {
            found[at] = Some(name);
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found.into_iter().map(Option::unwrap).collect()
}

async fn authenticates(ingress: &Ingress, key: &str, webhook: &str) -> StatusCode {
    ingress
        .workflow(Some(key), &format!(r#"{{"webhookId":"{webhook}"}}"#))
        .await
        .0
}

/// Deletes every key of `keys` and checks each is refused within a second.
async fn revoke_and_see_refused(r: &Client, ingress: &Ingress, keys: &[String], webhook: &str) {
    for key in keys {
        let _: i64 = r.del(apikey(key)).await.unwrap();
    }
    for key in keys {
        assert!(
            eventually(Duration::from_secs(1), || async {
                authenticates(ingress, key, webhook).await == StatusCode::UNAUTHORIZED
            })
            .await,
            "{key}, revoked on its primary, still worked after 1 s"
        );
    }
}

fn trigger_key(webhook: &str) -> String {
    format!("tether:triggers:{ORG}:{webhook}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_primary_serves_keys_and_triggers_and_their_changes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(1).await;
    let r = client_at(&cluster.url()).await;
    let keys = one_per_primary(&cluster, "user_c", apikey);
    let later_keys = one_per_primary(&cluster, "user_later", apikey);
    let webhooks = one_per_primary(&cluster, "wh", trigger_key);
    let later_webhooks = one_per_primary(&cluster, "wh_later", trigger_key);
    assert_eq!(keys.len(), 3);
    for (i, (key, webhook)) in keys.iter().zip(&webhooks).enumerate() {
        put_key(&r, key, &format!(r#"{{"userId":"u_{i}","orgId":"{ORG}"}}"#)).await;
        add_trigger(&r, ORG, webhook, &[&format!("wf_{i}")]).await;
    }
    // The job stream on a primary other than the default stream's: the job
    // script must go where its key lives, whatever its body hashes to.
    let stream = one_per_primary(&cluster, "tether:jobs:wf", str::to_owned)
        .into_iter()
        .find(|s| cluster.primary_of(s) != cluster.primary_of(STREAM))
        .unwrap();
    let mut raw = Config::default();
    raw.redis.url = cluster.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.streams.workflow = stream.clone();
    raw.rate_limit.scope = tether_ingress::config::RateLimitScope::Global;
    raw.rate_limit.burst = std::num::NonZeroU32::new(3);
    put_key(
        &r,
        "user_limited",
        &format!(r#"{{"userId":"u_lim","orgId":"{ORG}","rateLimitPerSec":1}}"#),
    )
    .await;
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;

    // Every key with every webhook: keys and triggers on all three primaries.
    for key in &keys {
        for webhook in &webhooks {
            assert_eq!(
                authenticates(&ingress, key, webhook).await,
                StatusCode::ACCEPTED,
                "{key} → {webhook}"
            );
        }
    }
    // The replica's connection to every primary is named there.
    for port in cluster.primaries() {
        assert!(
            eventually(Duration::from_secs(10), || async {
                cluster
                    .cli(port, &["CLIENT", "LIST"])
                    .contains("name=tether-ingress:replica ")
            })
            .await,
            "no named replica connection on {port}"
        );
    }
    let stored = entries(&r, &stream).await;
    assert_eq!(stored.len(), 9, "one job per request, on the stream's node");
    let mut per_workflow: HashMap<&str, usize> = HashMap::new();
    for (_, e) in &stored {
        *per_workflow.entry(field(e, "workflowId")).or_default() += 1;
    }
    assert_eq!(
        per_workflow,
        HashMap::from([("wf_0", 3), ("wf_1", 3), ("wf_2", 3)])
    );

    // A repeated Idempotency-Key gets the first answer and adds no job,
    // whatever slot its record lands on.
    for attempt in 0..2 {
        let req = http::Request::post(ingress.uri("/api/webhook/workflow"))
            .header("authorization", format!("Bearer {}", keys[0]))
            .header("idempotency-key", "lead-cluster-1")
            .body(http_body_util::Full::new(bytes::Bytes::from(format!(
                r#"{{"webhookId":"{}"}}"#,
                webhooks[0]
            ))))
            .unwrap();
        let (status, _, _) = ingress.request(req).await;
        assert_eq!(status, StatusCode::ACCEPTED, "attempt {attempt}");
    }
    assert_eq!(xlen(&r, &stream).await, 10, "a repeat added a job");

    // A global rate limit: its bucket lives in the cluster, wherever its
    // slot is, and holds the key to its rate.
    let answers = futures::future::join_all(
        (0..10).map(|_| authenticates(&ingress, "user_limited", &webhooks[0])),
    )
    .await;
    let admitted = answers
        .iter()
        .filter(|s| **s == StatusCode::ACCEPTED)
        .count();
    assert!((3..=5).contains(&admitted), "{admitted} of 10 admitted");
    let bucket: i64 = r
        .exists(format!("tether:ratelimit:{}", sha256_hex("user_limited")))
        .await
        .unwrap();
    assert_eq!(bucket, 1, "the global bucket is not in the cluster");
    let _: i64 = r.del(stream.as_str()).await.unwrap();

    // Every command went straight to its key's node: a script routed by its
    // body would be redirected (and cost a topology refresh each time).
    for port in cluster.primaries() {
        let errors = support::cluster::cli(port, &["INFO", "errorstats"]);
        assert!(!errors.contains("MOVED"), "{port}: {errors}");
    }

    // Adds on every primary are seen within a second.
    for (i, (key, webhook)) in later_keys.iter().zip(&later_webhooks).enumerate() {
        put_key(
            &r,
            key,
            &format!(r#"{{"userId":"u_l{i}","orgId":"{ORG}"}}"#),
        )
        .await;
        add_trigger(&r, ORG, webhook, &["wf_later"]).await;
    }
    for (key, webhook) in later_keys.iter().zip(&later_webhooks) {
        assert!(
            eventually(Duration::from_secs(1), || async {
                authenticates(&ingress, key, webhook).await == StatusCode::ACCEPTED
            })
            .await,
            "a key or trigger added on its primary was not seen within 1 s"
        );
    }
    // Revocations on every primary too.
    revoke_and_see_refused(&r, &ingress, &keys, &webhooks[0]).await;

    // `jobs tail` reads the stream from its node.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("[streams]\nworkflow = \"{stream}\"\n"),
    )
    .unwrap();
    let tail = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("--config")
        .arg(config.path())
        .args(["jobs", "tail", "workflow", "--from-start", "--limit", "2"])
        .env("TETHER_INGRESS_REDIS_URL", cluster.url())
        .output()
        .unwrap();
    assert!(
        tail.status.success(),
        "{}",
        String::from_utf8_lossy(&tail.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&tail.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["workflowId"], "wf_later");

    // The backend's snippet (ioredis on the cluster) writes where the
    // replica sees it.
    let out = Command::new("node")
        .args([
            "examples/backend-control-plane.js",
            cluster.url().as_str(),
            "create-key",
            "backend_made_key",
            "u_b",
            ORG,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NODE_PATH", node::dir().join("node_modules"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        eventually(Duration::from_secs(1), || async {
            authenticates(&ingress, "backend_made_key", &webhooks[0]).await == StatusCode::ACCEPTED
        })
        .await,
        "a key the backend's snippet made was not seen within 1 s"
    );
    let _: i64 = r.del(apikey("backend_made_key")).await.unwrap();

    // The admin CLI counts the keys of every primary.
    let cli = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .args(args)
            .env("TETHER_INGRESS_REDIS_URL", cluster.url())
            .output()
            .unwrap()
    };
    let out = cli(&["keys", "count"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4");

    // An import with --prune keeps one key and removes the others, wherever
    // they live.
    let mut child = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["import", "--prune", "-"])
        .env("TETHER_INGRESS_REDIS_URL", cluster.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!(
        r#"{{"type":"apiKey","key":"{}","userId":"u_l0","orgId":"{ORG}"}}"#,
        later_keys[0]
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{line}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["keys", "count"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    assert!(
        eventually(Duration::from_secs(1), || async {
            authenticates(&ingress, &later_keys[1], &later_webhooks[1]).await
                == StatusCode::UNAUTHORIZED
                && authenticates(&ingress, &later_keys[2], &later_webhooks[2]).await
                    == StatusCode::UNAUTHORIZED
        })
        .await,
        "pruned keys still worked after 1 s"
    );
    assert_eq!(
        authenticates(&ingress, &later_keys[0], &later_webhooks[0]).await,
        StatusCode::ACCEPTED
    );
}

/// SIGKILL of the primary holding the job stream under 16 concurrent
/// senders, with `wait_replicas = 1` and a spool: every 202's job ends up on
/// the promoted primary, Redis-confirmed writes resume, and revocations on
/// every primary are still seen within a second. With `restart`, the killed
/// node is started again once its replica took over (it rejoins as that
/// one's replica): until then the shard has no replica to confirm writes,
/// and the spool holds them.
async fn stream_primary_killed_under_load(replicas: usize, restart: bool) {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(replicas).await;
    let r = client_at(&cluster.url()).await;
    let keys = one_per_primary(&cluster, "user_k", apikey);
    let webhooks = one_per_primary(&cluster, "wh", trigger_key);
    for (i, key) in keys.iter().enumerate() {
        put_key(&r, key, &format!(r#"{{"userId":"u_{i}","orgId":"{ORG}"}}"#)).await;
    }
    add_trigger(&r, ORG, &webhooks[0], &["wf_a"]).await;
    drop(r);

    let spool = tempfile::tempdir().unwrap();
    let ingress = confirming_ingress(&cluster.url(), spool.path()).await;

    let body = format!(r#"{{"webhookId":"{}"}}"#, webhooks[0]);
    let load = Load::start(&ingress.uri(""), &keys[0], &body, 16, "cl");
    load.until_accepted(300, WAIT).await;
    let old = cluster.primary_of(STREAM);
    cluster.kill(old);
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let resuming = redis_writes_resume(&ingress, WAIT);
    if restart {
        assert!(
            eventually(WAIT, || async {
                let new = cluster.primary_of(STREAM);
                new != old && new != 0
            })
            .await,
            "the replica never took over"
        );
        cluster.restart(old);
    }
    assert!(resuming.await, "writes never resumed after the failover");
    let resumed = killed.elapsed();
    load.until_accepted(300, WAIT).await;
    let outcomes = load.stop().await;
    let (accepted, others) = accepted_ids(&outcomes);
    // Every node learns of the promotion, some a moment after the others.
    assert!(
        eventually(WAIT, || async {
            let new = cluster.primary_of(STREAM);
            new != old && new != 0
        })
        .await,
        "no failover happened"
    );

    let r = client_at(&cluster.url()).await;
    assert!(
        eventually(WAIT, || async {
            let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
            accepted.iter().all(|id| stored.contains_key(*id))
        })
        .await,
        "a 202's job is missing on the new primary"
    );
    eprintln!(
        "figures ({replicas} replicas per primary{}): {} requests acknowledged (202), lost 0, \
         {others} answered otherwise; Redis-confirmed writes resumed {:.1} s after the \
         primary's SIGKILL",
        if restart {
            ", the killed node restarted"
        } else {
            ""
        },
        accepted.len(),
        resumed.as_secs_f64()
    );

    // Revocations on every primary, the promoted one among them, are still
    // seen within a second.
    for key in &keys[1..] {
        assert_eq!(
            authenticates(&ingress, key, &webhooks[0]).await,
            StatusCode::ACCEPTED
        );
    }
    revoke_and_see_refused(&r, &ingress, &keys, &webhooks[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_primary_killed_with_two_replicas_each_loses_no_202() {
    // The stream's shard keeps a replica to confirm writes.
    stream_primary_killed_under_load(2, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_primary_killed_with_one_replica_each_loses_no_202() {
    // The promoted primary has no replica until the killed node returns.
    stream_primary_killed_under_load(1, true).await;
}

/// BullMQ mode with a hash-tagged prefix: every key of the queue in one
/// slot, the job script sent to that slot's node, and the example Worker
/// (`examples/bullmq-worker.js`, BullMQ on an ioredis Cluster) runs the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bullmq_jobs_under_a_hash_tagged_prefix_run_on_the_example_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    use tokio::io::AsyncBufReadExt;
    let cluster = Cluster::start(1).await;
    let r = client_at(&cluster.url()).await;
    put_key(&r, "user_bq", r#"{"userId":"u_1","orgId":"o_c"}"#).await;
    add_trigger(&r, ORG, "wh_bq", &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = cluster.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.sink.kind = tether_ingress::config::SinkKind::Bullmq;
    raw.bullmq.prefix = "{tether}".into();
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bullmq-worker.js");
    let mut child = tokio::process::Command::new("node")
        .arg(example)
        .args([cluster.url().as_str(), "{tether}"])
        .env("NODE_PATH", node::dir().join("node_modules"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // Both of its Workers said they wait for jobs.
    let mut said = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut waiting = 0;
    while waiting < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), said.next_line())
            .await
            .expect("the example worker never became ready")
            .unwrap()
            .expect("the example worker stopped");
        waiting += usize::from(line.starts_with("waiting for jobs"));
    }

    let req = http::Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", "Bearer user_bq")
        .header("x-request-id", "req-c1")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"webhookId":"wh_bq","email":"lead@example.com"}"#,
        )))
        .unwrap();
    let (status, _, body) = ingress.request(req).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the example worker printed no job")
        .unwrap()
        .unwrap();
    let job: serde_json::Value = serde_json::from_str(&line).unwrap();
    let lead = lead_digest(&["wh_bq", r#"{"email":"lead@example.com"}"#]);
    let id = format!("req-c1~o_c~u_1~wf_a~{lead}");
    assert_eq!(job["queue"], "workflow-runs");
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["data"]["workflowId"], "wf_a");
    assert_eq!(job["data"]["payload"]["email"], "lead@example.com");
    assert!(
        eventually(Duration::from_secs(10), || async {
            let done: Option<f64> = r
                .zscore("{tether}:workflow-runs:completed", id.as_str())
                .await
                .unwrap();
            done.is_some()
        })
        .await,
        "the job never reached the completed set"
    );
}

/// `rediss-cluster://`: every node speaks TLS only, under a certificate that
/// names "localhost" and no address, while the cluster reports its nodes by
/// IP. The ingress checks each node against the CA under the name it was
/// given, authenticates, matches and writes the job; with another CA it
/// never becomes ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_cluster_checks_every_node_against_the_ca() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    tls::pki_for(dir.path(), "good", &["node"], "DNS:localhost");
    tls::pki(dir.path(), "other", &[]);
    let files = support::cluster::Tls {
        cert: dir.path().join("node.crt"),
        key: dir.path().join("node.key"),
        ca: dir.path().join("good-ca.crt"),
    };
    let cluster = Cluster::start_with(0, Some(files)).await;
    let port = cluster.primaries()[0];
    let record = r#"{"userId":"u_1","orgId":"o_c"}"#;
    cluster.cli(port, &["-c", "SET", &apikey("user_tls"), record]);
    cluster.cli(port, &["-c", "SADD", &trigger_key("wh_tls"), "wf_t"]);
    let config = |ca: &str| {
        let mut raw = Config::default();
        raw.redis.url = cluster.url_as("rediss-cluster", "localhost");
        raw.redis.tls.ca_file = Some(dir.path().join(ca));
        raw.server.listen = ([127, 0, 0, 1], 0).into();
        raw.validate().unwrap()
    };
    let ingress = Ingress::start_with(config("good-ca.crt")).await;
    assert_eq!(
        authenticates(&ingress, "user_tls", "wh_tls").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(cluster.cli(port, &["-c", "XLEN", STREAM]), "1");

    let stranger = Ingress::spawn(config("other-ca.crt")).await;
    assert!(
        !eventually(Duration::from_secs(3), || async {
            stranger.get("/readyz").await.0 == StatusCode::OK
        })
        .await,
        "ready against a cluster whose certificates another CA signed"
    );
}

/// Each primary has its own `maxmemory-policy` and evicts its own keys, so
/// each is asked: two primaries under policies that may evict job streams
/// are both said, each naming its node, and shown until both stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eviction_policy_is_said_for_each_primary_that_may_evict_jobs() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(0).await;
    let primaries = cluster.primaries();
    let evicting = [
        (primaries[1], "allkeys-lru"),
        (primaries[2], "allkeys-random"),
    ];
    for (port, policy) in evicting {
        assert_eq!(
            cluster.cli(port, &["CONFIG", "SET", "maxmemory-policy", policy]),
            "OK"
        );
    }
    let log = LogFile::new();
    let ingress =
        IngressProcess::spawn_logging(&[("TETHER_INGRESS_REDIS_URL", cluster.url())], log.writer());
    ingress.wait_ready().await;
    for (port, policy) in evicting {
        let node = format!("node=127.0.0.1:{port}");
        let said = log.line_with(&node, WAIT).await;
        assert!(
            said.contains("redis may evict job streams")
                && said.contains(&format!("maxmemory_policy={policy}")),
            "{said}"
        );
    }
    const SHOWN: &str = "tether_redis_may_evict_jobs";
    assert_eq!(ingress.metric_value(SHOWN).await, 1.0);
    let shown = |value: &'static str| {
        let ingress = &ingress;
        async move {
            ingress
                .metrics_text()
                .await
                .lines()
                .any(|l| l == format!("{SHOWN} {value}"))
        }
    };
    // One stops, the other turns to another evicting policy: said again,
    // and still shown once that round is done.
    cluster.cli(
        evicting[0].0,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    cluster.cli(
        evicting[1].0,
        &["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"],
    );
    let said = log.line_with("maxmemory_policy=allkeys-lfu", WAIT).await;
    assert!(
        said.contains(&format!("node=127.0.0.1:{}", evicting[1].0)),
        "{said}"
    );
    assert!(shown("1").await, "one primary may still evict");
    cluster.cli(
        evicting[1].0,
        &["CONFIG", "SET", "maxmemory-policy", "noeviction"],
    );
    assert!(
        eventually(WAIT, || shown("0")).await,
        "no primary may evict, yet it is still shown"
    );
    assert_eq!(
        log.text().matches("redis may evict").count(),
        3,
        "{}",
        log.text()
    );
}
