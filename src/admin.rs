//! The admin CLI: writes the control plane exactly as `CONTRACT.md` lays it
//! out, against the same Redis settings as the server, so a new user gets keys,
//! triggers and jobs flowing without typing Redis commands.
//!
//! Exit codes: 0 done; 1 refused (no such key, bad value) or the output
//! could not be written; 2 bad arguments or configuration (clap and
//! [`crate::config`]); 3 Redis unreachable.

use std::{io::Write, num::NonZeroUsize, time::Duration};

use fred::{prelude::*, types::scan::Scanner};
use futures::TryStreamExt;
use ring::rand::{SecureRandom, SystemRandom};

use crate::{
    auth::digest_key,
    config::{Config, redact_url},
    hex,
    outreach::Category,
    redis::{self, Role, Target, reason},
};

/// Why an admin command failed; [`AdminError::exit_code`] is what scripts see.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Redis could not be reached.
    #[error("cannot reach Redis at {url}: {}", reason(.source))]
    Unreachable {
        /// The URL tried, password masked.
        url: String,
        /// The cause.
        #[source]
        source: Error,
    },
    /// A Redis command failed.
    #[error("redis: {}", reason(.0))]
    Redis(#[from] Error),
    /// Redis failed part-way through an import: every line before
    /// `from_line` is in, and running the same import again finishes it.
    #[error(
        "redis failed during the import ({}); every line before line {from_line} is imported: run the same import again to finish it (it writes only what differs)",
        reason(.source)
    )]
    ImportInterrupted {
        /// The first line of the batch Redis did not take.
        from_line: u64,
        /// The cause.
        #[source]
        source: Error,
    },
    /// The command was understood but cannot be done.
    #[error("{0}")]
    Refused(String),
    /// Standard output could not be written: a full disk, or a reader that
    /// went away (`| head`), which the binary takes as "enough".
    #[error("cannot write to standard output: {0}")]
    Output(#[source] std::io::Error),
}

impl AdminError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Refused(_) | AdminError::Output(_) => 1,
            AdminError::Unreachable { .. }
            | AdminError::Redis(_)
            | AdminError::ImportInterrupted { .. } => 3,
        }
    }
}

/// Refuses an empty id, as the import does.
fn non_empty<'a>(what: &str, value: &'a str) -> Result<&'a str, String> {
    if value.is_empty() {
        Err(format!("{what} must not be empty"))
    } else {
        Ok(value)
    }
}

/// Refuses an org id or webhookId the key layout cannot represent: empty,
/// or holding the `:` that separates the parts of a key (the one check of
/// the admin commands and the import).
pub(crate) fn key_part<'a>(what: &str, value: &'a str) -> Result<&'a str, String> {
    if non_empty(what, value)?.contains(':') {
        Err(format!(
            "{what} must not contain ':' (the Redis key layout cannot tell it apart)"
        ))
    } else {
        Ok(value)
    }
}

/// A connected admin session.
pub struct Admin {
    client: Client,
    prefix: String,
    workflow_stream: String,
    outreach_stream: String,
    /// In BullMQ mode, the `[bullmq]` queues `jobs tail` follows.
    bullmq: Option<crate::config::Bullmq>,
    /// Where `client` connects, for `jobs tail` to reconnect.
    target: Target,
}

impl Admin {
    /// Connects with the configuration's Redis settings (fails fast).
    pub async fn connect(config: &Config) -> Result<Self, AdminError> {
        let unreachable = |source| AdminError::Unreachable {
            url: redact_url(&config.redis.url),
            source,
        };
        let target = Target::of(&config.redis).map_err(unreachable)?;
        let client = open(&target).await.map_err(unreachable)?;
        Ok(Self {
            client,
            target,
            prefix: config.redis.key_prefix.clone(),
            workflow_stream: config.streams.workflow.clone(),
            outreach_stream: config.streams.outreach.clone(),
            bullmq: (config.sink.kind == crate::config::SinkKind::Bullmq)
                .then(|| config.bullmq.clone()),
        })
    }

    fn key_of(&self, api_key: &str) -> String {
        let mut key = format!("{}apikey:", self.prefix);
        hex::push(&mut key, &digest_key(api_key.as_bytes()));
        key
    }

