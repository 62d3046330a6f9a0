//! Watches what Redis does to jobs after acknowledging them, where the
//! ingress's `202` can no longer take it back, and says it where an
//! operator looks:
//!
//! - an eviction policy (`maxmemory-policy allkeys-*`) under which Redis may
//!   drop a job stream or queue when memory runs short;
//! - in streams mode, entries `MAXLEN ~` trimming removed before a consumer
//!   group read them: jobs no worker of that group will ever see, removed by
//!   the ingress's own `XADD`. BullMQ's queues are lists: nothing is trimmed
//!   from them.
//!
//! Off the request path, through the shared client (which also finds a
//! cluster stream's node): `INFO memory` (of every primary, in a cluster:
//! each has its own policy and evicts its own keys), and `XINFO STREAM` and
//! `XINFO GROUPS` of each stream, once a second after start and then every
//! [`EVERY`]. `check-redis` asks the same through these functions before
//! any traffic.
//!
//! Trimming removes entries oldest first and a group reads them in order,
//! so an entry trimmed unread is younger than every entry the group read;
//! then none of the group's read entries is still in the stream, and the
//! entries the group has not read and the stream no longer holds number
//! `entries-added − entries-read − length`. Where that is not positive the
//! group lost nothing (it read entries that are still there).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use fred::{
    prelude::*,
    types::{InfoKind, Value},
};
use tokio::sync::watch;
use tracing::warn;

use crate::{
    metrics as m,
    redis::{info_field, not_permitted, primaries},
    settings::SharedSettings,
};

/// How often Redis is asked, after the first time.
const EVERY: Duration = Duration::from_secs(10);

/// The first time, soon after start, where the start's log is read.
const FIRST_AFTER: Duration = Duration::from_secs(1);

/// The same group's growing loss is said again after this long at most.
const SAY_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// One consumer group as `XINFO GROUPS` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) name: String,
    /// Entries the group read; Redis may not know (`nil`).
    entries_read: Option<u64>,
    /// Entries not yet delivered to the group, when Redis can tell.
    pub(crate) lag: Option<u64>,
    /// The group has delivered nothing yet (`last-delivered-id` 0-0).
    from_the_start: bool,
}

impl Group {
    /// Entries the stream no longer holds that the group never read, given
    /// the stream's `entries-added` and `length`; `None` when Redis does not
    /// know how many the group read.
    pub(crate) fn trimmed_unread(&self, added: u64, length: u64) -> Option<u64> {
        // A group that delivered nothing read nothing, whatever Redis
        // lost track of.
        let read = match (self.entries_read, self.from_the_start) {
            (Some(read), _) => read,
            (None, true) => 0,
            (None, false) => return None,
        };
        Some(added.saturating_sub(read).saturating_sub(length))
    }
}

/// What is known from the rounds before.
#[derive(Default)]
struct Seen {
    /// Per node (`""` off a cluster): its eviction policy.
    policies: HashMap<String, String>,
    /// Per (stream, group): its loss.
    groups: HashMap<(String, String), Tally>,
    /// A refusal (NOPERM) was said: it is said once.
    refusal_said: bool,
    /// Streams said to be trimmed with no consumer group on them.
    ungrouped_said: Vec<String>,
    /// Streams whose count of groups is shown.
    counted: Vec<String>,
}

/// One group's entries trimmed unread: the most measured, the count last
/// said, and when.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    most: u64,
    said: u64,
    said_at: Option<Instant>,
}

/// Starts the watch; it ends with `stop`. `streams` (the settings naming
/// them) only in streams mode.
pub(super) fn spawn(
    client: Client,
    streams: Option<SharedSettings>,
    mut stop: watch::Receiver<bool>,
) {
    drop(tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut pause = FIRST_AFTER;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = EVERY;
            let asked = memory_infos(&client).await;
            if !asked.is_empty() {
                let nodes: Vec<&str> = asked.iter().map(|(node, _)| node.as_str()).collect();
                seen.policies_only_of(&nodes);
            }
            for (node, asked) in &asked {
                match asked {
                    Ok(info) => {
                        if let Some(policy) = info_field(info, "maxmemory_policy") {
                            seen.policy_of(node, policy);
                        }
                    }
                    Err(e) => seen.refused(e),
                }
            }
            let Some(settings) = &streams else {
                continue;
            };
            let names = {
                let s = settings.load();
                [s.streams.workflow.clone(), s.streams.outreach.clone()]
            };
            let (mut read_ok, mut now_seen) = (Vec::new(), Vec::new());
            for stream in &names {
                match stream_groups(&client, stream).await {
                    Ok(found) => {
                        read_ok.push(stream.clone());
                        let Some((added, length, groups)) = found else {
                            continue;
                        };
                        seen.groups_of(stream, groups.len(), added, length);
                        for group in groups {
                            seen.note(stream, &group, added, length);
                            now_seen.push((stream.clone(), group.name));
                        }
                    }
                    Err(e) => seen.refused(&e),
                }
            }
            seen.forget_all_but(&names, &read_ok, &now_seen);
        }
    }));
}

