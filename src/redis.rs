//! Redis connections: the one place a fred client is built.
//!
//! Every client of the process comes from [`client`]: the sink's per-core
//! writers and its shared client ([`crate::sink`]), the replica's tracking
//! connection ([`crate::replica`]) and the admin CLI's ([`crate::admin`],
//! which the worker uses too). The URL, already checked by the
//! configuration, names the server and its credentials; the [`Role`] decides
//! how the connection behaves. A new transport or topology is added here
//! once, for all of them.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use fred::{
    prelude::*,
    types::{
        ClusterHash, CustomCommand, RespVersion,
        config::{TlsConfig, TlsConnector, TlsHostMapping},
    },
};
use tracing::debug;

use crate::config::Redis as RedisConfig;

/// A primary's host and port, as the sentinels name it.
pub(crate) type PrimaryAddress = (String, u16);

/// Behind Sentinel, the primary the sentinels name now (`None` until first
/// asked), kept by the job writers' watcher (see `sink::wire`).
pub(crate) type NamedPrimary = tokio::sync::watch::Receiver<Option<PrimaryAddress>>;

/// Resolves when `named` names a primary other than `last`: the one it named
/// before, or the caller's starting point (the primary a connection
/// reached). `last` is kept by the caller across calls, so a switch while
/// this was not awaited still counts. Never without Sentinel; a first naming
/// after `None` is no switch.
pub(crate) async fn primary_switched(
    named: Option<&mut NamedPrimary>,
    last: &mut Option<PrimaryAddress>,
) {
    let Some(named) = named else {
        return std::future::pending().await;
    };
    loop {
        if named.changed().await.is_err() {
            return std::future::pending().await;
        }
        let now = named.borrow_and_update().clone();
        let before = std::mem::replace(last, now.clone());
        if before.is_some() && now != before {
            return;
        }
    }
}

/// The server and the deadlines every client of it shares.
#[derive(Debug, Clone)]
pub struct Target {
    /// Redis URL (may hold a password: never logged as is).
    pub url: String,
    /// Deadline of one connection attempt.
    pub connect_timeout: Duration,
    /// Deadline of one command.
    pub command_timeout: Duration,
    /// TLS for a `rediss://` URL (CA, client certificate); `None` for a
    /// plaintext one. A TLS URL never connects without it.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    /// The target `[redis]` configures (its TLS files read and checked).
    pub fn of(config: &RedisConfig) -> Result<Self, Error> {
        let tls = if config.uses_tls() {
            let tls = crate::tls::client_config(config.tls.files())
                .map_err(|e| Error::new(ErrorKind::Tls, format!("redis.tls: {e}")))?;
            Some(tls)
        } else {
            None
        };
        Ok(Self {
            url: config.url.clone(),
            connect_timeout: config.connect_timeout_ms,
            command_timeout: config.command_timeout_ms,
            tls,
        })
    }
}

/// What a client is for, and so how its connection behaves.
#[derive(Debug, Clone, Copy)]
pub enum Role {
    /// A job writer: a write is never re-sent after a reconnect (its caller
    /// may already have been told 503 and be retrying), the queue towards
    /// Redis is capped, and the first connection is retried until Redis
    /// answers.
    Writer {
        /// Cap on commands queued towards Redis.
        max_pending_commands: usize,
    },
    /// The replica: RESP3 for client tracking, a longer deadline for a
    /// resync's large pages, and room for bursts of invalidations.
    Replica {
        /// Invalidation events buffered before the channel lags.
        invalidation_capacity: usize,
    },
    /// One admin command: fails fast when Redis is unreachable.
    Admin,
}

/// Resync pages and admin commands may take longer than one job write.
const LONG_COMMAND: Duration = Duration::from_secs(10);

