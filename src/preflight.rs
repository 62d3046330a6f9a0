//! `tether-ingress check-redis`: asks Redis, before any traffic, what a
//! serving ingress would otherwise find out while serving (a 503 per
//! request, an ingress that never becomes ready, a warning in its log):
//! whether this configuration's Redis user may make the writes and reads
//! the ingress makes, whether Redis keeps the jobs it acknowledges, and
//! whether the workers' side will take them (consumer groups; a BullMQ
//! queue not paused).
//!
//! Each check is one command that changes nothing. Where a permission is
//! asked, the command is wrong on purpose or reads a key that does not
//! exist: Redis checks the command and its keys against the user's ACL
//! before it runs it, so `NOPERM` means no and any other answer means yes
//! (the job writers ask the same way when they connect). In a Cluster each
//! write is asked of its key's node, and what every node holds for itself
//! (its role, version, eviction policy, `CLIENT TRACKING`) of every
//! primary.
//!
//! One line per check: `ok`, `warn` (the ingress serves, but something is
//! at risk) or `FAIL` (requests would be refused, or the ingress would not
//! become ready). The command exits 1 when a check failed.

use std::fmt;

use bytes::Bytes;
use fred::{
    prelude::*,
    types::{ClusterHash, CustomCommand, InfoKind, Value},
};

use crate::{
    admin::{Admin, AdminError},
    config::{Config, RateLimitScope, SinkKind, redact_url},
    redis::{self, info_field, not_permitted, reason},
    sink::{self, Layout},
};

/// The lowest Redis the ingress serves on: the replica needs `CLIENT
/// TRACKING … BCAST` (6.0).
const LOWEST: (u64, u64) = (6, 0);

/// The lowest Redis whose `XINFO` tells how many entries a stream ever
/// had, which the count of entries trimmed unread needs (7.0).
const COUNTS_TRIMMING: (u64, u64) = (7, 0);

/// A key name no record has, under the configured prefixes.
const PROBE: &str = "tether-check";

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// As the ingress needs it.
    Ok,
    /// The ingress serves, but something is at risk.
    Warn,
    /// Requests would be refused, or the ingress would not become ready.
    Fail,
}

/// The checks' outcomes, in the order they ran.
#[derive(Debug, Default)]
pub struct Report {
    lines: Vec<(Verdict, String)>,
}

impl Report {
    fn say(&mut self, verdict: Verdict, text: impl Into<String>) {
        self.lines.push((verdict, text.into()));
    }

    /// How many checks failed.
    pub fn failures(&self) -> usize {
        self.lines
            .iter()
            .filter(|(v, _)| *v == Verdict::Fail)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (verdict, text) in &self.lines {
            let tag = match verdict {
                Verdict::Ok => "ok  ",
                Verdict::Warn => "warn",
                Verdict::Fail => "FAIL",
            };
            writeln!(f, "{tag}  {text}")?;
        }
        Ok(())
    }
}

/// Runs every check through `admin` (connected with `config`'s Redis
/// settings).
pub async fn check_redis(admin: &Admin, config: &Config) -> Report {
    let client = admin.client();
    let mut report = Report::default();
    sentinels(admin, &mut report).await;
    nodes(client, config, &mut report).await;
    writes(client, config, &mut report).await;
    control_plane(admin, config, &mut report).await;
    records(client, config, &mut report).await;
    memory(client, &mut report).await;
    if config.sink.kind == SinkKind::Streams {
        for stream in [&config.streams.workflow, &config.streams.outreach] {
            groups(client, config, stream, &mut report).await;
        }
    }
    for (queue, meta) in Layout::of(config).queue_metas() {
        queue_state(client, &queue, meta, &mut report).await;
    }
    report
}

