//! `tether-ingress import [--prune] [--dry-run] FILE`: the backend's control
//! plane brought over in one command (CONTRACT §3c).
//!
//! The file is JSON lines, one item each: an `apiKey` (plain `key`, hashed
//! here before anything leaves the process, or its `sha256`), a `trigger`,
//! an `outreachConfig` or an `orgProperties`. It is read as a stream, in
//! batches: each batch's current values are read in one pipeline, compared
//! with the file's (as JSON values, sets and maps, so an equal record the
//! backend wrote with another key order counts as unchanged), and only what
//! differs is written, in a second pipeline. A set or hash is changed in
//! place, additions before removals, so a request never sees it emptied
//! midway. A bad line is reported with its number and refused; the rest
//! goes on.
//!
//! With `--prune`, every kind present in the file ends up exactly as the
//! file says: the keys of that kind the file did not name are deleted (a
//! revoked API key stops working within the replica's 1 s bound). A file
//! with a refused line prunes nothing: the key that line names would be
//! taken for one the file lacks. The import remembers each key it saw as
//! 16 bytes of its SHA-256, so memory grows by about that per item, never
//! by the file. With `--dry-run` nothing is written; each change is
//! printed instead.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    io::{BufRead, IsTerminal, Write},
    time::{Duration, Instant},
};

use fred::{prelude::*, types::scan::Scanner};
use futures::TryStreamExt;
use serde_json::{Map, Value as Json};

use crate::{admin::AdminError, auth::digest_key, hex, outreach::Category};

/// Items read, compared and written together.
const BATCH: usize = 2_000;

/// What `import` is asked to do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Delete the keys of each kind in the file that the file does not name.
    pub prune: bool,
    /// Write nothing; print what would change.
    pub dry_run: bool,
}

/// The four kinds of item, in the file's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `apiKey`
    ApiKey,
    /// `trigger`
    Trigger,
    /// `outreachConfig`
    OutreachConfig,
    /// `orgProperties`
    OrgProperties,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ApiKey,
        Kind::Trigger,
        Kind::OutreachConfig,
        Kind::OrgProperties,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::ApiKey => "apiKey",
            Kind::Trigger => "trigger",
            Kind::OutreachConfig => "outreachConfig",
            Kind::OrgProperties => "orgProperties",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// The SCAN pattern of this kind's keys under `prefix`.
    fn pattern(self, prefix: &str) -> String {
        match self {
            Kind::ApiKey => format!("{prefix}apikey:*"),
            Kind::Trigger => format!("{prefix}triggers:*"),
            Kind::OutreachConfig => format!("{prefix}outreach:config:*"),
            Kind::OrgProperties => format!("{prefix}org:*:properties"),
        }
    }
}

/// Per kind: how many items were written, found unchanged, removed
/// (pruned) and refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Created or changed.
    pub written: u64,
    /// Already as the file says.
    pub unchanged: u64,
    /// Deleted by `--prune`.
    pub removed: u64,
    /// Bad lines.
    pub refused: u64,
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Per kind, in [`Kind`] order.
    pub counts: [Counts; 4],
    /// Lines that were not one of the four kinds (bad JSON, unknown type).
    pub unreadable: u64,
    /// Lines read.
    pub lines: u64,
    /// Time taken.
    pub elapsed: Duration,
    /// Nothing was written.
    pub dry_run: bool,
    /// `--prune` was asked for but not done, because a line was refused:
    /// the key a refused line names would have been taken for one the file
    /// lacks, and deleted.
    pub prune_withheld: bool,
}

impl Summary {
    /// Lines refused, whatever their kind.
    pub fn refused(&self) -> u64 {
        self.unreadable + self.counts.iter().map(|c| c.refused).sum::<u64>()
    }

    /// The counts of `kind`.
    pub fn of(&self, kind: Kind) -> Counts {
        self.counts[kind.index()]
    }

