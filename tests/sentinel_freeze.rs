//! A Sentinel primary frozen under load (its own test binary: the
//! process-wide metrics must not mix with the failover test's).
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{collections::HashMap, time::Duration};

use fred::prelude::*;
use support::{sentinel::Sentinels, *};

const KEY: &str = "user_sentinel_freeze";
const STREAM: &str = "tether:jobs:workflow";
const WAIT: Duration = Duration::from_secs(40);

async fn client_of(port: u16) -> Client {
    client_at(&format!("redis://127.0.0.1:{port}")).await
}

/// A Sentinel primary frozen (SIGSTOP) for less than the sentinels'
/// down-after time, under load with a spool: no failover, the writers stall
/// and the spool answers, and after SIGCONT every 202's job is on the
/// primary exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_loses_no_202_and_writes_none_twice() {
    let deployment = Sentinels::start().await;
    let r = client_of(deployment.primary.port).await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    let spool = tempfile::tempdir().unwrap();
    let mut config = config_for(&deployment.url());
    config.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(config.validate().unwrap()).await;

    let load = Load::start(&ingress.uri(""), KEY, r#"{"webhookId":"wh_1"}"#, 8, "frz");
    load.until_accepted(200, WAIT).await;
    let pid = deployment.primary.pid();
    signal(pid, "STOP");
    // Kept well under the sentinels' 1 s down-after time.
    load.until_accepted(50, WAIT).await;
    signal(pid, "CONT");
    load.until_accepted(200, WAIT).await;
    let outcomes = load.stop().await;
    let (accepted, others) = accepted_ids(&outcomes);
    assert_eq!(others, 0, "with a spool every answer is 202");
    assert_eq!(
        deployment.primary_port(),
        deployment.primary.port,
        "a failover happened"
    );
    assert!(
        eventually(WAIT, || async {
            let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
            accepted.iter().all(|id| stored.contains_key(*id))
        })
        .await,
        "a 202's job is missing on the primary"
    );
    let stored: HashMap<String, usize> = request_ids_in(&r, STREAM).await;
    let twice: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).take(5).collect();
    assert!(twice.is_empty(), "written twice: {twice:?}");
}
