//! The spool fallback and its replay. With a spool ([`crate::spool`])
//! configured, jobs Redis does not take (disconnected, timeout, refused) are
//! synced to local disk instead and the caller still hears success; the
//! replay task writes them to Redis once it is back, segments in order,
//! records in order, through the lanes (fred only for a cluster key no lane
//! owns). A write whose late reply settled its ticket is skipped (see
//! `tickets`); any other timed-out write may have landed too: the replayed
//! stream entry is then a duplicate a worker drops by (`requestId`,
//! `workflowId`); a replayed BullMQ job finds its id taken and adds nothing.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::prelude::*;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{
    bullmq,
    error::SinkError,
    job::Stored,
    lane::Due,
    replicas, streams,
    tickets::{Fate, Ticket, Tickets},
    writers::Writers,
};
use crate::{
    metrics as m,
    redis::{Outage, Say},
    settings::{Settings, SharedSettings},
    spool::{self, Kind, Record, Spool},
};

/// Writes one spooled record in the layout it was spooled in: through the
/// lane that reaches its key, where a write that times out on a connection
/// that stays open is settled by its late reply rather than written again;
/// or through the shared fred client (a cluster key no lane owns). `Ok(true)`
/// when fred wrote it (its replicas are then confirmed separately; a lane's
/// batches carry their own `WAIT`).
async fn write_record(
    writers: &Writers,
    tickets: Option<&Tickets>,
    record: &Record,
    settings: &Settings,
) -> Result<bool, SinkError> {
    let key = match &record.kind {
        Kind::Stream(stream) => Some(stream.clone()),
        Kind::BullmqJob => bullmq::record_key(record),
        // Never handed here: the replay reads them itself.
        Kind::Pending { .. } | Kind::Settled(_) => return Ok(false),
    };
    let Some(lane) = key.as_deref().and_then(|k| writers.replay_lane(k)) else {
        let client = writers.shared();
        let written = match &record.kind {
            Kind::Stream(stream) => streams::write_record(client, stream, record, settings).await,
            _ => bullmq::write_record(client, record, settings).await,
        };
        return written.map(|()| true).map_err(SinkError::from);
    };
    let due = Due::of(settings, Instant::now());
    let sent = match &record.kind {
        Kind::Stream(stream) => streams::send_record(lane, stream, record, settings, due).await,
        _ => bullmq::send_record(lane, record, due).await,
    };
    match (sent, tickets) {
        // The connection stayed open: its late reply tells.
        (Err(SinkError::Timeout(Some(ticket))), Some(tickets)) => {
            match tickets.settled(ticket).await {
                Fate::Stored => Ok(false),
                Fate::Pending | Fate::Replay => Err(SinkError::Lost),
            }
        }
        (sent, _) => sent.map(|()| false),
    }
}

/// How a replay pass ended.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Every sealed segment was replayed.
    Done,
    /// It stopped at the records of a write whose late reply may still come.
    Waiting,
}

/// Whether a record is a marker or a settlement rather than a job.
fn is_bookkeeping(record: &Record) -> bool {
    matches!(record.kind, Kind::Pending { .. } | Kind::Settled(_))
}

