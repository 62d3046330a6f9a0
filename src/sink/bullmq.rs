//! The BullMQ layout: each job added to a BullMQ queue exactly as the Node
//! library's `queue.add(name, data, opts)` adds a standard job, so the
//! backend's unchanged `Worker`s run it (CONTRACT §3b; the layout, per
//! version, is in `../shared/notes/BULLMQ.md`).
//!
//! Under `<prefix>:<queue>:` a job is: the `<id>` hash (`name`, `data`,
//! `opts`, `timestamp`, `delay`, `priority`), its id pushed on `wait`
//! (`paused` instead for a paused queue last opened by a 5.x `Queue`, which
//! renames `paused` over `wait` on resume), `marker` set so a Worker blocked
//! in `BZPOPMIN` wakes at once (not while the queue is paused or at its
//! global concurrency), `added` and `waiting` on `events` (`duplicated` for
//! an id that exists), `id` incremented, `meta`'s `opts.maxLenEvents` set
//! when absent.
//!
//! Written by our own script ([`ADD_SCRIPT`]) through the sink's writers,
//! not BullMQ's: one client, our pipelining, spool and health tracking, and
//! every job of a request in one call with the payload sent once (in runs
//! of at most [`RUN_DATA_BYTES`] of `data` for a very large request, so no
//! run holds Redis long). The golden
//! tests (`tests/bullmq.rs`) hold it equal to Node's `queue.add` on 5.x and
//! 6.x.
//!
//! Job ids are custom and deterministic per (request, match):
//! `<requestId>~<orgId>~<userId>~<workflowId or configurationId>`, each part
//! with every byte but `[A-Za-z0-9._-]` written `%XX`. So an id is never all
//! digits, never holds `:` (BullMQ's rules) nor a `{` that would move the
//! job's key to another cluster slot, and a retried or replayed write finds
//! the job it already made instead of making a second.
//!
//! `data` is spliced from the caller's bytes, never re-serialised: the
//! payload (or outreach groups) are sent as they came, between small
//! pre-escaped pieces the script joins.

use std::sync::LazyLock;

use bytes::{BufMut, Bytes, BytesMut};
use fred::prelude::*;

use super::{
    error::SinkError,
    job::{OutreachJob, WorkflowJobs},
    lane::{self, Due, Lane, PART_BYTES},
    wire::{self, Arg, Check},
};
use crate::{
    config::Bullmq as BullmqConfig,
    redis::Script,
    settings::Settings,
    spool::{self, Record},
};

/// The most `data` one script run adds; a request whose jobs hold more is
/// added by several runs, each answered as it ends. One run of a 1 MiB
/// body matching 300 workflows held Redis, every client of it, for 0.8 s,
/// and the job writer took the silence for a stall and answered 503 for
/// jobs Redis then stored; at 4 MiB a run takes Redis about 10 ms.
const RUN_DATA_BYTES: usize = 4 << 20;

/// Adds a request's jobs to one queue, as BullMQ's standard add does.
/// `KEYS`: `id`, `meta`, `events`, `wait`, `paused`, `marker`, `active`,
/// then each job's hash. `ARGV`: name, timestamp, the `opts` text up to the
/// job id, the count P of shared `data` pieces, the P pieces, then per job
/// its id and the start of its `data` (the shared pieces follow it).
/// Answers how many jobs it added (an existing id adds none).
pub(crate) const ADD_SCRIPT: &str = r#"local call = redis.call
local name, ts, opts = ARGV[1], ARGV[2], ARGV[3]
local pieces = tonumber(ARGV[4])
local shared = table.concat(ARGV, '', 5, 4 + pieces)
local meta = call('HMGET', KEYS[2], 'opts.maxLenEvents', 'paused', 'concurrency', 'version')
local max = meta[1]
if not max then
  max = 10000
  call('HSET', KEYS[2], 'opts.maxLenEvents', max)