/// A client of `target` for `role` (not connected yet).
pub fn client(target: &Target, role: Role) -> Result<Client, Error> {
    let mut config = Config::from_url(&target.url)?;
    // Our own TLS settings (CA file, client certificate) replace the
    // defaults fred derives from a rediss:// URL; a TLS URL without them is
    // refused rather than connected in plaintext.
    match (&target.tls, config.uses_tls()) {
        (Some(tls), _) => {
            let mut tls = TlsConfig::from(TlsConnector::from(tls.as_ref().clone()));
            // A cluster names its nodes by IP in CLUSTER SLOTS; certificates
            // name the host the operator configured. Check each node under
            // the name of the node that reported it (or the hostname the
            // cluster announces, when it does).
            if config.server.is_clustered() {
                tls.hostnames = TlsHostMapping::DefaultHost;
            }
            config.tls = Some(tls);
        }
        (None, true) => {
            return Err(Error::new(
                ErrorKind::Tls,
                "a TLS URL needs a TLS configuration",
            ));
        }
        (None, false) => {}
    }
    let (connect, command) = (target.connect_timeout, target.command_timeout);
    if let Role::Replica { .. } = role {
        config.version = RespVersion::RESP3;
    }
    // Keep retrying the first connection: the server must start (and answer
    // /healthz) even while Redis is still coming up. The admin CLI instead
    // tells its user at once.
    config.fail_fast = matches!(role, Role::Admin);
    let mut builder = Builder::from_config(config);
    builder.with_connection_config(|c| {
        c.connection_timeout = connect;
        if let Role::Admin = role {
            return;
        }
        c.internal_command_timeout = command;
        c.tcp = TcpConfig {
            nodelay: Some(true),
            ..Default::default()
        };
        if let Role::Writer {
            max_pending_commands,
        } = role
        {
            c.max_command_buffer_len = max_pending_commands;
            c.max_command_attempts = 1;
        }
    });
    builder.with_performance_config(|p| match role {
        Role::Writer { .. } => p.default_command_timeout = command,
        Role::Replica {
            invalidation_capacity,
        } => {
            p.default_command_timeout = command.max(LONG_COMMAND);
            p.broadcast_channel_capacity = invalidation_capacity;
        }
        Role::Admin => p.default_command_timeout = LONG_COMMAND,
    });
    match role {
        Role::Writer { .. } => {
            builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2));
        }
        Role::Replica { .. } => {
            builder.set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
        }
        Role::Admin => {}
    }
    builder.build()
}

/// Names each connection `client` makes (`CLIENT SETNAME`), the first and
/// every one after a reconnect, so `CLIENT LIST`, `ACL LOG` and the slow
/// log tell the ingress's connections apart from other clients' and from
/// each other. Called before the client connects (the first connection is
/// announced like a reconnect); the task lives as long as its runtime. A
/// user refused the command keeps its connections unnamed: nothing depends
/// on the name.
pub(crate) fn name_connections(client: &Client, name: &'static str) {
    let mut reconnects = client.reconnect_rx();
    let client = client.clone();
    tokio::spawn(async move {
        loop {
            let server = match reconnects.recv().await {
                Ok(server) => server,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            let options = fred::types::config::Options {
                cluster_node: client.is_clustered().then_some(server),
                ..Default::default()
            };
            let named: Result<Value, Error> = client
                .with_options(&options)
                .custom(
                    CustomCommand::new_static("CLIENT", ClusterHash::Random, false),
                    vec!["SETNAME", name],
                )
                .await;
            if let Err(e) = named {
                debug!(name, error = %e, "connection not named");
            }
        }
    });
}

/// Sends `PING` on each of `client`'s connections (each node's, in a
/// cluster) every half of `every` until `stop` changes, so a Redis
/// `timeout`, which closes clients idle that long, does not close them: a
/// closed replica connection costs a whole resync. A ping that fails is
/// left to the client's own reconnection and error reporting.
pub(crate) fn spawn_keep_alive(
    client: Client,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Twice a period, so no connection stays idle a whole one.
        let mut tick = tokio::time::interval(every / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            if !client.is_connected() {
                continue;
            }
            if client.is_clustered() {
                for node in client.active_connections() {
                    let options = fred::types::config::Options {
                        cluster_node: Some(node),
                        ..Default::default()
                    };
                    let _ = client.with_options(&options).ping::<()>(None).await;
                }
            } else {
                let _ = client.ping::<()>(None).await;
            }
        }
    })
}

/// `EVAL` as a command fred may pipeline. fred holds every later command on
/// a connection until an `EVAL` of its own kind is answered (a guard for
/// `EVALSHA`'s NOSCRIPT in pipelines), which stalled the resync's SCAN and
/// MGET behind each page's script call, and would stall every job write
/// behind a multi-match request's. A script sent whole has no NOSCRIPT case,
/// so it is safe to pipeline. `args` are the call's (script, key count,
/// keys, arguments); in a cluster it goes to its first key's node.
pub(crate) fn eval_pipelined(client: &impl ClientLike, args: &[Value]) -> CustomCommand {
    CustomCommand::new_static("EVAL", script_route(client, args), false)
}