/// Redis's `INFO memory`, per node: in a cluster each primary has its own
/// memory and policy, and evicts its own keys (the node is named,
/// `host:port`); elsewhere the one node the jobs go to (named `""`).
pub(crate) async fn memory_infos(client: &Client) -> Vec<(String, Result<String, Error>)> {
    if !client.is_clustered() {
        let asked = client.info(Some(InfoKind::Memory)).await;
        return vec![(String::new(), asked)];
    }
    let primaries = primaries(client);
    futures::future::join_all(primaries.into_iter().map(|node| async move {
        let asked = client
            .with_cluster_node(&node)
            .info(Some(InfoKind::Memory))
            .await;
        (node.to_string(), asked)
    }))
    .await
}

/// What a policy that may evict jobs is said with.
const MAY_EVICT: &str = "redis may evict job streams and queues when its memory runs short, jobs already answered 202 among them: set maxmemory-policy to noeviction (writes are then refused, and the ingress answers 503 or spools)";

/// Whether Redis may evict a key without a TTL, as job streams and queues
/// are (the `volatile-*` policies evict only keys with one).
pub(crate) fn may_evict_jobs(policy: &str) -> bool {
    policy.starts_with("allkeys-")
}

/// The stream's `entries-added`, `length` and groups; `None` when the
/// stream does not exist (yet) or Redis is older than 7.0 (no
/// `entries-added`).
pub(crate) async fn stream_groups(
    client: &Client,
    stream: &str,
) -> Result<Option<(u64, u64, Vec<Group>)>, Error> {
    let info: Value = match client.xinfo_stream(stream, false, None).await {
        Ok(info) => info,
        Err(e) if e.details().contains("no such key") => return Ok(None),
        Err(e) => return Err(e),
    };
    let info = pairs(&info);
    let number = |name: &str| field(&info, name).and_then(Value::as_u64);
    let (Some(added), Some(length)) = (number("entries-added"), number("length")) else {
        return Ok(None);
    };
    let groups: Value = client.xinfo_groups(stream).await?;
    let Value::Array(groups) = groups else {
        return Ok(None);
    };
    let groups = groups
        .iter()
        .filter_map(|g| {
            let g = pairs(g);
            Some(Group {
                name: field(&g, "name")?.as_str()?.into_owned(),
                entries_read: field(&g, "entries-read").and_then(Value::as_u64),
                lag: field(&g, "lag").and_then(Value::as_u64),
                from_the_start: field(&g, "last-delivered-id")
                    .and_then(Value::as_str)
                    .is_some_and(|id| id == "0-0"),
            })
        })
        .collect();
    Ok(Some((added, length, groups)))
}

/// The name–value pairs of a reply Redis 2 protocol sends as a flat array
/// (and RESP3 as a map).
fn pairs(value: &Value) -> Vec<(String, &Value)> {
    match value {
        Value::Array(items) => items
            .chunks_exact(2)
            .filter_map(|kv| Some((kv[0].as_str()?.into_owned(), &kv[1])))
            .collect(),
        Value::Map(map) => map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v)))
            .collect(),
        _ => Vec::new(),
    }
}

fn field<'v>(pairs: &[(String, &'v Value)], name: &str) -> Option<&'v Value> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| *v)
}

impl Seen {
    /// Notes `node`'s eviction policy: shows whether any node may evict
    /// jobs, and says a node's turning to a policy that may, once per change.
    fn policy_of(&mut self, node: &str, policy: &str) {
        if self.policies.get(node).is_some_and(|p| p == policy) {
            return;
        }
        // Shown before it is said, so whoever reads the line reads the gauge.
        self.policies.insert(node.to_owned(), policy.to_owned());
        self.show_policies();
        if !may_evict_jobs(policy) {
            return;
        }
        if node.is_empty() {
            warn!(maxmemory_policy = %policy, "{MAY_EVICT}");
        } else {
            warn!(maxmemory_policy = %policy, node = %node, "{MAY_EVICT}");
        }
    }