/// Replays every sealed segment; `resume` remembers how far a segment got
/// when Redis went away mid-way, or when it reached a pending ticket.
async fn replay(
    spool: &Spool,
    writers: &Writers,
    wait: Option<(u32, Duration)>,
    tickets: Option<&Tickets>,
    settings: &SharedSettings,
    resume: &mut Option<(std::path::PathBuf, usize)>,
) -> Result<Pass, SinkError> {
    let replayed = metrics::counter!(m::SPOOL_REPLAYED);
    let skipped = metrics::counter!(m::SPOOL_SKIPPED);
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
        let len = segment.records.len();
        while from < len {
            match segment.records[from].kind {
                Kind::Settled(_) => {
                    from += 1;
                    continue;
                }
                Kind::Pending { ticket, records } => {
                    match tickets.and_then(|t| t.fate(ticket)) {
                        Some(Fate::Pending) => {
                            *resume = Some((path, from));
                            return Ok(Pass::Waiting);
                        }
                        // Redis stored it after all: its copy is skipped.
                        Some(Fate::Stored) => {
                            let next = (from + 1).saturating_add(records as usize).min(len);
                            skipped.increment((next - from - 1) as u64);
                            from = next;
                        }
                        // Refused, its connection closed, or a previous
                        // run's that nobody settled: replayed.
                        _ => from += 1,
                    }
                    if let Some(t) = tickets {
                        t.forget(ticket);
                    }
                    continue;
                }
                Kind::Stream(_) | Kind::BullmqJob => {}
            }
            let s = settings.load();
            let end = segment.records[from..]
                .iter()
                .take(256)
                .position(is_bookkeeping)
                .map_or((from + 256).min(len), |n| from + n);
            // One connection writes them in order, pipelined.
            let results = futures::future::join_all(
                segment.records[from..end]
                    .iter()
                    .map(|r| write_record(writers, tickets, r, &s)),
            )
            .await;
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            let by_fred = results[..ok].iter().any(|r| matches!(r, Ok(true)));
            // With wait_replicas, what was written counts only once the
            // replicas confirm it; else it is written again next time.
            if let (Some((replicas, timeout)), true) = (wait, by_fred)
                && let Err(e) = replicas::confirm_now(writers.shared(), replicas, timeout).await
            {
                *resume = Some((path, from));
                return Err(e);
            }
            replayed.increment(ok as u64);
            from += ok;
            if let Some(Err(e)) = results.into_iter().nth(ok) {
                *resume = Some((path, from));
                return Err(e);
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
    Ok(Pass::Done)
}

/// Reads the settlements a previous run left in the spool, so its copies
/// of writes Redis stored are skipped after a restart too.
async fn remember_settlements(spool: &Spool, tickets: &Tickets) {
    let Ok(segments) = spool.seal().await else {
        return;
    };
    for path in segments {
        if let Ok(segment) = Spool::read(path).await {
            for record in &segment.records {
                if let Kind::Settled(ticket) = record.kind {
                    tickets.remember_stored(ticket);
                }
            }
        }
    }
}

/// Appends a settlement record for every ticket settled stored, so the
/// skip survives a restart.
async fn record_settlements(spool: Spool, mut settled: mpsc::UnboundedReceiver<Ticket>) {
    while let Some(first) = settled.recv().await {
        let mut frames = Vec::new();
        spool::encode_settled(&mut frames, first);
        while let Ok(next) = settled.try_recv() {
            spool::encode_settled(&mut frames, next);
        }
        if let Err(e) = spool.append(frames).await {
            warn!(error = %e, "cannot record a late reply in the spool; its copy may be replayed after a restart");
        }
    }
}

/// Where a request's jobs go when Redis does not take them: the spool, if
/// there is one, and under a ticket when Redis may still say it stored them.
pub(super) struct Fallback<'a> {
    pub(super) spool: Option<&'a Spool>,
    pub(super) tickets: Option<&'a Tickets>,
    /// How many records the request's jobs are: one per job.
    pub(super) records: usize,
}

impl Fallback<'_> {
    /// With a spool: writes the records `encode` makes to it (after the
    /// marker of `error`'s ticket, when it has one) and reports
    /// [`Stored::Spooled`]. Without: `error`.
    pub(super) async fn spool_or<T>(
        self,
        error: SinkError,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Stored<T>, SinkError> {
        let Some(spool) = self.spool else {
            return Err(error);
        };
        let mut frames = Vec::new();
        let ticket = error.ticket().filter(|_| self.tickets.is_some());
        if let Some(ticket) = ticket {
            let records = u32::try_from(self.records).unwrap_or(u32::MAX);
            spool::encode_pending(&mut frames, ticket, records);
        }
        encode(&mut frames);
        let (redis, unconfirmed) = (error.reason(), error.unconfirmed());
        match spool.append(frames).await {
            Ok(()) => {
                metrics::counter!(m::SPOOL_WRITTEN).increment(self.records as u64);
                Ok(Stored::Spooled)
            }
            Err(spool) => {
                if let (Some(ticket), Some(tickets)) = (ticket, self.tickets) {
                    tickets.forget(ticket);
                }
                Err(SinkError::Spool {
                    redis,
                    unconfirmed,
                    spool,
                })
            }
        }
    }
}

impl Fallback<'_> {
    /// [`Self::spool_or`] for a request whose records are appended in
    /// `parts` (each encoded by `encode(part, out)`), so that a large
    /// fan-out is never held whole in memory. Parts spooled before one the
    /// spool refused stay and are replayed, so that refusal is answered as
    /// unconfirmed. A write with a ticket goes whole, after its marker.
    pub(super) async fn spool_parts<T>(
        self,
        error: SinkError,
        parts: usize,
        mut encode: impl FnMut(usize, &mut Vec<u8>),
    ) -> Result<Stored<T>, SinkError> {
        let Some(spool) = self.spool else {
            return Err(error);
        };
        if parts <= 1 || error.ticket().is_some() {
            return self
                .spool_or(error, |out| (0..parts).for_each(|part| encode(part, out)))
                .await;
        }
        let (redis, unconfirmed) = (error.reason(), error.unconfirmed());
        for part in 0..parts {
            let mut frames = Vec::new();
            encode(part, &mut frames);
            if let Err(spool) = spool.append(frames).await {
                return Err(SinkError::Spool {
                    redis,
                    unconfirmed: unconfirmed || part > 0,
                    spool,
                });
            }
        }
        metrics::counter!(m::SPOOL_WRITTEN).increment(self.records as u64);
        Ok(Stored::Spooled)
    }
}