/// `EVALSHA` as a command fred may pipeline ([`Script`]); fred's own would
/// hold every later command on the connection until it is answered.
pub(crate) fn evalsha_pipelined(client: &impl ClientLike, args: &[Value]) -> CustomCommand {
    CustomCommand::new_static("EVALSHA", script_route(client, args), false)
}

/// Where a script call goes in a cluster: the slot of its first key
/// (`KEYS[1]`, after the script and the key count). fred honours only an
/// explicit slot on a custom command; left to itself it would hash the
/// script's body or SHA-1 and send the call to a node that answers MOVED.
/// Off a cluster nothing is hashed.
fn script_route(client: &impl ClientLike, args: &[Value]) -> ClusterHash {
    if !client.is_clustered() {
        return ClusterHash::FirstKey;
    }
    match args.get(2) {
        Some(Value::Bytes(key)) => ClusterHash::Custom(fred::util::redis_keyslot(key)),
        Some(Value::String(key)) => ClusterHash::Custom(fred::util::redis_keyslot(key.as_bytes())),
        _ => ClusterHash::FirstKey,
    }
}

/// A Lua script called by its SHA-1 (`EVALSHA`: 40 bytes on the wire, no
/// hashing of the body in Redis), pipelined like any command, and sent whole
/// (`EVAL`, which caches it again) only when Redis answers `NOSCRIPT`: its
/// cache is empty after a restart or `SCRIPT FLUSH`, and a `NOSCRIPT` call
/// ran nothing, so sending it again is safe.
#[derive(Debug)]
pub(crate) struct Script {
    body: &'static str,
    sha: bytes::Bytes,
}

impl Script {
    /// The script of `body`.
    pub(crate) fn new(body: &'static str) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, body.as_bytes());
        let mut hex = String::with_capacity(40);
        crate::hex::push(&mut hex, digest.as_ref());
        Self {
            body,
            sha: bytes::Bytes::from(hex),
        }
    }

    /// Its SHA-1, in hex (what `EVALSHA` names it by).
    pub(crate) fn sha(&self) -> &[u8] {
        &self.sha
    }

    /// Its body (what `EVAL` sends).
    pub(crate) fn body(&self) -> &'static str {
        self.body
    }

    /// Runs it through `client`: `args` builds the call's arguments after
    /// the script, which it is given (its SHA-1, or its body).
    pub(crate) async fn call<R: FromValue>(
        &self,
        client: &impl ClientLike,
        args: impl Fn(Value) -> Vec<Value>,
    ) -> Result<R, Error> {
        let by_sha = args(Value::Bytes(self.sha.clone()));
        let by_sha =
            Box::pin(client.custom::<R, _>(evalsha_pipelined(client, &by_sha), by_sha)).await;
        match by_sha {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let whole = args(Value::from_static_str(self.body));
                Box::pin(client.custom(eval_pipelined(client, &whole), whole)).await
            }
            other => other,
        }
    }
}

/// The primaries of a cluster client's current topology (empty off a
/// cluster, or before its first connection).
pub(crate) fn primaries(client: &Client) -> Vec<fred::types::config::Server> {
    client
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default()
}

/// Every key matching `pattern`, in pages of about `count`: one SCAN
/// through the server, or in a cluster one through every primary at once
/// (fred's own SCAN would walk the one node owning the cursor's slot). Call
/// `next()` on each page to have the following one read.
pub(crate) fn scan_keys(
    client: &Client,
    pattern: String,
    count: u32,
) -> futures::stream::BoxStream<'static, Result<fred::types::scan::ScanResult, Error>> {
    use futures::StreamExt as _;
    if client.is_clustered() {
        client.scan_cluster(pattern, Some(count), None).boxed()
    } else {
        client.scan(pattern, Some(count), None).boxed()
    }
}

/// Deletes `keys` (from one page of [`scan_keys`], say): one `DEL` on a
/// single server; in a cluster one `DEL` per key, pipelined, since one
/// command may not name keys of several slots.
pub(crate) async fn delete_keys(client: &Client, keys: Vec<String>) -> Result<i64, Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    if !client.is_clustered() {
        return client.del(keys).await;
    }
    let pipeline = client.pipeline();
    for key in keys {
        let () = pipeline.del(key).await?;
    }
    let removed: Vec<i64> = pipeline.all().await?;
    Ok(removed.into_iter().sum())
}

/// Said of a connection whose TLS handshake hung or met no TLS: the usual
/// cause is a `rediss://` URL at a plaintext port.
pub(crate) const NOT_TLS_HINT: &str = " (does the server speak TLS on that port?)";

