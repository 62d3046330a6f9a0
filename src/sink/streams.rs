//! The stream layout: how jobs are written as Redis Streams entries
//! (`XADD … MAXLEN ~ N *`, fields in the contract's order), and how they are
//! framed for the spool and written back from it. The sink's other parts
//! never name a stream command; a second layout (BullMQ) sits beside this
//! one.
//!
//! A request's jobs are native `XADD`s, one per match, encoded straight
//! into its lane's buffer (the payload is written once per entry on the
//! wire and copied nowhere else): Redis spends less on a native `XADD` than
//! on one run from a script (BENCHMARKS.md §18).

use bytes::{Bytes, BytesMut};
use fred::{
    prelude::*,
    types::streams::{XCapKind, XCapTrim},
};
use redis_protocol::resp2::types::BorrowedFrame;

use super::{
    error::SinkError,
    job::{OutreachJob, WorkflowJobs},
    lane::{Due, Lane},
    wire,
};
use crate::{
    settings::Settings,
    spool::{self, Record},
};

/// The most fields an entry has (an outreach job's nine).
const MAX_FIELDS: usize = 9;

/// `XADD stream MAXLEN ~ maxlen *`: every entry's command up to its fields.
fn xadd_head(stream: &[u8], maxlen: i64) -> [BorrowedFrame<'_>; 6] {
    [
        BorrowedFrame::BulkString(b"XADD"),
        BorrowedFrame::BulkString(stream),
        BorrowedFrame::BulkString(b"MAXLEN"),
        BorrowedFrame::BulkString(b"~"),
        BorrowedFrame::Integer(maxlen),
        BorrowedFrame::BulkString(b"*"),
    ]
}

/// Appends `XADD stream MAXLEN ~ maxlen * field value…` to `out`.
fn xadd<const N: usize>(
    out: &mut BytesMut,
    stream: &[u8],
    maxlen: i64,
    pairs: [(&'static str, &Bytes); N],
) -> Result<(), String> {
    let mut args = [const { BorrowedFrame::Null }; 6 + 2 * MAX_FIELDS];
    let head = xadd_head(stream, maxlen);
    let fields = pairs.iter().flat_map(|(k, v)| {
        [
            BorrowedFrame::BulkString(k.as_bytes()),
            BorrowedFrame::BulkString(&v[..]),
        ]
    });
    let mut used = 0;
    for (slot, frame) in args.iter_mut().zip(head.into_iter().chain(fields)) {
        *slot = frame;
        used += 1;
    }
    if used != 6 + 2 * N {
        return Err(format!("an entry of {N} fields does not fit an XADD"));
    }
    wire::encode(out, &args[..used])
}

/// Stores every entry of `jobs` on the workflow stream through `lane`, one
/// `XADD` each; `Ok` once Redis acknowledged all of them (should one be
/// refused, the others stay written, and the request is refused).
pub(super) async fn write_workflow(
    lane: &Lane,
    jobs: &WorkflowJobs,
    settings: &Settings,
    due: Due,
) -> Result<(), SinkError> {
    let Ok(count @ 1..) = u32::try_from(jobs.len()) else {
        return Ok(());
    };
    let (stream, maxlen) = (settings.workflow_stream.as_bytes(), settings.streams.maxlen);
    let ack = lane.send(count, false, due, |out| {
        jobs.workflows
            .iter()
            .try_for_each(|workflow| xadd(out, stream, maxlen, jobs.pairs(workflow)))
    })?;
    ack.await.map(drop)
}

/// Stores one outreach job; returns its stream entry id once Redis
/// acknowledged it.
pub(super) async fn write_outreach(
    lane: &Lane,
    job: &OutreachJob,
    settings: &Settings,
    due: Due,
) -> Result<Bytes, SinkError> {
    let (stream, maxlen) = (settings.outreach_stream.as_bytes(), settings.streams.maxlen);
    let ack = lane.send(1, true, due, |out| xadd(out, stream, maxlen, job.pairs()))?;
    match ack.await? {
        Some(id) => Ok(id),
        None => Err(SinkError::Redis(Error::new(
            ErrorKind::Protocol,
            "XADD answered without an entry id",
        ))),
    }
}

/// The stream cap: `MAXLEN ~ maxlen`.
fn cap(settings: &Settings) -> (XCapKind, XCapTrim, i64) {
    (
        XCapKind::MaxLen,
        XCapTrim::AlmostExact,
        settings.streams.maxlen,
    )
}

/// One replayed write's deadline.
fn options(settings: &Settings) -> Options {
    Options {
        timeout: Some(settings.redis.command_timeout_ms),
        ..Default::default()
    }
}

/// Appends the spool frame of one entry to `out`.
fn spool_frame<const N: usize>(
    out: &mut Vec<u8>,
    stream: &Key,
    pairs: [(&'static str, &Bytes); N],
) {
    spool::encode(
        out,
        stream.as_bytes(),
        pairs.into_iter().map(|(k, v)| (k.as_bytes(), &v[..])),
    );
}

/// Appends the spool frames of every entry of `jobs` to `out`.
pub(super) fn spool_workflow(out: &mut Vec<u8>, jobs: &WorkflowJobs, settings: &Settings) {
    for workflow in jobs.workflows.iter() {
        spool_frame(out, &settings.workflow_stream, jobs.pairs(workflow));
    }
}

/// Appends the spool frame of `job` to `out`.
pub(super) fn spool_outreach(out: &mut Vec<u8>, job: &OutreachJob, settings: &Settings) {
    spool_frame(out, &settings.outreach_stream, job.pairs());
}

/// Writes one record read back from the spool to the stream it names,
/// through `lane`.
pub(super) async fn send_record(
    lane: &Lane,
    stream: &[u8],
    record: &Record,
    settings: &Settings,
    due: Due,
) -> Result<(), SinkError> {
    let maxlen = settings.streams.maxlen;
    let ack = lane.send(1, false, due, |out| {
        let frames: Vec<BorrowedFrame<'_>> =
            xadd_head(stream, maxlen)
                .into_iter()
                .chain(record.fields.iter().flat_map(|(k, v)| {
                    [BorrowedFrame::BulkString(k), BorrowedFrame::BulkString(v)]
                }))
                .collect();
        wire::encode(out, &frames)
    })?;
    ack.await.map(drop)
}

/// Writes one record read back from the spool to the stream it names,
/// through the shared fred client (a cluster key no lane owns).
pub(super) async fn write_record(
    client: &Client,
    stream: &Bytes,
    record: &Record,
    settings: &Settings,
) -> Result<(), Error> {
    let fields: Vec<(Key, Value)> = record
        .fields
        .iter()
        .map(|(k, v)| (Key::from(k.clone()), Value::Bytes(v.clone())))
        .collect();
    client
        .with_options(&options(settings))
        .xadd::<Value, _, _, _, _>(Key::from(stream.clone()), false, cap(settings), "*", fields)
        .await
        .map(drop)
}
