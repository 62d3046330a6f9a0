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
    types::streams::{XCap, XCapKind, XCapTrim},
};

use super::{
    error::SinkError,
    job::{OutreachJob, WorkflowJobs},
    lane::{self, Due, Lane, PART_BYTES},
    wire::{self, Arg},
};
use crate::{
    id::Id,
    settings::Settings,
    spool::{self, Record},
};

/// Appends `XADD stream MAXLEN ~ maxlen * field value…` to `out` (without
/// `MAXLEN ~ maxlen` where `maxlen` is 0: never trimmed).
fn xadd<'a, F>(out: &mut BytesMut, stream: &[u8], maxlen: i64, fields: F)
where
    F: IntoIterator<Item = (&'a [u8], &'a [u8])>,
    F::IntoIter: Clone,
{
    let head = [
        Arg::Bytes(b"XADD"),
        Arg::Bytes(stream),
        Arg::Bytes(b"MAXLEN"),
        Arg::Bytes(b"~"),
        Arg::Int(maxlen),
        Arg::Bytes(b"*"),
    ];
    let head = match maxlen {
        0 => &[head[0], head[1], head[5]][..],
        _ => &head[..],
    };
    let fields = fields
        .into_iter()
        .flat_map(|(k, v)| [Arg::Bytes(k), Arg::Bytes(v)]);
    wire::encode(out, head.iter().copied().chain(fields));
}

/// An entry's fields as [`xadd`] and the spool take them.
fn fields<'a, const N: usize>(
    pairs: [(&'static str, &'a Bytes); N],
) -> impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone {
    pairs.into_iter().map(|(k, v)| (k.as_bytes(), &v[..]))
}

/// Stores every entry of `jobs` on the workflow stream through `lane`, one
/// `XADD` each, in parts of at most [`PART_BYTES`]; `Ok` once Redis
/// acknowledged all of them. Should one be refused, or a part fail after
/// another was stored, what was stored stays and the request is refused
/// as [`SinkError::Partly`]: a retry may duplicate those entries.
pub(super) async fn write_workflow(
    lane: &Lane,
    jobs: &WorkflowJobs,
    settings: &Settings,
    due: Due,
) -> Result<(), SinkError> {
    let (stream, maxlen) = (settings.workflow_stream.as_bytes(), settings.streams.maxlen);
    let per_part = (PART_BYTES / (jobs.entry_bytes() + stream.len())).max(1);
    let parts = jobs.workflows.chunks(per_part);
    lane::in_parts(due, parts, |due, part| async move {
        let count = u32::try_from(part.len()).unwrap_or(u32::MAX);
        let ack = lane.send(count, false, due, |out| {
            each_entry(out, part, |out, workflow| {
                xadd(out, stream, maxlen, fields(jobs.pairs(workflow)));
            });
        })?;
        ack.await.map(drop)
    })
    .await
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
    let ack = lane.send(1, true, due, |out| {
        xadd(out, stream, maxlen, fields(job.pairs()));
    })?;
    match ack.await? {
        Some(id) => Ok(id),
        None => Err(SinkError::Redis(Error::new(
            ErrorKind::Protocol,
            "XADD answered without an entry id",
        ))),
    }
}

/// The stream cap: `MAXLEN ~ maxlen`, none where `maxlen` is 0.
fn cap(settings: &Settings) -> Result<XCap, Error> {
    match settings.streams.maxlen {
        0 => Ok(XCap::from(None::<()>)),
        maxlen => (XCapKind::MaxLen, XCapTrim::AlmostExact, maxlen).try_into(),
    }
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
    spool::encode(out, stream.as_bytes(), fields(pairs));
}

/// Appends the spool frames of every entry of `jobs` to `out`.
pub(super) fn spool_workflow(out: &mut Vec<u8>, jobs: &WorkflowJobs, settings: &Settings) {
    each_entry(out, &jobs.workflows, |out, workflow| {
        spool_frame(out, &settings.workflow_stream, jobs.pairs(workflow));
    });
}

/// A buffer that can make room ahead: a job writer's, or the spool's.
trait Room {
    fn filled(&self) -> usize;
    fn make_room(&mut self, additional: usize);
}

impl Room for BytesMut {
    fn filled(&self) -> usize {
        self.len()
    }
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl Room for Vec<u8> {
    fn filled(&self) -> usize {
        self.len()
    }
    fn make_room(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// Appends, with `entry`, the entry of each of `workflows` to `out`. The
/// others are the first's size but for their workflow id (and its length's
/// digits), so once the first is in, room for all of them is made at once:
/// growing by doubling copies all so far at each power of two, and held
/// about 3x a large request's entries at its peak.
fn each_entry<B: Room>(out: &mut B, workflows: &[Id], mut entry: impl FnMut(&mut B, &Id)) {
    let mut workflows = workflows.iter();
    if let Some(first) = workflows.next() {
        let start = out.filled();
        entry(out, first);
        let without_id = out.filled() - start - first.bytes().len();
        let ids: usize = workflows.clone().map(|w| w.bytes().len() + 20).sum();
        out.make_room(without_id * workflows.len() + ids);
    }
    for workflow in workflows {
        entry(out, workflow);
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
        let fields = record.fields.iter().map(|(k, v)| (&k[..], &v[..]));
        xadd(out, stream, maxlen, fields);
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
        .xadd::<Value, _, _, _, _>(
            Key::from(stream.clone()),
            false,
            cap(settings)?,
            "*",
            fields,
        )
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_xadd_is_capped_unless_maxlen_is_0() {
        let encoded = |maxlen| {
            let mut out = BytesMut::new();
            xadd(&mut out, b"s", maxlen, [(&b"f"[..], &b"v"[..])]);
            String::from_utf8(out.to_vec()).unwrap_or_default()
        };
        assert_eq!(
            encoded(1000),
            "*8\r\n$4\r\nXADD\r\n$1\r\ns\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n$1\r\n*\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
        assert_eq!(
            encoded(0),
            "*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nf\r\n$1\r\nv\r\n"
        );
    }
}
