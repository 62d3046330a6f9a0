//! The replica's resync after the first load, against a real redis-server.
//! Its own test binary: it reads the process-wide resync counter, which
//! other ingresses in the same process would move too.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

const WITHIN: Duration = Duration::from_secs(1);

/// A resync after the first load is paced and reads small pages, with the
/// next page read while the previous one is applied. Writes that race it
/// (keys revoked and added while their pages are in flight) must end up as
/// Redis holds them: a page read before a write is never applied over the
/// re-read that write caused.
#[tokio::test]
async fn writes_racing_a_paced_resync_are_never_lost() {
    let (redis, r, ingress) = start_with_key_and_trigger().await;
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

    // Revoke keys (twenty per round, spread over the keyspace) and add one,
    // until the resync is done.
    let mut revoked = Vec::new();
    let mut added = Vec::new();
    let mut during = 0;
    for round in 0..N / 20 {
        let doomed: Vec<String> = (0..20)
            .map(|j| format!("bulk_{}", ((round * 20 + j) * 7919) % N))
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
    assert!(during > 10, "the writes raced the resync ({during} rounds)");
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