end
local list, held = KEYS[4], meta[2] ~= false
if held and meta[4] and string.sub(meta[4], 1, 9) == 'bullmq:5.' then list = KEYS[5] end
if not held and meta[3] then held = call('LLEN', KEYS[7]) >= tonumber(meta[3]) end
local added = 0
for j = 1, #KEYS - 7 do
  local at = 3 + pieces + 2 * j
  local id, job = ARGV[at], KEYS[7 + j]
  call('INCR', KEYS[1])
  if call('EXISTS', job) == 1 then
    call('XADD', KEYS[3], 'MAXLEN', '~', max, '*', 'event', 'duplicated', 'jobId', id)
  else
    call('HSET', job, 'name', name, 'data', ARGV[at + 1] .. shared, 'opts', opts .. id .. '"}',
      'timestamp', ts, 'delay', 0, 'priority', 0)
    call('XADD', KEYS[3], '*', 'event', 'added', 'jobId', id, 'name', name)
    call('LPUSH', list, id)
    if not held then call('ZADD', KEYS[6], 0, '0') end
    call('XADD', KEYS[3], 'MAXLEN', '~', max, '*', 'event', 'waiting', 'jobId', id)
    added = added + 1
  end
end
return added
"#;

/// [`ADD_SCRIPT`], called by its SHA-1.
static ADD: LazyLock<Script> = LazyLock::new(|| Script::new(ADD_SCRIPT));

/// The queue keys the script takes, in its `KEYS` order.
const SUFFIXES: [&str; 7] = ["id", "meta", "events", "wait", "paused", "marker", "active"];

/// One queue: its key base (`<prefix>:<queue>:`), the keys the script takes
/// and the name its jobs carry.
#[derive(Debug)]
struct Queue {
    base: Bytes,
    keys: [Bytes; 7],
    job_name: Bytes,
}

impl Queue {
    fn new(prefix: &str, queue: &str, job_name: &str) -> Self {
        Self::at(
            Bytes::from(format!("{prefix}:{queue}:")),
            Bytes::copy_from_slice(job_name.as_bytes()),
        )
    }

    /// The queue whose keys start with `base`.
    fn at(base: Bytes, job_name: Bytes) -> Self {
        Self {
            keys: SUFFIXES.map(|s| key(&base, s.as_bytes())),
            base,
            job_name,
        }
    }

    /// Appends the key of the job the id written by `id` names
    /// (`<base><id>`) to `buf`, and takes it out: one buffer holds a
    /// request's keys and pieces, and the id is a slice of its key.
    fn job_key(&self, buf: &mut BytesMut, id: impl FnOnce(&mut BytesMut)) -> Bytes {
        buf.put_slice(&self.base);
        id(buf);
        buf.split().freeze()
    }
}

/// `base` followed by `suffix`.
fn key(base: &[u8], suffix: &[u8]) -> Bytes {
    let mut k = BytesMut::with_capacity(base.len() + suffix.len());
    k.put_slice(base);
    k.put_slice(suffix);
    k.freeze()
}

/// The two queues and the `opts` every job is stored with.
#[derive(Debug)]
pub(crate) struct Queues {
    workflow: Queue,
    outreach: Queue,
    /// `opts` up to the job id: `{…,"jobId":"`.
    opts_head: Bytes,
}

impl Queues {
    /// The queues `[bullmq]` names.
    pub(super) fn new(config: &BullmqConfig) -> Self {
        // Checked options: a JSON object `{…}`. Unchecked ones that do not
        // read (only a test can build them) store BullMQ's defaults.
        let opts = (config.job_options.stored()).unwrap_or_else(|_| r#"{"attempts":0}"#.to_owned());
        let opts = opts.trim_end();
        let opts = opts.strip_suffix('}').unwrap_or(opts);
        Self {
            workflow: Queue::new(
                &config.prefix,
                &config.workflow_queue,
                &config.workflow_job_name,
            ),
            outreach: Queue::new(
                &config.prefix,
                &config.outreach_queue,
                &config.outreach_job_name,
            ),
            opts_head: Bytes::from(format!("{opts},\"jobId\":\"")),
        }
    }
}

/// Appends `part` to a job id: `[A-Za-z0-9._-]` as is, every other byte
/// `%XX`.
fn id_part(out: &mut BytesMut, part: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in part {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') {
            out.put_u8(b);
        } else {
            out.put_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}

/// Appends the job id of one match: the parts (the request id, the
/// caller, the match, the lead's digest) joined by `~`.
fn job_id(out: &mut BytesMut, parts: [&[u8]; 5]) {
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b'~');
        }
        id_part(out, part);
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut BytesMut, s: &[u8]) {
    out.put_u8(b'"');
    for &b in s {
        match b {
            b'"' => out.put_slice(b"\\\""),
            b'\\' => out.put_slice(b"\\\\"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            b'\t' => out.put_slice(b"\\t"),
            0..0x20 => {
                out.put_slice(b"\\u00");
                out.put_slice(&crate::hex::byte(b));
            }
            _ => out.put_u8(b),
        }
    }
    out.put_u8(b'"');
}

/// One call of [`ADD_SCRIPT`]: the jobs of one request on one queue.
struct Call<'a> {
    queue: &'a Queue,
    timestamp: &'a Bytes,
    opts_head: &'a Bytes,
    /// The shared `data` pieces, in order.
    shared: Vec<Bytes>,
    /// Each job's key (`<base><id>`) and `data` start.
    jobs: Vec<(Bytes, Bytes)>,
}