/// A BullMQ queue's meta hash: a paused queue takes jobs that no Worker
/// runs until it is resumed; `version` names the BullMQ of the last
/// `Queue` made on it (5.20 and later write it).
async fn queue_state(client: &Client, queue: &str, meta: Bytes, report: &mut Report) {
    let asked: Result<Vec<Option<String>>, Error> = client
        .hmget(Key::from(meta), vec!["paused", "version"])
        .await;
    match asked {
        Ok(fields) => {
            let (paused, version) = (
                fields.first().cloned().flatten(),
                fields.get(1).cloned().flatten(),
            );
            if paused.is_some() {
                report.say(
                    Verdict::Warn,
                    format!(
                        "queue {queue} is paused: jobs are added and acknowledged, but no Worker runs them until it is resumed"
                    ),
                );
            }
            let made = version.map_or_else(
                || {
                    "no Queue has written its version (BullMQ before 5.20, or none made yet)"
                        .to_owned()
                },
                |v| format!("its Queue was made by {v}"),
            );
            report.say(Verdict::Ok, format!("queue {queue}: {made}"));
        }
        Err(e) => report.say(
            Verdict::Warn,
            format!("cannot read queue {queue}'s meta hash: {}", reason(&e)),
        ),
    }
}

/// Behind Sentinel, each sentinel of the URL: the job writers follow a
/// failover through whichever they can ask, so one that cannot be asked
/// is a risk, and sentinels naming different primaries (a failover under
/// way, or sentinels of another deployment) one more.
async fn sentinels(admin: &Admin, report: &mut Report) {
    let (service, answers) = match sink::sentinel_answers(admin.target(), admin.client()).await {
        Ok(None) => return,
        Ok(Some(asked)) => asked,
        Err(e) => {
            report.say(
                Verdict::Warn,
                format!("cannot ask the sentinels: {}", reason(&e)),
            );
            return;
        }
    };
    let mut named: Vec<(String, String)> = Vec::new();
    for (sentinel, answer) in &answers {
        match answer {
            Ok((host, port)) => named.push((sentinel.clone(), format!("{host}:{port}"))),
            Err(e) => report.say(
                Verdict::Warn,
                format!(
                    "sentinel {sentinel} cannot be asked ({e}): the ingress follows a failover only through the sentinels it can ask"
                ),
            ),
        }
    }
    match named.first() {
        None => report.say(
            Verdict::Fail,
            "no sentinel of the URL could be asked: the ingress cannot find the primary",
        ),
        Some((_, primary)) if named.iter().all(|(_, p)| p == primary) => report.say(
            Verdict::Ok,
            format!(
                "the sentinels ({} of {} asked) name {primary} as the primary of {service}",
                named.len(),
                answers.len()
            ),
        ),
        Some(_) => {
            let each: Vec<String> = named
                .iter()
                .map(|(sentinel, primary)| format!("{sentinel} names {primary}"))
                .collect();
            report.say(
                Verdict::Warn,
                format!(
                    "the sentinels disagree on the primary of {service} ({}): a failover under way, or sentinels watching another deployment",
                    each.join(", ")
                ),
            );
        }
    }
}

/// Each node's role, version and `CLIENT TRACKING` permission: the one
/// node (the Sentinel's primary), or every primary of a Cluster.
async fn nodes(client: &Client, config: &Config, report: &mut Report) {
    let mut versions = Vec::new();
    if client.is_clustered() {
        let primaries = redis::primaries(client);
        if primaries.is_empty() {
            report.say(Verdict::Fail, "the cluster has no primary serving slots");
        }
        for n in primaries {
            let name = n.to_string();
            let node = client.with_cluster_node(&n);
            versions.push(node_checks(&name, &node, config, report).await);
            match node.cluster_info::<String>().await {
                Ok(info) => {
                    let (verdict, said) = cluster_state(&name, &info);
                    report.say(verdict, said);
                }
                Err(e) => report.say(
                    Verdict::Warn,
                    format!("CLUSTER INFO on {name}: {}", reason(&e)),
                ),
            }
        }
    } else {
        // Behind Sentinel, the primary it named, where the jobs go.
        let name = match client.active_connections().first() {
            Some(s) if config.redis.url.contains("sentinel") => {
                format!("{}:{} (the sentinels' primary)", s.host, s.port)
            }
            _ => redact_url(&config.redis.url),
        };
        versions.push(node_checks(&name, client, config, report).await);
    }
    for (name, version, primary) in versions.into_iter().flatten() {
        let at = numbers(&version);
        if at < LOWEST {
            report.say(
                Verdict::Fail,
                format!(
                    "{name} runs redis {version}: the ingress needs {}.{} or later (CLIENT TRACKING BCAST)",
                    LOWEST.0, LOWEST.1
                ),
            );
        } else if at < COUNTS_TRIMMING && config.sink.kind == SinkKind::Streams {
            report.say(
                Verdict::Warn,
                format!(
                    "{name} runs redis {version}: entries trimmed before a consumer group read them cannot be counted before {}.{}",
                    COUNTS_TRIMMING.0, COUNTS_TRIMMING.1
                ),
            );
        } else {
            let role = if primary { ", a primary" } else { "" };
            report.say(Verdict::Ok, format!("{name} runs redis {version}{role}"));
        }
    }
}

