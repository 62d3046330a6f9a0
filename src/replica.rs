//! The one live replica of the Redis control plane.
//!
//! The backend writes API keys, triggers, outreach configurations and org
//! properties with plain SET/DEL/SADD/SREM/HSET/HDEL and tells nobody. This
//! module keeps an in-memory copy of every such key, so no request waits on
//! Redis to authenticate or route. Each kind of data is a [`View`] over one
//! key prefix; the mechanism below is shared by all of them.
//!
//! # How it stays live
//! - A dedicated RESP3 connection ([`crate::redis`], role `Replica`) turns on
//!   `CLIENT TRACKING ON BCAST` for each
//!   view's prefix (no server configuration needed, unlike keyspace
//!   notifications). Redis then pushes an invalidation naming every key that
//!   any client modifies under those prefixes.
//! - One task owns every write to the views. It re-reads invalidated keys
//!   (GET / SMEMBERS / HGETALL, pipelined) and applies what it read. Because
//!   the reads and the invalidation pushes share one connection and the task
//!   applies results in order, a value is never replaced by an older one.
//! - A full resync (SCAN + pipelined reads, two pages in flight while a third
//!   is applied, invalidations drained between pages) runs at start, after every reconnect, after a
//!   lagged invalidation channel, and every `resync_interval` as a safety net
//!   (it also catches FLUSHALL, whose invalidation fred does not deliver).
//!   Entries the resync did not see are swept by generation.
//! - In a Redis Cluster each node tracks only its own keys: tracking is armed
//!   on every primary's connection, the SCAN walks every primary, reads are
//!   grouped by slot, and a change of primaries (a failover) re-arms and
//!   resyncs. Per key the ordering argument above still holds: a key's reads
//!   and its invalidations share its node's one connection.
//! - When Redis is unreachable, the views keep serving what they hold.
//!
//! Readers (the request path) only do `DashMap` lookups: no lock is held
//! across an await, and the writer never blocks them for more than one shard.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use fred::{
    prelude::*,
    types::{ClusterStateChange, scan::Scanner},
};
use futures::{FutureExt, TryStreamExt};
use tokio::sync::{broadcast::error::RecvError, watch};
use tracing::{debug, info, warn};

use crate::{
    clock::now_ms,
    metrics as m,
    redis::{self, NamedPrimary, Outage, Role, Say, Target, reason},
};

/// The value of one control-plane key as read from Redis.
///
/// The bytes are slices of the client's read buffer: a view copies what it
/// keeps, or it keeps that whole buffer, and every other reply read with it,
/// alive (see `Id::copied`).
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    /// The key does not exist (or holds the wrong type).
    Absent,
    /// A STRING value.
    String(Bytes),
    /// A SET's members.
    Set(Vec<Bytes>),
    /// A HASH's fields and values.
    Hash(Vec<(Bytes, Bytes)>),
}

/// Why a control-plane value could not be used as the backend wrote it, and
/// what the view did instead. It completes "the value of KEY …" and never
/// quotes the value: a record may hold anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadValue(pub(crate) &'static str);

/// The Redis type a view reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// Read with GET.
    String,
    /// Read with SMEMBERS.
    Set,
    /// Read with HGETALL.
    Hash,
}

/// One kind of control-plane data held in memory: the keys under one prefix.
///
/// `apply` and `sweep` are called only by the replica task; readers use the
/// view's own lookup methods.
pub trait View: Send + Sync + 'static {
    /// Short stable name, used as a metric label and in logs.
    fn name(&self) -> &'static str;
    /// The full key prefix this view owns, e.g. `tether:apikey:`.
    fn prefix(&self) -> &str;
    /// How its keys are read.
    fn kind(&self) -> KeyKind;
    /// Whether a key under the prefix (named by its `suffix`) belongs to this
    /// view; others are neither read nor applied.
    fn wants(&self, suffix: &str) -> bool {
        !suffix.is_empty()
    }
    /// Stores (or removes, for [`Fetched::Absent`]) the key whose name after
    /// the prefix is `suffix`, stamping it with generation `generation`. A
    /// value it cannot use as written is applied as well as it can be (or
    /// removed) and said in the error, which the replica counts and logs.
    fn apply(&self, suffix: &str, value: Fetched, generation: u64) -> Result<(), BadValue>;
    /// Removes every entry stamped with a generation older than `generation`.
    fn sweep(&self, generation: u64);
    /// Entries held.
    fn len(&self) -> usize;
    /// True when no entry is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shared, read-only status of the replica.
#[derive(Debug, Default)]
pub(crate) struct ReplicaStatus {
    ready: AtomicBool,
    connected: AtomicBool,
    /// Unix ms when the replica lost touch with Redis; 0 while in touch.
    lost_since_ms: AtomicU64,
}