    /// Forgets the policies of nodes no longer among `nodes` (a primary
    /// removed from the cluster, or demoted).
    fn policies_only_of(&mut self, nodes: &[&str]) {
        let before = self.policies.len();
        self.policies.retain(|n, _| nodes.contains(&n.as_str()));
        if self.policies.len() != before {
            self.show_policies();
        }
    }

    fn show_policies(&self) {
        let any = self.policies.values().any(|p| may_evict_jobs(p));
        metrics::gauge!(m::REDIS_MAY_EVICT_JOBS).set(if any { 1.0 } else { 0.0 });
    }

    /// Says, once, that Redis refuses the watch's commands; the writes
    /// themselves are unaffected.
    fn refused(&mut self, e: &Error) {
        if !self.refusal_said && not_permitted(e) {
            self.refusal_said = true;
            warn!(error = %e.details(), "cannot read redis's eviction policy or the job streams' consumer groups (INFO, XINFO): jobs it may evict or trim unread go unmeasured");
        }
    }

    /// Shows how many consumer groups `stream` has, and says (once while it
    /// lasts) a stream that has none and is trimmed: if its workers read
    /// with a group, none was made yet (or it was made under another
    /// name), and what is trimmed meanwhile no group will ever read.
    fn groups_of(&mut self, stream: &str, groups: usize, added: u64, length: u64) {
        metrics::gauge!(m::STREAM_GROUPS, "stream" => stream.to_owned()).set(groups as f64);
        if !self.counted.iter().any(|s| s == stream) {
            self.counted.push(stream.to_owned());
        }
        let said = self.ungrouped_said.iter().position(|s| s == stream);
        match (groups, said) {
            (0, None) if added > length => {
                warn!(
                    stream = %stream,
                    trimmed = added - length,
                    "no consumer group reads this job stream, and entries are being trimmed from it: if its workers read with a group, it was never made here (or under another name), and jobs answered 202 are lost"
                );
                self.ungrouped_said.push(stream.to_owned());
            }
            (1.., Some(at)) => {
                self.ungrouped_said.swap_remove(at);
            }
            _ => {}
        }
    }

    /// Sets the group's gauges and says a loss that grew; returns the loss
    /// shown. It never goes down while the group lasts: once a group that
    /// lost entries reads again, Redis counts the entries trimmed before
    /// it as read (`entries-read` jumps past them).
    fn note(&mut self, stream: &str, group: &Group, added: u64, length: u64) -> u64 {
        let labels = [("stream", stream.to_owned()), ("group", group.name.clone())];
        if let Some(lag) = group.lag {
            metrics::gauge!(m::STREAM_GROUP_LAG, &labels).set(lag as f64);
        }
        let key = (stream.to_owned(), group.name.clone());
        let tally = self.groups.entry(key).or_default();
        if let Some(lost) = group.trimmed_unread(added, length) {
            tally.most = tally.most.max(lost);
        }
        metrics::gauge!(m::STREAM_GROUP_TRIMMED_UNREAD, &labels).set(tally.most as f64);
        let due = tally
            .said_at
            .is_none_or(|at| at.elapsed() >= SAY_AGAIN_AFTER);
        if tally.most > tally.said && due {
            warn!(
                stream = %stream,
                group = %group.name,
                trimmed_unread = tally.most,
                "entries were trimmed from a job stream before this consumer group read them: jobs answered 202 that its workers will never see; raise streams.maxlen above the group's worst backlog, or add workers (a group nobody reads any more can be destroyed)"
            );
            tally.said = tally.most;
            tally.said_at = Some(Instant::now());
        }
        tally.most
    }

