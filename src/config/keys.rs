//! The two lists keyed by setting name: the environment variables the
//! operator may set (their names are fixed and follow no one rule), and
//! the settings a reload applies while serving. Every other setting that
//! changes on reload is reported as needing a restart.

use super::file::Config;

/// Environment variable → the `section.key` it sets, one row each (`--help`
/// lists them from here). Applied to the merged TOML before it is
/// deserialised, so a bad value is reported like one in the file, under the
/// key's name. A value goes in as an integer where the default is one and
/// the text is a number, else as text.
#[rustfmt::skip]
pub const ENV: &[(&str, &str)] = &[
    ("TETHER_INGRESS_LISTEN",                "server.listen"),
    ("TETHER_INGRESS_METRICS_LISTEN",        "server.metrics_listen"),
    ("TETHER_INGRESS_TLS_CERT_FILE",         "server.tls.cert_file"),
    ("TETHER_INGRESS_TLS_KEY_FILE",          "server.tls.key_file"),
    ("TETHER_INGRESS_TRUSTED_PROXIES",       "server.trusted_proxies"),
    ("TETHER_INGRESS_REDIS_URL",             "redis.url"),
    ("TETHER_INGRESS_REDIS_WAIT_REPLICAS",   "redis.wait_replicas"),
    ("TETHER_INGRESS_REDIS_STALL_AFTER_MS",  "redis.stall_after_ms"),
    ("TETHER_INGRESS_REDIS_TLS_CA_FILE",     "redis.tls.ca_file"),
    ("TETHER_INGRESS_REDIS_TLS_CERT_FILE",   "redis.tls.cert_file"),
    ("TETHER_INGRESS_REDIS_TLS_KEY_FILE",    "redis.tls.key_file"),
    ("TETHER_INGRESS_SINK",                  "sink.kind"),
    ("TETHER_INGRESS_BULLMQ_PREFIX",         "bullmq.prefix"),
    ("TETHER_INGRESS_BULLMQ_WORKFLOW_QUEUE", "bullmq.workflow_queue"),
    ("TETHER_INGRESS_BULLMQ_OUTREACH_QUEUE", "bullmq.outreach_queue"),
    ("TETHER_INGRESS_BULLMQ_JOB_OPTIONS",    "bullmq.job_options"),
    ("TETHER_INGRESS_UPSTREAM_URL",          "upstream.url"),
    ("TETHER_INGRESS_UPSTREAM_CA_FILE",      "upstream.ca_file"),
    ("TETHER_INGRESS_JWT_SECRET",            "auth.jwt_secret"),
    ("TETHER_INGRESS_JWT_SECRET_FILE",       "auth.jwt_secret_file"),
    ("TETHER_INGRESS_SPOOL_DIR",             "spool.dir"),
    ("TETHER_INGRESS_RATE_LIMIT_SCOPE",      "rate_limit.scope"),
    ("TETHER_INGRESS_LOG",                   "log.level"),
    ("TETHER_INGRESS_LOG_FORMAT",            "log.format"),
];

/// What every name in [`ENV`] starts with.
pub(super) const ENV_PREFIX: &str = "TETHER_INGRESS_";

/// Why a variable of [`ENV_PREFIX`] that [`ENV`] does not name is refused,
/// with the nearest name when one is a likely misspelling of it.
pub(super) fn unknown_variable(name: &str) -> String {
    let similarity = |known: &str| {
        let (a, b) = (
            name.trim_start_matches(ENV_PREFIX),
            known.trim_start_matches(ENV_PREFIX),
        );
        strsim::normalized_damerau_levenshtein(a, b)
    };
    let nearest = ENV
        .iter()
        .map(|&(known, _)| (similarity(known), known))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = match nearest {
        Some((score, known)) if score >= 0.6 => format!("; did you mean {known}?"),
        _ => String::new(),
    };
    format!(
        "{name}: not a variable tether-ingress reads{hint} (`tether-ingress --help` lists them)"
    )
}

/// A setting a reload applies: its name and how it is taken from the new
/// configuration.
pub(super) type Live = (&'static str, fn(&mut Config, &Config));

macro_rules! live {
    ($($section:ident . $key:ident),* $(,)?) => {
        /// The settings a reload applies while serving (a name covers the
        /// keys under it). Connections already open keep what they started
        /// with; every request reads the settings once.
        pub(super) const LIVE: &[Live] = &[$((
            concat!(stringify!($section), ".", stringify!($key)),
            |to: &mut Config, from: &Config| to.$section.$key.clone_from(&from.$section.$key),
        )),*];
    };
}

live!(
    server.max_body_bytes,
    server.first_byte_timeout_ms,
    server.header_read_timeout_ms,
    server.max_header_bytes,
    server.http2_max_concurrent_streams,
    server.shutdown_grace_ms,
    server.shutdown_delay_ms,
    server.body_read_timeout_ms,
    server.connection_queue_timeout_ms,
    server.tls,
    server.trusted_proxies,
    redis.command_timeout_ms,
    redis.stall_after_ms,
    redis.retry_after_secs,
    streams.workflow,
    streams.outreach,
    streams.maxlen,
    upstream.response_timeout_ms,
    auth.jwt_secret,
    auth.jwt_secret_file,
    auth.jwt_leeway_secs,
    auth.fail_closed_after_secs,
    idempotency.window_secs,
    idempotency.wait_ms,
    rate_limit.default_per_sec,
    rate_limit.burst,
    log.level,
);
