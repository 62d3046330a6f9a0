//! Why jobs could not be stored: [`SinkError`], and how each becomes the
//! caller's answer: `JOB_STORE_UNAVAILABLE` when nothing was sent (or
//! Redis refused it), `JOB_STORE_UNCONFIRMED` when the jobs were sent and
//! may be stored.

use fred::error::{Error, ErrorKind};

use crate::{error::Reject, spool::SpoolError};

/// Why jobs could not be stored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    /// The client has no live connection to Redis: nothing was sent.
    #[error("redis is not connected")]
    Disconnected,
    /// The writer's writes in flight have had no reply for longer than
    /// `redis.stall_after_ms`: nothing was sent.
    #[error("redis stopped answering (the writer is stalled)")]
    Stalled,
    /// Too many commands queued towards Redis: nothing was sent.
    #[error("too many commands queued towards redis")]
    Backpressure,
    /// Redis answered with an error: it refused the write. Shown as
    /// Redis's own text (`OOM command not allowed…`), without fred's kind.
    #[error("redis refused the write: {}", .0.details())]
    Redis(#[source] Error),
    /// Sent, and Redis did not answer in time (the jobs may be written).
    /// With a ticket, the connection is still open and its late reply will
    /// say whether the jobs were stored ([`crate::sink`]'s tickets).
    #[error("redis did not answer in time")]
    Timeout(Option<u64>),
    /// Sent, and the connection broke before the answer (the jobs may be
    /// written).
    #[error("the connection to redis broke before its answer")]
    Lost,
    /// Stored on the primary, and fewer replicas than `redis.wait_replicas`
    /// confirmed them in time.
    #[error("the replicas did not confirm the write in time")]
    NotReplicated,
    /// Some of the request's jobs were stored and the rest were not (one
    /// of its commands refused, or a later part of a request written in
    /// parts failed): a retry writes the stored ones again.
    #[error("some of the jobs were stored, then: {0}")]
    Partly(Box<SinkError>),
    /// Redis could not take the jobs and neither could the spool.
    #[error("redis could not take the jobs ({redis}) and the spool refused them: {spool}")]
    Spool {
        /// Why Redis did not take them ([`SinkError::reason`]).
        redis: &'static str,
        /// Whether they were sent to Redis and may be stored there.
        unconfirmed: bool,
        /// Why the spool refused them.
        #[source]
        spool: SpoolError,
    },
}

impl SinkError {
    /// A bounded metric label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            SinkError::Disconnected => "disconnected",
            SinkError::Stalled => "stalled",
            SinkError::Backpressure => "backpressure",
            SinkError::Redis(_) => "redis_error",
            SinkError::Timeout(_) => "timeout",
            SinkError::Lost => "connection_lost",
            SinkError::NotReplicated => "not_replicated",
            SinkError::Partly(_) => "partly_stored",
            SinkError::Spool {
                spool: SpoolError::Full,
                ..
            } => "spool_full",
            SinkError::Spool { .. } => "spool_failed",
        }
    }

    /// The ticket a spooled copy of these jobs goes under: Redis may still
    /// answer whether it stored them.
    pub(crate) fn ticket(&self) -> Option<u64> {
        match self {
            SinkError::Timeout(ticket) => *ticket,
            _ => None,
        }
    }

    /// Whether the jobs were sent to Redis and may be stored there.
    pub(crate) fn unconfirmed(&self) -> bool {
        match self {
            SinkError::Timeout(_)
            | SinkError::Lost
            | SinkError::NotReplicated
            | SinkError::Partly(_) => true,
            SinkError::Spool { unconfirmed, .. } => *unconfirmed,
            SinkError::Disconnected
            | SinkError::Stalled
            | SinkError::Backpressure
            | SinkError::Redis(_) => false,
        }
    }
}

impl From<Error> for SinkError {
    fn from(e: Error) -> Self {
        match e.kind() {
            ErrorKind::Timeout => SinkError::Timeout(None),
            ErrorKind::Backpressure => SinkError::Backpressure,
            ErrorKind::Canceled | ErrorKind::IO => SinkError::Lost,
            _ => SinkError::Redis(e),
        }
    }
}

impl From<SinkError> for Reject {
    fn from(e: SinkError) -> Self {
        if e.unconfirmed() {
            Reject::Unconfirmed(Box::new(e))
        } else {
            Reject::Unavailable(Box::new(e))
        }
    }
}
