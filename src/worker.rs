//! The worker side of the job streams, as a reusable piece: read with a
//! consumer group, drop duplicates, acknowledge, and take over entries a dead
//! consumer left pending. `examples/worker.rs` runs it.
//!
//! Delivery from the ingress is at least once (see [`crate::sink`]). Both kinds
//! of duplicate have the same `(requestId, workflowId)` and the same lead
//! when the caller resends its `X-Request-Id` on retry. So before handling
//! an entry the worker claims `<prefix>dedupe:<stream>:<requestId>:<workflowId>:<lead>`
//! (`<lead>` the digest of [`crate::digest`]: a caller that sends one
//! `X-Request-Id` with several leads sends several leads) with `SET NX EX`;
//! an entry whose claim already exists is acknowledged without being handled
//! again.

use std::time::Duration;

use fred::prelude::*;

/// One stream entry: its id and fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stream entry id.
    pub id: String,
    /// Field name → value, in entry order.
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The digest of the lead it carries, as the ingress computes it for a
    /// BullMQ job id ([`crate::digest`]): `webhookId` and `payload` of a
    /// workflow entry, `format` and the three groups of an outreach one.
    fn digest(&self) -> u64 {
        let field = |name| self.get(name).unwrap_or_default().as_bytes();
        if self.get("workflowId").is_some() {
            crate::digest::content([field("webhookId"), field("payload")])
        } else {
            crate::digest::content([
                field("format"),
                field("contacts"),
                field("applications"),
                field("conversations"),
            ])
        }
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What one [`Worker::poll`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Polled {
    /// Entries handed to the handler and acknowledged.
    pub handled: usize,
    /// Duplicates acknowledged without handling.
    pub duplicates: usize,
    /// Entries the handler refused; left pending for a retry or another consumer.
    pub failed: usize,
}

/// A consumer in a consumer group of one stream.
pub struct Worker {
    client: Client,
    stream: String,
    group: String,
    consumer: String,
    dedupe_prefix: String,
    dedupe_ttl_secs: i64,
    claim_idle: Duration,
}

impl Worker {
    /// Joins (creating if needed) `group` on `stream` as `consumer`.
    pub async fn join(
        client: Client,
        stream: &str,
        group: &str,
        consumer: &str,
        key_prefix: &str,
    ) -> Result<Self, Error> {
        let created: Result<(), Error> = client.xgroup_create(stream, group, "0", true).await;
        if let Err(e) = created
            && !e.details().contains("BUSYGROUP")
        {
            return Err(e);
        }
        Ok(Self {
            client,
            stream: stream.to_owned(),
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            dedupe_prefix: format!("{key_prefix}dedupe:"),
            dedupe_ttl_secs: 24 * 3600,
            claim_idle: Duration::from_secs(60),
        })
    }

    /// Entries pending longer than this on another consumer are taken over.
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Reads up to `count` entries (first ones abandoned by dead consumers,
    /// then new ones, waiting up to `block`), handles each once and
    /// acknowledges it. A handler error leaves the entry pending.
    pub async fn poll<F, Fut>(
        &self,
        count: u64,
        block: Duration,
        mut handle: F,
    ) -> Result<Polled, Error>
    where
        F: FnMut(Entry) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let mut entries = self.claim_abandoned(count).await?;
        if entries.is_empty() {
            let reply: Value = self
                .client
                .xreadgroup(
                    &self.group,
                    &self.consumer,
                    Some(count),
                    Some(block.as_millis() as u64),
                    false,
                    self.stream.as_str(),
                    ">",
                )
                .await?;
            entries = parse_read(reply);
        }
        let mut polled = Polled::default();
        for entry in entries {
            let dedupe_key = match (
                entry.get("requestId"),
                entry.get("workflowId").or(entry.get("configurationId")),
            ) {
                (Some(r), Some(w)) => {
                    let lead =
                        String::from_utf8_lossy(&crate::digest::hex(entry.digest())).into_owned();
                    Some(format!(
                        "{}{}:{r}:{w}:{lead}",
                        self.dedupe_prefix, self.stream
                    ))
                }
                _ => None,
            };
            let first = match &dedupe_key {
                Some(k) => {
                    let set: Option<String> = self
                        .client
                        .set(
                            k,
                            &entry.id,
                            Some(Expiration::EX(self.dedupe_ttl_secs)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await?;
                    // Ours already (a retry of our own unacknowledged entry) counts as first.
                    match set {
                        Some(_) => true,
                        None => {
                            let owner: Option<String> = self.client.get(k).await?;
                            owner.as_deref() == Some(entry.id.as_str())
                        }
                    }
                }
                None => true,
            };
            let id = entry.id.clone();
            if first {
                if let Err(e) = handle(entry).await {
                    tracing::warn!(entry = %id, error = %e, "handler failed; entry left pending");
                    if let Some(k) = &dedupe_key {
                        let _: i64 = self.client.del(k).await?;
                    }
                    polled.failed += 1;
                    continue;
                }
                polled.handled += 1;
            } else {
                polled.duplicates += 1;
            }
            let _: i64 = self
                .client
                .xack(&self.stream, &self.group, id.as_str())
                .await?;
        }
        Ok(polled)
    }

    async fn claim_abandoned(&self, count: u64) -> Result<Vec<Entry>, Error> {
        let reply: Value = self
            .client
            .xautoclaim(
                &self.stream,
                &self.group,
                &self.consumer,
                self.claim_idle.as_millis() as u64,
                "0-0",
                Some(count),
                false,
            )
            .await?;
        // [next-cursor, [[id, [f, v, ...]], ...], deleted-ids]
        let Value::Array(mut parts) = reply else {
            return Ok(Vec::new());
        };
        if parts.len() < 2 {
            return Ok(Vec::new());
        }
        Ok(parse_entries(parts.swap_remove(1)))
    }
}

fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string()),
        Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        Value::Integer(i) => Some(i.to_string()),
        _ => None,
    }
}

pub(crate) fn parse_entries(v: Value) -> Vec<Entry> {
    let Value::Array(items) = v else {
        return Vec::new();
    };
    items
        .into_iter()
        .filter_map(|e| {
            let Value::Array(mut e) = e else { return None };
            let fields = e.pop()?;
            let id = text(e.pop()?)?;
            let mut kv = Vec::new();
            if let Value::Array(f) = fields {
                let mut it = f.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    kv.push((text(k)?, text(v)?));
                }
            }
            Some(Entry { id, fields: kv })
        })
        .collect()
}

/// An XREAD or XREADGROUP reply (RESP2 arrays or RESP3 map) → its entries.
pub(crate) fn parse_read(reply: Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                Value::Array(mut pair) if pair.len() == 2 => parse_entries(pair.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(m) => m.inner().into_values().flat_map(parse_entries).collect(),
        _ => Vec::new(),
    }
}