impl Call<'_> {
    /// The id of the job whose key is `key`.
    fn id(&self, key: &Bytes) -> Bytes {
        key.slice(self.queue.base.len()..)
    }

    /// The arguments after the script of a call adding `jobs` (some or
    /// all of the call's): key count, keys, then `ARGV`.
    fn parts<'s>(&'s self, jobs: &'s [(Bytes, Bytes)]) -> impl Iterator<Item = Arg<'s>> + Clone {
        let count = (SUFFIXES.len() + jobs.len()) as i64;
        std::iter::once(Arg::Int(count))
            .chain(self.queue.keys.iter().map(|k| Arg::Bytes(k)))
            .chain(jobs.iter().map(|(key, _)| Arg::Bytes(key)))
            .chain([
                Arg::Bytes(&self.queue.job_name),
                Arg::Bytes(self.timestamp),
                Arg::Bytes(self.opts_head),
                Arg::Int(self.shared.len() as i64),
            ])
            .chain(self.shared.iter().map(|p| Arg::Bytes(p)))
            .chain(jobs.iter().flat_map(|(key, head)| {
                [Arg::Bytes(&key[self.queue.base.len()..]), Arg::Bytes(head)]
            }))
    }

    /// The call's arguments in fred's form, the script named by `script`
    /// (its body or its SHA-1), for the spool's replay.
    fn args(&self, script: Value) -> Vec<Value> {
        std::iter::once(script)
            .chain(self.parts(&self.jobs).map(|part| match part {
                Arg::Int(n) => Value::Integer(n),
                Arg::Bytes(b) => Value::Bytes(Bytes::copy_from_slice(b)),
            }))
            .collect()
    }

    /// How many jobs one script run adds: all of them, unless their
    /// `data` together passes [`RUN_DATA_BYTES`].
    fn per_run(&self) -> usize {
        let data = self.shared.iter().map(Bytes::len).sum::<usize>() + 256;
        (RUN_DATA_BYTES / data).max(1)
    }

    /// Appends the runs that add `jobs` (all or a part of the call's) to
    /// `out`, one per [`Self::per_run`] jobs: `command` (`EVALSHA` or
    /// `EVAL`), then `script` (the SHA-1 or the body).
    fn encode(&self, out: &mut BytesMut, command: &[u8], script: &[u8], jobs: &[(Bytes, Bytes)]) {
        let run = |out: &mut BytesMut, jobs| {
            let head = [Arg::Bytes(command), Arg::Bytes(script)];
            wire::encode(out, head.into_iter().chain(self.parts(jobs)));
        };
        let per_run = self.per_run();
        let mut runs = jobs.chunks(per_run);
        let start = out.len();
        if let Some(first) = runs.next() {
            run(out, first);
            // The other runs are the first's size, give or take their jobs'
            // ids: room for them at once rather than a doubling (and a copy
            // of all so far) at each power of two.
            let each = out.len() - start + 64 * per_run;
            out.reserve(each.saturating_mul(runs.len()));
        }
        for jobs in runs {
            run(out, jobs);
        }
    }

    /// Sends it through `lane` by `EVALSHA`, and whole by `EVAL` only when
    /// Redis answers `NOSCRIPT` (which ran nothing, or, should the script
    /// cache be flushed between two runs, nothing that a second add would
    /// not find already there); `Ok` once Redis holds every job (new, or
    /// found already there).
    ///
    /// The runs go in parts of at most [`PART_BYTES`], each sent once
    /// Redis has run the one before (each run repeats the shared `data`):
    /// see [`lane::in_parts`].
    async fn send(&self, lane: &Lane, due: Due) -> Result<(), SinkError> {
        let per_run = self.per_run();
        // A run: the shared `data` once, each job's key and own start.
        let job = self.jobs.first().map_or(0, |(k, h)| k.len() + h.len()) + 256;
        let run_bytes = self.shared.iter().map(Bytes::len).sum::<usize>() + job * per_run;
        let parts = self.jobs.chunks((PART_BYTES / run_bytes).max(1) * per_run);
        lane::in_parts(due, parts, |due, jobs| self.send_part(lane, due, jobs)).await
    }

    /// Sends the runs that add `jobs`, a part of the call's.
    async fn send_part(
        &self,
        lane: &Lane,
        due: Due,
        jobs: &[(Bytes, Bytes)],
    ) -> Result<(), SinkError> {
        let runs = u32::try_from(jobs.len().div_ceil(self.per_run())).unwrap_or(u32::MAX);
        let by_sha = lane.send(runs, false, due, |out| {
            self.encode(out, b"EVALSHA", ADD.sha(), jobs);
        })?;
        let noscript = |e: &SinkError| match e {
            SinkError::Redis(e) => e.details().starts_with("NOSCRIPT"),
            // Runs before it ran (a script cache flushed between two runs):
            // sent again they find their jobs and add nothing.
            SinkError::Partly(e) => {
                matches!(&**e, SinkError::Redis(e) if e.details().starts_with("NOSCRIPT"))
            }
            _ => false,
        };
        match by_sha.await {
            Err(e) if noscript(&e) => {
                let whole = lane.send(runs, false, due, |out| {
                    self.encode(out, b"EVAL", ADD.body().as_bytes(), jobs)
                })?;
                whole.await.map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Runs it through the shared fred `client` (the spool's replay).
    async fn run(&self, client: &Client, settings: &Settings) -> Result<(), Error> {
        let options = Options {
            timeout: Some(settings.redis.command_timeout_ms),
            ..Default::default()
        };
        let _added: i64 = ADD
            .call(&client.with_options(&options), |script| self.args(script))
            .await?;
        Ok(())
    }

    /// Appends one spool record per job, each with its whole `data`.
    fn spool(&self, out: &mut Vec<u8>) {
        let start = out.len();
        for (n, (key, head)) in self.jobs.iter().enumerate() {
            if n == 1 {
                // The others are the first's size, give or take their ids:
                // room for them at once, not a doubling at each power of two.
                let each = out.len() - start + 2 * key.len();
                out.reserve(each.saturating_mul(self.jobs.len() - 1));
            }
            let id = self.id(key);
            let mut data =
                Vec::with_capacity(head.len() + self.shared.iter().map(Bytes::len).sum::<usize>());
            data.extend_from_slice(head);
            for piece in &self.shared {
                data.extend_from_slice(piece);
            }
            let fields: [(&[u8], &[u8]); 6] = [
                (b"queue", &self.queue.base),
                (b"name", &self.queue.job_name),
                (b"timestamp", self.timestamp),
                (b"opts", self.opts_head),
                (b"id", &id),
                (b"data", &data),
            ];
            spool::encode_bullmq_job(out, fields.into_iter());
        }
    }
}

/// The script call adding every job of `jobs` to the workflow queue.
fn workflow_call<'a>(queues: &'a Queues, jobs: &'a WorkflowJobs) -> Call<'a> {
    let mut buf = BytesMut::with_capacity(
        160 + jobs.org_id.len()
            + jobs.user_id.len()
            + jobs.webhook_id.len()
            + 2 * jobs.request_id.len()
            + jobs.len() * (96 + queues.workflow.base.len() + jobs.request_id.len()),
    );
    buf.put_slice(b",\"orgId\":");
    json_string(&mut buf, &jobs.org_id);
    buf.put_slice(b",\"userId\":");
    json_string(&mut buf, &jobs.user_id);
    buf.put_slice(b",\"webhookId\":");
    json_string(&mut buf, &jobs.webhook_id);
    buf.put_slice(b",\"payload\":");
    let before_payload = buf.split().freeze();
    buf.put_slice(b",\"receivedAt\":");
    buf.put_slice(&jobs.received_at);
    buf.put_slice(b",\"requestId\":");
    json_string(&mut buf, &jobs.request_id);
    buf.put_u8(b'}');
    let after_payload = buf.split().freeze();
    let digest = crate::digest::hex(jobs.digest());
    let calls = jobs
        .workflows
        .iter()
        .map(|workflow| {
            let key = queues.workflow.job_key(&mut buf, |buf| {
                job_id(
                    buf,
                    [
                        &jobs.request_id,
                        &jobs.org_id,
                        &jobs.user_id,
                        workflow.bytes(),
                        &digest,
                    ],
                );
            });
            buf.put_slice(b"{\"workflowId\":");
            json_string(&mut buf, workflow.bytes());
            (key, buf.split().freeze())
        })
        .collect();
    Call {
        queue: &queues.workflow,
        timestamp: &jobs.received_at,
        opts_head: &queues.opts_head,
        shared: vec![before_payload, jobs.payload.clone(), after_payload],
        jobs: calls,
    }
}

/// The script call adding `job` to the outreach queue.
fn outreach_call<'a>(queues: &'a Queues, job: &'a OutreachJob) -> Call<'a> {
    let mut buf = BytesMut::with_capacity(
        256 + queues.outreach.base.len()
            + 3 * job.request_id.len()
            + 2 * (job.configuration_id.len() + job.org_id.len() + job.user_id.len()),
    );
    let digest = crate::digest::hex(job.digest());
    let key = queues.outreach.job_key(&mut buf, |buf| {
        job_id(
            buf,
            [
                &job.request_id,
                &job.org_id,
                &job.user_id,
                &job.configuration_id,
                &digest,
            ],
        );
    });
    buf.put_slice(b"{\"configurationId\":");
    json_string(&mut buf, &job.configuration_id);
    let head = buf.split().freeze();
    buf.put_slice(b",\"userId\":");
    json_string(&mut buf, &job.user_id);
    buf.put_slice(b",\"orgId\":");
    json_string(&mut buf, &job.org_id);
    buf.put_slice(b",\"format\":");
    json_string(&mut buf, &job.format);
    buf.put_slice(b",\"contacts\":");
    let to_contacts = buf.split().freeze();
    buf.put_slice(b",\"applications\":");
    let to_applications = buf.split().freeze();
    buf.put_slice(b",\"conversations\":");
    let to_conversations = buf.split().freeze();
    buf.put_slice(b",\"receivedAt\":");
    buf.put_slice(&job.received_at);
    buf.put_slice(b",\"requestId\":");
    json_string(&mut buf, &job.request_id);
    buf.put_u8(b'}');
    let end = buf.split().freeze();
    Call {
        queue: &queues.outreach,
        timestamp: &job.received_at,
        opts_head: &queues.opts_head,
        shared: vec![
            to_contacts,
            job.contacts.clone(),
            to_applications,
            job.applications.clone(),
            to_conversations,
            job.conversations.clone(),
            end,
        ],
        jobs: vec![(key, head)],
    }
}

/// Adds every job of `jobs` to the workflow queue in one script call
/// through `lane`; `Ok` once Redis holds all of them.
pub(super) async fn write_workflow(
    lane: &Lane,
    queues: &Queues,
    jobs: &WorkflowJobs,
    due: Due,
) -> Result<(), SinkError> {
    if jobs.is_empty() {
        return Ok(());
    }
    workflow_call(queues, jobs).send(lane, due).await
}

/// Adds `job` to the outreach queue through `lane`; returns its BullMQ job
/// id once Redis holds it.
pub(super) async fn write_outreach(
    lane: &Lane,
    queues: &Queues,
    job: &OutreachJob,
    due: Due,
) -> Result<Bytes, SinkError> {
    let call = outreach_call(queues, job);
    call.send(lane, due).await?;
    Ok(call.id(&call.jobs[0].0))
}

/// The key whose slot places the workflow and the outreach queue's writes
/// in a cluster (each call's first key).
pub(super) fn route_keys(queues: &Queues) -> [&[u8]; 2] {
    [&queues.workflow.keys[0], &queues.outreach.keys[0]]
}

/// The workflow and outreach queues' names (`<prefix>:<queue>`) and meta
/// hashes, which a BullMQ `Queue` writes and its Workers read.
pub(super) fn metas(queues: &Queues) -> [(String, Bytes); 2] {
    [&queues.workflow, &queues.outreach].map(|q| {
        let base = q.base.strip_suffix(b":").unwrap_or(&q.base);
        (
            String::from_utf8_lossy(base).into_owned(),
            q.keys[1].clone(),
        )
    })
}

/// The workflow and outreach queues' permission checks.
pub(super) fn write_checks(queues: &Queues) -> [Check; 2] {
    [&queues.workflow, &queues.outreach].map(|q| Check::script(&q.base, &q.keys))
}

/// Appends the spool records of every job of `jobs` to `out`.
pub(super) fn spool_workflow(out: &mut Vec<u8>, queues: &Queues, jobs: &WorkflowJobs) {
    workflow_call(queues, jobs).spool(out);
}

/// Appends the spool record of `job` to `out`.
pub(super) fn spool_outreach(out: &mut Vec<u8>, queues: &Queues, job: &OutreachJob) {
    outreach_call(queues, job).spool(out);
}

/// The job of one record read back from the spool: the queue and `opts`
/// it was spooled with, whatever the configuration says now.
struct RecordJob {
    queue: Queue,
    timestamp: Bytes,
    opts_head: Bytes,
    key: Bytes,
    data: Bytes,
}

impl RecordJob {
    fn of(record: &Record) -> Result<Self, Error> {
        let field = |name: &[u8]| {
            record
                .fields
                .iter()
                .find(|(k, _)| k.as_ref() == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::InvalidArgument,
                        "a spooled BullMQ job lacks a field",
                    )
                })
        };
        let queue = Queue::at(field(b"queue")?, field(b"name")?);
        Ok(Self {
            key: key(&queue.base, &field(b"id")?),
            queue,
            timestamp: field(b"timestamp")?,
            opts_head: field(b"opts")?,
            data: field(b"data")?,
        })
    }

    fn call(&self) -> Call<'_> {
        Call {
            jobs: vec![(self.key.clone(), Bytes::new())],
            queue: &self.queue,
            timestamp: &self.timestamp,
            opts_head: &self.opts_head,
            shared: vec![self.data.clone()],
        }
    }
}

