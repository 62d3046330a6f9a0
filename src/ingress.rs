//! The composition root: builds the app and its background tasks from a
//! configuration ([`build`]), serves a listener with them until shutdown
//! ([`run`], [`run_with_reloads`]), and stops everything in order.

use std::{future::Future, sync::Arc};

use tokio::{net::TcpListener, sync::watch};
use tracing::{info, warn};

use crate::{
    app::App,
    auth::{Authenticator, KeyTable},
    config::{Config, RateLimitScope},
    cores::Cores,
    metrics::{self, Handles},
    outreach_views::{OrgProperties, OutreachConfigs},
    proxy, redis,
    replica::{Replica, ReplicaSettings, View},
    response,
    route::WebhookIndex,
    server,
    service::Svc,
    settings::Settings,
    sink::{Layout, Sink},
    spool::{self, Spool},
};

/// Why the ingress could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The Redis URL or client settings were refused by the client.
    #[error("redis client: {0}")]
    Redis(#[from] fred::error::Error),
    /// The spool directory could not be opened.
    #[error("spool: {0}")]
    Spool(#[from] spool::SpoolError),
    /// A certificate, key or CA file could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// `server.metrics_listen` could not be bound.
    #[error("cannot listen on {addr} (server.metrics_listen): {source}")]
    MetricsListen {
        /// The address configured.
        addr: std::net::SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
}

/// Builds the shared state and starts the replica task.
/// Returns the app and the handle that stops background tasks.
pub fn build(config: &Config) -> Result<(Arc<App>, Background), StartError> {
    // Before any metric handle is registered, or it binds to the no-op recorder.
    let prometheus = metrics::install();
    let target = redis::Target::of(&config.redis)?;
    let upstream_tls = match &config.upstream.url {
        Some(url) if url.scheme_str() == Some("https") => {
            Some(crate::tls::client_config(crate::tls::ClientFiles {
                ca: config.upstream.ca_file.as_deref(),
                identity: None,
            })?)
        }
        _ => None,
    };
    let listener_tls = match config.server.tls.files() {
        Some((cert, key)) => {
            let tls = crate::tls::server_config(cert, key)?;
            crate::app::note_certificate("listener", cert);
            Some(Arc::new(arc_swap::ArcSwap::new(tls)))
        }
        None => None,
    };
    if let Some(cert) = &config.redis.tls.cert_file {
        crate::app::note_certificate("redis_client", cert);
    }
    let keys = Arc::new(KeyTable::with_digests(
        &config.redis.key_prefix,
        config.rate_limit.scope == RateLimitScope::Global,
    ));
    let triggers = Arc::new(WebhookIndex::new(&config.redis.key_prefix));
    let outreach_configs = Arc::new(OutreachConfigs::new(&config.redis.key_prefix));
    let org_properties = Arc::new(OrgProperties::new(&config.redis.key_prefix));
    let views: Vec<Arc<dyn View>> = vec![
        keys.clone(),
        triggers.clone(),
        outreach_configs.clone(),
        org_properties.clone(),
    ];
    let replica = Replica::new(
        views,
        ReplicaSettings {
            target: target.clone(),
            resync_interval: config.redis.resync_interval_secs,
            resync_busy_percent: config.redis.resync_busy_percent,
            keepalive: config.redis.keepalive(),
        },
    );
    let settings = Settings::shared(config.clone());
    let spool = match &config.spool.dir {
        Some(dir) => Some(Spool::open(dir, config.spool.max_bytes)?),
        None => None,
    };
    let cores = Cores::start(config.server.serving_threads.count());
    let sink = Sink::connect(&target, config, spool, cores.handles(), Layout::of(config))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let status = replica.status();
    let replay_task = sink.spawn_replay(settings.clone(), stop_rx.clone());
    sink.spawn_retention_watch(settings.clone(), stop_rx.clone());
    // Ends with the stop, like the replica's own.
    if let Some(every) = config.redis.keepalive() {
        sink.spawn_keep_alive(every, stop_rx.clone());
    }
    let upkeep_task = prometheus
        .clone()
        .map(|handle| metrics::spawn_upkeep(handle, stop_rx.clone()));
    // It leaves a primary the sentinels no longer name, as the writers do.
    let replica_task = replica.following(sink.named_primary()).spawn(stop_rx);
    let app = Arc::new(App {
        auth: Authenticator::new(keys),
        triggers,
        outreach_configs,
        org_properties,
        sink,
        replica: status,
        settings,
        request_ids: response::RequestIds::new(),
        metrics: Handles::register(),
        prometheus,
        listener_tls,
        stopping: Default::default(),
        proxy: config.upstream.url.as_ref().and_then(|url| {
            proxy::Proxy::new(&proxy::ProxySettings {
                url: url.clone(),
                connect_timeout: config.upstream.connect_timeout_ms,
                downstream_tls: config.server.tls.files().is_some(),
                tls: upstream_tls.clone(),
            })
        }),
    });
    Ok((
        app,
        Background {
            stop: stop_tx,
            replica_task,
            replay_task,
            upkeep_task,
            cores,
        },
    ))
}

/// Resolves when the listener should stop accepting: at the first
/// signal, or `server.shutdown_delay_ms` after it (read then, so a reload
/// applies), during which the app tells balancers and clients to go. A
/// second signal ends the delay at once.
async fn stop_serving(app: &App, mut signalled: watch::Receiver<u32>) {
    if signalled.wait_for(|&n| n >= 1).await.is_err() {
        return;
    }
    let delay = app.settings.load().server.shutdown_delay_ms;
    if delay.is_zero() {
        return;
    }
    app.begin_stopping();
    info!(
        delay_ms = delay.as_millis() as u64,
        "shutdown signal: serving on, /readyz answering 503, before the drain"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {}
        _ = signalled.wait_for(|&n| n >= 2) => {
            info!("second shutdown signal: the delay is cut short");
        }
    }
}

/// Background tasks and serving threads owned by a running ingress.
pub struct Background {
    stop: watch::Sender<bool>,
    replica_task: tokio::task::JoinHandle<()>,
    replay_task: Option<tokio::task::JoinHandle<()>>,
    upkeep_task: Option<tokio::task::JoinHandle<()>>,
    cores: Cores,
}

impl Background {
    /// The serving threads' runtimes (empty when connections are served on
    /// the shared runtime).
    pub fn cores(&self) -> &[tokio::runtime::Handle] {
        self.cores.handles()
    }

    /// Stops the background tasks, waiting a bounded time for them, closes
    /// the app's Redis writers, then stops the serving threads (the writers'
    /// connection tasks run on them).
    pub async fn stop(self, app: &App) {
        let _ = self.stop.send(true);
        let tasks = std::iter::once(self.replica_task)
            .chain(self.replay_task)
            .chain(self.upkeep_task);
        for mut task in tasks {
            if tokio::time::timeout(std::time::Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        app.sink.close().await;
        drop(self.cores);
    }
}

/// Serves on `listener` until `shutdown` resolves; then stops accepting,
/// lets requests in flight finish (their jobs are written before they answer),
/// and closes Redis. Returns true when the drain completed within the grace.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<bool, StartError> {
    let shutdown = futures::stream::once(shutdown);
    run_with_reloads(listener, config, shutdown, futures::stream::pending()).await
}

/// [`run`], with a stream of shutdown signals and applying each
/// configuration `reloads` yields (only the settings `config` lists as live
/// change). The first signal starts the shutdown: with
/// `server.shutdown_delay_ms`, the instance serves on that long first,
/// `/readyz` answering 503; a second signal cuts that delay short.
pub async fn run_with_reloads(
    listener: TcpListener,
    config: Config,
    shutdown: impl futures::Stream<Item = ()> + Send + 'static,
    reloads: impl futures::Stream<Item = Config> + Send + 'static,
) -> Result<bool, StartError> {
    // Bound before anything starts, so a taken port stops the start cleanly.
    let metrics_listener = match config.server.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::MetricsListen { addr, source })?,
        ),
        None => None,
    };
    let (app, background) = build(&config)?;
    if let Ok(addr) = listener.local_addr() {
        // What this process serves with, for whoever reads the log after
        // an incident (the Redis URL without its password).
        info!(
            %addr,
            version = %env!("CARGO_PKG_VERSION"),
            tls = config.server.tls.files().is_some(),
            redis = %crate::config::redact_url(&config.redis.url),
            sink = %config.sink.kind.name(),
            spool = %config.spool.dir.as_deref().map_or("off".into(), |d| d.display().to_string()),
            // `upstream.url` holds no user or password (refused at start).
            upstream = %config.upstream.url.as_ref().map_or("none".into(), ToString::to_string),
            // Where /metrics is answered: its own listener, or this one.
            metrics = %metrics_listener
                .as_ref()
                .and_then(|l| l.local_addr().ok())
                .unwrap_or(addr),
            "tether-ingress listening"
        );
    }
    let (metrics_stop, metrics_stopped) = watch::channel(false);
    let metrics_task = metrics_listener
        .map(|l| tokio::spawn(server::serve_metrics(l, app.clone(), metrics_stopped)));
    if let Some(warning) = config.auth.secret_warning() {
        warn!("{warning}");
    }
    let reloader = tokio::spawn({
        let app = app.clone();
        async move {
            futures::pin_mut!(reloads);
            while let Some(new) = futures::StreamExt::next(&mut reloads).await {
                app.reload(&new);
            }
        }
    });
    let (signals, signalled) = watch::channel(0u32);
    let counting = async move {
        futures::pin_mut!(shutdown);
        while futures::StreamExt::next(&mut shutdown).await.is_some() {
            signals.send_modify(|n| *n += 1);
        }
        // The sender lives on: a stream that ends sends no more signals.
        std::future::pending::<()>().await;
    };
    let serving = server::serve(
        listener,
        Svc::new(app.clone()),
        config.server.connection_cap().get(),
        background.cores(),
        app.settings.clone(),
        app.listener_tls.clone(),
        stop_serving(&app, signalled),
    );
    let drained = tokio::select! {
        drained = serving => drained,
        () = counting => false,
    };
    reloader.abort();
    background.stop(&app).await;
    if let Some(spool) = app.sink.spool().filter(|s| s.bytes() > 0) {
        // Acknowledged jobs Redis has not taken yet: only a process started
        // on this directory later writes them.
        warn!(
            dir = %spool.dir().display(),
            bytes = spool.bytes(),
            "stopping with acknowledged jobs still in the spool: the next tether-ingress started on this directory replays them into Redis; keep the directory until one has"
        );
    }
    let _ = metrics_stop.send(true);
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    info!(drained, "tether-ingress stopped");
    Ok(drained)
}
