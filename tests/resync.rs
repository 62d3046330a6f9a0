//! The replica's resync after the first load, against a real redis-server.
//! Its own test binary: it reads the process-wide resync counter, which
//! other ingresses in the same process would move too.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

const WITHIN: Duration = Duration::from_secs(1);

/// Writes that race a resync (keys revoked and added while their pages are
/// in flight) must end up as Redis holds them: a page read before a write is
/// never applied over the re-read that write caused. Run for a paced resync
/// (small pages, one read in flight) and one at full speed (two reads in
/// flight, as in the first load), one after the other: the resync counter
/// is process-wide.
#[tokio::test]
async fn writes_racing_a_resync_are_never_lost() {
    race_a_resync(20, 20).await;
    // A full-speed resync is over quickly: denser writes, so that enough of
    // them land while their pages are in flight.
    race_a_resync(100, 100).await;
}

/// Revokes `per_round` keys and adds one per round until the resync ends.
async fn race_a_resync(busy_percent: u8, per_round: usize) {
    let (redis, r) = redis_with_key_and_trigger(TEST_KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.redis.resync_busy_percent = busy_percent;
    let ingress = Ingress::start_with(config).await;
    const N: usize = 20_000;
    let record = r#"{"userId":"u_bulk","orgId":"o_1"}"#;
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        let pairs: Vec<(String, &str)> = chunk
            .iter()
            .map(|i| {
                (
                    format!("tether:apikey:{}", sha256_hex(&format!("bulk_{i}"))),
                    record,
                )
            })
            .collect();
        let _: () = fred::prelude::KeysInterface::mset(&r, pairs).await.unwrap();
    }
    let body = r#"{"webhookId":"wh_1"}"#;
    assert!(
        eventually(Duration::from_secs(10), || async {
            ingress
                .workflow(Some(&format!("bulk_{}", N - 1)), body)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await
    );
    let resyncs = metric_value(&ingress, "tether_replica_resyncs_total").await;

    // Cut the replica's tracking connection: it reconnects and resyncs.
    let clients = redis.cli(&["CLIENT", "LIST"]);
    let tracking = clients
        .lines()
        .find(|l| {
            l.split(' ')
                .any(|f| f.starts_with("flags=") && f.contains('t'))
        })
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("the replica's tracking connection")
        .to_owned();
    redis.cli(&["CLIENT", "KILL", "ID", &tracking]);

    // Revoke keys (spread over the keyspace) and add one per round, until
    // the resync is done.
    let mut revoked = Vec::new();
    let mut added = Vec::new();
    let mut during = 0;
    for round in 0..N / per_round {
        let doomed: Vec<String> = (0..per_round)
            .map(|j| format!("bulk_{}", ((round * per_round + j) * 7919) % N))
            .collect();
        let names: Vec<String> = doomed
            .iter()
            .map(|k| format!("tether:apikey:{}", sha256_hex(k)))
            .collect();
        let _: () = fred::prelude::KeysInterface::del(&r, names).await.unwrap();
        revoked.extend(doomed);
        let born = format!("born_{round}");
        put_key(&r, &born, r#"{"userId":"u_born","orgId":"o_1"}"#).await;
        added.push(born);
        let done = metric_value(&ingress, "tether_replica_resyncs_total").await > resyncs;
        if done {
            break;
        }
        during += 1;
    }
    assert!(
        during > 10,
        "the writes raced the resync ({during} rounds, busy {busy_percent}%)"
    );
    assert!(
        eventually(Duration::from_secs(60), || async {
            metric_value(&ingress, "tether_replica_resyncs_total").await > resyncs
        })
        .await
    );
    // Every revoked key is refused and every added one accepted, once the
    // last invalidations are applied.
    for key in &revoked {
        assert!(
            eventually(WITHIN, || async {
                ingress.workflow(Some(key), body).await.0 == StatusCode::UNAUTHORIZED
            })
            .await,
            "{key} was revoked during the resync but still authenticates"
        );
    }
    for key in &added {
        assert!(
            eventually(WITHIN, || async {
                ingress.workflow(Some(key), body).await.0 == StatusCode::ACCEPTED
            })
            .await,
            "{key} was added during the resync but is refused"
        );
    }
}

/// The status of a `{"webhookId":"wh_1"}` workflow request with `key` to
/// the binary `ingress`.
async fn post_wh_1(ingress: &IngressProcess, key: &str) -> StatusCode {
    let req = http::Request::post(format!("{}/api/webhook/workflow", ingress.base()))
        .header("authorization", format!("Bearer {key}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"webhookId":"wh_1"}"#,
        )))
        .unwrap();
    http_client().request(req).await.unwrap().status()
}

/// A Redis that comes back without its data (restarted with no
/// persistence): the replica's resync after the reconnect empties it, so
/// every key is refused from then on, and the log says why rather than
/// leaving 401s to explain themselves: the recovery, and a warning naming
/// each view that lost most of its entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_back_without_its_data_is_said_in_the_log() {
    let mut redis = RedisServer::start();
    let r = redis.client().await;
    for key in ["user_gone_1", "user_gone_2", "user_gone_3"] {
        put_key(&r, key, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    }
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let log_file = LogFile::new();
    let log = log_file.writer();
    let env = [
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        ("TETHER_INGRESS_LOG", "info".to_owned()),
    ];
    let ingress = IngressProcess::spawn_logging(&env, log);
    ingress.wait_ready().await;
    let post = || post_wh_1(&ingress, "user_gone_1");
    assert_eq!(post().await, StatusCode::ACCEPTED);
    redis.kill();
    redis.restart();
    let logged = || log_file.text();
    assert!(
        eventually(Duration::from_secs(20), || async {
            logged().contains("far fewer entries")
        })
        .await,
        "no warning after Redis came back empty:\n{}",
        logged()
    );
    let text = logged();
    assert!(
        text.contains("replica resynced after its connection came back"),
        "{text}"
    );
    let warning = text
        .lines()
        .find(|l| l.contains("far fewer entries"))
        .unwrap();
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("api_keys 3 -> 0"), "{warning}");
    assert!(warning.contains("triggers 1 -> 0"), "{warning}");
    assert_eq!(post().await, StatusCode::UNAUTHORIZED);
}

/// A replica that cannot make its first connection says why, as the job
/// writers do: before, a Redis asking for a password it was not given left
/// `/readyz` waiting for the caches with nothing in the log from the
/// replica. Once Redis lets it in, the ingress serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_connect_at_start_says_why() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_in", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    assert_eq!(
        redis.cli(&["CONFIG", "SET", "requirepass", "hunter2"]),
        "OK"
    );
    let log_file = LogFile::new();
    let log = log_file.writer();
    let ingress = IngressProcess::spawn_logging(&[("TETHER_INGRESS_REDIS_URL", redis.url())], log);
    let warning = log_file
        .line_with("replica cannot connect to redis", Duration::from_secs(20))
        .await;
    let text = log_file.text();
    assert!(
        warning.contains("WARN") && warning.contains("NOAUTH"),
        "{warning}"
    );
    assert_eq!(
        text.matches("replica cannot connect").count(),
        1,
        "said at every retry:\n{text}"
    );
    assert_eq!(
        redis.cli(&[
            "-a",
            "hunter2",
            "--no-auth-warning",
            "CONFIG",
            "SET",
            "requirepass",
            ""
        ]),
        "OK"
    );
    ingress.wait_ready().await;
    assert_eq!(post_wh_1(&ingress, "user_in").await, StatusCode::ACCEPTED);
}