/// Whether `e` is Redis refusing the user the command or one of its keys
/// (ACL: `NOPERM`).
pub(crate) fn not_permitted(e: &Error) -> bool {
    e.details().starts_with("NOPERM")
}

/// The value of field `name` in an `INFO` answer (`name:value` lines).
pub(crate) fn info_field<'i>(info: &'i str, name: &str) -> Option<&'i str> {
    info.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Why a Redis command failed, in words: an I/O error as its own message
/// (`Connection refused`), not fred's debug form of it (`Os { code: 111,
/// kind: ConnectionRefused, message: "Connection refused" }`).
pub(crate) fn reason(e: &Error) -> String {
    let details = e.details();
    let quoted = |field: &str| {
        let (_, rest) = details.split_once(field)?;
        rest.split_once('"').map(|(text, _)| text)
    };
    // rustls's error for a first answer that is no TLS record, as fred
    // words it.
    if details.contains("InvalidContentType") {
        return format!("the server answered with something other than TLS{NOT_TLS_HINT}");
    }
    match e.kind() {
        ErrorKind::IO => quoted("message: \"")
            .or_else(|| quoted("error: \""))
            .unwrap_or(details)
            .to_owned(),
        ErrorKind::Canceled => "the connection to redis was lost".to_owned(),
        ErrorKind::Timeout => "redis did not answer in time".to_owned(),
        _ => details.to_owned(),
    }
}

/// A time without Redis (a connection that cannot be made, a spool replay
/// Redis keeps refusing): its owner says so at first, then once a minute
/// while it lasts, so a long outage (a URL naming a replica, a Redis that
/// never came back, a key of the wrong type) is neither one line lost in
/// the scrollback nor a line per retry.
pub(crate) struct Outage {
    since: Instant,
    said: Instant,
}

/// What an owner says of one more failure ([`Outage::note`]).
pub(crate) enum Say {
    /// The outage began: say why.
    Began,
    /// It has lasted this long: say so again.
    Lasts(Duration),
    /// Said recently enough.
    Nothing,
}

impl Outage {
    /// How often an owner says again that its outage lasts.
    const REMIND_EVERY: Duration = Duration::from_secs(60);

    pub(crate) fn new(now: Instant) -> Self {
        Self {
            since: now,
            said: now,
        }
    }

    /// How long it has lasted.
    pub(crate) fn lasted(&self) -> Duration {
        self.since.elapsed()
    }

    /// One more failure, at `now`, of an owner whose outage is
    /// `down`: starts it on the first and says [`Say::Began`], then
    /// [`Say::Lasts`] once a minute.
    pub(crate) fn note(down: &mut Option<Self>, now: Instant) -> Say {
        match down {
            None => {
                *down = Some(Self::new(now));
                Say::Began
            }
            Some(outage) => outage.remind(now).map_or(Say::Nothing, Say::Lasts),
        }
    }

    /// How long it has lasted, when it is time to say so again.
    pub(crate) fn remind(&mut self, now: Instant) -> Option<Duration> {
        if now.duration_since(self.said) < Self::REMIND_EVERY {
            return None;
        }
        self.said = now;
        Some(now.duration_since(self.since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_info_field_is_read_by_its_whole_name() {
        let info = "# Memory\r\nmaxmemory_policy_x:no\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "redis_version"), None);
    }

    #[test]
    fn an_io_failure_is_said_in_its_own_words() {
        let io = |e: std::io::Error| Error::new(ErrorKind::IO, format!("{e:?}"));
        assert_eq!(
            reason(&io(std::io::Error::from_raw_os_error(111))),
            "Connection refused"
        );
        assert_eq!(
            reason(&io(std::io::Error::other(
                "failed to lookup address information"
            ))),
            "failed to lookup address information"
        );
        assert_eq!(
            reason(&Error::new(
                ErrorKind::IO,
                "Custom { kind: InvalidData, error: InvalidMessage(InvalidContentType) }"
            )),
            "the server answered with something other than TLS (does the server speak TLS on that port?)"
        );
        assert_eq!(
            reason(&Error::new(
                ErrorKind::Auth,
                "WRONGPASS invalid username-password pair"
            )),
            "WRONGPASS invalid username-password pair"
        );
    }

    #[test]
    fn an_outage_is_said_again_once_a_minute_with_how_long_it_lasted() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut outage = Outage::new(start);
        let said: Vec<(u64, u64)> = (1..=150)
            .filter_map(|t| outage.remind(at(t)).map(|d| (t, d.as_secs())))
            .collect();
        assert_eq!(said, [(60, 60), (120, 120)]);
    }
}
