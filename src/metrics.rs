//! Metric names (one place, so dashboards and docs have one source) and the
//! Prometheus recorder.
//!
//! Labels are bounded: routes and statuses come from fixed sets, never from
//! paths, keys or ids. Histograms have explicit buckets so they aggregate
//! across instances.
//!
//! The recorder keeps every histogram sample until something drains it into
//! its buckets. A scrape does, but an ingress nobody scrapes would keep them
//! all (tens of bytes per request, without bound), so [`spawn_upkeep`] drains
//! them every [`UPKEEP_INTERVAL`] whether or not anyone scrapes. The three
//! histograms every request records skip the recorder: [`hot`] counts them in
//! fixed buckets and [`render`] adds them to the recorder's text.

mod hot;

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use http::StatusCode;
use metrics::{Counter, Gauge, Histogram};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;

/// Declares every metric once: a constant for its name, documented with its
/// kind and help text, and an entry in [`ALL`], from which [`install`]
/// registers the help text (Prometheus's `# HELP` line).
macro_rules! metrics {
    ($($kind:ident $konst:ident = $name:literal: $help:literal;)*) => {
        $(
            #[doc = concat!(stringify!($kind), ": ", $help)]
            pub(crate) const $konst: &str = $name;
        )*
        /// Every metric family: name, kind and help text.
        pub const ALL: &[(&str, Kind, &str)] = &[$(($name, Kind::$kind, $help)),*];
    };
}

/// What a metric family is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Kind {
    /// Only goes up.
    counter,
    /// Goes up and down.
    gauge,
    /// Observations in buckets.
    histogram,
}