    /// Creates a key for `user` in `org`; returns the plain key (shown once).
    pub async fn keys_create(
        &self,
        user: &str,
        org: &str,
        rate_limit: Option<u32>,
    ) -> Result<String, AdminError> {
        key_part("org id", org).map_err(AdminError::Refused)?;
        non_empty("user id", user).map_err(AdminError::Refused)?;
        // As the import refuses it: the ingress reads a limit of 0 as "none
        // set", so the default would apply.
        if rate_limit == Some(0) {
            return Err(AdminError::Refused(
                "rate limit must be at least 1 request per second (leave it out for rate_limit.default_per_sec)".into(),
            ));
        }
        let mut raw = [0u8; 32];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| AdminError::Refused("the system random generator failed".into()))?;
        let mut key = String::from("user_");
        hex::push(&mut key, &raw);
        let mut record = serde_json::json!({"userId": user, "orgId": org, "active": true});
        if let Some(n) = rate_limit {
            record["rateLimitPerSec"] = n.into();
        }
        let set: Option<String> = self
            .client
            .set(
                self.key_of(&key),
                record.to_string(),
                None,
                Some(SetOptions::NX),
                false,
            )
            .await?;
        if set.is_none() {
            return Err(AdminError::Refused(
                "a key with this digest already exists".into(),
            ));
        }
        Ok(key)
    }

    /// Deletes a key's record.
    pub async fn keys_revoke(&self, api_key: &str) -> Result<(), AdminError> {
        let n: i64 = self.client.del(self.key_of(api_key)).await?;
        if n == 0 {
            return Err(AdminError::Refused("no such key".into()));
        }
        Ok(())
    }

    /// Sets `"active": false` on a key's record, keeping the rest.
    pub async fn keys_disable(&self, api_key: &str) -> Result<(), AdminError> {
        let name = self.key_of(api_key);
        let raw: Option<String> = self.client.get(&name).await?;
        let raw = raw.ok_or_else(|| AdminError::Refused("no such key".into()))?;
        let mut record: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|_| AdminError::Refused("the key's record is not JSON".into()))?;
        record["active"] = false.into();
        let _: () = self
            .client
            .set(&name, record.to_string(), None, None, false)
            .await?;
        Ok(())
    }

    /// Every key matching `pattern` (through every primary of a Cluster),
    /// sorted, each once.
    pub(crate) async fn scan_keys(&self, pattern: String) -> Result<Vec<String>, AdminError> {
        let mut out = Vec::new();
        let mut pages = crate::redis::scan_keys(&self.client, pattern, 1000);
        while let Some(mut page) = pages.try_next().await? {
            for k in page.take_results().unwrap_or_default() {
                if let Some(s) = k.as_str() {
                    out.push(s.to_owned());
                }
            }
            page.next();
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Number of API key records.
    pub async fn keys_count(&self) -> Result<usize, AdminError> {
        Ok(self
            .scan_keys(format!("{}apikey:*", self.prefix))
            .await?
            .len())
    }

    /// Adds workflows to a trigger set.
    pub async fn triggers_add(
        &self,
        org: &str,
        webhook: &str,
        workflows: &[String],
    ) -> Result<(), AdminError> {
        key_part("org id", org).map_err(AdminError::Refused)?;
        key_part("webhookId", webhook).map_err(AdminError::Refused)?;
        let _: i64 = self
            .client
            .sadd(
                format!("{}triggers:{org}:{webhook}", self.prefix),
                workflows.to_vec(),
            )
            .await?;
        Ok(())
    }

    /// Removes workflows from a trigger set, or the whole set when none given.
    pub async fn triggers_remove(
        &self,
        org: &str,
        webhook: &str,
        workflows: &[String],
    ) -> Result<(), AdminError> {
        let key = format!("{}triggers:{org}:{webhook}", self.prefix);
        let n: i64 = if workflows.is_empty() {
            self.client.del(key).await?
        } else {
            self.client.srem(key, workflows.to_vec()).await?
        };
        if n == 0 {
            return Err(AdminError::Refused("nothing to remove".into()));
        }
        Ok(())
    }

    /// Every trigger of `org`: (webhookId, workflows).
    pub async fn triggers_list(&self, org: &str) -> Result<Vec<(String, Vec<String>)>, AdminError> {
        let base = format!("{}triggers:{org}:", self.prefix);
        let mut out = Vec::new();
        for key in self
            .scan_keys(format!("{}*", crate::replica::escape_glob(&base)))
            .await?
        {
            let mut members: Vec<String> = self.client.smembers(&key).await?;
            members.sort();
            out.push((key[base.len()..].to_owned(), members));
        }
        Ok(out)
    }

    /// Writes an outreach configuration.
    pub async fn outreach_put(
        &self,
        id: &str,
        user: &str,
        org: &str,
        process: Option<&str>,
        prompt: Option<&str>,
        active: bool,
    ) -> Result<(), AdminError> {
        non_empty("configuration id", id).map_err(AdminError::Refused)?;
        non_empty("user id", user).map_err(AdminError::Refused)?;
        key_part("org id", org).map_err(AdminError::Refused)?;
        let record = serde_json::json!({
            "userId": user, "orgId": org, "active": active, "processId": process, "promptId": prompt,
        });
        let _: () = self
            .client
            .set(
                format!("{}outreach:config:{id}", self.prefix),
                record.to_string(),
                None,
                None,
                false,
            )
            .await?;
        Ok(())
    }

    /// Sets org dynamic properties from `FIELD=CATEGORY` pairs.
    pub async fn properties_set(&self, org: &str, pairs: &[String]) -> Result<(), AdminError> {
        key_part("org id", org).map_err(AdminError::Refused)?;
        let mut fields = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let Some((field, category)) = pair.split_once('=') else {
                return Err(AdminError::Refused(format!(
                    "{pair:?} is not FIELD=CATEGORY"
                )));
            };
            if field.is_empty() {
                return Err(AdminError::Refused(format!(
                    "{pair:?}: the field name must not be empty"
                )));
            }
            if !Category::NAMES.contains(&category) {
                return Err(AdminError::Refused(format!(
                    "{pair:?}: the category must be one of {}",
                    Category::NAMES.join(", ")
                )));
            }
            fields.push((field.to_owned(), category.to_owned()));
        }
        let _: () = self
            .client
            .hset(format!("{}org:{org}:properties", self.prefix), fields)
            .await?;
        Ok(())
    }

    /// Follows the workflow or outreach jobs, writing each as one JSON line
    /// to `out`: the stream's entries, or in BullMQ mode the jobs added to
    /// the queue (read from its `events` stream: `id`, `name`, `data`,
    /// `opts`, `timestamp`). From the end, or from the start with
    /// `from_start` (for a queue: as far back as its events reach); stops
    /// after `limit` jobs when given. A lost connection is said on stderr
    /// and reconnected every second, the reading going on after the last
    /// entry printed; a stream that came back without that entry (Redis
    /// lost its data) is followed from its start.
    pub async fn jobs_tail(
        &self,
        which: &str,
        from_start: bool,
        limit: Option<NonZeroUsize>,
        out: &mut impl Write,
    ) -> Result<(), AdminError> {
        let (stream, queue) = match (which, &self.bullmq) {
            ("workflow", None) => (self.workflow_stream.clone(), None),
            ("outreach", None) => (self.outreach_stream.clone(), None),
            ("workflow", Some(b)) => {
                let base = format!("{}:{}:", b.prefix, b.workflow_queue);
                (format!("{base}events"), Some(base))
            }
            ("outreach", Some(b)) => {
                let base = format!("{}:{}:", b.prefix, b.outreach_queue);
                (format!("{base}events"), Some(base))
            }
            (other, _) => {
                return Err(AdminError::Refused(format!(
                    "unknown stream {other:?}: workflow or outreach"
                )));
            }
        };
        let mut client = self.client.clone();
        // From the end means after the newest entry now, named, so an
        // outage before the next entry cannot skip any.
        let mut last = match from_start {
            true => None,
            false => newest(&client, &stream).await?,
        };
        let mut printed = 0usize;
        loop {
            let followed = follow(&client, &stream, queue.as_deref(), &mut last, out, || {
                printed += 1;
                limit.is_some_and(|l| printed >= l.get())
            })
            .await;
            let lost = match followed {
                Err(AdminError::Redis(e)) if connection_lost(&e) => e,
                done => return done,
            };
            eprintln!(
                "tether-ingress: lost Redis ({}); reconnecting",
                reason(&lost)
            );
            client = self.reconnect().await;
            let now = match newest(&client, &stream).await {
                Ok(now) => now,
                // Gone again: the next read says so and reconnects.
                Err(AdminError::Redis(e)) if connection_lost(&e) => continue,
                Err(e) => return Err(e),
            };
            if let Some(seen) = &last
                && now
                    .as_deref()
                    .is_none_or(|now| entry_id(now) < entry_id(seen))
            {
                eprintln!(
                    "tether-ingress: {stream} came back without the entries already printed \
                     (Redis lost its data); following it from its start"
                );
                last = None;
            } else {
                eprintln!(
                    "tether-ingress: reconnected; following from entry {}",
                    last.as_deref().unwrap_or("0-0")
                );
            }
        }
    }

    /// A new connection to the same Redis, tried every second until one
    /// answers.
    async fn reconnect(&self) -> Client {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Ok(client) = open(&self.target).await {
                return client;
            }
        }
    }
}