/// One node's role and `CLIENT TRACKING` permission, said where wrong;
/// returns its name, its version and whether it said it is a primary.
async fn node_checks<C: ClientLike + ServerInterface>(
    name: &str,
    node: &C,
    config: &Config,
    report: &mut Report,
) -> Option<(String, String, bool)> {
    let role: Result<Value, Error> = node
        .custom(cmd("ROLE", ClusterHash::Random), Vec::<Value>::new())
        .await;
    let mut primary = false;
    match role {
        Ok(Value::Array(r)) if r.first().and_then(Value::as_str).as_deref() == Some("master") => {
            primary = true;
        }
        Ok(other) => report.say(
            Verdict::Fail,
            format!(
                "{name} is not a primary (ROLE: {}): no job is written, and the ingress is not ready, until it is promoted",
                other
                    .into_array()
                    .first()
                    .and_then(Value::as_string)
                    .unwrap_or_default()
            ),
        ),
        Err(e) if not_permitted(&e) => report.say(
            Verdict::Fail,
            format!(
                "the user may not send ROLE to {name} ({}): the job writers ask it when they connect, and cannot connect without it",
                e.details()
            ),
        ),
        Err(e) => report.say(Verdict::Fail, format!("ROLE on {name}: {}", reason(&e))),
    }
    let tracking: Result<Value, Error> = node
        .custom(
            cmd("CLIENT", ClusterHash::Random),
            vec![
                Value::from_static_str("TRACKING"),
                Value::from_static_str("ON"),
                Value::from_static_str("BCAST"),
                Value::from_static_str("PREFIX"),
                Value::from(config.redis.key_prefix.as_str()),
                // No client has id 0: Redis refuses the redirect after it
                // checked the user's permission, and tracks nothing.
                Value::from_static_str("REDIRECT"),
                Value::from_static_str("0"),
            ],
        )
        .await;
    if let Err(e) = tracking
        && not_permitted(&e)
    {
        report.say(
            Verdict::Fail,
            format!(
                "the user may not send CLIENT TRACKING to {name} ({}): the replica of keys and triggers cannot stay live, and the ingress does not become ready",
                e.details()
            ),
        );
    }
    let wanted = config.redis.wait_replicas;
    if wanted > 0 {
        match node.info::<String>(Some(InfoKind::Replication)).await {
            Ok(info) => {
                let connected: u32 = info_field(&info, "connected_slaves")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                if connected < wanted {
                    report.say(
                        Verdict::Fail,
                        format!(
                            "{name} has {connected} replica(s) connected and redis.wait_replicas is {wanted}: no job would count as stored, each request spooled or answered 503"
                        ),
                    );
                } else {
                    report.say(
                        Verdict::Ok,
                        format!(
                            "{name} has {connected} replica(s) connected (redis.wait_replicas is {wanted})"
                        ),
                    );
                }
            }
            Err(e) => report.say(Verdict::Fail, format!("INFO on {name}: {}", reason(&e))),
        }
    }
    match node.info::<String>(Some(InfoKind::Persistence)).await {
        Ok(info) => persistence(name, &info, wanted, report),
        Err(e) => report.say(
            Verdict::Warn,
            format!("cannot read {name}'s persistence: {}", reason(&e)),
        ),
    }
    match node.info::<String>(Some(InfoKind::Server)).await {
        Ok(info) => {
            let version = info_field(&info, "redis_version")
                .unwrap_or("unknown")
                .to_owned();
            Some((name.to_owned(), version, primary))
        }
        Err(e) => {
            report.say(Verdict::Fail, format!("INFO on {name}: {}", reason(&e)));
            None
        }
    }
}