    /// What the command ends with when a line was refused.
    pub fn refusal(&self) -> Option<String> {
        let refused = self.refused();
        (refused > 0).then(|| {
            format!(
                "{} refused (see above){}",
                lines(refused),
                if self.prune_withheld {
                    "; nothing was pruned"
                } else {
                    ""
                }
            )
        })
    }
}

/// `1 line`, `2 lines`.
fn lines(n: u64) -> String {
    format!("{n} line{}", if n == 1 { "" } else { "s" })
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} in {:.1} s{}",
            lines(self.lines),
            self.elapsed.as_secs_f64(),
            if self.dry_run {
                " (dry run: nothing written)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "{:<16}{:>12}{:>12}{:>12}{:>10}",
            "kind", "written", "unchanged", "removed", "refused"
        )?;
        for kind in Kind::ALL {
            let c = self.of(kind);
            writeln!(
                f,
                "{:<16}{:>12}{:>12}{:>12}{:>10}",
                kind.name(),
                c.written,
                c.unchanged,
                c.removed,
                c.refused
            )?;
        }
        if self.unreadable > 0 {
            writeln!(f, "{} of no known kind refused", lines(self.unreadable))?;
        }
        if self.prune_withheld {
            writeln!(
                f,
                "not pruned: a refused line's key would have been taken for one the file lacks; fix the refused lines and run again"
            )?;
        }
        Ok(())
    }
}

/// What the file says one key should hold.
#[derive(Debug, Clone, PartialEq)]
enum Desired {
    /// A JSON string value.
    Record(Map<String, Json>),
    /// A set's members (empty: no set).
    Set(Vec<String>),
    /// A hash's fields.
    Hash(Vec<(String, String)>),
}

/// One line, understood.
#[derive(Debug)]
struct Item {
    kind: Kind,
    key: String,
    desired: Desired,
}

/// A string member `name` of `obj`, non-empty.
fn text<'a>(obj: &'a Map<String, Json>, name: &str) -> Result<&'a str, String> {
    match obj.get(name) {
        Some(Json::String(s)) if !s.is_empty() => Ok(s),
        Some(_) => Err(format!("{name} must be a non-empty string")),
        None => Err(format!("{name} is missing")),
    }
}

/// A member the key layout puts between `:`s (`orgId`, a trigger's
/// `webhookId`): it cannot hold one itself.
fn key_part<'a>(obj: &'a Map<String, Json>, name: &str) -> Result<&'a str, String> {
    crate::admin::key_part(name, text(obj, name)?)
}

/// Refuses a member whose name is a near miss of one the ingress reads
/// (`Active`, `rateLimitPersec`, `rate_limit_per_sec`, `actve`): the record
/// keeps members it does not know as given, so such a typo would be stored
/// and ignored, leaving a key meant to be disabled active or one meant to be
/// limited unlimited. Names are compared ignoring case, `_` and `-`, within
/// one edit.
fn near_miss(obj: &Map<String, Json>, read: &[&str]) -> Result<(), String> {
    fn plain(name: &str) -> String {
        name.chars()
            .filter(|c| !matches!(c, '_' | '-'))
            .map(|c| c.to_ascii_lowercase())
            .collect()
    }
    for name in obj.keys().filter(|name| !read.contains(&name.as_str())) {
        let given = plain(name);
        if let Some(meant) = read
            .iter()
            .find(|known| strsim::damerau_levenshtein(&given, &plain(known)) <= 1)
        {
            return Err(format!(
                "{name:?} is not a field the ingress reads; did you mean {meant}? (rename it if it is a field of your own)"
            ));
        }
    }
    Ok(())
}