/// A Redis gone for over a minute is said again once a minute, by the job
/// writers and by the replica (which serves its last copy meanwhile), each
/// with how long it has lasted; a single line at the start of a long
/// outage is easily lost in the scrollback. Takes about 65 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_is_said_again_each_minute() {
    let mut redis = RedisServer::start();
    let log_file = LogFile::new();
    let log = log_file.writer();
    let ingress = IngressProcess::spawn_logging(&[("TETHER_INGRESS_REDIS_URL", redis.url())], log);
    ingress.wait_ready().await;
    redis.kill();
    let logged = || log_file.text();
    let said = |text: &str| {
        text.contains("job writer still cannot connect to redis")
            && text.contains("replica still cannot reach redis")
    };
    assert!(
        eventually(Duration::from_secs(100), || async { said(&logged()) }).await,
        "no reminder after 100 s:\n{}",
        logged()
    );
    let text = logged();
    for reminder in [
        "job writer still cannot connect to redis",
        "replica still cannot reach redis",
    ] {
        let line = text.lines().find(|l| l.contains(reminder)).unwrap();
        let secs: u64 = line
            .split("down_for_secs=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no down_for_secs in {line}"));
        assert!((60..100).contains(&secs), "{line}");
    }
    assert_eq!(
        text.matches("replica lost its Redis connection").count(),
        1,
        "{text}"
    );
}