/// Reads `stream` after `last` and prints what it holds until `enough`
/// (asked after each line printed) says stop, or Redis fails.
async fn follow(
    client: &Client,
    stream: &str,
    queue: Option<&str>,
    last: &mut Option<String>,
    out: &mut impl Write,
    mut enough: impl FnMut() -> bool,
) -> Result<(), AdminError> {
    loop {
        let after = last.as_deref().unwrap_or("0-0");
        let reply: Value = client.xread(Some(100), Some(5_000), stream, after).await?;
        for crate::worker::Entry { id, fields } in crate::worker::parse_read(reply) {
            *last = Some(id.clone());
            let line = match queue {
                None => {
                    let mut obj = serde_json::Map::new();
                    obj.insert("id".into(), id.into());
                    for (k, v) in fields {
                        obj.insert(k, v.into());
                    }
                    serde_json::Value::Object(obj).to_string()
                }
                Some(base) => match added_job(client, base, &fields).await? {
                    Some(line) => line,
                    None => continue,
                },
            };
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(AdminError::Output)?;
            if enough() {
                return Ok(());
            }
        }
    }
}

/// Whether `e` says the connection went (so a follower reconnects) rather
/// than that Redis refused the command.
fn connection_lost(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::IO | ErrorKind::Timeout | ErrorKind::Canceled
    )
}