/// Parses one line into an item under `prefix`. The error names the kind
/// when it is known, and never holds a plain key.
fn parse(line: &str, prefix: &str) -> Result<Item, (Option<Kind>, String)> {
    let mut obj = match serde_json::from_str::<Json>(line) {
        Ok(Json::Object(obj)) => obj,
        Ok(_) => return Err((None, "not a JSON object".into())),
        Err(e) => return Err((None, format!("not JSON ({e})"))),
    };
    let kind = match obj.get("type").and_then(Json::as_str) {
        Some("apiKey") => Kind::ApiKey,
        Some("trigger") => Kind::Trigger,
        Some("outreachConfig") => Kind::OutreachConfig,
        Some("orgProperties") => Kind::OrgProperties,
        Some(other) => {
            return Err((
                None,
                format!("type {other:?} is not apiKey, trigger, outreachConfig or orgProperties"),
            ));
        }
        None => return Err((None, "type is missing".into())),
    };
    let with_kind = |e: String| (Some(kind), e);
    obj.remove("type");
    let (key, desired) = match kind {
        Kind::ApiKey => {
            let digest = match (obj.remove("key"), obj.remove("sha256")) {
                (Some(Json::String(plain)), None) if !plain.is_empty() => {
                    let mut hex = String::with_capacity(64);
                    hex::push(&mut hex, &digest_key(plain.as_bytes()));
                    hex
                }
                (None, Some(Json::String(hex)))
                    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    hex.to_ascii_lowercase()
                }
                (None, Some(_)) => {
                    return Err(with_kind("sha256 must be 64 hex digits".into()));
                }
                (Some(_), Some(_)) => {
                    return Err(with_kind("give key or sha256, not both".into()));
                }
                _ => return Err(with_kind("key must be a non-empty string".into())),
            };
            near_miss(&obj, &["userId", "orgId", "active", "rateLimitPerSec"])
                .map_err(with_kind)?;
            text(&obj, "userId").map_err(with_kind)?;
            key_part(&obj, "orgId").map_err(with_kind)?;
            if obj.get("active").is_some_and(|a| !a.is_boolean()) {
                return Err(with_kind("active must be true or false".into()));
            }
            if obj
                .get("rateLimitPerSec")
                .is_some_and(|r| r.as_u64().is_none_or(|n| n == 0))
            {
                return Err(with_kind(
                    "rateLimitPerSec must be a positive integer".into(),
                ));
            }
            (format!("{prefix}apikey:{digest}"), Desired::Record(obj))
        }
        Kind::Trigger => {
            let org = key_part(&obj, "orgId").map_err(with_kind)?;
            let webhook = key_part(&obj, "webhookId").map_err(with_kind)?;
            let workflows = match obj.get("workflowIds") {
                Some(Json::Array(ids)) => ids
                    .iter()
                    .map(|w| match w {
                        Json::String(s) if !s.is_empty() => Ok(s.clone()),
                        _ => Err(with_kind("workflowIds must hold non-empty strings".into())),
                    })
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(with_kind("workflowIds must be an array".into())),
            };
            (
                format!("{prefix}triggers:{org}:{webhook}"),
                Desired::Set(workflows),
            )
        }
        Kind::OutreachConfig => {
            let id = text(&obj, "configurationId").map_err(with_kind)?.to_owned();
            obj.remove("configurationId");
            near_miss(
                &obj,
                &["userId", "orgId", "active", "processId", "promptId"],
            )
            .map_err(with_kind)?;
            text(&obj, "userId").map_err(with_kind)?;
            key_part(&obj, "orgId").map_err(with_kind)?;
            if !obj.get("active").is_some_and(Json::is_boolean) {
                return Err(with_kind("active must be true or false".into()));
            }
            for field in ["processId", "promptId"] {
                if !obj
                    .get(field)
                    .is_none_or(|v| v.is_null() || v.as_str().is_some_and(|s| !s.is_empty()))
                {
                    return Err(with_kind(format!("{field} must be a string or null")));
                }
            }
            (
                format!("{prefix}outreach:config:{id}"),
                Desired::Record(obj),
            )
        }
        Kind::OrgProperties => {
            let org = key_part(&obj, "orgId").map_err(with_kind)?;
            let Some(Json::Object(props)) = obj.get("properties") else {
                return Err(with_kind("properties must be an object".into()));
            };
            let mut fields = Vec::with_capacity(props.len());
            for (field, category) in props {
                match category.as_str() {
                    Some(c) if Category::NAMES.contains(&c) => {
                        fields.push((field.clone(), c.to_owned()));
                    }
                    _ => {
                        return Err(with_kind(format!(
                            "properties.{field} must be contact, application or conversation"
                        )));
                    }
                }
            }
            (
                format!("{prefix}org:{org}:properties"),
                Desired::Hash(fields),
            )
        }
    };
    Ok(Item { kind, key, desired })
}