/// Whether node `name` keeps what it acknowledged across a restart, and
/// takes writes, from its `INFO persistence`: a job is stored once Redis
/// acknowledged it (or, with `redis.wait_replicas`, once replicas hold it),
/// so this is where "nothing acknowledged is lost" ends.
fn persistence(name: &str, info: &str, wait_replicas: u32, report: &mut Report) {
    let failed = |field| info_field(info, field).is_some_and(|s| s != "ok");
    if failed("rdb_last_bgsave_status") {
        report.say(
            Verdict::Warn,
            format!(
                "{name}'s last snapshot (BGSAVE) failed: with stop-writes-on-bgsave-error (the default) it refuses every write, job writes among them, until one succeeds"
            ),
        );
    }
    if info_field(info, "aof_enabled") == Some("1") {
        if failed("aof_last_write_status") {
            report.say(
                Verdict::Warn,
                format!(
                    "{name} failed to write its append-only file: it refuses writes, job writes among them, until it can"
                ),
            );
        } else {
            report.say(Verdict::Ok, format!("{name} keeps an append-only file"));
        }
    } else if wait_replicas == 0 {
        report.say(
            Verdict::Warn,
            format!(
                "{name} keeps no append-only file: jobs it acknowledged since its last snapshot are lost if it restarts (appendonly yes with appendfsync everysec loses at most a second; or count a replica's copy with redis.wait_replicas)"
            ),
        );
    } else {
        report.say(
            Verdict::Ok,
            format!(
                "{name} keeps no append-only file; a job counts as stored once {wait_replicas} replica(s) hold it"
            ),
        );
    }
}

/// What a Cluster primary's `CLUSTER INFO` says of the cluster: a node
/// that sees slots unserved refuses writes to them (`CLUSTERDOWN`).
fn cluster_state(name: &str, info: &str) -> (Verdict, String) {
    const SLOTS: &str = "16384";
    let state = info_field(info, "cluster_state").unwrap_or("unknown");
    let ok = info_field(info, "cluster_slots_ok").unwrap_or("0");
    if state == "ok" && ok == SLOTS {
        (
            Verdict::Ok,
            format!("{name} sees the cluster serve all {SLOTS} slots"),
        )
    } else {
        (
            Verdict::Fail,
            format!(
                "{name} sees the cluster {state} with {ok} of {SLOTS} slots served: jobs whose key hashes to a slot not served are refused (CLUSTERDOWN)"
            ),
        )
    }
}

