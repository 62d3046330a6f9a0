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

pub mod cluster;
pub mod node;
pub mod sentinel;
pub mod tls;
pub mod upstream;

use bytes::Bytes;
use fred::prelude::*;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client as HttpClient, rt::TokioExecutor};
use tether_ingress::config::Config;
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

/// A port nothing listens on, held so that nothing else can take it while
/// the value lives: bound without listening (and without `SO_REUSEADDR`),
/// so a connection to it is refused and a server told to bind it cannot.
/// For a Redis or a backend that is down; a port only found free could be
/// taken by a server another test starts meanwhile.
pub struct ClosedPort {
    _socket: tokio::net::TcpSocket,
    pub port: u16,
}

pub fn closed_port() -> ClosedPort {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(([127, 0, 0, 1], 0).into()).unwrap();
    let port = socket.local_addr().unwrap().port();
    ClosedPort {
        _socket: socket,
        port,
    }
}

/// A directory name no other server of this test process has. (Named by a
/// port found free, two could share one, and with it the unix socket a
/// server's readiness is checked through: the first server would answer
/// for the second before the second listened.)
pub fn unique_dir(kind: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("tether-test-{kind}-{}-{n}", std::process::id()))
}

// === RedisServer ===

/// A `redis-server` owned by one test: its own port and directory.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Append-only file synced on every write: what Redis acknowledged
    /// survives a SIGKILL (for tests that count acknowledged jobs across one).
    durable: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_inner(false)
    }

    /// A Redis whose acknowledged writes survive SIGKILL (appendfsync always).
    pub fn start_durable() -> Self {
        Self::start_inner(true)
    }

    fn start_inner(durable: bool) -> Self {
        Self::start_on(durable, std::iter::repeat_with(free_port))
    }

    /// Starts on the first of `ports` redis-server can listen on, trying at
    /// most 20. A port found free can be taken before redis binds it, so a
    /// failed try is normal; each try has its own directory, since a failed
    /// one is dropped and its directory removed with it.
    pub fn start_on(durable: bool, ports: impl IntoIterator<Item = u16>) -> Self {
        let mut last_log = String::new();
        for port in ports.into_iter().take(20) {
            let dir = unique_dir("redis");
            std::fs::create_dir_all(&dir).unwrap();
            let mut s = Self {
                port,
                dir,
                child: None,
                durable,
            };
            if s.spawn(true) {
                return s;
            }
            last_log = std::fs::read_to_string(s.log()).unwrap_or_default();
        }
        panic!("could not start redis-server; its last log:\n{last_log}");
    }

    /// redis-server's own log, in its directory.
    fn log(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The same server through its unix socket.
    pub fn unix_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn spawn(&mut self, tcp: bool) -> bool {
        let port = if tcp {
            self.port.to_string()
        } else {
            "0".into()
        };
        let child = Command::new("redis-server")
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", ""])
            .args(if self.durable {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .args([
                "--unixsocket",
                self.socket().to_str().unwrap(),
                "--dir",
                self.dir.to_str().unwrap(),
                "--logfile",
                self.log().to_str().unwrap(),
                // DEBUG SLEEP freezes it in the stall tests.
                "--enable-debug-command",
                "local",
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

    /// The server's process id (to freeze it with SIGSTOP, say).
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap()
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
    /// Killed first: a second server would fail to bind the port while the
    /// first, still answering on the socket, looked restarted and was left
    /// running when this one was dropped.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "kill first");
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
        client_at(&self.url()).await
    }
}

/// How long a test waits for one answer (of Redis or of the ingress) before
/// it fails: long past any answer a test expects, short of hanging CI.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A connected fred client of the Redis at `url`. It reconnects after the
/// server drops it (a Sentinel's `CLIENT KILL` on a failover, a restart) and
/// gives up on a command after [`ANSWER_WITHIN`]: without both, fred's next
/// command after a dropped connection waits forever.
pub async fn client_at(url: &str) -> fred::clients::Client {
    let c = Builder::from_config(fred::prelude::Config::from_url(url).unwrap())
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(5))
        .with_performance_config(|p| p.default_command_timeout = ANSWER_WITHIN)
        .set_policy(ReconnectPolicy::new_exponential(0, 50, 1_000, 2))
        .build()
        .unwrap();
    c.init().await.unwrap();
    c
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// === control-plane helpers ===

/// A Redis holding `key` (user `u_1`, org `o_1`) and trigger `wh_1` →
/// `workflows`, and a client of that Redis.
pub async fn redis_with_key_and_trigger(
    key: &str,
    workflows: &[&str],
) -> (RedisServer, fred::clients::Client) {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, key, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", workflows).await;
    (redis, r)
}

/// The API key [`start_with_key_and_trigger`] seeds (org `o_1`).
pub const TEST_KEY: &str = "user_test_key_0123456789";

/// A Redis holding [`TEST_KEY`] (user `u_1`, org `o_1`) and trigger `wh_1` →
/// `wf_b`, `wf_a`, an ingress ready on it, and a client of that Redis.
pub async fn start_with_key_and_trigger() -> (RedisServer, fred::clients::Client, Ingress) {
    let (redis, r) = redis_with_key_and_trigger(TEST_KEY, &["wf_b", "wf_a"]).await;
    let ingress = Ingress::start(&redis.url()).await;
    (redis, r, ingress)
}

/// The lead digest a BullMQ job id ends with, as docs/REFERENCE.md gives
/// it: XXH3-64 of each part preceded by its length (8 bytes, little
/// endian), in 16 lowercase hex digits. `parts`: `webhookId` and `payload`
/// for a workflow job; `format`, `contacts`, `applications` and
/// `conversations` for an outreach job.
pub fn lead_digest(parts: &[&str]) -> String {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    format!("{:016x}", hasher.digest())
}

pub fn sha256_hex(key: &str) -> String {
    tether_ingress::digest_key(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SET of one control-plane string key.
pub async fn set_string(r: &fred::clients::Client, key: String, value: &str) {
    let _: () = r.set(key, value, None, None, false).await.unwrap();
}

pub async fn put_key(r: &fred::clients::Client, key: &str, record: &str) {
    set_string(r, format!("tether:apikey:{}", sha256_hex(key)), record).await;
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
    let mut raw = Config::default();
    raw.redis.url = redis_url.to_owned();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.server.shutdown_grace_ms = std::time::Duration::from_millis(20_000);
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

    /// Starts without waiting for readiness, and returns the sender of reloads.
    pub async fn spawn_reloadable(
        config: Config,
    ) -> (Self, futures::channel::mpsc::UnboundedSender<Config>) {
        let (reload_tx, reload_rx) = futures::channel::mpsc::unbounded();
        (Self::spawn_with(config, reload_rx).await, reload_tx)
    }

    /// Starts without waiting for readiness.
    pub async fn spawn(config: Config) -> Self {
        Self::spawn_with(config, futures::stream::pending()).await
    }

    async fn spawn_with(
        config: Config,
        reloads: impl futures::Stream<Item = Config> + Send + 'static,
    ) -> Self {
        // A test asking for another address with a free port (`[::1]:0`)
        // gets it; every other one gets a free loopback port.
        let bind = match config.server.listen {
            a if a.port() == 0 => a,
            _ => ([127, 0, 0, 1], 0).into(),
        };
        let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tether_ingress::run_with_reloads(
                listener,
                config,
                futures::stream::once(async {
                    let _ = rx.await;
                }),
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

    /// Sends `req` and reads the whole answer; fails the test when the
    /// ingress has not answered within [`ANSWER_WITHIN`].
    pub async fn request(&self, req: Request<Full<Bytes>>) -> (StatusCode, HeaderMap, Bytes) {
        let (method, uri) = (req.method().clone(), req.uri().clone());
        let answer = async {
            let res = self.http.request(req).await.expect("request failed");
            let (parts, body) = res.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (parts.status, parts.headers, body)
        };
        tokio::time::timeout(ANSWER_WITHIN, answer)
            .await
            .unwrap_or_else(|_| panic!("{method} {uri}: no answer within {ANSWER_WITHIN:?}"))
    }

    pub fn uri(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, HeaderMap, Bytes) {
        let req = Request::get(self.uri(path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = async {
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
        };
        tokio::time::timeout(ANSWER_WITHIN, answer)
            .await
            .unwrap_or_else(|_| panic!("GET {path}: no answer within {ANSWER_WITHIN:?}"))
    }

    /// POST /api/webhook/workflow with an optional bearer token.
    /// The status of a workflow post of `{"webhookId":"wh_1"}` with `key`.
    pub async fn wh_1_status(&self, key: &str) -> StatusCode {
        self.workflow(Some(key), r#"{"webhookId":"wh_1"}"#).await.0
    }

    pub async fn workflow(
        &self,
        token: Option<&str>,
        body: impl AsRef<[u8]>,
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut b = Request::post(self.uri("/api/webhook/workflow"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        self.request(
            b.body(Full::new(Bytes::copy_from_slice(body.as_ref())))
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

// === a log file ===

/// A file for a child process's log, in its own temporary directory
/// (removed with it).
pub struct LogFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl LogFile {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ingress.log");
        std::fs::File::create(&path).unwrap();
        Self { _dir: dir, path }
    }

    /// A handle appending to it, for a process's stdout.
    pub fn writer(&self) -> std::fs::File {
        std::fs::File::options()
            .append(true)
            .open(&self.path)
            .unwrap()
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// What has been written so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap()
    }

    /// The first line holding `needle`, waited for up to `within`; panics
    /// with the whole log if none comes.
    pub async fn line_with(&self, needle: &str, within: Duration) -> String {
        let found = || {
            self.text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned)
        };
        assert!(
            eventually(within, || async { found().is_some() }).await,
            "no line with {needle:?} within {within:?}:\n{}",
            self.text()
        );
        found().unwrap_or_default()
    }
}

// === the binary, as a process ===

/// `tether-ingress` run as a child process (for SIGKILL and signals).
pub struct IngressProcess {
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl IngressProcess {
    /// Starts the binary on a free port with `env` (TETHER_INGRESS_*) set.
    pub fn spawn(env: &[(&str, String)]) -> Self {
        Self::spawn_logging(env, Stdio::null())
    }

    /// [`Self::spawn`], its log (warnings and above, on stdout) going to
    /// `log`.
    pub fn spawn_logging(env: &[(&str, String)], log: impl Into<Stdio>) -> Self {
        Self::spawn_configured(None, env, log)
    }

    /// [`Self::spawn_logging`], reading the configuration file `config`
    /// too (for settings without an environment name).
    pub fn spawn_configured(
        config: Option<&std::path::Path>,
        env: &[(&str, String)],
        log: impl Into<Stdio>,
    ) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tether-ingress"));
        if let Some(path) = config {
            command.arg("--config").arg(path);
        }
        // Port 0: the kernel picks a free port as it binds, so no other
        // process can take it between a check and the bind (a test's own
        // TETHER_INGRESS_LISTEN, set after, still wins).
        let mut child = command
            .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
            .env("TETHER_INGRESS_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(log)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let port = listening_port(&mut child, Duration::from_secs(20)).unwrap_or(0);
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child: Some(child),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The value of the first `/metrics` line starting with `series` (0 if
    /// none), as [`metric_value`] reads it of an in-process ingress.
    pub async fn metric_value(&self, series: &str) -> f64 {
        metric_in(&self.metrics_text().await, series)
    }

    /// Its `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        let req = Request::get(format!("{}/metrics", self.base()))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let res = http_client().request(req).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// Polls /readyz until it answers 200.
    pub async fn wait_ready(&self) {
        let http = http_client();
        let uri = format!("{}/readyz", self.base());
        assert!(
            eventually(Duration::from_secs(20), || {
                let (http, uri) = (http.clone(), uri.clone());
                async move {
                    let req = Request::get(uri).body(Full::new(Bytes::new())).unwrap();
                    matches!(http.request(req).await, Ok(r) if r.status() == StatusCode::OK)
                }
            })
            .await,
            "the ingress binary did not become ready"
        );
    }

    /// SIGTERM, waiting for the exit: its exit code.
    pub async fn terminate(mut self) -> Option<i32> {
        terminate(self.child.take().expect("running")).await
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends SIGTERM to `child` and returns its exit code (`None`: ended by a
/// signal); panics if it has not exited within 20 s.
pub async fn terminate(child: Child) -> Option<i32> {
    assert!(
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let child = std::sync::Mutex::new(child);
    let exited = eventually(Duration::from_secs(20), || async {
        child.lock().unwrap().try_wait().unwrap().is_some()
    })
    .await;
    let mut child = child.into_inner().unwrap();
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the process did not exit after SIGTERM");
    }
    child.wait().unwrap().code()
}

impl Drop for IngressProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The TCP port `child` listens on, found in `/proc` (its sockets' inodes
/// among the listening sockets); `None` if it exits first or takes longer
/// than `within`.
pub fn listening_port(child: &mut Child, within: Duration) -> Option<u16> {
    let pid = child.id();
    listening_port_of(pid, || !matches!(child.try_wait(), Ok(Some(_))), within)
}

/// [`listening_port`] of process `pid`, not a child of this one: `alive`
/// says whether to go on looking.
pub fn listening_port_of(
    pid: u32,
    mut alive: impl FnMut() -> bool,
    within: Duration,
) -> Option<u16> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive() {
            return None;
        }
        let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|link| {
                let link = link.to_string_lossy().into_owned();
                Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
            })
            .collect();
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
        let found = table.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != "0A" || !inodes.iter().any(|i| i == inode) {
                return None;
            }
            u16::from_str_radix(local.rsplit(':').next()?, 16).ok()
        });
        if found.is_some() {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

pub type Http = HttpClient<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

pub fn http_client() -> Http {
    HttpClient::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

/// What one request of a load run got: its request id, the status (None if
/// the connection failed) and whether a Retry-After came with it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub request_id: String,
    pub status: Option<StatusCode>,
    pub retry_after: bool,
}

/// A load of `tasks` concurrent senders posting workflow requests with their
/// own X-Request-Id each, until stopped.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Outcome>>>,
    pub accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub answered: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Load {
    pub fn start(base: &str, token: &str, body: &str, tasks: usize, tag: &str) -> Self {
        use std::sync::{Arc, atomic::*};
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let answered = Arc::new(AtomicUsize::new(0));
        let http = http_client();
        let tasks = (0..tasks)
            .map(|t| {
                let (stop, accepted, answered, http) = (
                    stop.clone(),
                    accepted.clone(),
                    answered.clone(),
                    http.clone(),
                );
                let uri = format!("{base}/api/webhook/workflow");
                let (token, body, tag) = (token.to_owned(), body.to_owned(), tag.to_owned());
                tokio::spawn(async move {
                    let mut out = Vec::new();
                    let mut i = 0;
                    while !stop.load(Ordering::Acquire) {
                        let request_id = format!("{tag}-{t}-{i}");
                        i += 1;
                        let req = Request::post(uri.as_str())
                            .header("authorization", format!("Bearer {token}"))
                            .header("x-request-id", request_id.as_str())
                            .body(Full::new(Bytes::from(body.clone())))
                            .unwrap();
                        // A 2xx counts only once its body arrived whole.
                        let answer = async {
                            let res = http.request(req).await.ok()?;
                            let status = res.status();
                            let retry_after = res.headers().contains_key("retry-after");
                            res.into_body().collect().await.ok()?;
                            Some((status, retry_after))
                        };
                        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                            .await
                            .ok()
                            .flatten();
                        let outcome = Outcome {
                            request_id,
                            status: answer.map(|(status, _)| status),
                            retry_after: answer.is_some_and(|(_, r)| r),
                        };
                        if outcome.status == Some(StatusCode::ACCEPTED) {
                            accepted.fetch_add(1, Ordering::AcqRel);
                        }
                        if outcome.status.is_none() {
                            // The server is gone: don't spin.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        answered.fetch_add(1, Ordering::AcqRel);
                        out.push(outcome);
                    }
                    out
                })
            })
            .collect();
        Self {
            stop,
            tasks,
            accepted,
            answered,
        }
    }

    /// Waits until `n` more requests were answered 202 than when called.
    pub async fn until_accepted(&self, n: usize, within: Duration) {
        use std::sync::atomic::Ordering;
        let target = self.accepted.load(Ordering::Acquire) + n;
        assert!(
            eventually(within, || async {
                self.accepted.load(Ordering::Acquire) >= target
            })
            .await,
            "load: fewer than {n} more 202s within {within:?}"
        );
    }

    /// Waits until `n` more requests were answered (any status) than when called.
    pub async fn until_answered(&self, n: usize, within: Duration) {
        use std::sync::atomic::Ordering;
        let target = self.answered.load(Ordering::Acquire) + n;
        assert!(
            eventually(within, || async {
                self.answered.load(Ordering::Acquire) >= target
            })
            .await,
            "load: fewer than {n} more answers within {within:?}"
        );
    }

    pub async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(t.await.unwrap());
        }
        all
    }
}

/// An ingress on `redis_url` that counts a job stored only once one replica
/// confirms it (`wait_replicas = 1`, 500 ms commands) and spools to
/// `spool` meanwhile: the failover tests' setting.
pub async fn confirming_ingress(redis_url: &str, spool: &std::path::Path) -> Ingress {
    let mut raw = Config::default();
    raw.redis.url = redis_url.to_owned();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.wait_replicas = 1;
    raw.redis.command_timeout_ms = std::time::Duration::from_millis(500);
    raw.spool.dir = Some(spool.into());
    Ingress::start_with(raw.validate().unwrap()).await
}

/// The request ids answered 202 among `outcomes`, and how many others.
pub fn accepted_ids(outcomes: &[Outcome]) -> (Vec<&str>, usize) {
    let accepted: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.status == Some(StatusCode::ACCEPTED))
        .map(|o| o.request_id.as_str())
        .collect();
    let others = outcomes.len() - accepted.len();
    (accepted, others)
}

/// True once `ingress` writes workflow jobs that Redis acknowledged (and,
/// with `wait_replicas`, its replicas confirmed) again, counted from now:
/// spooled ones do not count.
pub async fn redis_writes_resume(ingress: &Ingress, within: Duration) -> bool {
    let written =
        || async { metric_value(ingress, "tether_jobs_written_total{stream=\"workflow\"}").await };
    let before = written().await;
    eventually(within, || async { written().await > before }).await
}

/// Request ids of the entries in `stream`, with how many entries each has.
pub async fn request_ids_in(
    r: &fred::clients::Client,
    stream: &str,
) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for (_, e) in entries(r, stream).await {
        *out.entry(field(&e, "requestId").to_owned()).or_default() += 1;
    }
    out
}

/// SET `tether:outreach:config:<id>` to `record`.
pub async fn put_outreach_config(r: &fred::clients::Client, id: &str, record: &str) {
    set_string(r, format!("tether:outreach:config:{id}"), record).await;
}

/// The value of the first `/metrics` line starting with `series` (0 if none).
pub async fn metric_value(ingress: &Ingress, series: &str) -> f64 {
    let text = String::from_utf8(ingress.get("/metrics").await.2.to_vec()).unwrap();
    metric_in(&text, series)
}

/// The value of the first line of the Prometheus `text` starting with
/// `series` (0 if none).
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Reads one HTTP/1.1 response (head and a Content-Length body) from `s`.
pub async fn read_response<S>(s: &mut S) -> (u16, String, String)
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("no response")
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Sends signal `name` (`HUP`, `TERM`) to process `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{name} {pid}");
}