/// The id of `stream`'s newest entry, if it has one.
async fn newest(client: &Client, stream: &str) -> Result<Option<String>, AdminError> {
    let reply: Value = client.xrevrange(stream, "+", "-", Some(1)).await?;
    Ok(crate::worker::parse_entries(reply)
        .into_iter()
        .next()
        .map(|entry| entry.id))
}

/// A stream entry id (`ms-seq`) as numbers, in the stream's order.
fn entry_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// Connects a client of the admin's kind to `target` (fails fast).
async fn open(target: &Target) -> Result<Client, Error> {
    let client = redis::client(target, Role::Admin)?;
    redis::name_connections(&client, "tether-ingress:admin");
    tokio::time::timeout(
        target.connect_timeout + Duration::from_secs(1),
        client.init(),
    )
    .await
    .map_err(|_| Error::new(ErrorKind::Timeout, "connect timed out"))??;
    Ok(client)
}

/// For an `added` event of the queue under `base`, the job it added (if it
/// still exists) as one JSON line: id, name, timestamp, and `opts` and
/// `data` as stored (the caller's numbers untouched).
async fn added_job(
    client: &Client,
    base: &str,
    event: &[(String, String)],
) -> Result<Option<String>, AdminError> {
    use serde_json::value::RawValue;
    #[derive(serde::Serialize)]
    struct Added<'a> {
        id: &'a str,
        name: Option<&'a String>,
        timestamp: Option<u64>,
        opts: Option<Box<RawValue>>,
        data: Option<Box<RawValue>>,
    }
    let get = |name: &str| event.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let (Some(kind), Some(id)) = (get("event"), get("jobId")) else {
        return Ok(None);
    };
    if kind != "added" {
        return Ok(None);
    }
    let hash: std::collections::HashMap<String, String> =
        client.hgetall(format!("{base}{id}")).await?;
    if hash.is_empty() {
        return Ok(None);
    }
    let raw = |field: &str| {
        hash.get(field)
            .and_then(|t| RawValue::from_string(t.clone()).ok())
    };
    let added = Added {
        id,
        name: hash.get("name"),
        timestamp: hash.get("timestamp").and_then(|t| t.parse().ok()),
        opts: raw("opts"),
        data: raw("data"),
    };
    Ok(serde_json::to_string(&added).ok())
}

impl Admin {
    /// The connection (for `import`).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Where the connection goes (for `check-redis`'s own connections).
    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// The control plane's key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_urls() {
        assert_eq!(
            redact_url("redis://u:pw@h:6379/0"),
            "redis://u:***@h:6379/0"
        );
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://:pw@h"), "redis://:***@h");
        assert_eq!(
            redact_url(
                "redis-sentinel://u:pw@s1:26379?sentinelServiceName=m&sentinelPassword=p2&node=s2:26379&sentinelPassword=p3"
            ),
            "redis-sentinel://u:***@s1:26379?sentinelServiceName=m&sentinelPassword=***&node=s2:26379&sentinelPassword=***"
        );
    }
}
