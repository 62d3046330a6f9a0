//! The stream layout: how jobs are written as Redis Streams entries
//! (`XADD … MAXLEN ~ N *`, fields in the contract's order), and how they are
//! framed for the spool and written back from it. The sink's other parts
//! never name a stream command; a second layout (BullMQ) sits beside this
//! one.
//!
//! A request with one match is one `XADD`. Several are one script call: the
//! `XADD`s run in Redis and the payload is sent once, one command per request
//! instead of one per job.

use bytes::Bytes;
use fred::{
    prelude::*,
    types::streams::{XCapKind, XCapTrim},
};

use super::job::{OutreachJob, WorkflowJobs};
use crate::{
    redis::eval_pipelined,
    settings::Settings,
    spool::{self, Record},
};

/// Adds one `tether:jobs:workflow` entry per workflow id, in the contract's
/// field order, every other field shared.
/// `KEYS[1]`: the stream; `ARGV`: maxlen, orgId, userId, webhookId, payload,
/// receivedAt, requestId, then the workflow ids. Answers how many it added.
const ADD_JOBS_SCRIPT: &str = r#"
for i = 8, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
    'workflowId', ARGV[i], 'orgId', ARGV[2], 'userId', ARGV[3],
    'webhookId', ARGV[4], 'payload', ARGV[5], 'receivedAt', ARGV[6],
    'requestId', ARGV[7])
end
return #ARGV - 7
"#;

/// Writes every entry of `jobs` in one script call: one command and the
/// payload sent once, instead of a command per entry.
async fn add_all(
    client: &Client,
    stream: &Key,
    settings: &Settings,
    jobs: &WorkflowJobs,
) -> Result<(), Error> {
    let mut args = Vec::with_capacity(10 + jobs.len());
    args.push(Value::from_static_str(ADD_JOBS_SCRIPT));
    args.push(Value::Integer(1));
    args.push(Value::Bytes(stream.clone().into_bytes()));
    args.push(Value::Integer(settings.streams.maxlen));
    for field in [
        &jobs.org_id,
        &jobs.user_id,
        &jobs.webhook_id,
        &jobs.payload,
        &jobs.received_at,
        &jobs.request_id,
    ] {
        args.push(Value::Bytes(field.clone()));
    }
    args.extend(
        jobs.workflows
            .iter()
            .map(|w| Value::Bytes(w.bytes().clone())),
    );
    let added: i64 = client.custom(eval_pipelined(client, &args), args).await?;
    if usize::try_from(added).ok() == Some(jobs.len()) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Unknown,
            "the job script added another number of entries",
        ))
    }
}

/// fred's form of an entry's fields.
fn fields<const N: usize>(pairs: [(&'static str, &Bytes); N]) -> Vec<(Key, Value)> {
    pairs
        .into_iter()
        .map(|(k, v)| (Key::from_static_str(k), Value::Bytes(v.clone())))
        .collect()
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

/// The stream cap: `MAXLEN ~ maxlen`.
fn cap(settings: &Settings) -> (XCapKind, XCapTrim, i64) {
    (
        XCapKind::MaxLen,
        XCapTrim::AlmostExact,
        settings.streams.maxlen,
    )
}

/// One job write's deadline.
fn options(settings: &Settings) -> Options {
    Options {
        timeout: Some(settings.redis.command_timeout_ms),
        ..Default::default()
    }
}

/// Stores every entry of `jobs` on the workflow stream through `client`;
/// `Ok` once Redis acknowledged all of them. Several entries are one script
/// call, so they are acknowledged or refused together (should Redis fail
/// midway through the script, what it wrote stays).
pub(super) async fn write_workflow(
    client: &Client,
    jobs: &WorkflowJobs,
    settings: &Settings,
) -> Result<(), Error> {
    let stream = &settings.workflow_stream;
    let client = client.with_options(&options(settings));
    // Each of fred's command futures is kilobytes; boxed, it is moved once,
    // instead of growing every future that awaits this one (each is moved
    // whole when created).
    match &jobs.workflows[..] {
        [] => Ok(()),
        [workflow] => Box::pin(client.xadd::<Value, _, _, _, _>(
            stream.clone(),
            false,
            cap(settings),
            "*",
            fields(jobs.pairs(workflow)),
        ))
        .await
        .map(drop),
        _ => Box::pin(add_all(&client, stream, settings, jobs)).await,
    }
}

/// Stores one outreach job; returns its stream entry id once Redis
/// acknowledged it.
pub(super) async fn write_outreach(
    client: &Client,
    job: &OutreachJob,
    settings: &Settings,
) -> Result<Bytes, Error> {
    client
        .with_options(&options(settings))
        .xadd(
            settings.outreach_stream.clone(),
            false,
            cap(settings),
            "*",
            fields(job.pairs()),
        )
        .await
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

/// Writes one record read back from the spool to the stream it names.
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
