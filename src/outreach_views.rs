//! Outreach configurations and org dynamic properties: two live views of
//! the replica ([`crate::replica`]) that the outreach route reads. Apart
//! from the route so the shared state can hold them without importing it.

use std::{collections::HashMap, sync::Arc};

use dashmap::DashMap;
use serde::Deserialize;

use crate::{
    id::Id,
    replica::{Fetched, KeyKind, View},
};

/// Where a raw-format field goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    /// `contacts` (also the default for unknown fields).
    Contact,
    /// `applications`
    Application,
    /// `conversations`
    Conversation,
}

impl Category {
    /// Every category, in [`Category::index`] order.
    const ALL: [Category; 3] = [
        Category::Contact,
        Category::Application,
        Category::Conversation,
    ];
    /// Their names in an org's properties hash, in the same order: the one
    /// list the admin CLI, the import and the replica check against.
    pub(crate) const NAMES: [&'static str; 3] = ["contact", "application", "conversation"];

    pub(super) fn parse(v: &[u8]) -> Option<Self> {
        let i = Self::NAMES.iter().position(|name| name.as_bytes() == v)?;
        Some(Self::ALL[i])
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// An outreach configuration as the ingress needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutreachConfig {
    /// Owner: only this user's keys may use it.
    pub user_id: Id,
    /// Owner's org.
    pub org_id: Id,
    /// Inactive configurations refuse requests (400).
    pub active: bool,
    /// True when `processId` or `promptId` is set.
    pub runnable: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigRecord {
    user_id: String,
    org_id: String,
    #[serde(default)]
    active: bool,
    #[serde(default)]
    process_id: Option<String>,
    #[serde(default)]
    prompt_id: Option<String>,
}

// === impl OutreachConfigs ===

/// Live view of `<prefix>outreach:config:<id>`.
pub(crate) struct OutreachConfigs {
    prefix: String,
    entries: DashMap<Box<str>, (OutreachConfig, u64)>,
}

impl OutreachConfigs {
    /// An empty view for `<key_prefix>outreach:config:`.
    pub(crate) fn new(key_prefix: &str) -> Self {
        Self {
            prefix: format!("{key_prefix}outreach:config:"),
            entries: DashMap::new(),
        }
    }

    /// The configuration with this id.
    pub(crate) fn lookup(&self, id: &str) -> Option<OutreachConfig> {
        self.entries.get(id).map(|e| e.0.clone())
    }
}

impl View for OutreachConfigs {
    fn name(&self) -> &'static str {
        "outreach_configs"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn kind(&self) -> KeyKind {
        KeyKind::String
    }

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) {
        let parsed = match value {
            Fetched::String(raw) => serde_json::from_slice::<ConfigRecord>(&raw).ok(),
            _ => None,
        };
        match parsed {
            Some(rec) if !rec.user_id.is_empty() => {
                let present = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
                let config = OutreachConfig {
                    user_id: Id::from_str_copy(&rec.user_id),
                    org_id: Id::from_str_copy(&rec.org_id),
                    active: rec.active,
                    runnable: present(&rec.process_id) || present(&rec.prompt_id),
                };
                self.entries.insert(suffix.into(), (config, generation));
            }
            _ => {
                self.entries.remove(suffix);
            }
        }
    }

    fn sweep(&self, generation: u64) {
        self.entries.retain(|_, e| e.1 >= generation);
    }

    fn len(&self) -> usize {
        self.entries.len()
    }
}

// === impl OrgProperties ===

/// Field name → category of one org.
pub(crate) type Properties = Arc<HashMap<Box<str>, Category>>;

/// Live view of `<prefix>org:<orgId>:properties`.
pub(crate) struct OrgProperties {
    prefix: String,
    orgs: DashMap<Box<str>, (Properties, u64)>,
}

const PROPERTIES_SUFFIX: &str = ":properties";

impl OrgProperties {
    /// An empty view for `<key_prefix>org:<orgId>:properties`.
    pub(crate) fn new(key_prefix: &str) -> Self {
        Self {
            prefix: format!("{key_prefix}org:"),
            orgs: DashMap::new(),
        }
    }

    /// The properties of `org`, if it has any.
    pub(crate) fn lookup(&self, org: &str) -> Option<Properties> {
        self.orgs.get(org).map(|e| e.0.clone())
    }
}

impl View for OrgProperties {
    fn name(&self) -> &'static str {
        "org_properties"
    }

    fn prefix(&self) -> &str {
        &self.prefix
    }

    fn kind(&self) -> KeyKind {
        KeyKind::Hash
    }

    fn wants(&self, suffix: &str) -> bool {
        suffix
            .strip_suffix(PROPERTIES_SUFFIX)
            .is_some_and(|org| !org.is_empty())
    }

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) {
        let Some(org) = suffix.strip_suffix(PROPERTIES_SUFFIX) else {
            return;
        };
        let fields: HashMap<Box<str>, Category> = match value {
            Fetched::Hash(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| {
                    Some((std::str::from_utf8(k).ok()?.into(), Category::parse(v)?))
                })
                .collect(),
            _ => HashMap::new(),
        };
        if fields.is_empty() {
            self.orgs.remove(org);
        } else {
            self.orgs.insert(org.into(), (Arc::new(fields), generation));
        }
    }

    fn sweep(&self, generation: u64) {
        self.orgs.retain(|_, e| e.1 >= generation);
    }

    fn len(&self) -> usize {
        self.orgs.len()
    }
}