/// The key whose slot places a spooled job's write (its queue's `id` key,
/// as [`route_keys`] names a route's).
pub(super) fn record_key(record: &Record) -> Option<Bytes> {
    let (_, queue) = record.fields.iter().find(|(k, _)| k.as_ref() == b"queue")?;
    Some(key(queue, b"id"))
}

/// Adds the job of one record read back from the spool through `lane`. A
/// job already there is left as it is.
pub(super) async fn send_record(lane: &Lane, record: &Record, due: Due) -> Result<(), SinkError> {
    let job = RecordJob::of(record).map_err(SinkError::Redis)?;
    job.call().send(lane, due).await
}

/// Adds the job of one record read back from the spool through the shared
/// fred client (a cluster key no lane owns).
pub(super) async fn write_record(
    client: &Client,
    record: &Record,
    settings: &Settings,
) -> Result<(), Error> {
    RecordJob::of(record)?.call().run(client, settings).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{id::Id, route::Workflows};

    fn queues(job_options: &str) -> Queues {
        let mut config = crate::config::Config::default();
        config.bullmq.job_options = job_options.into();
        Queues::new(&config.validate().unwrap().bullmq)
    }

    fn jobs(workflows: &[&str], request_id: &str) -> WorkflowJobs {
        WorkflowJobs {
            workflows: workflows
                .iter()
                .map(|w| Id::from_str_copy(w))
                .collect::<Workflows>(),
            org_id: Bytes::from_static(b"o_1"),
            user_id: Bytes::from_static(b"u\"1"),
            webhook_id: Bytes::from_static(b"wh\\1"),
            payload: Bytes::from_static(br#"{"n":12345678901234567890123,"x":1.10}"#),
            received_at: Bytes::from_static(b"1700000000000"),
            request_id: Bytes::copy_from_slice(request_id.as_bytes()),
        }
    }

    fn data(call: &Call<'_>, job: usize) -> serde_json::Value {
        let mut text = call.jobs[job].1.to_vec();
        for piece in &call.shared {
            text.extend_from_slice(piece);
        }
        serde_json::from_slice(&text).unwrap()
    }

    #[test]
    fn data_is_the_contract_object_with_the_payload_spliced_in() {
        let q = queues("");
        let jobs = jobs(&["wf_a", "wf_b"], "req-1");
        let call = workflow_call(&q, &jobs);
        assert_eq!(call.jobs.len(), 2);
        let text: Vec<u8> = std::iter::once(&call.jobs[1].1)
            .chain(&call.shared)
            .flat_map(|b| b.to_vec())
            .collect();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains(r#""payload":{"n":12345678901234567890123,"x":1.10}"#));
        let value = data(&call, 1);
        let keys: Vec<&str> = value
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        // serde_json sorts keys; the order on the wire is checked above and
        // in the integration tests.
        assert_eq!(keys.len(), 7);
        assert_eq!(value["workflowId"], "wf_b");
        assert_eq!(value["userId"], "u\"1");
        assert_eq!(value["webhookId"], "wh\\1");
        assert_eq!(value["receivedAt"], 1_700_000_000_000u64);
        assert!(text.starts_with(r#"{"workflowId":"wf_b","orgId":"o_1","userId":"#));
    }

    #[test]
    fn ids_are_deterministic_and_valid_custom_ids() {
        let q = queues("");
        let ids = || {
            let jobs = jobs(&["wf:1", "123"], "r:{x}~%");
            let call = workflow_call(&q, &jobs);
            let keys: Vec<Bytes> = call.jobs.iter().map(|(key, _)| key.clone()).collect();
            for key in &keys {
                assert!(key.starts_with(b"bull:workflow-runs:"), "{key:?}");
            }
            keys.iter().map(|key| call.id(key)).collect::<Vec<_>>()
        };
        let (a, b) = (ids(), ids());
        assert_eq!(a, b);
        assert_ne!(a[0], a[1]);
        for id in &a {
            let s = std::str::from_utf8(id).unwrap();
            assert!(
                !s.contains(':') && !s.contains('{') && !s.contains('"'),
                "{s}"
            );
            assert!(s.parse::<u64>().is_err(), "{s}");
        }
        let digest = crate::digest::hex(jobs(&[], "").digest());
        let mut want = b"r%3A%7Bx%7D%7E%25~o_1~u%221~123~".to_vec();
        want.extend_from_slice(&digest);
        assert_eq!(&a[1][..], &want[..]);
    }

    /// One request id with two different leads (a caller's batch id on
    /// each of its leads) gives two job ids; the same lead again (a retry)
    /// the same one.
    #[test]
    fn ids_tell_different_leads_of_one_request_id_apart() {
        let q = queues("");
        let id = |payload: &'static [u8]| {
            let jobs = WorkflowJobs {
                payload: Bytes::from_static(payload),
                ..jobs(&["wf_a"], "batch-7")
            };
            let call = workflow_call(&q, &jobs);
            call.id(&call.jobs[0].0)
        };
        assert_eq!(id(br#"{"name":"Alex"}"#), id(br#"{"name":"Alex"}"#));
        assert_ne!(id(br#"{"name":"Alex"}"#), id(br#"{"name":"Sam"}"#));
    }

    #[test]
    fn opts_head_closes_into_the_stored_opts() {
        let q = queues(r#"{"attempts":3,"backoff":500,"keepLogs":10}"#);
        let mut opts = q.opts_head.to_vec();
        opts.extend_from_slice(b"id-1\"}");
        let value: serde_json::Value = serde_json::from_slice(&opts).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"attempts":3,"backoff":{"type":"fixed","delay":500},"kl":10,"jobId":"id-1"})
        );
        let mut opts = queues("").opts_head.to_vec();
        opts.extend_from_slice(b"x\"}");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&opts).unwrap(),
            serde_json::json!({"attempts":0,"jobId":"x"})
        );
    }

    #[test]
    fn unsupported_or_invalid_job_options_are_refused() {
        for bad in [
            r#"{"delay":5}"#,
            r#"{"attempts":-1}"#,
            r#"{"backoff":"x"}"#,
            r#"[1]"#,
            "nope",
            r#"{"removeOnComplete":{"weeks":1}}"#,
        ] {
            let mut config = crate::config::Config::default();
            config.bullmq.job_options = bad.into();
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("bullmq.job_options"), "{bad}: {err}");
        }
    }
}