/// What a batch item needs done.
enum Change {
    None,
    /// SET the record.
    Set(String),
    /// SADD these, then SREM those (DEL when nothing remains).
    Members {
        add: Vec<String>,
        remove: Vec<String>,
        delete: bool,
    },
    /// HSET these, then HDEL those.
    Fields {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
}

/// Compares what Redis holds (`current`, the reply of the batch's read)
/// with what the file says.
fn change(desired: &Desired, current: Value) -> Change {
    match desired {
        Desired::Record(record) => {
            let now = current
                .as_str()
                .and_then(|s| serde_json::from_str::<Json>(&s).ok());
            let wanted = Json::Object(record.clone());
            if now.as_ref() == Some(&wanted) {
                Change::None
            } else {
                Change::Set(wanted.to_string())
            }
        }
        Desired::Set(members) => {
            let now: HashSet<String> = current
                .convert::<Vec<String>>()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let wanted: HashSet<&String> = members.iter().collect();
            let add: Vec<String> = members
                .iter()
                .filter(|m| !now.contains(*m))
                .cloned()
                .collect();
            let remove: Vec<String> = now
                .iter()
                .filter(|m| !wanted.contains(m))
                .cloned()
                .collect();
            if add.is_empty() && remove.is_empty() {
                Change::None
            } else {
                Change::Members {
                    delete: members.is_empty(),
                    add,
                    remove,
                }
            }
        }
        Desired::Hash(fields) => {
            let now: HashMap<String, String> = current.convert().unwrap_or_default();
            let set: Vec<(String, String)> = fields
                .iter()
                .filter(|(f, v)| now.get(f) != Some(v))
                .cloned()
                .collect();
            let remove: Vec<String> = now
                .keys()
                .filter(|f| !fields.iter().any(|(w, _)| w == *f))
                .cloned()
                .collect();
            if set.is_empty() && remove.is_empty() {
                Change::None
            } else {
                Change::Fields { set, remove }
            }
        }
    }
}

/// The line a dry run prints for `change` of `item`.
fn describe(item: &Item, change: &Change) -> Option<String> {
    let kind = item.kind.name();
    let key = &item.key;
    Some(match change {
        Change::None => return None,
        Change::Set(_) => format!("write {kind} {key}"),
        Change::Members { add, remove, .. } => format!(
            "write {kind} {key}: add {}, remove {}",
            add.len(),
            remove.len()
        ),
        Change::Fields { set, remove } => format!(
            "write {kind} {key}: set {}, remove {}",
            set.len(),
            remove.len()
        ),
    })
}

/// Progress on stderr: a bar when it is a terminal, a plain line every few
/// seconds when it is not.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    fn new(total_bytes: Option<u64>) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total_bytes {
                Some(n) => indicatif::ProgressBar::new(n),
                None => indicatif::ProgressBar::new_spinner(),
            };
            let style = match total_bytes {
                Some(_) => indicatif::ProgressStyle::with_template(
                    "{bar:30} {percent:>3}% {msg} [{elapsed_precise}]",
                ),
                None => {
                    indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed_precise}]")
                }
            };
            if let Ok(style) = style {
                bar.set_style(style);
            }
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, bytes: u64, items: u64) {
        let rate = items as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        match &self.bar {
            Some(bar) => {
                bar.set_position(bytes);
                bar.set_message(format!("{items} items, {rate:.0} items/s"));
            }
            None if self.last_line.elapsed() >= Duration::from_secs(2) => {
                self.last_line = Instant::now();
                eprintln!("import: {items} items, {rate:.0} items/s");
            }
            None => {}
        }
    }

    /// Prints `line` on stderr, the bar cleared around it.
    fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The running import: the client, what was seen, the counts.