impl ReplicaStatus {
    /// True once the first full load from Redis has completed.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// How long the replica has been out of touch with Redis (zero while
    /// connected and tracking: every change reaches it within milliseconds).
    pub(crate) fn out_of_touch_for(&self) -> Duration {
        match self.lost_since_ms.load(Ordering::Acquire) {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms().saturating_sub(since)),
        }
    }

    fn mark_lost(&self) {
        let _ = self.lost_since_ms.compare_exchange(
            0,
            now_ms().max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    fn mark_in_touch(&self) {
        self.lost_since_ms.store(0, Ordering::Release);
    }
}

/// Settings of the replica task.
#[derive(Debug, Clone)]
pub(crate) struct ReplicaSettings {
    /// The Redis it replicates.
    pub target: Target,
    /// Safety-net resync period.
    pub resync_interval: Duration,
    /// Share of the time (percent, 1..=100) a resync after the first load
    /// may keep busy.
    pub resync_busy_percent: u8,
    /// The connection sends `PING` this often, so a Redis `timeout` does
    /// not close it (and force a resync), when on.
    pub keepalive: Option<Duration>,
}

/// Reads a page of SET and HASH keys in one call: `KEYS[i]` is read as the
/// type `ARGV[i]` names; a missing key reads empty and a key of another type
/// (not control-plane data) is answered nil. No TYPE call per key: the
/// common case costs one command, a wrong type one caught error.
const READ_PAGE_SCRIPT: &str = r#"
local out = {}
for i, key in ipairs(KEYS) do
  local r
  if ARGV[i] == 'set' then
    r = redis.pcall('SMEMBERS', key)
  else
    r = redis.pcall('HGETALL', key)
  end
  if type(r) == 'table' and r.err then
    out[i] = false
  else
    out[i] = r
  end
end
return out
"#;

/// Keys re-read during a resync (after an invalidation), by the page read
/// sequence number current when their re-read was sent.
#[derive(Default)]
struct Reread {
    at: HashMap<Bytes, u64>,
}

impl Reread {
    fn record(&mut self, keys: Vec<Bytes>, seq: u64) {
        self.at.extend(keys.into_iter().map(|k| (k, seq)));
    }

    /// True when the page read sent at `seq` must not be applied for `key`:
    /// the key was re-read since, and that re-read is as new or newer.
    fn supersedes(&self, key: &Bytes, seq: u64) -> bool {
        self.at.get(key).is_some_and(|&at| at >= seq)
    }
}

/// Values read for a page: (view index, key, value).
type PageValues = Vec<(usize, Bytes, Value)>;

/// A page read sent and not yet awaited, holding its values once done.
type PageRead<'a> =
    futures::future::MaybeDone<futures::future::BoxFuture<'a, Result<PageValues, Error>>>;

/// Keys read per SCAN page and per pipelined read.
const SCAN_COUNT: u32 = 1000;
/// Keys per SCAN page of a resync after the first load.
const BACKGROUND_SCAN_COUNT: u32 = 100;
/// Invalidation events buffered before the channel lags (which forces a resync).
const INVALIDATION_CAPACITY: usize = 1 << 16;

// === impl Replica ===

/// The replica task's handle: start it with [`Replica::spawn`].
pub(crate) struct Replica {
    views: Vec<Arc<dyn View>>,
    status: Arc<ReplicaStatus>,
    settings: ReplicaSettings,
    generation: u64,
    /// Behind Sentinel, the primary the sentinels name now.
    named: Option<NamedPrimary>,
    /// Values a view could not use as written since they were last logged,
    /// per view (never locked across an await).
    bad: std::sync::Mutex<Vec<BadValues>>,
}

/// One view's values it could not use as written, since last logged.
#[derive(Default)]
struct BadValues {
    count: u64,
    /// The first such key and why.
    first: Option<(Bytes, BadValue)>,
    /// When the last line about them went out: at most one a second per
    /// view, so a backend rewriting a bad record at every request (a
    /// last-used time, say) does not flood the log; the rest are counted
    /// into the next line.
    said: Option<std::time::Instant>,
}

/// The least time between two lines about one view's bad values.
const BAD_VALUES_EVERY: Duration = Duration::from_secs(1);

impl Replica {
    /// Builds a replica over `views`.
    pub(crate) fn new(views: Vec<Arc<dyn View>>, settings: ReplicaSettings) -> Self {
        let bad = views.iter().map(|_| BadValues::default()).collect();
        Self {
            views,
            status: Arc::new(ReplicaStatus::default()),
            settings,
            generation: 0,
            named: None,
            bad: std::sync::Mutex::new(bad),
        }
    }

    /// Behind Sentinel: reconnects when the sentinels name another primary.
    /// A primary frozen or cut off through a failover comes back still
    /// answering as one until they demote it, and tracking there misses the
    /// writes (a revoked key) made on the new one.
    pub(crate) fn following(mut self, named: Option<NamedPrimary>) -> Self {
        self.named = named;
        self
    }

    /// The shared status (readiness, staleness).
    pub(crate) fn status(&self) -> Arc<ReplicaStatus> {
        self.status.clone()
    }

    /// Starts the task; it runs until `shutdown` turns true.
    pub(crate) fn spawn(mut self, shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            if let Err(e) = self.run(shutdown).await {
                warn!(error = %e, "replica task stopped");
            }
        })
    }

    fn build_client(&self) -> Result<Client, Error> {
        redis::client(
            &self.settings.target,
            Role::Replica {
                invalidation_capacity: INVALIDATION_CAPACITY,
            },
        )
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let client = self.build_client()?;
        redis::name_connections(&client, "tether-ingress:replica");
        // Subscribe before init(): reconnect_rx also fires on the first connect.
        let mut reconnects = client.reconnect_rx();
        let mut errors = client.error_rx();
        let mut invalidations = client.invalidation_rx();
        // A cluster's primaries changed: a new one is not tracked yet.
        let mut topology = client.cluster_change_rx();
        // The first connect retries until Redis answers; shutdown must not
        // wait for it, and the operator is told why it has not answered.
        let init = client.init();
        tokio::pin!(init);
        let mut down: Option<Outage> = None;
        let mut listening = true;
        let _conn = loop {
            tokio::select! {
                r = &mut init => break r?,
                e = errors.recv(), if listening => if let Ok((e, _)) = e {
                    match Outage::note(&mut down, std::time::Instant::now()) {
                        Say::Began => warn!(error = %reason(&e), "replica cannot connect to redis; retrying"),
                        Say::Lasts(down_for) => {
                            warn!(error = %reason(&e), down_for_secs = down_for.as_secs(), "replica still cannot connect to redis; retrying");
                        }
                        Say::Nothing => {}
                    }
                } else {
                    // Lagged: the next error will do. Closed: none will come.
                    listening = !matches!(e, Err(RecvError::Closed));
                },
                _ = shutdown.changed() => return Ok(()),
            }
        };
        // Ends with the shutdown.
        let _keep_alive = self
            .settings
            .keepalive
            .map(|every| redis::spawn_keep_alive(client.clone(), every, shutdown.clone()));
        let mut resync_timer = tokio::time::interval(self.settings.resync_interval);
        resync_timer.tick().await;
        let mut named = self.named.take();
        let mut named_last = None;
        // A resync is owed at start; after that, on reconnects, lag and the timer.
        let mut resync_due = true;
        let mut failures = Failures::default();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if resync_due {
                // This resync covers every reconnect reported so far (including
                // the first connect, reported too); later ones trigger another.
                while reconnects.try_recv().is_ok() {}
                match self
                    .resync(
                        &client,
                        &mut invalidations,
                        [&mut reconnects, &mut topology],
                        &mut shutdown,
                    )
                    .await
                {
                    Ok(()) => {
                        resync_due = false;
                        failures = Failures::default();
                        down = None;
                        self.status.mark_in_touch();
                    }
                    Err(e) => {
                        self.status.connected.store(false, Ordering::Release);
                        self.status.mark_lost();
                        metrics::counter!(m::REPLICA_RESYNC_FAILURES).increment(1);
                        let pause = failures.failed(&e);
                        tokio::select! {
                            _ = tokio::time::sleep(pause) => {}
                            _ = shutdown.changed() => {}
                        }
                        continue;
                    }
                }
            }
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = resync_timer.tick() => resync_due = true,
                () = redis::primary_switched(named.as_mut(), &mut named_last) => {
                    // The reconnect asks the sentinels anew and is reported
                    // like any other (a resync follows).
                    debug!("replica leaves a primary the sentinels no longer name");
                    let again = client.force_reconnection();
                    let _ = tokio::time::timeout(self.settings.target.connect_timeout, again).await;
                }
                r = reconnects.recv() => {
                    if matches!(r, Err(RecvError::Closed)) {
                        break;
                    }
                    // A new connection has no tracking and may have missed writes.
                    debug!("replica reconnected");
                    resync_due = true;
                }
                t = topology.recv() => match t {
                    Ok(changes) if primaries_changed(&changes) => {
                        debug!("replica saw the cluster's primaries change");
                        resync_due = true;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => resync_due = true,
                    Err(RecvError::Closed) => break,
                },
                e = errors.recv() => {
                    if matches!(e, Err(RecvError::Closed)) {
                        break;
                    }
                    self.status.mark_lost();
                    // Log the transition, then once a minute while it
                    // lasts, not every reconnect attempt.
                    let now = std::time::Instant::now();
                    if self.status.connected.swap(false, Ordering::AcqRel)
                        && let Ok((e, _)) = &e
                    {
                        warn!(error = %reason(e), "replica lost its Redis connection; serving the last copy");
                        down = Some(Outage::new(now));
                    } else if let (Some(outage), Ok((e, _))) = (down.as_mut(), &e)
                        && let Some(down_for) = outage.remind(now)
                    {
                        warn!(error = %reason(e), down_for_secs = down_for.as_secs(), "replica still cannot reach redis; serving the last copy");
                    }
                }
                inv = invalidations.recv() => match inv {
                    Ok(inv) => {
                        if let Err(e) = self.refresh(&client, inv.keys, &mut invalidations).await {
                            warn!(error = %e, "replica refresh failed; resyncing");
                            resync_due = true;
                        }
                    }
                    Err(RecvError::Lagged(n)) => {
                        warn!(missed = n, "replica invalidation channel lagged; resyncing");
                        resync_due = true;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }
        let _ = client.quit().await;
        Ok(())
    }

    /// Turns tracking on and reloads every view, page by page.
    async fn resync(
        &mut self,
        client: &Client,
        invalidations: &mut tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
        [reconnects, topology]: [&mut dyn Changes; 2],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Error> {
        let started = std::time::Instant::now();
        // The first load runs at full speed (nothing is served before it);
        // later ones pause between pages so requests keep the CPU.
        let busy_percent = if self.status.is_ready() {
            u32::from(self.settings.resync_busy_percent.clamp(1, 100))
        } else {
            100
        };
        let prefixes: Vec<String> = self.views.iter().map(|v| v.prefix().to_owned()).collect();
        // Tracking first, so that a write racing the scan still invalidates.
        track(client, prefixes).await?;
        // The primaries tracking was just armed on are known; a change from
        // here on makes this pass start over.
        while topology.happened() {}
        // After a lost connection the resync is the recovery: it says so
        // when done, as the loss was said.
        let recovering = !self.status.connected.swap(true, Ordering::AcqRel);
        self.generation += 1;
        let generation = self.generation;
        // One pass over the views' common prefix (four passes over a large
        // keyspace cost four times the SCANs); keys are routed by prefix.
        //
        // Pages are pipelined: while page N's values are applied (CPU here),
        // page N+1 is read (work in Redis) and page N+2 scanned. A value read
        // before an invalidation could land after the re-read that
        // invalidation caused, so a page skips every key invalidated since
        // its read was sent: that key's re-read is as new or newer.
        // Background resyncs read small pages: each SCAN and read occupies
        // single-threaded Redis for a tenth of the time, so job writes queued
        // behind one wait that much less.
        let count = if busy_percent < 100 {
            BACKGROUND_SCAN_COUNT
        } else {
            SCAN_COUNT
        };
        let mut pages = redis::scan_keys(client, self.scan_pattern(), count);
        let this = &*self;
        let mut reread = Reread::default();
        let mut read_seq = 0u64;
        let mut scanning = true;
        // Two page reads are in flight at once (the first load; one when
        // paced, below), so Redis has the next page's read queued while
        // this side applies a page. Page k's read is sent
        // in iteration k (all its commands on its first poll, after page
        // k-1's), awaited in k+1 and applied in k+2: reads reach Redis in
        // page order on this one connection, and every invalidation drained
        // between sending and applying page k is tagged k or later, so
        // `Reread` skips those keys in page k.
        let mut in_flight: Option<(u64, PageRead<'_>)> = None;
        let mut previous: Option<(u64, PageValues)> = None;
        loop {
            // fred re-sends a command cut by a reconnect on the new
            // connection, which has no tracking: this pass would miss writes.
            if reconnects.happened() {
                return Err(Error::new(
                    ErrorKind::IO,
                    "reconnected during the resync; starting over",
                ));
            }
            // A cluster SCAN across a topology change may skip keys, and
            // the sweep would then drop them.
            if topology.happened() {
                return Err(Error::new(
                    ErrorKind::Cluster,
                    "the cluster's topology changed during the resync; starting over",
                ));
            }
            let page_started = std::time::Instant::now();
            let mut sent = None;
            if scanning {
                match pages.try_next().await? {
                    Some(mut page) => {
                        let keys = page.take_results().unwrap_or_default();
                        page.next();
                        let keys: Vec<Bytes> = keys.iter().filter_map(key_bytes).collect();
                        read_seq += 1;
                        let mut read: PageRead<'_> = futures::future::maybe_done(
                            async move { this.read(client, &keys).await }.boxed(),
                        );
                        // Sends the page's commands now, behind the read in flight.
                        let _ = futures::poll!(&mut read);
                        sent = Some((read_seq, read));
                    }
                    None => scanning = false,
                }
            }
            // A paced resync keeps one read in flight, awaited in the
            // iteration that sends it: the pause is a multiple of the time a
            // page takes, and overlapped reads would make that time shorter
            // and the resync's share of Redis larger.
            if busy_percent < 100 {
                in_flight = sent.take();
            }
            let finish_in_flight = async {
                if let Some((_, read)) = in_flight.as_mut() {
                    read.await;
                }
            };
            let apply_previous = async {
                if let Some((seq, values)) = previous.take() {
                    this.apply_values(values, generation, |key| reread.supersedes(key, seq));
                }
                // Writes that raced the pages so far are applied right after them.
                let keys = this.drain(client, invalidations, generation).await?;
                reread.record(keys, read_seq);
                Ok::<_, Error>(())
            };
            let ((), applied) = tokio::join!(finish_in_flight, apply_previous);
            applied?;
            previous = match in_flight.take() {
                Some((seq, mut read)) => match std::pin::Pin::new(&mut read).take_output() {
                    Some(values) => Some((seq, values?)),
                    None => return Err(Error::new(ErrorKind::Unknown, "page read lost")),
                },
                None => None,
            };
            in_flight = sent;
            if !scanning && in_flight.is_none() && previous.is_none() {
                break;
            }
            if busy_percent < 100 {
                let pause = page_started.elapsed() * (100 - busy_percent) / busy_percent;
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    // Shutting down: leave the resync unfinished (no sweep).
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
        // What the sweep removes is what Redis no longer holds and no
        // invalidation said was deleted.
        let held: Vec<usize> = self.views.iter().map(|v| v.len()).collect();
        for view in &self.views {
            view.sweep(generation);
        }
        self.say_bad_values();
        self.export_sizes();
        metrics::counter!(m::REPLICA_RESYNCS).increment(1);
        metrics::histogram!(m::REPLICA_RESYNC_SECONDS).record(started.elapsed().as_secs_f64());
        let sizes = || -> String {
            let sizes: Vec<String> = self
                .views
                .iter()
                .map(|v| format!("{}={}", v.name(), v.len()))
                .collect();
            sizes.join(" ")
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if !self.status.ready.swap(true, Ordering::AcqRel) {
            info!(elapsed_ms, sizes = %sizes(), "replica loaded");
            return Ok(());
        }
        if recovering {
            info!(elapsed_ms, sizes = %sizes(), "replica resynced after its connection came back");
        }
        let shrunk: Vec<String> = self
            .views
            .iter()
            .zip(held)
            .filter(|(v, before)| lost_most(*before, v.len()))
            .map(|(v, before)| format!("{} {before} -> {}", v.name(), v.len()))
            .collect();
        if !shrunk.is_empty() {
            warn!(shrunk = %shrunk.join(", "), "replica resync found far fewer entries than it held; keys it no longer finds are refused (did Redis restart without its data, or does the URL now name another Redis?)");
        }
        Ok(())
    }

    /// Applies everything already waiting in the invalidation channel.
    async fn drain(
        &self,
        client: &Client,
        invalidations: &mut tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
        generation: u64,
    ) -> Result<Vec<Bytes>, Error> {
        let mut keys = Vec::new();
        loop {
            match invalidations.try_recv() {
                Ok(inv) => keys.extend(inv.keys.iter().filter_map(key_bytes)),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    return Err(Error::new(
                        ErrorKind::Unknown,
                        "invalidation channel lagged",
                    ));
                }
                Err(_) => break,
            }
        }
        if !keys.is_empty() {
            keys.sort_unstable();
            keys.dedup();
            self.read_and_apply(client, &keys, generation).await?;
        }
        Ok(keys)
    }

    /// Re-reads invalidated keys (plus any queued behind them) and applies them.
    async fn refresh(
        &self,
        client: &Client,
        first: Vec<Key>,
        invalidations: &mut tokio::sync::broadcast::Receiver<fred::types::client::Invalidation>,
    ) -> Result<(), Error> {
        let mut keys: Vec<Bytes> = first.iter().filter_map(key_bytes).collect();
        keys.sort_unstable();
        keys.dedup();
        self.read_and_apply(client, &keys, self.generation).await?;
        let _ = self.drain(client, invalidations, self.generation).await?;
        metrics::counter!(m::REPLICA_INVALIDATIONS).increment(keys.len() as u64);
        self.say_bad_values();
        self.export_sizes();
        Ok(())
    }

    /// Reads `keys` and applies each to its view.
    async fn read_and_apply(
        &self,
        client: &Client,
        keys: &[Bytes],
        generation: u64,
    ) -> Result<(), Error> {
        let values = self.read(client, keys).await?;
        self.apply_values(values, generation, |_| false);
        Ok(())
    }

    /// Reads `keys` in pipelined chunks: per chunk, STRING keys in one MGET
    /// (nil for missing or other types) and sets and hashes in one script
    /// call. Every chunk's commands are sent on the first poll, in order
    /// (the resync relies on reads reaching Redis in the order they are
    /// first polled), and written in one batch.
    ///
    /// In a cluster one command may only name keys of one slot, so the
    /// chunks are the keys of each slot instead.
    async fn read(&self, client: &Client, keys: &[Bytes]) -> Result<PageValues, Error> {
        let by_slot;
        let chunks: Vec<&[Bytes]> = if client.is_clustered() {
            by_slot = group_by_slot(keys);
            by_slot.iter().map(Vec::as_slice).collect()
        } else {
            keys.chunks(SCAN_COUNT as usize).collect()
        };
        let chunks = futures::future::try_join_all(
            chunks
                .into_iter()
                .map(|chunk| self.read_chunk(client, chunk)),
        )
        .await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    /// One chunk of [`Replica::read`].
    async fn read_chunk(&self, client: &Client, chunk: &[Bytes]) -> Result<PageValues, Error> {
        let mut out = Vec::with_capacity(chunk.len());
        let routed: Vec<(usize, &Bytes)> = chunk
            .iter()
            .filter_map(|k| self.view_index(k).map(|v| (v, k)))
            .collect();
        if routed.is_empty() {
            return Ok(out);
        }
        let (strings, others): (Vec<_>, Vec<_>) = routed
            .into_iter()
            .partition(|(view, _)| self.views[*view].kind() == KeyKind::String);
        let string_names: Vec<Key> = strings
            .iter()
            .map(|(_, k)| Key::from((*k).clone()))
            .collect();
        let other_names: Vec<Key> = others
            .iter()
            .map(|(_, k)| Key::from((*k).clone()))
            .collect();
        let kinds: Vec<&str> = others
            .iter()
            .map(|(v, _)| {
                if self.views[*v].kind() == KeyKind::Set {
                    "set"
                } else {
                    "hash"
                }
            })
            .collect();
        let read_strings = async {
            if string_names.is_empty() {
                return Ok(Value::Array(Vec::new()));
            }
            client.mget::<Value, _>(string_names).await
        };
        let read_others = async {
            if other_names.is_empty() {
                return Ok(Value::Array(Vec::new()));
            }
            let mut args: Vec<Value> = Vec::with_capacity(2 + 2 * other_names.len());
            args.push(Value::from_static_str(READ_PAGE_SCRIPT));
            args.push(Value::Integer(other_names.len() as i64));
            args.extend(
                other_names
                    .into_iter()
                    .map(|k| Value::Bytes(k.into_bytes())),
            );
            args.extend(kinds.into_iter().map(Value::from_static_str));
            client
                .custom::<Value, _>(crate::redis::eval_pipelined(client, &args), args)
                .await
        };
        // Two concurrent commands: fred writes them in one batch.
        let (string_values, other_values) = tokio::join!(read_strings, read_others);
        for (batch, values) in [(strings, string_values?), (others, other_values?)] {
            let values = match values {
                Value::Array(values) if values.len() == batch.len() => values,
                // A one-key MGET may come back unwrapped.
                v if batch.len() == 1 => vec![v],
                _ => return Err(Error::new(ErrorKind::Unknown, "page read answer shape")),
            };
            out.extend(
                batch
                    .into_iter()
                    .zip(values)
                    .map(|((view, key), value)| (view, key.clone(), value)),
            );
        }
        Ok(out)
    }

    /// Applies read values to their views, except keys `skip` names.
    fn apply_values(&self, values: PageValues, generation: u64, skip: impl Fn(&Bytes) -> bool) {
        for (view, key, value) in values {
            if skip(&key) {
                continue;
            }
            let (at, view) = (view, &self.views[view]);
            if let Err(bad) = apply(view, &key, to_fetched(view.kind(), value), generation) {
                metrics::counter!(m::REPLICA_BAD_VALUES, "view" => view.name()).increment(1);
                let mut tallies = self.bad.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(tally) = tallies.get_mut(at) {
                    tally.count += 1;
                    tally.first.get_or_insert((key, bad));
                }
            }
        }
    }

    /// Logs, one line per view, the values applied since its last line
    /// that could not be used as written: the first key and why, and how
    /// many (a view's line waits while its last is under a second old).
    fn say_bad_values(&self) {
        let now = std::time::Instant::now();
        let due: Vec<(u64, Option<(Bytes, BadValue)>)> = self
            .bad
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
            .map(|tally| {
                if tally.count == 0
                    || tally
                        .said
                        .is_some_and(|said| now.duration_since(said) < BAD_VALUES_EVERY)
                {
                    return (0, None);
                }
                tally.said = Some(now);
                (std::mem::take(&mut tally.count), tally.first.take())
            })
            .collect();
        for (view, (count, first)) in self.views.iter().zip(due) {
            let Some((key, BadValue(why))) = first else {
                continue;
            };
            warn!(
                view = view.name(),
                count,
                first = %String::from_utf8_lossy(&key),
                problem = why,
                "control-plane values the backend wrote that cannot be used as written (the first is named; each is counted in tether_replica_bad_values_total)"
            );
        }
    }

    /// SCAN MATCH pattern covering every view: their longest common prefix,
    /// then the character each view's prefix goes on with (`tether:[aot]*`),
    /// so the keys the ingress itself keeps under the same prefix
    /// (`idempotency:`, `ratelimit:`, possibly millions) are not sent back
    /// with every page.
    fn scan_pattern(&self) -> String {
        let mut common: &str = self.views.first().map_or("", |v| v.prefix());
        for v in &self.views {
            let shared = common
                .char_indices()
                .zip(v.prefix().chars())
                .take_while(|((_, a), b)| a == b)
                .last()
                .map_or(0, |((i, a), _)| i + a.len_utf8());
            common = &common[..shared];
        }
        let mut next: Vec<char> = Vec::new();
        for v in &self.views {
            // A prefix that is all of `common` takes any next character.
            let Some(c) = v.prefix()[common.len()..].chars().next() else {
                return format!("{}*", escape_glob(common));
            };
            if !next.contains(&c) {
                next.push(c);
            }
        }
        next.sort_unstable();
        let class = escape_glob(&next.iter().collect::<String>());
        match next.len() {
            1 => format!("{}{class}*", escape_glob(common)),
            _ => format!("{}[{class}]*", escape_glob(common)),
        }
    }

    fn view_index(&self, key: &[u8]) -> Option<usize> {
        let key = std::str::from_utf8(key).ok()?;
        self.views
            .iter()
            .position(|v| key.strip_prefix(v.prefix()).is_some_and(|s| v.wants(s)))
    }

    fn export_sizes(&self) {
        for v in &self.views {
            metrics::gauge!(m::REPLICA_ENTRIES, "view" => v.name()).set(v.len() as f64);
        }
    }
}

/// A stream of connection events the resync starts over on.
trait Changes: Send {
    /// True when an event arrived since the last call.
    fn happened(&mut self) -> bool;
}

impl Changes for tokio::sync::broadcast::Receiver<fred::types::config::Server> {
    fn happened(&mut self) -> bool {
        matches!(
            self.try_recv(),
            Ok(_) | Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_))
        )
    }
}

impl Changes for tokio::sync::broadcast::Receiver<Vec<ClusterStateChange>> {
    fn happened(&mut self) -> bool {
        loop {
            match self.try_recv() {
                Ok(changes) if primaries_changed(&changes) => return true,
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => return true,
                Err(_) => return false,
            }
        }
    }
}

/// Whether a topology refresh found primaries added or removed (fred
/// reports every refresh, most with nothing but `Rebalance`).
fn primaries_changed(changes: &[ClusterStateChange]) -> bool {
    changes
        .iter()
        .any(|c| !matches!(c, ClusterStateChange::Rebalance))
}

/// Turns on `CLIENT TRACKING ON BCAST` for `prefixes` where the views'
/// keys live. Off first, so the call is idempotent on a live connection.
///
/// A cluster's nodes each track only their own keys, so every primary's
/// connection is armed (fred's own call would arm the one node owning the
/// client id's slot), after refreshing the topology: a primary promoted
/// since is armed too, and a demoted one's connection is dropped.
async fn track(client: &Client, prefixes: Vec<String>) -> Result<(), Error> {
    if !client.is_clustered() {
        let _ = client.stop_tracking().await;
        return client
            .start_tracking(prefixes, true, false, false, false)
            .await;
    }
    client.sync_cluster().await?;
    let primaries = redis::primaries(client);
    if primaries.is_empty() {
        return Err(Error::new(ErrorKind::Cluster, "no cluster primary known"));
    }
    futures::future::try_join_all(primaries.into_iter().map(|node| {
        let on_node = client.with_cluster_node(node);
        let prefixes = prefixes.clone();
        async move {
            let _: Result<Value, Error> = on_node
                .client_tracking(
                    "OFF",
                    None,
                    Vec::<String>::new(),
                    false,
                    false,
                    false,
                    false,
                )
                .await;
            on_node
                .client_tracking::<Value, _, _>("ON", None, prefixes, true, false, false, false)
                .await
        }
    }))
    .await?;
    Ok(())
}

/// `keys` grouped by cluster slot, in the order each slot first appears.
fn group_by_slot(keys: &[Bytes]) -> Vec<Vec<Bytes>> {
    let mut index: HashMap<u16, usize> = HashMap::new();
    let mut groups: Vec<Vec<Bytes>> = Vec::new();
    for key in keys {
        let slot = fred::util::redis_keyslot(key);
        let at = *index.entry(slot).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[at].push(key.clone());
    }
    groups
}

/// Applies a read value to `view`, under the key's name after the prefix.
fn apply(
    view: &Arc<dyn View>,
    key: &Bytes,
    fetched: Fetched,
    generation: u64,
) -> Result<(), BadValue> {
    match std::str::from_utf8(key)
        .ok()
        .and_then(|name| name.strip_prefix(view.prefix()))
    {
        Some(suffix) => view.apply(suffix, fetched, generation),
        None => Ok(()),
    }
}

fn key_bytes(k: &Key) -> Option<Bytes> {
    Some(k.as_bytes().to_vec().into())
}

/// Escapes glob metacharacters so a prefix matches only itself in SCAN
/// MATCH, inside a `[…]` class as well as outside (where `^` and `-`
/// escaped stay themselves).
pub(crate) fn escape_glob(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^' | '-') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn value_bytes(v: Value) -> Option<Bytes> {
    match v {
        Value::Bytes(b) => Some(b),
        Value::String(s) => Some(s.into_inner()),
        Value::Integer(i) => Some(Bytes::from(i.to_string())),
        _ => None,
    }
}

fn to_fetched(kind: KeyKind, value: Value) -> Fetched {
    match (kind, value) {
        (_, Value::Null) => Fetched::Absent,
        (KeyKind::String, v) => value_bytes(v).map_or(Fetched::Absent, Fetched::String),
        (KeyKind::Set, Value::Array(items)) => {
            let members: Vec<Bytes> = items.into_iter().filter_map(value_bytes).collect();
            if members.is_empty() {
                Fetched::Absent
            } else {
                Fetched::Set(members)
            }
        }
        (KeyKind::Hash, Value::Map(map)) => {
            let fields: Vec<(Bytes, Bytes)> = map
                .inner()
                .into_iter()
                .filter_map(|(k, v)| Some((k.as_bytes().to_vec().into(), value_bytes(v)?)))
                .collect();
            if fields.is_empty() {
                Fetched::Absent
            } else {
                Fetched::Hash(fields)
            }
        }
        (KeyKind::Hash, Value::Array(items)) => {
            let mut fields = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                if let (Some(k), Some(v)) = (value_bytes(k), value_bytes(v)) {
                    fields.push((k, v));
                }
            }
            if fields.is_empty() {
                Fetched::Absent
            } else {
                Fetched::Hash(fields)
            }
        }
        _ => Fetched::Absent,
    }
}

/// Whether a view that held `before` entries and holds `after` once a
/// resync swept what it no longer found lost most of them: more than half,
/// or every one. Deletions reach the replica as they happen (and are not
/// swept), so a sweep that removes that much found a Redis without the
/// data it had.
fn lost_most(before: usize, after: usize) -> bool {
    before > 0 && after < before.div_ceil(2)
}

/// Resyncs that failed in a row: how long to pause before the next, and
/// whether to log this one. A failure that lasts (a Redis user without a
/// permission the replica needs) must not fill the log five times a second.
#[derive(Default)]
struct Failures {
    in_a_row: u32,
    /// What was last logged, and when.
    logged: Option<(String, std::time::Instant)>,
}

impl Failures {
    /// The first pause; it doubles with each failure in a row.
    const FIRST_PAUSE: Duration = Duration::from_millis(200);
    /// The longest pause between two attempts.
    const MAX_PAUSE: Duration = Duration::from_secs(5);
    /// The same error is logged again after this long.
    const RELOG_AFTER: Duration = Duration::from_secs(60);

    /// Counts `e`, logs it when it is new or has not been logged for a
    /// while, and returns the pause before the next attempt.
    fn failed(&mut self, e: &Error) -> Duration {
        self.in_a_row = self.in_a_row.saturating_add(1);
        let text = e.to_string();
        let now = std::time::Instant::now();
        let due = self
            .logged
            .as_ref()
            .is_none_or(|(last, at)| *last != text || now.duration_since(*at) >= Self::RELOG_AFTER);
        if due {
            if text.contains("NOPERM") {
                warn!(error = %text, failures = self.in_a_row, "replica resync failed: the Redis user lacks a permission the ingress needs (docs/DEPLOY.md lists them); serving the last copy and retrying");
            } else {
                warn!(error = %text, failures = self.in_a_row, "replica resync failed; serving the last copy and retrying");
            }
            self.logged = Some((text, now));
        }
        let doublings = self.in_a_row.saturating_sub(1).min(5);
        (Self::FIRST_PAUSE * (1 << doublings)).min(Self::MAX_PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reread_supersedes_only_page_reads_sent_before_it() {
        let mut r = Reread::default();
        let k = Bytes::from_static(b"tether:apikey:k");
        assert!(!r.supersedes(&k, 1));
        // Re-read while page 3's read was in flight.
        r.record(vec![k.clone()], 3);
        assert!(r.supersedes(&k, 3), "page 3 was read before the re-read");
        assert!(r.supersedes(&k, 2));
        assert!(!r.supersedes(&k, 4), "page 4 was read after it");
        assert!(!r.supersedes(&Bytes::from_static(b"tether:apikey:other"), 3));
    }

    #[test]
    fn a_view_that_lost_more_than_half_its_entries_lost_most() {
        assert!(lost_most(1, 0));
        assert!(lost_most(10_000, 4_999));
        assert!(!lost_most(10_000, 5_000));
        assert!(!lost_most(3, 2));
        assert!(!lost_most(0, 0));
        assert!(!lost_most(10, 12));
    }

    #[test]
    fn resync_failures_back_off_and_a_repeated_error_is_logged_once() {
        let mut f = Failures::default();
        let denied = Error::new(ErrorKind::Unknown, "NOPERM this user has no permissions");
        let pauses: Vec<u64> = (0..8)
            .map(|_| f.failed(&denied).as_millis() as u64)
            .collect();
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        let (_, first) = f.logged.clone().unwrap();
        f.failed(&denied);
        assert_eq!(
            f.logged.as_ref().unwrap().1,
            first,
            "the same error logged again"
        );
        f.failed(&Error::new(ErrorKind::IO, "connection refused"));
        assert_eq!(f.logged.as_ref().unwrap().0, "IO Error: connection refused");
        // A success starts over.
        f = Failures::default();
        assert_eq!(f.failed(&denied), Duration::from_millis(200));
    }

    #[test]
    fn glob_metacharacters_are_escaped() {
        assert_eq!(escape_glob("tether:"), "tether:");
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert_eq!(escape_glob("t-1^:"), "t\\-1\\^:");
    }

    struct Named(&'static str);

    impl View for Named {
        fn name(&self) -> &'static str {
            "test"
        }
        fn prefix(&self) -> &str {
            self.0
        }
        fn kind(&self) -> KeyKind {
            KeyKind::String
        }
        fn apply(&self, _: &str, _: Fetched, _: u64) -> Result<(), BadValue> {
            Ok(())
        }
        fn sweep(&self, _: u64) {}
        fn len(&self) -> usize {
            0
        }
    }

    #[test]
    fn one_scan_covers_every_view() {
        let settings = ReplicaSettings {
            target: Target {
                url: "redis://127.0.0.1:1".into(),
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                tls: None,
            },
            resync_interval: Duration::from_secs(1),
            resync_busy_percent: 100,
            keepalive: None,
        };
        let views: Vec<Arc<dyn View>> = vec![
            Arc::new(Named("tether:apikey:")),
            Arc::new(Named("tether:triggers:")),
            Arc::new(Named("tether:org:")),
        ];
        let r = Replica::new(views, settings.clone());
        assert_eq!(r.scan_pattern(), "tether:[aot]*");
        assert!(r.view_index(b"tether:jobs:workflow").is_none());
        assert_eq!(
            r.view_index(b"tether:org:o1:x")
                .map(|v| r.views[v].prefix()),
            Some("tether:org:")
        );
        let r = Replica::new(
            vec![Arc::new(Named("a*b:x:")), Arc::new(Named("a*b:]:"))],
            settings.clone(),
        );
        assert_eq!(r.scan_pattern(), "a\\*b:[\\]x]*");
        let r = Replica::new(
            vec![Arc::new(Named("t:^:")), Arc::new(Named("t:~:"))],
            settings.clone(),
        );
        assert_eq!(r.scan_pattern(), "t:[\\^~]*");
        let r = Replica::new(vec![Arc::new(Named("t:apikey:"))], settings.clone());
        assert_eq!(r.scan_pattern(), "t:apikey:*");
        let r = Replica::new(
            vec![Arc::new(Named("t:a")), Arc::new(Named("t:ab"))],
            settings,
        );
        assert_eq!(r.scan_pattern(), "t:a*");
    }

    #[test]
    fn empty_set_is_absent() {
        assert_eq!(
            to_fetched(KeyKind::Set, Value::Array(vec![])),
            Fetched::Absent
        );
        assert_eq!(to_fetched(KeyKind::String, Value::Null), Fetched::Absent);
    }
}
