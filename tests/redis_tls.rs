//! `rediss://`: the ingress reaches a redis-server that speaks TLS only, with
//! a CA made here by openssl; it is never ready with another CA, with no CA
//! (the system's roots do not hold ours) or against a plaintext port; mutual
//! TLS works with a client certificate and fails without one.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use http::StatusCode;
use support::{tls::pki, *};
use tether_ingress::config::Config;

/// A redis-server speaking TLS only on `port` (plaintext only on its unix
/// socket, for the test's own redis-cli).
struct TlsRedis {
    port: u16,
    dir: PathBuf,
    child: Child,
}

impl TlsRedis {
    fn start(pki: &Path, require_client_cert: bool) -> Self {
        for _ in 0..20 {
            let port = free_port();
            let dir = pki.join(format!("redis-{port}"));
            std::fs::create_dir_all(&dir).unwrap();
            let path = |f: &str| pki.join(f).display().to_string();
            let mut child = Command::new("redis-server")
                .args(["--port", "0", "--tls-port", &port.to_string()])
                // Also on 127.0.0.2, a name the certificate does not hold.
                .args(["--bind", "127.0.0.1", "127.0.0.2"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--tls-cert-file", &path("server.crt")])
                .args(["--tls-key-file", &path("server.key")])
                .args(["--tls-ca-cert-file", &path("good-ca.crt")])
                .args([
                    "--tls-auth-clients",
                    if require_client_cert { "yes" } else { "no" },
                ])
                .args([
                    "--unixsocket",
                    &dir.join("redis.sock").display().to_string(),
                ])
                .args(["--dir", &dir.display().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut s = None;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let probe = Self {
                    port,
                    dir: dir.clone(),
                    child: Command::new("true").spawn().unwrap(),
                };
                if probe.cli(&["PING"]) == "PONG" {
                    s = Some(port);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(port) = s {
                return Self { port, dir, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start a TLS redis-server");
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-s", &self.dir.join("redis.sock").display().to_string()])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn seed(&self) {
        let key = format!("tether:apikey:{}", sha256_hex(TEST_KEY));
        self.cli(&["SET", &key, r#"{"userId":"u_1","orgId":"o_1"}"#]);
        self.cli(&["SADD", "tether:triggers:o_1:wh_1", "wf_a"]);
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config(url: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Config {
    let mut raw = Config::default();
    raw.redis.url = url.to_owned();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.redis.connect_timeout_ms = std::time::Duration::from_millis(500);
    if let Some(ca) = ca {
        raw.redis.tls.ca_file = Some(ca.into());
    }
    if let Some((cert, key)) = identity {
        raw.redis.tls.cert_file = Some(cert.into());
        raw.redis.tls.key_file = Some(key.into());
    }
    raw
}

/// Serves with `raw`, and checks that one request writes its job (and,
/// with a client certificate, that its expiry is shown: the test's are
/// valid for two days).
async fn serves(raw: Config, redis: &TlsRedis) {
    let client_certificate = raw.redis.tls.cert_file.is_some();
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    if client_certificate {
        let expires = metric_value(
            &ingress,
            "tether_tls_certificate_expiry_timestamp_seconds{certificate=\"redis_client\"}",
        )
        .await;
        let now = (tether_ingress::now_ms() / 1000) as f64;
        assert!(
            expires > now && expires <= now + 2.0 * 86_400.0,
            "{expires} shown at {now}"
        );
    }
    let (status, _, body) = ingress
        .workflow(Some(TEST_KEY), r#"{"webhookId":"wh_1","lead":{"n":1}}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(json(&body)["data"]["matchedCount"], 1);
    assert_eq!(redis.cli(&["XLEN", "tether:jobs:workflow"]), "1");
    assert!(ingress.shutdown().await);
}

/// Starts with `raw` and checks it stays not ready for `for_at_least`.
async fn never_ready(raw: Config, for_at_least: Duration) {
    let config = match raw.validate() {
        Ok(config) => config,
        // Only a machine without system roots refuses the no-CA case at start.
        Err(e) if e.to_string().contains("system's CA roots") => return,
        Err(e) => panic!("{e}"),
    };
    let ingress = Ingress::spawn(config).await;
    let deadline = Instant::now() + for_at_least;
    while Instant::now() < deadline {
        let (status, _, _) = ingress.get("/readyz").await;
        assert_ne!(
            status,
            StatusCode::OK,
            "ready over a connection that must fail"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ingress.shutdown().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_is_verified_tls_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "good", &["server", "client"]);
    pki(dir.path(), "other", &["stranger"]);
    let p = |f: &str| dir.path().join(f);
    let redis = TlsRedis::start(dir.path(), false);
    redis.seed();

    // With our CA: ready, and jobs are written.
    serves(config(&redis.url(), Some(&p("good-ca.crt")), None), &redis).await;

    // Another CA, no CA (the system's roots), a plaintext port: never ready.
    let plain = RedisServer::start();
    let plain_url = format!("rediss://127.0.0.1:{}", plain.port);
    let wait = Duration::from_secs(3);
    tokio::join!(
        never_ready(config(&redis.url(), Some(&p("other-ca.crt")), None), wait),
        never_ready(config(&redis.url(), None, None), wait),
        never_ready(config(&plain_url, Some(&p("good-ca.crt")), None), wait),
    );
    // The server's name is checked: the certificate is for 127.0.0.1 and
    // localhost, not for this name.
    let reachable = Command::new("redis-cli")
        .args(["--tls", "--cacert", &p("good-ca.crt").display().to_string()])
        .args(["-h", "127.0.0.2", "-p", &redis.port.to_string(), "PING"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reachable.stdout).trim(),
        "PONG",
        "127.0.0.2 must reach the server (redis-cli checks no name)"
    );
    let wrong_name = format!("rediss://127.0.0.2:{}", redis.port);
    never_ready(config(&wrong_name, Some(&p("good-ca.crt")), None), wait).await;
}

/// A `rediss://` URL pointed at a plaintext port: the job writers' warning
/// names the step that fails, the TLS handshake (a plaintext Redis either
/// waits for a line end the greeting may not hold, or answers with an error
/// that is no TLS record), and asks whether the port speaks TLS. Before, it
/// read "the connection did not complete within 2s".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_at_a_plaintext_port_is_said_to_fail_in_the_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "good", &["server"]);
    let plain = RedisServer::start();
    let log_file = LogFile::new();
    let log = log_file.writer();
    let _ingress = IngressProcess::spawn_logging(
        &[
            (
                "TETHER_INGRESS_REDIS_URL",
                format!("rediss://u:hunter2@127.0.0.1:{}", plain.port),
            ),
            (
                "TETHER_INGRESS_REDIS_TLS_CA_FILE",
                dir.path().join("good-ca.crt").display().to_string(),
            ),
        ],
        log,
    );
    let warning = log_file
        .line_with("job writer cannot connect", Duration::from_secs(15))
        .await;
    let text = log_file.text();
    assert!(warning.contains("the TLS handshake"), "{warning}");
    assert!(
        warning.contains("does the server speak TLS on that port?"),
        "{warning}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

/// A TLS URL at a port whose server answers, but not in TLS (here an
/// ingress's own plaintext HTTP listener, which answers the ClientHello
/// with a 400): the writers and the replica both say the answer was no
/// TLS, where the replica said `Custom { kind: InvalidData, error:
/// InvalidMessage(InvalidContentType) }`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_at_a_server_answering_in_plaintext_is_said_so() {
    let redis = RedisServer::start();
    let http = IngressProcess::spawn(&[("TETHER_INGRESS_REDIS_URL", redis.url())]);
    http.wait_ready().await;
    let log_file = LogFile::new();
    let _ingress = IngressProcess::spawn_logging(
        &[(
            "TETHER_INGRESS_REDIS_URL",
            format!("rediss://u:hunter2@{}", http.addr),
        )],
        log_file.writer(),
    );
    for who in ["job writer cannot connect", "replica cannot connect"] {
        let line = log_file.line_with(who, Duration::from_secs(15)).await;
        assert!(
            line.contains("(does the server speak TLS on that port?)"),
            "{line}"
        );
    }
    assert!(!log_file.text().contains("hunter2"), "{}", log_file.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "good", &["server", "client"]);
    let p = |f: &str| dir.path().join(f);
    let redis = TlsRedis::start(dir.path(), true);
    redis.seed();
    let (cert, key) = (p("client.crt"), p("client.key"));
    serves(
        config(&redis.url(), Some(&p("good-ca.crt")), Some((&cert, &key))),
        &redis,
    )
    .await;
    never_ready(
        config(&redis.url(), Some(&p("good-ca.crt")), None),
        Duration::from_secs(3),
    )
    .await;
}

/// A client key that does not belong to its certificate stops the start
/// with both files named, not with rustls's `KeyMismatch`.
#[test]
fn a_client_key_of_another_certificate_names_both_files() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), "good", &["server", "client"]);
    let p = |f: &str| dir.path().join(f);
    let (cert, key) = (p("client.crt"), p("server.key"));
    let raw = config(
        "rediss://127.0.0.1:6380",
        Some(&p("good-ca.crt")),
        Some((&cert, &key)),
    );
    let error = raw.validate().unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "redis.tls: key file {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        )),
        "{error}"
    );
}
