//! The connections jobs are written through: one lean writer ([`Lane`])
//! per serving thread ([`crate::cores`]), whose task runs on that thread so
//! its replies wake requests without crossing threads, plus one on the
//! runtime that built the sink for requests served off those threads; and
//! one shared fred client for everything off the hot path (the spool
//! replay, idempotency records, and the cluster's layout, which the lanes
//! follow).
//!
//! In a cluster the two job routes (workflow, outreach) may live on two
//! primaries, so each thread has a lane per route, each connected to the
//! owner of its key's slot. Elsewhere both routes share one lane.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use fred::prelude::*;

use super::{
    lane::{Lane, LaneSettings},
    wire::{Check, Endpoint},
};
use crate::redis::{self, NamedPrimary, Role, Target};

/// The route a write takes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Route {
    Workflow,
    Outreach,
}

/// One thread's lanes.
#[derive(Debug, Clone)]
struct Lanes {
    workflow: Lane,
    outreach: Lane,
}

/// The shared client and the per-thread lanes.
#[derive(Clone)]
pub(super) struct Writers {
    shared: Client,
    /// `[0]` serves requests off the serving threads; `[i + 1]` serving
    /// thread `i` ([`crate::cores::current`]).
    lanes: Arc<[Lanes]>,
    /// Lanes (and the shared client) that connected at least once.
    connected: Arc<AtomicUsize>,
    expected: usize,
    waiter: Arc<tokio::task::JoinHandle<()>>,
    /// In a cluster, the workflow and outreach routes' keys (which lane owns
    /// which slot); `None` elsewhere, where one lane reaches every key.
    cluster_keys: Option<Arc<[Vec<u8>; 2]>>,
    /// Behind Sentinel, the primary the sentinels name now.
    named: Option<NamedPrimary>,
}

impl Writers {
    /// Builds the shared client and the lanes, and starts connecting them
    /// in the background: the shared client and lane `[0]` on the current
    /// runtime, one lane (two in a cluster) on each of `cores`. `keys` are
    /// the workflow and outreach routes' keys (their slots place a
    /// cluster's lanes); `checks`, their writes' permission checks, run on
    /// lane `[0]`'s connections.
    pub(super) fn connect(
        target: &Target,
        lane: &LaneSettings,
        keys: [&[u8]; 2],
        checks: [Check; 2],
        cores: &[tokio::runtime::Handle],
    ) -> Result<Self, Error> {
        let shared = redis::client(
            target,
            Role::Writer {
                max_pending_commands: lane.max_pending,
            },
        )?;
        let connected = Arc::new(AtomicUsize::new(0));
        let here = tokio::runtime::Handle::current();
        // Idempotency records, global rate limits, the retention watch.
        redis::name_connections(&shared, "tether-ingress:shared");
        let waiter = {
            let _task = shared.connect();
            let (client, connected) = (shared.clone(), connected.clone());
            here.spawn(async move {
                if client.wait_for_connect().await.is_ok() {
                    connected.fetch_add(1, Ordering::Release);
                }
            })
        };
        let clustered = shared.is_clustered();
        let named = Endpoint::new(target, &shared, keys[0])?.watch_primary(&here, shared.clone());
        let mut expected = 1;
        let mut start =
            |name: String, key: &[u8], checks: Vec<Check>, runtime: &tokio::runtime::Handle| {
                expected += 1;
                let endpoint = Endpoint::new(target, &shared, key)?
                    .following(named.as_ref())
                    .checking(checks)
                    .named(format!("tether-ingress:{name}"));
                Ok::<_, Error>(Lane::start(
                    name,
                    endpoint,
                    lane,
                    connected.clone(),
                    runtime,
                ))
            };
        let mut lanes = Vec::with_capacity(cores.len() + 1);
        let mut checks = Some(checks);
        for (i, runtime) in std::iter::once(&here).chain(cores).enumerate() {
            // Lane 0 is the shared runtime's; lane i + 1 serving thread i's.
            let name = match i {
                0 => "main".to_owned(),
                i => format!("serve-{}", i - 1),
            };
            // Lane 0's connections say what the user may not write; the
            // others would only say it again.
            let [for_workflow, for_outreach] = match checks.take() {
                Some([workflow, outreach]) if clustered => [vec![workflow], vec![outreach]],
                Some(both) => [both.into(), Vec::new()],
                None => [Vec::new(), Vec::new()],
            };
            let workflow = start(name.clone(), keys[0], for_workflow, runtime)?;
            let outreach = if clustered {
                start(format!("{name}/outreach"), keys[1], for_outreach, runtime)?
            } else {
                workflow.clone()
            };
            lanes.push(Lanes { workflow, outreach });
        }
        Ok(Self {
            shared,
            lanes: lanes.into(),
            connected,
            expected,
            waiter: Arc::new(waiter),
            cluster_keys: clustered.then(|| Arc::new(keys.map(<[u8]>::to_vec))),
            named,
        })
    }

    /// The shared client.
    pub(super) fn shared(&self) -> &Client {
        &self.shared
    }

    /// Behind Sentinel, the primary the sentinels name now (for the
    /// control-plane replica to follow too).
    pub(super) fn named_primary(&self) -> Option<NamedPrimary> {
        self.named.clone()
    }

    /// The lane `route`'s writes take on this thread.
    pub(super) fn current(&self, route: Route) -> Option<&Lane> {
        let lanes = crate::cores::current()
            .and_then(|i| self.lanes.get(i + 1))
            .or_else(|| self.lanes.first())?;
        Some(match route {
            Route::Workflow => &lanes.workflow,
            Route::Outreach => &lanes.outreach,
        })
    }

    /// The lane (of those off the serving threads) that reaches `key`, for
    /// the spool's replay: in a cluster only a route's own key has one.
    pub(super) fn replay_lane(&self, key: &[u8]) -> Option<&Lane> {
        let lanes = self.lanes.first()?;
        match &self.cluster_keys {
            None => Some(&lanes.workflow),
            Some(keys) if keys[0] == key => Some(&lanes.workflow),
            Some(keys) if keys[1] == key => Some(&lanes.outreach),
            Some(_) => None,
        }
    }

    /// True once the shared client and every lane connected at least once.
    pub(super) fn have_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) >= self.expected
    }

    /// Stops taking writes, waits (at most 2 s) for the replies in flight,
    /// and closes the shared client.
    pub(super) async fn close(&self) {
        self.waiter.abort();
        let grace = Duration::from_secs(2);
        let lanes = self
            .lanes
            .iter()
            .flat_map(|l| [l.workflow.close(grace), l.outreach.close(grace)]);
        futures::future::join_all(lanes).await;
        if self.shared.is_connected() {
            let _ = tokio::time::timeout(grace, self.shared.quit()).await;
        }
    }
}
