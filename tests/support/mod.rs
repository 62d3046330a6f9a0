//! Test harness: a real `redis-server` on a free port per test, the ingress
//! in-process on 127.0.0.1:0, and a small HTTP client.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::disallowed_methods
)]

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod upstream;

use bytes::Bytes;
use fred::prelude::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use tether_ingress::config::{Config, RawConfig};
use tokio::sync::oneshot;

/// Polls `cond` every 5 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// === RedisServer ===

/// A `redis-server` owned by one test: its own port and directory.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tether-test-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // A port found free can be taken before redis binds it: retry.
        for _ in 0..20 {
            let mut s = Self {
                port: free_port(),
                dir: dir.clone(),
                child: None,
            };
            if s.spawn(true) {
                return s;
            }
        }
        panic!("could not start redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self, tcp: bool) -> bool {
        let port = if tcp {
            self.port.to_string()
        } else {
            "0".into()
        };
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--unixsocket",
                self.socket().to_str().unwrap(),
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false;
            }
            let ok = Command::new("redis-cli")
                .args(["-s", self.socket().to_str().unwrap(), "ping"])
                .output()
                .map(|o| o.stdout.starts_with(b"PONG"))
                .unwrap_or(false);
            if ok {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        false
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// SIGKILL: no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Saves the data set to the directory (so a restart loads it).
    pub fn save(&self) {
        self.cli(&["SAVE"]);
    }

    /// Starts again on the same port (loading a saved data set, if any).
    pub fn restart(&mut self) {
        assert!(self.spawn(true), "redis restart failed");
    }

    /// While the TCP port stays closed, runs `f` against the saved data set
    /// through a unix socket, then saves: the ingress sees the changes only
    /// by resyncing after it reconnects.
    pub fn edit_offline(&mut self, commands: &[&[&str]]) {
        assert!(self.child.is_none(), "kill first");
        assert!(self.spawn(false), "offline redis failed");
        for c in commands {
            self.cli(c);
        }
        self.cli(&["SAVE"]);
        self.kill();
    }

    /// Runs one command with redis-cli over the unix socket.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-s", self.socket().to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub async fn client(&self) -> fred::clients::Client {
        let c = Builder::from_config(fred::prelude::Config::from_url(&self.url()).unwrap())
            .build()
            .unwrap();
        c.init().await.unwrap();
        c
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === control-plane helpers ===

pub fn sha256_hex(key: &str) -> String {
    tether_ingress::auth::digest_key(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn put_key(r: &fred::clients::Client, key: &str, record: &str) {
    let _: () = r
        .set(
            format!("tether:apikey:{}", sha256_hex(key)),
            record,
            None,
            None,
            false,
        )
        .await
        .unwrap();
}

pub async fn add_trigger(r: &fred::clients::Client, org: &str, webhook: &str, workflows: &[&str]) {
    let _: () = r
        .sadd(
            format!("tether:triggers:{org}:{webhook}"),
            workflows.to_vec(),
        )
        .await
        .unwrap();
}

/// Every entry of a stream as (id, field → value) in order.
pub async fn entries(
    r: &fred::clients::Client,
    stream: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    let v: Vec<(String, Vec<(String, String)>)> = r.xrange(stream, "-", "+", None).await.unwrap();
    v
}

/// The value of field `name` of a stream entry.
pub fn field<'a>(entry: &'a [(String, String)], name: &str) -> &'a str {
    entry
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("entry has no field {name}"))
}

pub async fn xlen(r: &fred::clients::Client, stream: &str) -> u64 {
    r.xlen(stream).await.unwrap()
}

// === Ingress ===

/// An ingress running in this process.
pub struct Ingress {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<bool>>,
    http: HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

pub fn config_for(redis_url: &str) -> Config {
    let mut raw = RawConfig::default();
    raw.redis.url = redis_url.to_owned();
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.shutdown_grace_ms = 20_000;
    raw.validate().unwrap()
}

impl Ingress {
    /// Starts and waits until /readyz says 200.
    pub async fn start(redis_url: &str) -> Self {
        Self::start_with(config_for(redis_url)).await
    }

    pub async fn start_with(config: Config) -> Self {
        let s = Self::spawn(config).await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                s.get("/readyz").await.0 == StatusCode::OK
            })
            .await,
            "ingress did not become ready"
        );
        s
    }

    /// Starts, waits for readiness, and returns the sender of reloads.
    pub async fn start_reloadable(
        config: Config,
    ) -> (Self, futures::channel::mpsc::UnboundedSender<Config>) {
        let (reload_tx, reload_rx) = futures::channel::mpsc::unbounded();
        let s = Self::spawn_with(config, reload_rx).await;
        assert!(
            eventually(Duration::from_secs(10), || async {
                s.get("/readyz").await.0 == StatusCode::OK
            })
            .await,
            "ingress did not become ready"
        );
        (s, reload_tx)
    }

    /// Starts without waiting for readiness.
    pub async fn spawn(config: Config) -> Self {
        Self::spawn_with(config, futures::stream::pending()).await
    }

    async fn spawn_with(
        config: Config,
        reloads: impl futures::Stream<Item = Config> + Send + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tether_ingress::run_with_reloads(
                listener,
                config,
                async {
                    let _ = rx.await;
                },
                reloads,
            )
            .await
            .unwrap()
        });
        let http = HttpClient::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build_http();
        Self {
            addr,
            stop: Some(tx),
            task: Some(task),
            http,
        }
    }

    /// Signals shutdown and returns whether the drain completed.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn shutdown(mut self) -> bool {
        self.begin_shutdown();
        self.task.take().unwrap().await.unwrap()
    }

    pub async fn request(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        let res = self.http.request(req).await.expect("request failed");
        let (parts, body) = res.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (parts.status, parts.headers, body)
    }

    pub fn uri(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(self.uri(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        match self.http.request(req).await {
            Ok(res) => {
                let (parts, body) = res.into_parts();
                (
                    parts.status,
                    parts.headers,
                    body.collect()
                        .await
                        .map(|c| c.to_bytes())
                        .unwrap_or_default(),
                )
            }
            Err(_) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Bytes::new()),
        }
    }

    /// POST /api/webhook/workflow with an optional bearer token.
    pub async fn workflow(
        &self,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut b = Request::post(self.uri("/api/webhook/workflow"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.request(
            b.body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
                .unwrap(),
        )
        .await
    }
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

pub fn json(b: &Bytes) -> serde_json::Value {
    serde_json::from_slice(b)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(b)))
}
