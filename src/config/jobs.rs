//! `[streams]`, `[sink]` and `[bullmq]`: where and in which layout jobs
//! are written.

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value as J;

use super::problems::Problems;

/// `[streams]`: the job streams of the streams layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Streams {
    /// Workflow job stream.
    pub workflow: String,
    /// Outreach job stream.
    pub outreach: String,
    /// `MAXLEN ~` threshold; 0: never trimmed.
    pub maxlen: i64,
}

/// `[sink]`: which layout jobs are written in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// Streams or BullMQ queues.
    pub kind: SinkKind,
}

/// `sink.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Redis Streams entries (`[streams]`).
    Streams,
    /// BullMQ jobs (`[bullmq]`), as the Node library's `queue.add` makes them.
    Bullmq,
}

impl SinkKind {
    /// As the file spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SinkKind::Streams => "streams",
            SinkKind::Bullmq => "bullmq",
        }
    }
}

/// `[bullmq]`: the queues of the BullMQ layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bullmq {
    /// Key prefix of every queue.
    pub prefix: String,
    /// Queue of the workflow jobs.
    pub workflow_queue: String,
    /// Queue of the outreach jobs.
    pub outreach_queue: String,
    /// Name of each workflow job.
    pub workflow_job_name: String,
    /// Name of each outreach job.
    pub outreach_job_name: String,
    /// Job options stored with every job.
    pub job_options: JobOptions,
}

/// `bullmq.job_options`: a JSON object as the operator wrote it (`""`:
/// none), turned into the `opts` BullMQ stores when the sink is built.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct JobOptions(String);

impl From<&str> for JobOptions {
    fn from(text: &str) -> Self {
        Self(text.to_owned())
    }
}

impl Serialize for JobOptions {
    /// What is in force, in the file's form: the given object, compact, or
    /// `""` for none.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match serde_json::from_str::<J>(self.0.trim()) {
            Ok(value) => s.collect_str(&value),
            Err(_) => s.serialize_str(self.0.trim()),
        }
    }
}

/// Job options BullMQ's standard add stores as given. Others (delay,
/// priority, lifo, parents, deduplication, repeat) change where a job goes
/// or need a script path this sink does not write, so they are refused.
const BULLMQ_OPTIONS: [&str; 6] = [
    "attempts",
    "backoff",
    "removeOnComplete",
    "removeOnFail",
    "keepLogs",
    "stackTraceLimit",
];

impl JobOptions {
    /// The `opts` every job is stored with, as BullMQ stores them (compact
    /// JSON, `attempts` always present, a numeric `backoff` as
    /// `{"type":"fixed","delay":N}`, `keepLogs` as `kl`, without the
    /// per-job `jobId`), or every reason the options are refused.
    pub(crate) fn stored(&self) -> Result<String, Vec<String>> {
        let mut opts = serde_json::Map::new();
        opts.insert("attempts".into(), J::from(0));
        let text = self.0.trim();
        if text.is_empty() {
            return Ok(J::Object(opts).to_string());
        }
        let given = match serde_json::from_str::<J>(text) {
            Ok(J::Object(given)) => given,
            Ok(_) => return Err(vec!["must be a JSON object like {\"attempts\":3}".into()]),
            Err(e) => return Err(vec![format!("not JSON: {e}")]),
        };
        let mut bad = Vec::new();
        for (key, value) in given {
            let ok = match key.as_str() {
                "attempts" | "keepLogs" | "stackTraceLimit" => value.as_u64().is_some(),
                "backoff" => match &value {
                    J::Number(n) => n.as_u64().is_some(),
                    J::Object(o) => {
                        o.get("type").is_some_and(J::is_string)
                            && o.get("delay").is_none_or(|d| d.as_u64().is_some())
                            && o.get("jitter").is_none_or(|j| {
                                j.as_f64().is_some_and(|j| (0.0..=1.0).contains(&j))
                            })
                    }
                    _ => false,
                },
                "removeOnComplete" | "removeOnFail" => match &value {
                    J::Bool(_) => true,
                    J::Number(n) => n.as_u64().is_some(),
                    J::Object(o) => o.iter().all(|(k, v)| {
                        matches!(k.as_str(), "age" | "count" | "limit") && v.as_u64().is_some()
                    }),
                    _ => false,
                },
                other => {
                    bad.push(format!(
                        "{other:?} is not supported (supported: {})",
                        BULLMQ_OPTIONS.join(", ")
                    ));
                    continue;
                }
            };
            if !ok {
                bad.push(format!("{key:?} has an invalid value {value}"));
                continue;
            }
            let value = match (key.as_str(), value) {
                ("backoff", J::Number(delay)) => {
                    serde_json::json!({"type": "fixed", "delay": delay})
                }
                (_, value) => value,
            };
            let key = if key == "keepLogs" { "kl".into() } else { key };
            opts.insert(key, value);
        }
        if bad.is_empty() {
            Ok(J::Object(opts).to_string())
        } else {
            Err(bad)
        }
    }
}

impl Streams {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.workflow.is_empty() || self.outreach.is_empty() {
            p.push("streams.workflow and streams.outreach must not be empty");
        }
        if self.maxlen < 0 {
            p.push("streams.maxlen: must be 0 (never trimmed) or more");
        }
    }
}

impl Bullmq {
    /// `cluster`: whether Redis is a Cluster, where a job's keys must share
    /// one slot.
    pub(super) fn check(&self, kind: SinkKind, cluster: bool, p: &mut Problems) {
        let mut name = |what: &str, value: &str, colon_ok: bool| {
            if value.is_empty() {
                p.push(format!("bullmq.{what}: must not be empty"));
            } else if !colon_ok && value.contains(':') {
                p.push(format!("bullmq.{what}: {value:?} must not contain ':'"));
            }
        };
        name("prefix", &self.prefix, true);
        name("workflow_queue", &self.workflow_queue, false);
        name("outreach_queue", &self.outreach_queue, false);
        name("workflow_job_name", &self.workflow_job_name, true);
        name("outreach_job_name", &self.outreach_job_name, true);
        if self.workflow_queue == self.outreach_queue && !self.workflow_queue.is_empty() {
            p.push("bullmq.outreach_queue: must differ from bullmq.workflow_queue");
        }
        if let Err(reasons) = self.job_options.stored() {
            for why in reasons {
                p.push(format!("bullmq.job_options: {why}"));
            }
        }
        // A BullMQ job's script touches every key of its queue: in a
        // cluster they must share one slot, which a hash tag gives them.
        if kind == SinkKind::Bullmq && cluster {
            for queue in [&self.workflow_queue, &self.outreach_queue] {
                if hash_tag(&format!("{}:{queue}:", self.prefix)).is_none() {
                    p.push(format!(
                        "bullmq.prefix: {:?} needs a hash tag in a Redis Cluster, such as \"{{bull}}\", so that the keys of queue {queue:?} share one slot (or wrap the queue name in braces)",
                        self.prefix
                    ));
                    break;
                }
            }
        }
    }
}

/// The hash tag Redis Cluster hashes `key` by: the text between its first
/// `{` and the next `}`, when not empty.
pub(super) fn hash_tag(key: &str) -> Option<&str> {
    let (_, after) = key.split_once('{')?;
    let (tag, _) = after.split_once('}')?;
    (!tag.is_empty()).then_some(tag)
}
