//! The spool fallback and its replay. With a spool ([`crate::spool`])
//! configured, jobs Redis does not take (disconnected, timeout, refused) are
//! synced to local disk instead and the caller still hears success; the
//! replay task writes them to Redis once it is back, segments in order,
//! records in order. A timed-out write may have landed too: the replayed
//! stream entry is then a duplicate a worker drops by (`requestId`,
//! `workflowId`); a replayed BullMQ job finds its id taken and adds nothing.

use std::time::Duration;

use fred::prelude::*;
use tracing::{info, warn};

use super::{bullmq, error::SinkError, job::Stored, replicas, streams};
use crate::{
    metrics as m,
    settings::{Settings, SharedSettings},
    spool::{self, Kind, Record, Spool},
};

/// Writes one spooled record in the layout it was spooled in.
async fn write_record(client: &Client, record: &Record, settings: &Settings) -> Result<(), Error> {
    match &record.kind {
        Kind::BullmqJob => bullmq::write_record(client, record, settings).await,
        Kind::Stream(stream) => streams::write_record(client, stream, record, settings).await,
    }
}

/// Replays every sealed segment; `resume` remembers how far a segment got
/// when Redis went away mid-way.
async fn replay(
    spool: &Spool,
    client: &Client,
    wait: Option<(u32, Duration)>,
    settings: &SharedSettings,
    resume: &mut Option<(std::path::PathBuf, usize)>,
) -> Result<(), SinkError> {
    let replayed = metrics::counter!(m::SPOOL_REPLAYED);
    let segments = spool.seal().await.map_err(|spool| SinkError::Spool {
        redis: "replay",
        unconfirmed: false,
        spool,
    })?;
    for path in segments {
        let segment = Spool::read(path.clone())
            .await
            .map_err(|spool| SinkError::Spool {
                redis: "replay",
                unconfirmed: false,
                spool,
            })?;
        let mut from = match resume {
            Some((p, at)) if *p == path => *at,
            _ => 0,
        };
        if from == 0 {
            spool::report_skipped(&path, &segment);
        }
        while from < segment.records.len() {
            let s = settings.load();
            let end = (from + 256).min(segment.records.len());
            // One connection writes them in order; fred pipelines the batch.
            let results = futures::future::join_all(
                segment.records[from..end]
                    .iter()
                    .map(|r| write_record(client, r, &s)),
            )
            .await;
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            // With wait_replicas, what was written counts only once the
            // replicas confirm it; else it is written again next time.
            if let (Some((replicas, timeout)), true) = (wait, ok > 0)
                && let Err(e) = replicas::confirm_now(client, replicas, timeout).await
            {
                *resume = Some((path, from));
                return Err(e);
            }
            replayed.increment(ok as u64);
            from += ok;
            if let Some(Err(e)) = results.into_iter().nth(ok) {
                *resume = Some((path, from));
                return Err(e.into());
            }
        }
        *resume = None;
        spool
            .remove(path.clone())
            .await
            .map_err(|spool| SinkError::Spool {
                redis: "replay",
                unconfirmed: false,
                spool,
            })?;
        info!(segment = %path.display(), records = segment.records.len(), "spool segment replayed into redis");
    }
    Ok(())
}

/// With a spool: writes the frames `encode` makes to it and reports
/// [`Stored::Spooled`]. Without: `error`.
pub(super) async fn spool_or<T>(
    spool: Option<&Spool>,
    error: SinkError,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<Stored<T>, SinkError> {
    let Some(spool) = spool else {
        return Err(error);
    };
    let mut frames = Vec::new();
    encode(&mut frames);
    let (redis, unconfirmed) = (error.reason(), error.unconfirmed());
    match spool.append(frames).await {
        Ok(()) => {
            metrics::counter!(m::SPOOL_WRITTEN).increment(1);
            Ok(Stored::Spooled)
        }
        Err(spool) => Err(SinkError::Spool {
            redis,
            unconfirmed,
            spool,
        }),
    }
}

/// Starts replaying `spool` into Redis through `client`: at start-up and
/// whenever something is spooled, as soon as Redis is connected; segments
/// in order, records in order. Runs until `stop` changes.
pub(super) fn spawn_replay(
    spool: Spool,
    client: Client,
    wait: Option<(u32, Duration)>,
    settings: SharedSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut resume: Option<(std::path::PathBuf, usize)> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            if spool.bytes() > 0 && client.is_connected() {
                match replay(&spool, &client, wait, &settings, &mut resume).await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(e) => {
                        warn!(error = %e, "spool replay paused; retrying");
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            let wait = if spool.bytes() > 0 {
                backoff
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = spool.appended() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    })
}
