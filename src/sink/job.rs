//! The job records a request hands the sink: one request's workflow jobs
//! (shared fields once, one workflow id per job) and an outreach job, with
//! their fields in the contract's names and order; and where they ended up.

use bytes::Bytes;

use crate::{id::Id, route::Workflows};

/// One request's `tether:jobs:workflow` entries: one per matched workflow,
/// every other field shared, as the contract names them.
#[derive(Debug, Clone)]
pub(crate) struct WorkflowJobs {
    /// `workflowId` of each entry, in the order they are written.
    pub workflows: Workflows,
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

impl WorkflowJobs {
    /// The fields of `workflow`'s entry, in the contract's order.
    pub(crate) fn pairs<'a>(&'a self, workflow: &'a Id) -> [(&'static str, &'a Bytes); 7] {
        [
            ("workflowId", workflow.bytes()),
            ("orgId", &self.org_id),
            ("userId", &self.user_id),
            ("webhookId", &self.webhook_id),
            ("payload", &self.payload),
            ("receivedAt", &self.received_at),
            ("requestId", &self.request_id),
        ]
    }

    /// The digest of the lead the entries carry (`webhookId`, `payload`):
    /// part of each BullMQ job id ([`crate::digest`]).
    pub(crate) fn digest(&self) -> u64 {
        crate::digest::content([&self.webhook_id[..], &self.payload[..]])
    }

    /// About how many bytes one entry takes on the wire or in the spool,
    /// but for its workflow id and stream name: the shared fields and 256
    /// for the framing.
    pub(crate) fn entry_bytes(&self) -> usize {
        [
            &self.org_id,
            &self.user_id,
            &self.webhook_id,
            &self.payload,
            &self.request_id,
        ]
        .iter()
        .map(|f| f.len())
        .sum::<usize>()
            + 256
    }

    /// The same request's entries for `workflows` only (a part of them).
    pub(crate) fn part(&self, workflows: &[Id]) -> Self {
        Self {
            workflows: workflows.into(),
            ..self.clone()
        }
    }

    /// The number of entries.
    pub(crate) fn len(&self) -> usize {
        self.workflows.len()
    }

    /// True when there is none to write.
    pub(crate) fn is_empty(&self) -> bool {
        self.workflows.is_empty()
    }
}

/// One `tether:jobs:outreach` entry, fields as the contract names them.
#[derive(Debug, Clone)]
pub(crate) struct OutreachJob {
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
    /// The entry's fields, in the contract's order.
    pub(crate) fn pairs(&self) -> [(&'static str, &Bytes); 9] {
        [
            ("configurationId", &self.configuration_id),
            ("userId", &self.user_id),
            ("orgId", &self.org_id),
            ("format", &self.format),
            ("contacts", &self.contacts),
            ("applications", &self.applications),
            ("conversations", &self.conversations),
            ("receivedAt", &self.received_at),
            ("requestId", &self.request_id),
        ]
    }

    /// The digest of the lead the entry carries (`format` and the three
    /// groups): part of its BullMQ job id ([`crate::digest`]).
    pub(crate) fn digest(&self) -> u64 {
        crate::digest::content([
            &self.format[..],
            &self.contacts[..],
            &self.applications[..],
            &self.conversations[..],
        ])
    }
}

/// Where a request's jobs were stored: `T` is what Redis answered (an
/// outreach job's entry or job id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stored<T = ()> {
    /// Acknowledged by Redis.
    Redis(T),
    /// Some or all went to the local spool (synced to disk), to be replayed.
    Spooled,
}