metrics! {
    counter HTTP_REQUESTS = "tether_http_requests_total":
        "Requests answered, by route and status.";
    gauge HTTP_IN_FLIGHT = "tether_http_requests_in_flight":
        "Webhook requests being handled right now.";
    histogram HTTP_DURATION = "tether_http_request_duration_seconds":
        "Seconds from request head to response, by route.";
    counter HTTP_REJECTS = "tether_http_rejected_total":
        "Requests refused, by code (the envelope's machine code).";
    counter BODIES_MENDED = "tether_http_bodies_mended_total":
        "Webhook bodies simd-json refused as sent and read as the backend's JSON body parser reads them, by what was mended (byte_order_mark dropped, not_utf8 bytes read as U+FFFD, lone_surrogate escape, number_beyond_f64).";
    counter JOBS_WRITTEN = "tether_jobs_written_total":
        "Jobs acknowledged by Redis (stream entries, or BullMQ jobs in BullMQ mode), by kind.";
    counter JOB_WRITE_FAILURES = "tether_job_write_failures_total":
        "Job writes that failed, by reason.";
    histogram SINK_DURATION = "tether_sink_write_duration_seconds":
        "Seconds for one request's jobs to be acknowledged (the Redis round trip).";
    histogram SINK_BATCH = "tether_sink_batch_size":
        "Entries written together for one request (its batch).";
    gauge REDIS_STALLED = "tether_redis_stalled":
        "Job writers whose writes in flight have had no reply for longer than redis.stall_after_ms (their requests skip them).";
    counter REDIS_STALLS = "tether_redis_stalls_total":
        "Times a job writer became stalled.";
    counter REDIS_PRIMARY_SWITCHES = "tether_redis_primary_switches_total":
        "Times the sentinels named a new primary (Sentinel only); the job writers leave the old one at once.";
    gauge REDIS_MAY_EVICT_JOBS = "tether_redis_may_evict_jobs":
        "1 while Redis's maxmemory-policy (allkeys-*) lets it evict job streams and queues, jobs already answered 202 among them, when its memory runs short (read every 10 s).";
    gauge TLS_CERTIFICATE_EXPIRY = "tether_tls_certificate_expiry_timestamp_seconds":
        "When a certificate the ingress presents expires (its notAfter, Unix seconds), by certificate: listener (server.tls, again on each reload) or redis_client (redis.tls, at start). Alert well before it.";
    gauge STREAM_GROUPS = "tether_stream_groups":
        "Consumer groups on a job stream, by stream (streams mode; read every 10 s): 0 on a stream whose workers read with a group means none was made, and whatever is trimmed meanwhile is lost; NaN once a reload renamed the stream away.";
    gauge STREAM_GROUP_LAG = "tether_stream_group_lag":
        "Entries of a job stream not yet delivered to a consumer group, by stream and group, as Redis counts them (streams mode; read every 10 s).";
    gauge STREAM_GROUP_TRIMMED_UNREAD = "tether_stream_group_trimmed_unread":
        "Entries trimmed from a job stream (MAXLEN) before a consumer group read them, by stream and group: jobs answered 202 that the group's workers will never see (streams mode; read every 10 s; the most measured while the group lasts, as Redis counts them read once the group reads again).";
    gauge REPLICA_ENTRIES = "tether_replica_entries":
        "Entries held by each replica view, by view.";
    counter REPLICA_SKIPPED = "tether_replica_skipped_keys_total":
        "Control-plane keys the replica skipped because the key layout cannot represent them (an org id or webhookId with ':'), by view.";
    counter REPLICA_BAD_VALUES = "tether_replica_bad_values_total":
        "Control-plane values the backend wrote that the replica could not use as written (an API key record that is not JSON, or whose rateLimitPerSec is not a whole number), by view; the first of each resync or change is logged (at most a line a second per view).";
    gauge REPLICA_AGE = "tether_replica_age_seconds":
        "Seconds the replica has been out of touch with Redis (0 while connected and tracking; grows from the moment the connection is lost).";
    counter REPLICA_RESYNCS = "tether_replica_resyncs_total":
        "Completed full resyncs.";
    counter REPLICA_RESYNC_FAILURES = "tether_replica_resync_failures_total":
        "Failed full resyncs.";
    histogram REPLICA_RESYNC_SECONDS = "tether_replica_resync_duration_seconds":
        "Seconds per full resync.";
    counter REPLICA_INVALIDATIONS = "tether_replica_invalidations_total":
        "Keys re-read after an invalidation.";
    gauge CONNECTIONS_OPEN = "tether_connections_open":
        "Connections open.";
    counter CONNECTIONS_REFUSED = "tether_connections_refused_total":
        "Connections answered 503 at the connection cap.";
    counter CONNECTIONS_SILENT = "tether_connections_silent_closed_total":
        "Connections closed for sending nothing within the first-byte timeout.";
    gauge SPOOL_BYTES = "tether_spool_bytes":
        "Bytes in the local spool not yet replayed into Redis.";
    counter SPOOL_WRITTEN = "tether_spool_jobs_written_total":
        "Jobs written to the local spool (Redis could not take them).";
    counter SPOOL_REPLAYED = "tether_spool_jobs_replayed_total":
        "Spooled jobs replayed into Redis.";
    counter SPOOL_SKIPPED = "tether_spool_jobs_skipped_total":
        "Spooled jobs not replayed because the late reply to their first write showed Redis had stored them.";
    counter SPOOL_REPLAY_FAILURES = "tether_spool_replay_failures_total":
        "Spool replay passes Redis refused or did not answer, by reason (each is retried on a backoff of at most 2 s).";
    counter SPOOL_SYNCS = "tether_spool_syncs_total":
        "Group commits (one write + fdatasync for every request waiting).";
    counter SPOOL_CORRUPT = "tether_spool_corrupt_records_total":
        "Torn or corrupt spool records skipped on replay.";
    counter IDEMPOTENT_REPLAYS = "tether_idempotent_replays_total":
        "Requests answered from the idempotency store (repeats).";
    counter IDEMPOTENCY_UNSTORED = "tether_idempotency_answers_unstored_total":
        "Idempotency-Key answers Redis did not store (a repeat of the key gets 409 until the claim lapses, then does the work again).";
    counter GLOBAL_LIMIT_FALLBACKS = "tether_rate_limit_global_fallbacks_total":
        "Requests limited by this instance's own count because Redis did not answer the global rate-limit check.";
    gauge FAIL_CLOSED = "tether_auth_fail_closed":
        "1 while keys are refused because the replica is out of touch (fail-closed).";
    gauge BUILD_INFO = "tether_build_info":
        "Always 1; its labels name the running build (version, commit), so a rollout shows which instances run what.";
}

/// Reads the process's own figures (`process_*`: resident memory, open
/// descriptors against the limit, CPU seconds, start time) at each scrape.
static PROCESS: std::sync::LazyLock<metrics_process::Collector> =
    std::sync::LazyLock::new(metrics_process::Collector::default);

/// Registers the help text of every metric with the installed recorder.
fn describe() {
    for &(name, kind, help) in ALL {
        match kind {
            Kind::counter => metrics::describe_counter!(name, help),
            Kind::gauge => metrics::describe_gauge!(name, help),
            Kind::histogram => metrics::describe_histogram!(name, help),
        }
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0];
// The per-request histograms' bounds fit `hot`'s buckets, `+Inf` beside them.
const _: () =
    assert!(LATENCY_BUCKETS.len() < hot::MAX_BUCKETS && BATCH_BUCKETS.len() < hot::MAX_BUCKETS);
const RESYNC_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once and returns its render handle
/// (`None` if another recorder was installed first, e.g. by an embedding program).
pub(crate) fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(REPLICA_RESYNC_SECONDS.into()),
                    RESYNC_BUCKETS,
                )
                .ok()?;
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            PROCESS.describe();
            metrics::gauge!(
                BUILD_INFO,
                "version" => env!("CARGO_PKG_VERSION"),
                "commit" => env!("TETHER_BUILD_COMMIT")
            )
            .set(1.0);
            Some(handle)
        })
        .clone()
}

