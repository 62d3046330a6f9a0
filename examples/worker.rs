//! An example worker: reads `tether:jobs:workflow` with a consumer group,
//! drops duplicates, acknowledges, and takes over entries a dead consumer left.
//!
//! ```text
//! cargo run --example worker -- [REDIS_URL] [CONSUMER_NAME]
//! ```
//! It connects as the ingress does (`tether_ingress::redis_client`): a `rediss://`
//! URL uses `TETHER_INGRESS_REDIS_TLS_*` from the environment.
#![allow(missing_docs)]

use std::time::Duration;

use fred::prelude::*;
use tether_ingress::{RedisRole, RedisTarget, Worker, config::Config, redis_client};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let config_error =
        |e: tether_ingress::config::ConfigError| Error::new(ErrorKind::Config, e.to_string());
    let mut raw = Config::load(None).map_err(config_error)?;
    if let Some(url) = args.next() {
        raw.redis.url = url;
    }
    let consumer = args
        .next()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let config = raw.validate().map_err(config_error)?;
    let client = redis_client(&RedisTarget::of(&config.redis)?, RedisRole::Admin)?;
    client.init().await?;
    let worker = Worker::join(
        client,
        "tether:jobs:workflow",
        "workers",
        &consumer,
        "tether:",
    )
    .await?
    .claim_idle(Duration::from_secs(60));
    eprintln!("{consumer}: reading tether:jobs:workflow as group \"workers\" (Ctrl-C stops)");
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            polled = worker.poll(100, Duration::from_secs(5), |entry| async move {
                // A real worker starts the workflow here.
                println!(
                    "{} workflow={} org={} payload={}",
                    entry.id,
                    entry.get("workflowId").unwrap_or("?"),
                    entry.get("orgId").unwrap_or("?"),
                    entry.get("payload").unwrap_or("{}"),
                );
                Ok(())
            }) => {
                let polled = polled?;
                if polled.duplicates > 0 {
                    eprintln!("dropped {} duplicate(s)", polled.duplicates);
                }
            }
        }
    }
}