/// A Redis that closes clients idle for a second (`timeout 1`, as managed
/// Redis often sets a longer one) does not close the ingress's: each idle
/// connection sends `PING` every `redis.keepalive_ms` (300 ms here). Before,
/// a quiet ingress lost every connection each `timeout`: its job writers
/// reconnected and its replica resynced the whole control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_outlive_a_redis_timeout() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_idle", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    drop(r);
    assert_eq!(redis.cli(&["CONFIG", "SET", "timeout", "1"]), "OK");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingress.toml");
    std::fs::write(&config, "[redis]\nkeepalive_ms = 300\n").unwrap();
    let log_file = LogFile::new();
    let log = log_file.writer();
    let env = [
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        ("TETHER_INGRESS_LOG", "info".to_owned()),
    ];
    let ingress = IngressProcess::spawn_configured(Some(&config), &env, log);
    ingress.wait_ready().await;
    let post = || post_wh_1(&ingress, "user_idle");
    assert_eq!(post().await, StatusCode::ACCEPTED);
    // What is under test is idle time itself: three times Redis's timeout.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(post().await, StatusCode::ACCEPTED);
    let text = log_file.text();
    assert!(
        !text.contains("lost its redis connection")
            && !text.contains("lost its Redis connection")
            && !text.contains("Connection closed"),
        "a connection was closed while idle:\n{text}"
    );
    assert_eq!(
        ingress.metric_value("tether_replica_resyncs_total").await,
        1.0,
        "the replica resynced again:\n{text}"
    );
}