/// `major.minor` of a version string (0.0 where it does not read).
fn numbers(version: &str) -> (u64, u64) {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// A custom command named `name`, routed by `hash` in a cluster.
fn cmd(name: &'static str, hash: ClusterHash) -> CustomCommand {
    CustomCommand::new_static(name, hash, false)
}

/// Each route's job write, asked as the job writers ask it.
async fn writes(client: &Client, config: &Config, report: &mut Report) {
    let layout = Layout::of(config);
    for (check, key) in layout.checks_with_keys(config) {
        let Some((name, args)) = check.command().split_first() else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        let hash = ClusterHash::Custom(fred::util::redis_keyslot(&key));
        let args: Vec<Value> = args.iter().cloned().map(Value::Bytes).collect();
        let asked: Result<Value, Error> = client
            .custom(CustomCommand::new(name, hash, false), args)
            .await;
        match asked {
            Err(e) if not_permitted(&e) => report.say(
                Verdict::Fail,
                format!(
                    "the user may not write jobs to {} ({}): every request matching it would get 503",
                    check.what(),
                    e.details()
                ),
            ),
            Err(e) if !answered(&e) => report.say(
                Verdict::Fail,
                format!("could not ask about {}: {}", check.what(), reason(&e)),
            ),
            // The argument error or NOSCRIPT: permitted.
            Ok(_) | Err(_) => {
                report.say(Verdict::Ok, format!("the user may write jobs to {}", check.what()));
            }
        }
    }
}

/// Whether `e` is Redis's answer (an error reply), not the connection's
/// failure.
fn answered(e: &Error) -> bool {
    !matches!(
        e.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Tls
    )
}

/// The reads the replica makes of the control plane, and what it holds.
async fn control_plane(admin: &Admin, config: &Config, report: &mut Report) {
    let client = admin.client();
    let prefix = &config.redis.key_prefix;
    let apikey = format!("{prefix}apikey:{PROBE}");
    let trigger = format!("{prefix}triggers:{PROBE}:{PROBE}");
    let properties = format!("{prefix}org:{PROBE}:properties");
    let mut refusals = Vec::new();
    let mut note = |what: String, asked: Result<Value, Error>| match asked {
        Err(e) if not_permitted(&e) => refusals.push(format!("{what}: {}", e.details())),
        Err(e) if !answered(&e) => refusals.push(format!("{what}: {}", reason(&e))),
        _ => {}
    };
    note(format!("MGET {apikey}"), client.mget(apikey.as_str()).await);
    note(
        format!("SMEMBERS {trigger}"),
        client.smembers(trigger.as_str()).await,
    );
    note(
        format!("HGETALL {properties}"),
        client.hgetall(properties.as_str()).await,
    );
    // The replica reads sets and hashes through a script.
    note(
        format!("EVALSHA on {trigger}"),
        script_on(client, &trigger).await,
    );
    let mut counts = Vec::new();
    for (what, pattern) in [
        ("API keys", format!("{prefix}apikey:*")),
        ("triggers", format!("{prefix}triggers:*")),
        (
            "outreach configurations",
            format!("{prefix}outreach:config:*"),
        ),
        ("org properties", format!("{prefix}org:*:properties")),
    ] {
        match admin.scan_keys(pattern).await {
            Ok(keys) => counts.push((what, keys.len())),
            Err(AdminError::Redis(e)) if not_permitted(&e) => {
                refusals.push(format!("SCAN: {}", e.details()));
            }
            Err(e) => refusals.push(format!("SCAN: {e}")),
        }
    }
    if !refusals.is_empty() {
        refusals.dedup();
        report.say(
            Verdict::Fail,
            format!(
                "the user may not read the control plane under {prefix} ({}): the ingress does not become ready",
                refusals.join("; ")
            ),
        );
        return;
    }
    let listed: Vec<String> = counts
        .iter()
        .map(|(what, n)| format!("{what}: {n}"))
        .collect();
    report.say(
        Verdict::Ok,
        format!("the user may read the control plane: {}", listed.join(", ")),
    );
    if counts.first().is_some_and(|(_, n)| *n == 0) && config.auth.jwt_secret.is_none() {
        report.say(
            Verdict::Warn,
            format!(
                "no API key under {prefix}apikey: and no JWT secret: every webhook request would get 401 (bring the keys over with `tether-ingress import`)"
            ),
        );
    }
}

/// `EVALSHA` of a script no one has, on `key`: `NOSCRIPT` where the user
/// may run scripts on it, `NOPERM` where not.
async fn script_on(client: &Client, key: &str) -> Result<Value, Error> {
    client
        .custom(
            cmd("EVALSHA", ClusterHash::Offset(2)),
            vec![
                Value::Bytes(Bytes::from_static(&[b'0'; 40])),
                Value::Integer(1),
                Value::from(key),
            ],
        )
        .await
}

/// The records the request path keeps besides jobs: `Idempotency-Key`
/// claims and answers, and with `rate_limit.scope = "global"` each key's
/// rate. Each is read and written with `GET`, `SET` and a script; a
/// refusal is a warning, since only requests using them are affected.
async fn records(client: &Client, config: &Config, report: &mut Report) {
    let prefix = &config.redis.key_prefix;
    let key = format!("{prefix}idempotency:{PROBE}");
    let refused = refusals_on(client, &key, false).await;
    if !refused.is_empty() {
        report.say(
            Verdict::Warn,
            format!(
                "the user may not {} ({}): requests with an Idempotency-Key would get 503",
                on_key(&refused, &key),
                details(&refused)
            ),
        );
    }
    if config.rate_limit.scope == RateLimitScope::Global {
        let key = format!("{prefix}ratelimit:{PROBE}");
        let refused = refusals_on(client, &key, true).await;
        if refused.is_empty() {
            report.say(
                Verdict::Ok,
                format!("the user may keep the global rate limits under {prefix}ratelimit:"),
            );
        } else {
            report.say(
                Verdict::Warn,
                format!(
                    "the user may not {} ({}): with rate_limit.scope = global each instance would limit keys by its own count",
                    on_key(&refused, &key),
                    details(&refused)
                ),
            );
        }
    }
}

/// Which of `GET`, `SET` and `EVALSHA` on `key` (and `TIME`, `with_time`)
/// Redis refuses the user, each asked so that it changes nothing (a `SET`
/// with options that contradict each other, a script no one has, a key
/// that does not exist): `(command, Redis's words)`.
async fn refusals_on(client: &Client, key: &str, with_time: bool) -> Vec<(String, String)> {
    let mut asked: Vec<(&str, Result<Value, Error>)> = vec![
        ("GET", client.get(key).await),
        (
            "SET",
            client
                .custom(
                    cmd("SET", ClusterHash::FirstKey),
                    vec![key, "probe", "NX", "XX"],
                )
                .await,
        ),
        ("EVALSHA", script_on(client, key).await),
    ];
    if with_time {
        let no_args: Vec<Value> = Vec::new();
        asked.push((
            "TIME",
            client
                .custom(cmd("TIME", ClusterHash::Random), no_args)
                .await,
        ));
    }
    asked
        .into_iter()
        .filter_map(|(name, answer)| match answer {
            Err(e) if not_permitted(&e) => Some((name.to_owned(), e.details().to_owned())),
            Err(e) if !answered(&e) => Some((name.to_owned(), reason(&e))),
            _ => None,
        })
        .collect()
}

/// `GET, SET on <key>`: what [`refusals_on`] found refused.
fn on_key(refused: &[(String, String)], key: &str) -> String {
    let names: Vec<&str> = refused.iter().map(|(name, _)| name.as_str()).collect();
    format!("{} on {key}", names.join(", "))
}

/// Redis's words for each refusal, once each.
fn details(refused: &[(String, String)]) -> String {
    let mut said: Vec<&str> = refused.iter().map(|(_, why)| why.as_str()).collect();
    said.dedup();
    said.join("; ")
}

/// Each node's `maxmemory-policy`, as the running ingress reads it, and
/// how full its `maxmemory` is.
async fn memory(client: &Client, report: &mut Report) {
    for (node, asked) in sink::memory_infos(client).await {
        let on = if node.is_empty() {
            String::new()
        } else {
            format!(" on {node}")
        };
        let info = match asked {
            Ok(info) => info,
            Err(e) => {
                report.say(
                    Verdict::Warn,
                    format!("cannot read the eviction policy{on}: {}", reason(&e)),
                );
                continue;
            }
        };
        match info_field(&info, "maxmemory_policy") {
            Some(policy) if sink::may_evict_jobs(policy) => report.say(
                Verdict::Warn,
                format!(
                    "maxmemory-policy{on} is {policy}: Redis may evict job streams and queues when its memory runs short, jobs answered 202 among them (set noeviction)"
                ),
            ),
            Some(policy) => report.say(Verdict::Ok, format!("maxmemory-policy{on} is {policy}")),
            None => {}
        }
        let bytes = |name| info_field(&info, name).and_then(|n| n.parse::<u64>().ok());
        if let (Some(used), Some(max)) = (bytes("used_memory"), bytes("maxmemory"))
            && max > 0
        {
            let percent = used.saturating_mul(100) / max;
            let mib = |b: u64| b as f64 / f64::from(1 << 20);
            let figures = format!(
                "{percent}% of maxmemory{on} is used ({:.1} of {:.1} MiB)",
                mib(used),
                mib(max)
            );
            if percent >= FULL_PERCENT {
                report.say(
                    Verdict::Warn,
                    format!(
                        "{figures}: once it is full Redis refuses writes (OOM) or evicts, and job writes are spooled or answered 503"
                    ),
                );
            } else {
                report.say(Verdict::Ok, figures);
            }
        }
    }
}

/// How full a node's `maxmemory` may be before it is said as a risk.
const FULL_PERCENT: u64 = 90;

/// The consumer groups of a job stream, and what trimming took from them.
async fn groups(client: &Client, config: &Config, stream: &str, report: &mut Report) {
    match sink::stream_groups(client, stream).await {
        Ok(None) => report.say(
            Verdict::Warn,
            format!(
                "stream {stream} does not exist yet, so no consumer group reads it: workers usually make theirs at start (XGROUP CREATE … MKSTREAM); jobs trimmed before one exists are lost to it"
            ),
        ),
        Ok(Some((_, _, groups))) if groups.is_empty() => report.say(
            Verdict::Warn,
            format!(
                "no consumer group reads stream {stream}: if its workers read with one, it was never made here (or under another name)"
            ),
        ),
        Ok(Some((added, length, groups))) => {
            let named: Vec<String> = groups
                .iter()
                .map(|g| match g.lag {
                    Some(lag) => format!("{} (lag {lag})", g.name),
                    None => g.name.clone(),
                })
                .collect();
            report.say(
                Verdict::Ok,
                format!("stream {stream} is read by {}", named.join(", ")),
            );
            for group in &groups {
                if let Some(lost) = group.trimmed_unread(added, length)
                    && lost > 0
                    && config.streams.maxlen > 0
                {
                    report.say(
                        Verdict::Warn,
                        format!(
                            "group {} lost {lost} entries of {stream} to trimming before it read them: raise streams.maxlen ({}) above its worst backlog",
                            group.name, config.streams.maxlen
                        ),
                    );
                }
            }
        }
        Err(e) if not_permitted(&e) => report.say(
            Verdict::Warn,
            format!(
                "the user may not read stream {stream}'s consumer groups ({}): entries trimmed unread go unmeasured",
                e.details()
            ),
        ),
        Err(e) => report.say(
            Verdict::Warn,
            format!("cannot read stream {stream}'s consumer groups: {}", reason(&e)),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(numbers("5.0.14") < LOWEST);
        assert!(numbers("6.0.0") >= LOWEST);
        assert!(numbers("6.2.14") < COUNTS_TRIMMING);
        assert!(numbers("7.0.15") >= COUNTS_TRIMMING);
        assert!(numbers("10.1") > COUNTS_TRIMMING);
        assert_eq!(numbers("unknown"), (0, 0));
    }

    #[test]
    fn a_cluster_not_serving_every_slot_fails() {
        let serving =
            "cluster_state:ok\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:16384\r\n";
        assert_eq!(
            cluster_state("n:1", serving),
            (
                Verdict::Ok,
                "n:1 sees the cluster serve all 16384 slots".to_owned()
            )
        );
        let failing =
            "cluster_state:fail\r\ncluster_slots_assigned:16384\r\ncluster_slots_ok:10923\r\n";
        let (verdict, said) = cluster_state("n:1", failing);
        assert_eq!(verdict, Verdict::Fail);
        assert!(
            said.starts_with("n:1 sees the cluster fail with 10923 of 16384 slots served"),
            "{said}"
        );
    }

    #[test]
    fn persistence_is_said_as_redis_reports_it() {
        let said = |info: &str, wait: u32| {
            let mut report = Report::default();
            persistence("n", info, wait, &mut report);
            report.to_string()
        };
        let off = "aof_enabled:0\r\nrdb_last_bgsave_status:ok\r\n";
        assert!(said(off, 0).starts_with("warn  n keeps no append-only file: jobs"));
        assert!(said(off, 1).starts_with("ok    n keeps no append-only file; a job counts"));
        let on = "aof_enabled:1\r\naof_last_write_status:ok\r\n";
        assert_eq!(said(on, 0), "ok    n keeps an append-only file\n");
        let broken = "rdb_last_bgsave_status:err\r\naof_enabled:1\r\naof_last_write_status:err\r\n";
        let text = said(broken, 0);
        assert!(
            text.contains("warn  n's last snapshot (BGSAVE) failed"),
            "{text}"
        );
        assert!(
            text.contains("warn  n failed to write its append-only file"),
            "{text}"
        );
    }

    #[test]
    fn a_report_fails_only_on_a_failure() {
        let mut report = Report::default();
        report.say(Verdict::Ok, "a");
        report.say(Verdict::Warn, "b");
        assert_eq!(report.failures(), 0);
        report.say(Verdict::Fail, "c");
        assert_eq!(report.failures(), 1);
        assert_eq!(report.to_string(), "ok    a\nwarn  b\nFAIL  c\n");
    }
}
