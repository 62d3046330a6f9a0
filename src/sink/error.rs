//! Why jobs could not be stored: [`SinkError`], and [`SpoolError`] for the
//! local spool. A leaf: it imports nothing of the crate, so every module
//! can name these errors without importing the sink, and only the service
//! turns them into a response ([`crate::error`]).

use fred::error::{Error, ErrorKind};

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
    /// Fewer replicas than `redis.wait_replicas` confirmed the jobs in time.
    #[error("the replicas did not confirm the write in time")]
    NotReplicated,
    /// Redis answered with an error.
    #[error("redis refused the write: {0}")]
    Redis(#[source] Error),
    /// Redis could not take the jobs and neither could the spool.
    #[error("redis could not take the jobs ({redis}) and the spool refused them: {spool}")]
    Spool {
        /// Why Redis did not take them.
        redis: &'static str,
        /// Why the spool refused them.
        #[source]
        spool: SpoolError,
    },
}

impl SinkError {
    /// A bounded metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            SinkError::Disconnected => "disconnected",
            SinkError::Timeout => "timeout",
            SinkError::Backpressure => "backpressure",
            SinkError::NotReplicated => "not_replicated",
            SinkError::Redis(_) => "redis_error",
            SinkError::Spool {
                spool: SpoolError::Full,
                ..
            } => "spool_full",
            SinkError::Spool { .. } => "spool_failed",
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

/// Why the spool could not take or give records.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The size cap is reached.
    #[error("spool is full")]
    Full,
    /// The disk refused a write or sync.
    #[error("spool write failed: {0}")]
    Io(#[source] std::io::Error),
    /// The writer thread is gone (shutting down).
    #[error("spool writer stopped")]
    Stopped,
}