/// Control-plane values the backend wrote in a form the ingress cannot use
/// as written are counted and logged (the first key of each view per resync
/// or change, never the value), and read as the backend's JavaScript reads
/// them where that is safe. Before, every one was dropped without a word:
/// a key whose `rateLimitPerSec` was `2.5`, or an outreach configuration
/// whose `processId` was a number, was refused (401, 404) with nothing in
/// the log or the metrics to say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_values_that_cannot_be_used_are_counted_and_logged() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    // Works at the default limit (the limit is not a whole number).
    put_key(
        &r,
        "key_fraction",
        r#"{"userId":"u_1","orgId":"o_1","rateLimitPerSec":2.5}"#,
    )
    .await;
    // Refused: `active` is neither true nor false, and a revocation must hold.
    put_key(
        &r,
        "key_odd_active",
        r#"{"userId":"u_1","orgId":"o_1","active":"no"}"#,
    )
    .await;
    put_key(&r, "key_plain", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    // Named by something other than the key's SHA-256 in hex: nothing can
    // match it (a backend that hashed to base64 would refuse every caller).
    set_string(
        &r,
        "tether:apikey:ySz2Ruvw7z9WnYbG8hAo8G4pCj5eA8ZvVd0hF3tXf4I=".into(),
        r#"{"userId":"u_1","orgId":"o_1"}"#,
    )
    .await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    // A numeric processId is set, as `if (!config.processId)` reads it.
    set_string(
        &r,
        "tether:outreach:config:cfg_num".into(),
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":42,"promptId":null}"#,
    )
    .await;
    let log_file = LogFile::new();
    let ingress = IngressProcess::spawn_logging(
        &[("TETHER_INGRESS_REDIS_URL", redis.url())],
        log_file.writer(),
    );
    ingress.wait_ready().await;
    assert_eq!(
        post_wh_1(&ingress, "key_fraction").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post_wh_1(&ingress, "key_odd_active").await,
        StatusCode::UNAUTHORIZED
    );
    let outreach = http::Request::post(format!("{}/api/webhook/outreach", ingress.base()))
        .header("authorization", "Bearer key_plain")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"configurationId":"cfg_num","email":"a@b.c"}"#,
        )))
        .unwrap();
    assert_eq!(
        http_client().request(outreach).await.unwrap().status(),
        StatusCode::OK
    );
    let bad = |view: &'static str| {
        let ingress = &ingress;
        async move {
            ingress
                .metric_value(&format!(
                    "tether_replica_bad_values_total{{view=\"{view}\"}}"
                ))
                .await
        }
    };
    assert_eq!(bad("api_keys").await, 3.0);
    assert_eq!(bad("outreach_configs").await, 0.0);
    let text = log_file
        .line_with("view=\"api_keys\"", Duration::from_secs(5))
        .await;
    assert!(text.contains("WARN") && text.contains("count=3"), "{text}");
    let first = [
        sha256_hex("key_fraction"),
        sha256_hex("key_odd_active"),
        "ySz2Ruvw7z9WnYbG8hAo8G4pCj5eA8ZvVd0hF3tXf4I=".to_owned(),
    ];
    assert!(
        first
            .iter()
            .any(|h| text.contains(&format!("tether:apikey:{h}"))),
        "{text}"
    );

    // A change made while serving is said at once, under its own key, and
    // the value itself never reaches the log.
    set_string(
        &r,
        "tether:outreach:config:cfg_garbled".into(),
        "processId=p_secret_marker",
    )
    .await;
    assert!(
        eventually(WITHIN, || async { bad("outreach_configs").await == 1.0 }).await,
        "the garbled configuration was not counted"
    );
    let text = log_file
        .line_with("tether:outreach:config:cfg_garbled", Duration::from_secs(5))
        .await;
    assert!(text.contains("is not a JSON object"), "{text}");
    assert!(
        !log_file.text().contains("p_secret_marker"),
        "{}",
        log_file.text()
    );

    // A backend rewriting a bad record at every request (a last-used time)
    // gets it counted each time it is read, and at most a line a second.
    let lines = || {
        log_file
            .text()
            .lines()
            .filter(|l| l.contains("view=\"api_keys\""))
            .count()
    };
    let (lines_before, counted_before) = (lines(), bad("api_keys").await);
    let started = std::time::Instant::now();
    for i in 0..300 {
        put_key(
            &r,
            "key_fraction",
            &format!(r#"{{"userId":"u_1","orgId":"o_1","rateLimitPerSec":2.5,"lastUsedAt":{i}}}"#),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seconds = started.elapsed().as_secs() as usize;
    assert!(
        eventually(WITHIN, || async {
            bad("api_keys").await >= counted_before + 30.0
        })
        .await,
        "the rewrites were not counted"
    );
    let said = lines() - lines_before;
    assert!(
        (1..=seconds + 2).contains(&said),
        "{said} lines for 300 rewrites over {seconds} s"
    );
}

/// A resync asks Redis only for the keys of the views: the keys the
/// ingress keeps under the same prefix itself (`idempotency:`, one per
/// request with an `Idempotency-Key` for a day) stay in Redis. Before, the
/// scan matched `tether:*` and Redis sent every one of their names back
/// with every resync: 200,000 of them were 9.2 MB here, read and
/// thrown away. A prefix holding glob characters is still matched only by
/// itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resync_is_not_sent_the_ingresss_own_keys() {
    let redis = RedisServer::start();
    let r = redis.client().await;
    let prefix = "t[1]*:";
    let mut config = config_for(&redis.url());
    config.redis.key_prefix = prefix.to_owned();
    set_string(
        &r,
        format!("{prefix}apikey:{}", sha256_hex("key_in_prefix")),
        r#"{"userId":"u_1","orgId":"o_1"}"#,
    )
    .await;
    let _: () =
        fred::prelude::SetsInterface::sadd(&r, format!("{prefix}triggers:o_1:wh_1"), "wf_a")
            .await
            .unwrap();
    // Look-alikes a wider pattern would match.
    set_string(
        &r,
        format!("t1x:apikey:{}", sha256_hex("key_other")),
        r#"{"userId":"u_1","orgId":"o_1"}"#,
    )
    .await;
    for chunk in 0..200 {
        let pairs: Vec<(String, String)> = (0..1000)
            .map(|i| {
                (
                    format!("{prefix}idempotency:o_1:workflow:{chunk:04}{i:04}"),
                    "1".to_owned(),
                )
            })
            .collect();
        let _: () = fred::prelude::KeysInterface::mset(&r, pairs).await.unwrap();
    }
    let sent = || {
        redis
            .cli(&["INFO", "stats"])
            .lines()
            .find_map(|l| l.strip_prefix("total_net_output_bytes:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = sent();
    let ingress = Ingress::start_with(config).await;
    let during = sent() - before;
    assert!(
        during < 1 << 20,
        "Redis sent {during} bytes to load one key and one trigger"
    );
    assert_eq!(
        ingress.wh_1_status("key_in_prefix").await,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        ingress.wh_1_status("key_other").await,
        StatusCode::UNAUTHORIZED
    );
}
