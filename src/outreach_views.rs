//! Outreach configurations and org dynamic properties: two live views of
//! the replica ([`crate::replica`]) that the outreach route reads. Apart
//! from the route so the shared state can hold them without importing it.

use std::{collections::HashMap, sync::Arc};

use dashmap::DashMap;

use simd_json::Node;

use crate::{
    id::Id,
    parse::{truthy, with_document},
    replica::{BadValue, Fetched, KeyKind, View},
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

/// Reads a configuration record as the backend's JavaScript reads it:
/// `JSON.parse` (a member named twice: the last counts), then `active`,
/// `processId` and `promptId` by truthiness, so a numeric `processId` is
/// set and `"active": 1` is active. The owner's ids must be strings (the
/// backend compares `userId` with the caller's by `===`); without them the
/// configuration is as good as absent and answers 404.
fn read_config(raw: &[u8]) -> Result<OutreachConfig, BadValue> {
    let read = with_document(raw, |doc| {
        let value = |name: &str| doc.member(name).and_then(|m| doc.value(m));
        let set = |name: &str| value(name).is_some_and(truthy);
        let (Some(Node::String(user_id)), Some(Node::String(org_id))) =
            (value("userId"), value("orgId"))
        else {
            return Ok(Err(BadValue(
                "lacks a userId or orgId that is a string: the configuration answers 404",
            )));
        };
        if user_id.is_empty() {
            return Ok(Err(BadValue(
                "has an empty userId: the configuration answers 404",
            )));
        }
        Ok(Ok(OutreachConfig {
            user_id: Id::from_str_copy(user_id),
            org_id: Id::from_str_copy(org_id),
            active: set("active"),
            runnable: set("processId") || set("promptId"),
        }))
    });
    read.unwrap_or(Err(BadValue(
        "is not a JSON object: the configuration answers 404",
    )))
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

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) -> Result<(), BadValue> {
        let read = match value {
            Fetched::String(raw) => read_config(&raw).map(Some),
            _ => Ok(None),
        };
        match &read {
            Ok(Some(config)) => {
                self.entries
                    .insert(suffix.into(), (config.clone(), generation));
            }
            _ => {
                self.entries.remove(suffix);
            }
        }
        read.map(drop)
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

    fn apply(&self, suffix: &str, value: Fetched, generation: u64) -> Result<(), BadValue> {
        let Some(org) = suffix.strip_suffix(PROPERTIES_SUFFIX) else {
            return Ok(());
        };
        let mut unknown = false;
        let fields: HashMap<Box<str>, Category> = match value {
            Fetched::Hash(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| {
                    let category = Category::parse(v);
                    unknown |= category.is_none();
                    Some((std::str::from_utf8(k).ok()?.into(), category?))
                })
                .collect(),
            _ => HashMap::new(),
        };
        if fields.is_empty() {
            self.orgs.remove(org);
        } else {
            self.orgs.insert(org.into(), (Arc::new(fields), generation));
        }
        match unknown {
            true => Err(BadValue(
                "names a category that is none of contact, application and conversation: that field goes to contacts",
            )),
            false => Ok(()),
        }
    }

    fn sweep(&self, generation: u64) {
        self.orgs.retain(|_, e| e.1 >= generation);
    }

    fn len(&self) -> usize {
        self.orgs.len()
    }
}