struct Run<'a> {
    client: &'a Client,
    options: Options,
    /// Per kind, the keys the file named (16 bytes of each key's SHA-256),
    /// for `--prune`; `None` for a kind the file never named.
    seen: [Option<HashSet<u128>>; 4],
    summary: Summary,
    out: &'a mut dyn Write,
}

/// 16 bytes of `key`'s SHA-256: what `--prune` remembers of a key.
fn fingerprint(key: &str) -> u128 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest.as_ref()[..16]);
    u128::from_le_bytes(first)
}

impl Run<'_> {
    /// Reads the batch's current values, then writes what differs.
    async fn flush(&mut self, batch: &mut Vec<Item>) -> Result<(), AdminError> {
        if batch.is_empty() {
            return Ok(());
        }
        let read = self.client.pipeline();
        for item in batch.iter() {
            let _: () = match &item.desired {
                Desired::Record(_) => read.get(&item.key).await?,
                Desired::Set(_) => read.smembers(&item.key).await?,
                Desired::Hash(_) => read.hgetall(&item.key).await?,
            };
        }
        let current: Vec<Value> = read.all().await?;
        let write = self.client.pipeline();
        let mut writes = 0usize;
        for (item, now) in batch.iter().zip(current) {
            let change = change(&item.desired, now);
            let counts = &mut self.summary.counts[item.kind.index()];
            if matches!(change, Change::None) {
                counts.unchanged += 1;
                continue;
            }
            counts.written += 1;
            if self.options.dry_run {
                if let Some(line) = describe(item, &change) {
                    writeln!(self.out, "{line}").map_err(AdminError::Output)?;
                }
                continue;
            }
            let key = item.key.as_str();
            match change {
                Change::None => {}
                Change::Set(record) => {
                    let _: () = write.set(key, record, None, None, false).await?;
                    writes += 1;
                }
                Change::Members {
                    add,
                    remove,
                    delete,
                } => {
                    if delete {
                        let _: () = write.del(key).await?;
                        writes += 1;
                    } else {
                        if !add.is_empty() {
                            let _: () = write.sadd(key, add).await?;
                            writes += 1;
                        }
                        if !remove.is_empty() {
                            let _: () = write.srem(key, remove).await?;
                            writes += 1;
                        }
                    }
                }
                Change::Fields { set, remove } => {
                    if !set.is_empty() {
                        let _: () = write.hset(key, set).await?;
                        writes += 1;
                    }
                    if !remove.is_empty() {
                        let _: () = write.hdel(key, remove).await?;
                        writes += 1;
                    }
                }
            }
        }
        if writes > 0 {
            let _: Vec<Value> = write.all().await?;
        }
        batch.clear();
        Ok(())
    }

    /// Deletes the keys of each kind the file named that the file did not
    /// name (prints them in a dry run).
    async fn prune(&mut self, prefix: &str) -> Result<(), AdminError> {
        for kind in Kind::ALL {
            let Some(seen) = self.seen[kind.index()].take() else {
                continue;
            };
            let mut pages = crate::redis::scan_keys(self.client, kind.pattern(prefix), 1000);
            while let Some(mut page) = pages.try_next().await? {
                let stale: Vec<String> = page
                    .take_results()
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|k| k.into_string())
                    // `triggers:*` and `org:*:properties` also match what a
                    // stray key of another shape might be; keep to the
                    // layout's own shapes.
                    .filter(|k| {
                        kind != Kind::Trigger
                            || k.strip_prefix(prefix)
                                .is_some_and(|rest| rest.matches(':').count() >= 2)
                    })
                    .filter(|k| !seen.contains(&fingerprint(k)))
                    .collect();
                page.next();
                if stale.is_empty() {
                    continue;
                }
                self.summary.counts[kind.index()].removed += stale.len() as u64;
                if self.options.dry_run {
                    for k in &stale {
                        writeln!(self.out, "remove {} {k}", kind.name())
                            .map_err(AdminError::Output)?;
                    }
                } else {
                    crate::redis::delete_keys(self.client, stale).await?;
                }
            }
        }
        Ok(())
    }
}

