//! The job sink: stream entries into Redis with `XADD … MAXLEN ~ N *`.
//!
//! One shared fred client serves every request. fred pipelines commands from
//! concurrent tasks onto its connection on its own, so many requests' XADDs
//! leave in one write; a request with several matches sends its entries as
//! concurrent commands, which fred batches the same way. [`StreamSink::enqueue`] returns only after Redis has
//! acknowledged every entry, which is when the caller may hear 202.
//!
//! # Failure and delivery
//! - Disconnected client: refused at once ([`SinkError::Disconnected`]), so a
//!   caller gets a quick 503 rather than waiting out the command timeout.
//! - Each command has a deadline; the queue towards Redis is capped.
//! - A write is never re-sent by the client after a reconnect
//!   (`max_command_attempts = 1`): a caller told 503 will retry, and a replay
//!   would double its jobs. What remains ambiguous is a write Redis executed
//!   whose acknowledgement was lost (connection cut, or the deadline passed):
//!   the caller hears 503, retries, and the job exists twice. Delivery is
//!   therefore **at least once**; a worker drops a duplicate by
//!   (`requestId`, `workflowId`) when callers send their own `X-Request-Id`
//!   on retries, and otherwise by the payload's own lead id.
//!
//! This is the seam where a durable local spool and other job formats plug in.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;

use crate::settings::Settings;
use fred::{
    prelude::*,
    types::streams::{XCapKind, XCapTrim},
};

/// Why jobs could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The client has no live connection to Redis.
    #[error("redis is not connected")]
    Disconnected,
    /// Redis did not acknowledge in time (the entry may still be written).
    #[error("redis did not answer in time")]
    Timeout,
    /// Too many commands queued towards Redis.
    #[error("too many commands queued towards redis")]
    Backpressure,
    /// Redis answered with an error.
    #[error("redis refused the write: {0}")]
    Redis(#[source] Error),
}

impl SinkError {
    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Disconnected => "disconnected",
            SinkError::Timeout => "timeout",
            SinkError::Backpressure => "backpressure",
            SinkError::Redis(_) => "redis_error",
        }
    }
}

impl From<Error> for SinkError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Timeout => SinkError::Timeout,
            ErrorKind::Backpressure => SinkError::Backpressure,
            ErrorKind::Canceled | ErrorKind::IO => SinkError::Disconnected,
            _ => SinkError::Redis(e),
        }
    }
}

/// One `tether:jobs:workflow` entry, fields as the contract names them.
#[derive(Debug, Clone)]
pub struct WorkflowJob {
    /// `workflowId`
    pub workflow_id: Bytes,
    /// `orgId`
    pub org_id: Bytes,
    /// `userId`
    pub user_id: Bytes,
    /// `webhookId`
    pub webhook_id: Bytes,
    /// `payload`: the body minus `webhookId`, as sent.
    pub payload: Bytes,
    /// `receivedAt`: unix ms, decimal text.
    pub received_at: Bytes,
    /// `requestId`
    pub request_id: Bytes,
}

impl WorkflowJob {
    fn fields(&self) -> Vec<(Key, Value)> {
        vec![
            (
                Key::from_static_str("workflowId"),
                Value::Bytes(self.workflow_id.clone()),
            ),
            (
                Key::from_static_str("orgId"),
                Value::Bytes(self.org_id.clone()),
            ),
            (
                Key::from_static_str("userId"),
                Value::Bytes(self.user_id.clone()),
            ),
            (
                Key::from_static_str("webhookId"),
                Value::Bytes(self.webhook_id.clone()),
            ),
            (
                Key::from_static_str("payload"),
                Value::Bytes(self.payload.clone()),
            ),
            (
                Key::from_static_str("receivedAt"),
                Value::Bytes(self.received_at.clone()),
            ),
            (
                Key::from_static_str("requestId"),
                Value::Bytes(self.request_id.clone()),
            ),
        ]
    }
}

/// One `tether:jobs:outreach` entry, fields as the contract names them.
#[derive(Debug, Clone)]
pub struct OutreachJob {
    /// `configurationId`
    pub configuration_id: Bytes,
    /// `userId`
    pub user_id: Bytes,
    /// `orgId`
    pub org_id: Bytes,
    /// `format`: `raw` or `fixed`.
    pub format: Bytes,
    /// `contacts`: JSON object text.
    pub contacts: Bytes,
    /// `applications`: JSON object text.
    pub applications: Bytes,
    /// `conversations`: JSON object text.
    pub conversations: Bytes,
    /// `receivedAt`: unix ms, decimal text.
    pub received_at: Bytes,
    /// `requestId`
    pub request_id: Bytes,
}

