//! Redis behind Sentinel (one primary, two replicas, three sentinels, all
//! real processes): the primary SIGKILLed under load with `wait_replicas =
//! 1` and a spool. Every 202's job is on the new primary, 202s go on, the
//! writers and the replica follow the failover (tracking re-armed), and a
//! key revoked on the new primary stops working within a second.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use fred::prelude::*;
use http::StatusCode;
use support::{sentinel::Sentinels, *};

const KEY: &str = "user_sentinel";
const STREAM: &str = "tether:jobs:workflow";
const WAIT: Duration = Duration::from_secs(40);

async fn client_of(port: u16) -> Client {
    client_at(&format!("redis://127.0.0.1:{port}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_killed_under_load_loses_no_202_and_the_replica_follows() {
    let mut deployment = Sentinels::start().await;
    let r = client_of(deployment.primary.port).await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    put_key(
        &r,
        "user_sentinel_other",
        r#"{"userId":"u_2","orgId":"o_1"}"#,
    )
    .await;
    drop(r);

    let spool = tempfile::tempdir().unwrap();
    let ingress = confirming_ingress(&deployment.url(), spool.path()).await;

    let load = Load::start(&ingress.uri(""), KEY, r#"{"webhookId":"wh_1"}"#, 16, "sen");
    load.until_accepted(300, WAIT).await;
    let old = deployment.primary.port;
    deployment.primary.kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Writes acknowledged by Redis (not the spool) again: the writers found
    // the new primary and its replica confirms.
    assert!(
        redis_writes_resume(&ingress, WAIT).await,
        "writes never resumed after the failover"
    );
    let resumed = killed.elapsed();
    load.until_accepted(300, WAIT).await;
    let outcomes = load.stop().await;
    let (accepted, others) = accepted_ids(&outcomes);

    let new = deployment.primary_port();
    assert!(new != old && new != 0, "no failover happened");
    // Through the sentinels, as the ingress goes: on a slow machine they may
    // reconfigure the deployment again (a second failover, or a `CLIENT
    // KILL` of the new primary's clients), and a client of one port would
    // then read a replica or a node in transition.
    let r = client_at(&deployment.url()).await;
    // Spooled jobs replay into the new primary; then every 202 is there.
    assert!(
        eventually(WAIT, || async {
            let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
            accepted.iter().all(|id| stored.contains_key(*id))
        })
        .await,
        "a 202's job is missing on the new primary"
    );
    eprintln!(
        "figures: {} requests acknowledged (202), lost 0, {others} answered otherwise; \
         writes resumed {:.1} s after the primary's SIGKILL",
        accepted.len(),
        resumed.as_secs_f64()
    );

    // The admin CLI reaches the new primary through the sentinels too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .args(["keys", "count"])
        .env("TETHER_INGRESS_REDIS_URL", deployment.url())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");

    // The replica tracks the new primary: a revocation there counts.
    let (status, _, _) = ingress
        .workflow(Some("user_sentinel_other"), r#"{"webhookId":"wh_1"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let _: i64 = r
        .del(format!(
            "tether:apikey:{}",
            sha256_hex("user_sentinel_other")
        ))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(1), || async {
            ingress
                .workflow(Some("user_sentinel_other"), r#"{"webhookId":"wh_1"}"#)
                .await
                .0
                == StatusCode::UNAUTHORIZED
        })
        .await,
        "a key revoked on the new primary still worked after 1 s"
    );
}