/// Starts replaying `spool` into Redis through `client`: at start-up and
/// whenever something is spooled, as soon as Redis is connected; segments
/// in order, records in order. With `tickets`, first reads a previous run's
/// settlements, records this run's, and waits at a pending ticket's records
/// until it is settled. Runs until `stop` changes.
pub(super) fn spawn_replay(
    spool: Spool,
    writers: Writers,
    wait: Option<(u32, Duration)>,
    tickets: Option<(Arc<Tickets>, mpsc::UnboundedReceiver<Ticket>)>,
    settings: SharedSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (tickets, recorder) = match tickets {
            Some((tickets, settled)) => {
                remember_settlements(&spool, &tickets).await;
                let recorder = tokio::spawn(record_settlements(spool.clone(), settled));
                (Some(tickets), Some(recorder))
            }
            None => (None, None),
        };
        let mut resume: Option<(std::path::PathBuf, usize)> = None;
        let mut backoff = Duration::from_millis(50);
        // A refusal can last hours (a key of the wrong type, Redis out of
        // memory): said when it starts, once a minute while it lasts, and
        // when it ends; each retry is counted, not logged.
        let mut paused: Option<Outage> = None;
        loop {
            let mut waiting = false;
            // After a failed pass the next waits out its backoff, even if
            // more is spooled meanwhile: a Redis that is up but refuses
            // writes (out of memory, a key of the wrong type) would
            // otherwise be retried, logged and a segment sealed once per
            // spooled request.
            let mut failed = false;
            if spool.bytes() > 0 && writers.shared().is_connected() {
                match replay(
                    &spool,
                    &writers,
                    wait,
                    tickets.as_deref(),
                    &settings,
                    &mut resume,
                )
                .await
                {
                    Ok(pass) => {
                        waiting = pass == Pass::Waiting;
                        backoff = Duration::from_millis(50);
                        if let Some(outage) = paused.take() {
                            info!(
                                paused_for_secs = outage.lasted().as_secs(),
                                "spool replay resumed"
                            );
                        }
                    }
                    Err(e) => {
                        failed = true;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        metrics::counter!(m::SPOOL_REPLAY_FAILURES, "reason" => e.reason())
                            .increment(1);
                        match Outage::note(&mut paused, Instant::now()) {
                            Say::Began => warn!(
                                error = %e,
                                "spool replay paused; retrying (every 2 s at most) until redis takes the writes"
                            ),
                            Say::Lasts(paused_for) => warn!(
                                error = %e,
                                paused_for_secs = paused_for.as_secs(),
                                "spool replay still paused"
                            ),
                            Say::Nothing => {
                                debug!(error = %e, retry_in = ?backoff, "spool replay retry failed");
                            }
                        }
                    }
                }
            }
            let pause = if spool.bytes() > 0 {
                backoff
            } else {
                Duration::from_secs(1)
            };
            let settled = async {
                match (&tickets, waiting) {
                    (Some(t), true) => t.next_settlement().await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                () = spool.appended(), if !waiting && !failed => {}
                () = settled => {}
                () = tokio::time::sleep(if waiting { Duration::from_secs(1) } else { pause }) => {}
                _ = stop.changed() => {
                    if let Some(recorder) = recorder {
                        recorder.abort();
                    }
                    return;
                }
            }
        }
    })
}
