//! Trigger matching: (org, webhookId) → the workflow ids to enqueue.
//!
//! [`WebhookIndex`] is the replica's live view of every
//! `<prefix>triggers:<orgId>:<webhookId>` set. It is two-level (org, then
//! webhookId) so a lookup borrows both `&str`s and allocates nothing; the
//! result is an `Arc` cloned out while the shard guard is dropped in the same
//! statement. An org id ends at the first `:` of the key's suffix.

use std::{collections::HashMap, sync::Arc};

use dashmap::DashMap;

use crate::{
    id::Id,
    metrics as m,
    replica::{BadValue, Fetched, KeyKind, View},
};

/// Workflow ids of one trigger set, shared with every request that matches it.
pub(crate) type Workflows = Arc<[Id]>;

type Hash = foldhash::fast::RandomState;

struct Trigger {
    workflows: Workflows,
    generation: u64,
}

/// Live view of the trigger sets.
pub struct WebhookIndex {
    prefix: String,
    orgs: DashMap<Box<str>, HashMap<Box<str>, Trigger, Hash>, Hash>,
    /// Whether a skipped key was logged (once per process).
    warned: std::sync::atomic::AtomicBool,
}

impl WebhookIndex {
    /// An empty index for sets under `<key_prefix>triggers:`.
    pub fn new(key_prefix: &str) -> Self {
        Self {
            prefix: format!("{key_prefix}triggers:"),
            orgs: DashMap::with_hasher(Hash::default()),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The workflows triggered by `webhook_id` in `org`; `None` when nothing matches.
    pub fn lookup(&self, org: &str, webhook_id: &str) -> Option<Workflows> {
        self.orgs
            .get(org)
            .and_then(|m| m.get(webhook_id).map(|t| t.workflows.clone()))
    }
}

impl View for WebhookIndex {
    fn name(&self) -> &'static str {
        "triggers"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn kind(&self) -> KeyKind {
        KeyKind::Set
    }

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) -> Result<(), BadValue> {
        let Some((org, webhook_id)) = suffix.split_once(':') else {
            return Ok(());
        };
        if org.is_empty() {
            return Ok(());
        }
        // `o:x:w` is org `o:x` or webhookId `x:w`: never guess.
        if webhook_id.contains(':') {
            metrics::counter!(m::REPLICA_SKIPPED, "view" => "triggers").increment(1);
            if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    key = %format!("{}{suffix}", self.prefix),
                    "trigger key skipped: an org id or webhookId holding ':' cannot be told apart (this and others like it are counted in tether_replica_skipped_keys_total)"
                );
            }
            return Ok(());
        }
        let mut unreadable = false;
        let workflows: Option<Workflows> = match value {
            Fetched::Set(members) => {
                // Copied: the members are slices of the client's read buffer.
                let mut ids: Vec<Id> = members.iter().filter_map(|m| Id::copied(m)).collect();
                unreadable = ids.len() < members.len();
                // Stable order, so entries of one request are written in a
                // predictable sequence.
                ids.sort_unstable();
                (!ids.is_empty()).then(|| ids.into())
            }
            _ => None,
        };
        match workflows {
            Some(workflows) => {
                self.orgs.entry(org.into()).or_default().insert(
                    webhook_id.into(),
                    Trigger {
                        workflows,
                        generation,
                    },
                );
            }
            None => {
                self.orgs.remove_if_mut(org, |_, m| {
                    m.remove(webhook_id);
                    m.is_empty()
                });
            }
        }
        match unreadable {
            true => Err(BadValue(
                "holds a workflow id that is not UTF-8 text: it gets no job",
            )),
            false => Ok(()),
        }
    }

    fn sweep(&self, generation: u64) {
        self.orgs.retain(|_, m| {
            m.retain(|_, t| t.generation >= generation);
            m.shrink_to_fit();
            !m.is_empty()
        });
        self.orgs.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.orgs.iter().map(|m| m.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn set(ids: &[&str]) -> Fetched {
        Fetched::Set(
            ids.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect(),
        )
    }

    #[test]
    fn lookup_is_per_org() {
        let idx = WebhookIndex::new("tether:");
        idx.apply("o1:wh", set(&["w2", "w1"]), 1).unwrap();
        let got = idx.lookup("o1", "wh").unwrap();
        assert_eq!(got.iter().map(Id::as_str).collect::<Vec<_>>(), ["w1", "w2"]);
        assert!(idx.lookup("o2", "wh").is_none());
        assert!(idx.lookup("o1", "other").is_none());
    }

    #[test]
    fn kept_ids_do_not_pin_the_reply_buffer() {
        // Members arrive as slices of the Redis client's read buffer.
        let reply = Bytes::from(b"*2\r\n$2\r\nw1\r\n$2\r\nw2\r\n".to_vec());
        let idx = WebhookIndex::new("tether:");
        idx.apply(
            "o1:wh",
            Fetched::Set(vec![reply.slice(8..10), reply.slice(16..18)]),
            1,
        )
        .unwrap();
        assert_eq!(idx.lookup("o1", "wh").unwrap().len(), 2);
        assert!(reply.is_unique(), "the index holds a slice of the reply");
    }

    #[test]
    fn a_key_with_a_second_colon_is_skipped() {
        // `o1:a:b` is org `o1:a` or webhookId `a:b`: matching either would
        // risk another org's workflows (it used to match `a:b` of `o1`).
        let idx = WebhookIndex::new("tether:");
        idx.apply("o1:a:b", set(&["w"]), 1).unwrap();
        assert!(idx.lookup("o1", "a:b").is_none());
        assert!(idx.lookup("o1:a", "b").is_none());
        assert_eq!(idx.len(), 0);
    }

    #[test]
    fn removal_and_sweep() {
        let idx = WebhookIndex::new("tether:");
        idx.apply("o1:a", set(&["w"]), 1).unwrap();
        idx.apply("o1:b", set(&["w"]), 2).unwrap();
        idx.apply("o1:a", Fetched::Absent, 2).unwrap();
        assert!(idx.lookup("o1", "a").is_none());
        assert_eq!(idx.len(), 1);
        idx.sweep(3);
        assert_eq!(idx.len(), 0);
        assert!(idx.orgs.is_empty());
    }
}