/// `/metrics`: the recorder's text (if this process's recorder is ours),
/// then the histograms every request records.
pub(crate) fn render(recorder: Option<&PrometheusHandle>) -> String {
    let Some(recorder) = recorder else {
        return String::new();
    };
    PROCESS.collect();
    let mut text = recorder.render();
    let help = |name: &str| {
        ALL.iter()
            .find(|(n, _, _)| *n == name)
            .map_or("", |(_, _, help)| help)
    };
    hot::render(help, &mut text);
    text
}

/// The sink's histograms: one request's write duration, and its batch size.
pub(crate) fn sink_histograms() -> (Histogram, Histogram) {
    (
        hot::histogram(SINK_DURATION, None, LATENCY_BUCKETS, 1e9),
        hot::histogram(SINK_BATCH, None, BATCH_BUCKETS, 1.0),
    )
}

/// How often [`spawn_upkeep`] drains histogram samples into their buckets:
/// at most this long's worth of samples is held (requests record into
/// [`hot`]'s fixed buckets, which hold nothing more).
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Drains `handle`'s histogram samples every [`UPKEEP_INTERVAL`] until `stop`
/// turns true (or its sender is gone), so memory stays bounded with no scrape.
pub(crate) fn spawn_upkeep(
    handle: PrometheusHandle,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return;
                    }
                }
            }
        }
    })
}

// === request metrics: handles registered once, used on the hot path ===

/// Status labels with a pre-registered counter; anything else is "other".
const STATUSES: [u16; 16] = [
    200, 202, 400, 401, 404, 405, 408, 409, 413, 422, 429, 431, 500, 502, 503, 504,
];

/// Metric handles registered once, incremented on the hot path.
pub(crate) struct Handles {
    /// Requests by route × status (last column: other statuses).
    requests: Vec<[Counter; STATUSES.len() + 1]>,
    /// Latency by route.
    durations: Vec<Histogram>,
    /// Webhook requests being handled.
    pub in_flight: Gauge,
}

/// Which route a request took: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `POST /api/webhook/workflow`
    Workflow,
    /// `POST /api/webhook/outreach`
    Outreach,
    /// `/healthz`
    Health,
    /// `/readyz`
    Ready,
    /// `/metrics`
    Metrics,
    /// Anything else: the upstream (label `proxy`).
    Other,
}

impl Route {
    /// Every route, in label order.
    pub(crate) const ALL: [Route; 6] = [
        Route::Workflow,
        Route::Outreach,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::Other,
    ];

    /// Its row in the handle tables.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Its metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Route::Workflow => "workflow",
            Route::Outreach => "outreach",
            Route::Health => "healthz",
            Route::Ready => "readyz",
            Route::Metrics => "metrics",
            Route::Other => "proxy",
        }
    }
}

fn status_label(s: u16) -> &'static str {
    match s {
        200 => "200",
        202 => "202",
        400 => "400",
        401 => "401",
        404 => "404",
        405 => "405",
        408 => "408",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

// === impl Handles ===

impl Handles {
    /// Registers every handle with the installed recorder.
    pub(crate) fn register() -> Self {
        let requests = Route::ALL
            .iter()
            .map(|r| {
                std::array::from_fn(|i| {
                    let status = STATUSES.get(i).map_or("other", |s| status_label(*s));
                    metrics::counter!(HTTP_REQUESTS, "route" => r.label(), "status" => status)
                })
            })
            .collect();
        let durations = Route::ALL
            .iter()
            .map(|r| {
                hot::histogram(
                    HTTP_DURATION,
                    Some(("route", r.label())),
                    LATENCY_BUCKETS,
                    1e9,
                )
            })
            .collect();
        Self {
            requests,
            durations,
            in_flight: metrics::gauge!(HTTP_IN_FLIGHT),
        }
    }

    /// Counts one answered request and its latency.
    pub(crate) fn record(&self, route: Route, status: StatusCode, started: Instant) {
        let column = STATUSES
            .iter()
            .position(|s| *s == status.as_u16())
            .unwrap_or(STATUSES.len());
        if let Some(row) = self.requests.get(route.index()) {
            row[column].increment(1);
        }
        if let Some(h) = self.durations.get(route.index()) {
            h.record(started.elapsed().as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let text = include_str!("../dashboards/tether-ingress.json");
        let dash: serde_json::Value = serde_json::from_str(text).unwrap();
        let mut used = 0;
        for panel in dash["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if let Some(name) = word.strip_prefix("tether_") {
                        let base = name
                            .trim_end_matches("_bucket")
                            .trim_end_matches("_sum")
                            .trim_end_matches("_count");
                        let full = format!("tether_{base}");
                        assert!(
                            super::ALL.iter().any(|(name, _, _)| *name == full),
                            "dashboard uses unknown metric {full}"
                        );
                        used += 1;
                    }
                }
            }
        }
        assert!(used >= 15);
    }
}