    /// Zeroes the gauges of groups no longer there: destroyed, or on a
    /// stream no longer configured. `read` are the streams read this round
    /// (a stream Redis did not answer for keeps its groups), `now` the
    /// groups found on them.
    fn forget_all_but(&mut self, configured: &[String], read: &[String], now: &[(String, String)]) {
        // A stream no longer configured (a reload renamed it) is no longer
        // counted: NaN, which no alert's comparison matches, where its last
        // count (0, say) would go on looking like a stream nobody reads.
        self.counted.retain(|stream| {
            let kept = configured.contains(stream);
            if !kept {
                metrics::gauge!(m::STREAM_GROUPS, "stream" => stream.clone()).set(f64::NAN);
                self.ungrouped_said.retain(|s| s != stream);
            }
            kept
        });
        self.groups.retain(|(stream, group), _| {
            let kept = configured.contains(stream)
                && (!read.contains(stream) || now.iter().any(|(s, g)| s == stream && g == group));
            if !kept {
                let labels = [("stream", stream.clone()), ("group", group.clone())];
                metrics::gauge!(m::STREAM_GROUP_TRIMMED_UNREAD, &labels).set(0.0);
                metrics::gauge!(m::STREAM_GROUP_LAG, &labels).set(0.0);
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(entries_read: Option<u64>, from_the_start: bool) -> Group {
        Group {
            name: "g".into(),
            entries_read,
            lag: None,
            from_the_start,
        }
    }

    #[test]
    fn a_groups_loss_is_said_when_it_grows_and_never_shown_going_down() {
        let mut seen = Seen::default();
        let idle = |entries_read| Group {
            name: "idle".into(),
            entries_read,
            lag: None,
            from_the_start: entries_read.is_none(),
        };
        // Nothing read, 20 added, 3 left: 17 lost.
        assert_eq!(seen.note("s", &idle(None), 20, 3), 17);
        assert_eq!(seen.groups[&("s".into(), "idle".into())].said, 17);
        // It read one: Redis now counts the trimmed ones as read (18).
        assert_eq!(seen.note("s", &idle(Some(18)), 20, 3), 17);
        // Its stream was not answered this round: it is kept.
        let names = ["s".to_owned()];
        seen.forget_all_but(&names, &[], &[]);
        assert_eq!(seen.note("s", &idle(Some(18)), 20, 3), 17);
        // Destroyed: forgotten, and counted afresh if made again.
        seen.forget_all_but(&names, &names, &[]);
        assert!(seen.groups.is_empty());
        assert_eq!(seen.note("s", &idle(Some(18)), 20, 3), 0);
    }

    #[test]
    fn a_trimmed_stream_without_groups_is_said_once_while_it_lasts() {
        let mut seen = Seen::default();
        // Not trimmed yet: nothing to say.
        seen.groups_of("s", 0, 10, 10);
        assert!(seen.ungrouped_said.is_empty());
        seen.groups_of("s", 0, 30, 12);
        seen.groups_of("s", 0, 40, 12);
        assert_eq!(seen.ungrouped_said, ["s"]);
        // A group is made: said again should it go.
        seen.groups_of("s", 1, 50, 12);
        assert!(seen.ungrouped_said.is_empty());
        // A reload renamed it: no longer counted.
        assert_eq!(seen.counted, ["s"]);
        seen.forget_all_but(&["t".to_owned()], &[], &[]);
        assert!(seen.counted.is_empty());
    }

    #[test]
    fn a_policy_is_noted_per_node_and_a_node_gone_is_forgotten() {
        let mut seen = Seen::default();
        seen.policy_of("n1:1", "noeviction");
        seen.policy_of("n2:2", "allkeys-lru");
        assert!(seen.policies.values().any(|p| may_evict_jobs(p)));
        // n2 left the cluster: only n1's policy counts.
        seen.policies_only_of(&["n1:1"]);
        assert_eq!(seen.policies.len(), 1);
        assert!(!seen.policies.values().any(|p| may_evict_jobs(p)));
    }

    #[test]
    fn only_policies_that_evict_keys_without_a_ttl_may_evict_jobs() {
        for evicts in ["allkeys-lru", "allkeys-lfu", "allkeys-random"] {
            assert!(may_evict_jobs(evicts), "{evicts}");
        }
        for keeps in [
            "noeviction",
            "volatile-lru",
            "volatile-ttl",
            "volatile-random",
        ] {
            assert!(!may_evict_jobs(keeps), "{keeps}");
        }
    }

    #[test]
    fn entries_trimmed_unread_are_what_the_group_neither_read_nor_can_still_read() {
        // 25 added, 5 read, 3 left: 17 were trimmed before the group read them.
        assert_eq!(group(Some(5), false).trimmed_unread(25, 3), Some(17));
        // Created at $ after 20 (Redis counts those as read), 5 added since,
        // all still there with older ones: nothing lost.
        assert_eq!(group(Some(20), false).trimmed_unread(25, 8), Some(0));
        // Read everything: nothing lost, however much was trimmed.
        assert_eq!(group(Some(25), false).trimmed_unread(25, 3), Some(0));
        // Never delivered anything: every entry gone was lost to it.
        assert_eq!(group(None, true).trimmed_unread(25, 3), Some(22));
        // Redis lost count part way: unknown.
        assert_eq!(group(None, false).trimmed_unread(25, 3), None);
    }
}