/// The longest line the import reads; a longer one is refused without
/// being held in memory.
const MAX_LINE: usize = 1 << 20;

/// One line of the input.
enum Line<'a> {
    /// The line's text, without its line end.
    Text(&'a str),
    /// Over [`MAX_LINE`] bytes (skipped, not kept).
    TooLong,
    /// Not UTF-8.
    NotUtf8,
}

/// Reads the next line of `input` into `buf` (at most [`MAX_LINE`] bytes of
/// it); the line and the bytes it took, or `None` at the end.
fn next_line<'b>(
    input: &mut impl BufRead,
    buf: &'b mut Vec<u8>,
) -> std::io::Result<Option<(Line<'b>, u64)>> {
    buf.clear();
    let (mut taken, mut too_long) = (0u64, false);
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            if taken == 0 {
                return Ok(None);
            }
            break;
        }
        let end = available.iter().position(|&b| b == b'\n');
        let chunk = &available[..end.unwrap_or(available.len())];
        if !too_long && buf.len() + chunk.len() > MAX_LINE {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(chunk);
        }
        let used = end.map_or(available.len(), |i| i + 1);
        input.consume(used);
        taken += used as u64;
        if end.is_some() {
            break;
        }
    }
    if too_long {
        return Ok(Some((Line::TooLong, taken)));
    }
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(match std::str::from_utf8(buf) {
        Ok(text) => (Line::Text(text), taken),
        Err(_) => (Line::NotUtf8, taken),
    }))
}

/// Imports the JSON lines of `input` (of `total_bytes`, when known, for the
/// progress bar) into the control plane under `prefix`. Bad lines are
/// reported on stderr with their number and counted; dry-run changes are
/// printed on `out`.
pub async fn import(
    client: &Client,
    prefix: &str,
    mut input: impl BufRead,
    total_bytes: Option<u64>,
    options: Options,
    out: &mut dyn Write,
) -> Result<Summary, AdminError> {
    let started = Instant::now();
    let mut run = Run {
        client,
        options,
        seen: Default::default(),
        summary: Summary {
            dry_run: options.dry_run,
            ..Summary::default()
        },
        out,
    };
    let mut progress = Progress::new(total_bytes);
    let mut batch = Vec::with_capacity(BATCH);
    let mut bytes = 0u64;
    let mut number = 0u64;
    // The line of the batch's first item: where a re-run must start.
    let mut batch_from = 1u64;
    let mut buf = Vec::new();
    loop {
        let read = next_line(&mut input, &mut buf)
            .map_err(|e| AdminError::Refused(format!("cannot read line {}: {e}", number + 1)))?;
        let Some((line, length)) = read else {
            break;
        };
        number += 1;
        bytes += length;
        // A byte-order mark (a file saved by a Windows tool) is no part
        // of the first line's JSON.
        let line = match line {
            Line::Text(text) if number == 1 => {
                Line::Text(text.strip_prefix('\u{feff}').unwrap_or(text))
            }
            other => other,
        };
        let parsed = match line {
            Line::Text(line) if line.trim().is_empty() => continue,
            Line::Text(line) => parse(line, prefix),
            Line::TooLong => Err((None, format!("longer than {MAX_LINE} bytes; not read"))),
            Line::NotUtf8 => Err((None, "not UTF-8 text".to_owned())),
        };
        match parsed {
            Ok(item) => {
                if options.prune {
                    run.seen[item.kind.index()]
                        .get_or_insert_with(HashSet::new)
                        .insert(fingerprint(&item.key));
                }
                if batch.is_empty() {
                    batch_from = number;
                }
                batch.push(item);
            }
            Err((kind, why)) => {
                match kind {
                    Some(k) => run.summary.counts[k.index()].refused += 1,
                    None => run.summary.unreadable += 1,
                }
                progress.say(&format!(
                    "line {number}: {}{why}",
                    kind.map(|k| format!("{}: ", k.name())).unwrap_or_default()
                ));
            }
        }
        if batch.len() >= BATCH {
            run.flush(&mut batch)
                .await
                .map_err(interrupted(batch_from))?;
            progress.update(bytes, number);
        }
    }
    run.flush(&mut batch)
        .await
        .map_err(interrupted(batch_from))?;
    run.summary.lines = number;
    if options.prune {
        // A refused line (a misspelt field, say) still names a key the
        // operator means to keep: pruning would delete it.
        if run.summary.refused() == 0 {
            run.prune(prefix).await?;
        } else {
            run.summary.prune_withheld = true;
        }
    }
    progress.finish();
    run.summary.elapsed = started.elapsed();
    Ok(run.summary)
}