impl OutreachJob {
    fn fields(&self) -> Vec<(Key, Value)> {
        let f =
            |name: &'static str, v: &Bytes| (Key::from_static_str(name), Value::Bytes(v.clone()));
        vec![
            f("configurationId", &self.configuration_id),
            f("userId", &self.user_id),
            f("orgId", &self.org_id),
            f("format", &self.format),
            f("contacts", &self.contacts),
            f("applications", &self.applications),
            f("conversations", &self.conversations),
            f("receivedAt", &self.received_at),
            f("requestId", &self.request_id),
        ]
    }
}

/// Settings of the sink.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    /// Redis URL.
    pub redis_url: String,
    /// Connect deadline.
    pub connect_timeout: Duration,
    /// Per-command deadline.
    pub command_timeout: Duration,
    /// Cap on commands queued towards Redis.
    pub max_pending_commands: usize,
}

fn cap(settings: &Settings) -> (XCapKind, XCapTrim, i64) {
    (
        XCapKind::MaxLen,
        XCapTrim::AlmostExact,
        settings.stream_maxlen,
    )
}

fn options(settings: &Settings) -> Options {
    Options {
        timeout: Some(settings.command_timeout),
        ..Default::default()
    }
}

// === impl StreamSink ===

/// Writes jobs to Redis Streams through one shared, auto-pipelining client.
#[derive(Clone)]
pub struct StreamSink {
    client: Client,
    connected_once: Arc<AtomicBool>,
    waiter: Arc<tokio::task::JoinHandle<()>>,
}

impl StreamSink {
    /// Builds the client and starts connecting in the background (requests
    /// get [`SinkError::Disconnected`] until it is up).
    pub fn connect(settings: &SinkSettings) -> Result<Self, Error> {
        let mut config = Config::from_url(&settings.redis_url)?;
        config.fail_fast = false;
        let s = settings.clone();
        let client = Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = s.connect_timeout;
                c.internal_command_timeout = s.command_timeout;
                c.max_command_buffer_len = s.max_pending_commands;
                // Never replay a write after a reconnect: its caller may
                // already have been told 503 and be retrying.
                c.max_command_attempts = 1;
                c.tcp = TcpConfig {
                    nodelay: Some(true),
                    ..Default::default()
                };
            })
            .with_performance_config(|p| {
                p.default_command_timeout = s.command_timeout;
            })
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
            .build()?;
        let _task = client.connect();
        let connected_once = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (client, flag) = (client.clone(), connected_once.clone());
            tokio::spawn(async move {
                if client.wait_for_connect().await.is_ok() {
                    flag.store(true, Ordering::Release);
                }
            })
        };
        Ok(Self {
            client,
            connected_once,
            waiter: Arc::new(waiter),
        })
    }

    /// True once the first connection to Redis succeeded.
    pub fn has_connected(&self) -> bool {
        self.connected_once.load(Ordering::Acquire)
    }

    /// Stores every job on the workflow stream of `settings`; `Ok` only once
    /// Redis acknowledged all of them.
    pub async fn enqueue(
        &self,
        jobs: &[WorkflowJob],
        settings: &Settings,
    ) -> Result<(), SinkError> {
        if !self.client.is_connected() {
            return Err(SinkError::Disconnected);
        }
        let client = self.client.with_options(&options(settings));
        let add = |job: &WorkflowJob| {
            client.xadd::<Value, _, _, _, _>(
                settings.workflow_stream.clone(),
                false,
                cap(settings),
                "*",
                job.fields(),
            )
        };
        match jobs {
            [] => Ok(()),
            [job] => {
                add(job).await?;
                Ok(())
            }
            // Concurrent single commands, not an explicit `Pipeline`: fred
            // writes them in one batch all the same, and unlike a pipeline
            // each keeps its own deadline and is never replayed after a
            // reconnect once its caller has given up on it.
            many => {
                for result in futures::future::join_all(many.iter().map(add)).await {
                    result?;
                }
                Ok(())
            }
        }
    }

    /// Stores one outreach job; returns its stream entry id once acknowledged.
    pub async fn enqueue_outreach(
        &self,
        job: &OutreachJob,
        settings: &Settings,
    ) -> Result<Bytes, SinkError> {
        if !self.client.is_connected() {
            return Err(SinkError::Disconnected);
        }
        let id: Bytes = self
            .client
            .with_options(&options(settings))
            .xadd(
                settings.outreach_stream.clone(),
                false,
                cap(settings),
                "*",
                job.fields(),
            )
            .await?;
        Ok(id)
    }

    /// Closes the connection (after in-flight commands were answered).
    pub async fn close(&self) {
        self.waiter.abort();
        // QUIT on a client that never connected would wait for a connection.
        if self.client.is_connected() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.client.quit()).await;
        }
    }
}