/// A Redis failure while the batch from line `from_line` was written, as
/// the operator's cue to run the import again.
fn interrupted(from_line: u64) -> impl FnOnce(AdminError) -> AdminError {
    move |e| match e {
        AdminError::Redis(source) => AdminError::ImportInterrupted { from_line, source },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(line: &str) -> Item {
        parse(line, "tether:").unwrap()
    }

    #[test]
    fn keys_are_hashed_and_digests_lowercased() {
        let plain = item(r#"{"type":"apiKey","key":"k1","userId":"u","orgId":"o"}"#);
        let mut hex = String::new();
        crate::hex::push(&mut hex, &digest_key(b"k1"));
        assert_eq!(plain.key, format!("tether:apikey:{hex}"));
        assert_eq!(
            plain.desired,
            Desired::Record(serde_json::from_str(r#"{"userId":"u","orgId":"o"}"#).unwrap())
        );
        let upper = item(&format!(
            r#"{{"type":"apiKey","sha256":"{}","userId":"u","orgId":"o"}}"#,
            hex.to_uppercase()
        ));
        assert_eq!(upper.key, plain.key);
    }

    #[test]
    fn an_error_never_holds_the_plain_key() {
        for line in [
            r#"{"type":"apiKey","key":"sekrit_1","orgId":"o"}"#,
            r#"{"type":"apiKey","key":"sekrit_1","sha256":"00","userId":"u","orgId":"o"}"#,
            r#"{"type":"apiKey","key":"sekrit_1","userId":"u","orgId":"o","active":"yes"}"#,
        ] {
            let (kind, why) = parse(line, "tether:").unwrap_err();
            assert_eq!(kind, Some(Kind::ApiKey));
            assert!(!why.contains("sekrit"), "{why}");
        }
    }

    #[test]
    fn equal_values_in_another_order_are_unchanged() {
        let record = item(r#"{"type":"apiKey","key":"k","userId":"u","orgId":"o","active":true}"#);
        let stored = Value::from(r#"{"active":true,"orgId":"o","userId":"u"}"#);
        assert!(matches!(change(&record.desired, stored), Change::None));
        let set = item(r#"{"type":"trigger","orgId":"o","webhookId":"w","workflowIds":["a","b"]}"#);
        let members = Value::Array(vec!["b".into(), "a".into()]);
        assert!(matches!(change(&set.desired, members), Change::None));
        let Change::Members {
            add,
            remove,
            delete,
        } = change(&set.desired, Value::Array(vec!["a".into(), "c".into()]))
        else {
            panic!("expected a change");
        };
        assert_eq!(
            (add, remove, delete),
            (vec!["b".to_owned()], vec!["c".to_owned()], false)
        );
    }
}
