//! HTTPS on the listener: real TLS clients (curl over HTTP/1.1 and HTTP/2,
//! openssl s_client) against certificates made in the test; a certificate
//! swap on reload seen by its serial, a file that does not load kept out, a
//! stalled handshake closed by the timeout, a bad file at start refused.
#![allow(clippy::unwrap_used, clippy::disallowed_methods, missing_docs)]

mod support;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{tls::pki, *};
use tether_ingress::config::Config;

/// curl with our CA; returns (status, HTTP version, body).
async fn curl(ca: PathBuf, args: Vec<String>) -> (String, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_code} %{http_version}"])
            .args(&args)
            .output()
            .expect("curl must be installed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut tail = tail.split_whitespace();
        (
            tail.next().unwrap_or("").to_owned(),
            tail.next().unwrap_or("").to_owned(),
            body.to_owned(),
        )
    })
    .await
    .unwrap()
}

/// The serial of the certificate the listener presents to a new connection.
async fn served_serial(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        let mut client = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "localhost"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut pem = String::new();
        client
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut pem)
            .unwrap();
        let _ = client.wait();
        serial_of_pem(&pem)
    })
    .await
    .unwrap()
}

fn serial_of_pem(pem: &str) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-serial"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    x509.stdin
        .take()
        .unwrap()
        .write_all(pem.as_bytes())
        .unwrap();
    String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout)
        .trim()
        .to_owned()
}

fn serial_of(file: &Path) -> String {
    serial_of_pem(&std::fs::read_to_string(file).unwrap())
}

fn install(dir: &Path, leaf: &str) {
    std::fs::copy(dir.join(format!("{leaf}.crt")), dir.join("listener.crt")).unwrap();
    std::fs::copy(dir.join(format!("{leaf}.key")), dir.join("listener.key")).unwrap();
}

fn tls_config(
    dir: &Path,
    redis_url: &str,
    upstream: &str,
    max_body_bytes: usize,
) -> tether_ingress::config::Config {
    let mut raw = Config::default();
    raw.redis.url = redis_url.to_owned();
    raw.upstream.url = Some(upstream.to_owned().parse().unwrap());
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.server.header_read_timeout_ms = std::time::Duration::from_millis(500);
    raw.server.max_body_bytes = max_body_bytes;
    raw.server.tls.cert_file = Some(dir.join("listener.crt"));
    raw.server.tls.key_file = Some(dir.join("listener.key"));
    raw.validate().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_listener_serves_h1_and_h2_and_swaps_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "good", &["server", "server2"]);
    install(d, "server");
    let ca = d.join("good-ca.crt");
    let (redis, r) = redis_with_key_and_trigger(TEST_KEY, &["wf_a"]).await;
    let upstream = support::upstream::Upstream::start().await;
    let (ingress, reload) =
        Ingress::spawn_reloadable(tls_config(d, &redis.url(), &upstream.url(), 1 << 20)).await;
    let port = ingress.addr.port();
    let base = format!("https://localhost:{port}");

    // Ready over HTTP/1.1, then the same over HTTP/2 (ALPN).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, version, _) = curl(
            ca.clone(),
            vec!["--http1.1".into(), format!("{base}/readyz")],
        )
        .await;
        if status == "200" {
            assert_eq!(version, "1.1");
            break;
        }
        assert!(Instant::now() < deadline, "not ready over TLS: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, version, _) = curl(
        ca.clone(),
        vec!["--http2".into(), format!("{base}/healthz")],
    )
    .await;
    assert_eq!((status.as_str(), version.as_str()), ("200", "2"));
    // A webhook over HTTP/2 writes its job.
    let (status, _, body) = curl(
        ca.clone(),
        vec![
            "--http2".into(),
            "-H".into(),
            format!("authorization: Bearer {TEST_KEY}"),
            "--data".into(),
            r#"{"webhookId":"wh_1","lead":{"n":1}}"#.into(),
            format!("{base}/api/webhook/workflow"),
        ],
    )
    .await;
    assert_eq!(status, "202", "{body}");
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 1);
    // The backend behind it learns the caller came over HTTPS.
    // A claim of plaintext from the (untrusted) caller does not change that.
    let (status, _, body) = curl(
        ca.clone(),
        vec![
            "-H".into(),
            "x-forwarded-proto: http".into(),
            format!("{base}/api/leads"),
        ],
    )
    .await;
    assert_eq!(status, "418", "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
    let forwarded = echoed["headers"]["forwarded"].as_str().unwrap_or("");
    assert!(forwarded.ends_with(";proto=https"), "{body}");
    // Plaintext on the TLS port gets no HTTP answer.
    let (status, _, _) = curl(ca.clone(), vec![format!("http://127.0.0.1:{port}/healthz")]).await;
    assert_ne!(status, "200");

    // SIGHUP's reload with new files: new connections get the new certificate.
    let (first, second) = (
        serial_of(&d.join("server.crt")),
        serial_of(&d.join("server2.crt")),
    );
    assert_ne!(first, second);
    assert_eq!(served_serial(port).await, first);
    install(d, "server2");
    reload
        .unbounded_send(tls_config(d, &redis.url(), &upstream.url(), 1 << 20))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(port).await != second {
        assert!(
            Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A reload whose certificate no longer loads keeps the one in use; its
    // other settings apply (a smaller body cap, seen as 413).
    let config = tls_config(d, &redis.url(), &upstream.url(), 16);
    std::fs::write(d.join("listener.crt"), "not a certificate\n").unwrap();
    reload.unbounded_send(config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, _) = curl(
            ca.clone(),
            vec![
                "-H".into(),
                format!("authorization: Bearer {TEST_KEY}"),
                "--data".into(),
                r#"{"webhookId":"wh_1","pad":"more than sixteen bytes"}"#.into(),
                format!("{base}/api/webhook/workflow"),
            ],
        )
        .await;
        if status == "413" {
            break;
        }
        assert!(Instant::now() < deadline, "the reload was never applied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_serial(port).await, second);

    // A client that opens TLS and stalls is closed by the handshake deadline
    // (header_read_timeout, 500 ms here), like a plaintext one.
    let closed = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(&[0x16, 0x03, 0x01]).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let closed = matches!(s.read(&mut buf), Ok(0) | Err(_));
        (closed, started.elapsed())
    })
    .await
    .unwrap();
    assert!(closed.0, "a stalled handshake was left open");
    assert!(
        closed.1 < Duration::from_secs(4),
        "closed only after {:?}",
        closed.1
    );
    assert!(ingress.shutdown().await);
}

#[test]
fn a_listener_certificate_that_does_not_load_stops_the_start() {
    let missing = std::env::temp_dir().join("tether-no-such-cert.pem");
    for (cert, key) in [
        (missing.clone(), missing.clone()),
        (missing, PathBuf::new()),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .env("TETHER_INGRESS_TLS_CERT_FILE", &cert)
            .env("TETHER_INGRESS_TLS_KEY_FILE", &key)
            .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.tls"), "{err}");
    }
    // A key that belongs to another certificate is named as such.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "good", &["server", "server2"]);
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("check-config")
        .env("TETHER_INGRESS_TLS_CERT_FILE", d.join("server.crt"))
        .env("TETHER_INGRESS_TLS_KEY_FILE", d.join("server2.key"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let says = format!(
        "server.tls: key file {} does not belong to the certificate in {}",
        d.join("server2.key").display(),
        d.join("server.crt").display()
    );
    assert!(err.contains(&says), "{err}");
    // A container health check cannot speak TLS: it is told to use the
    // plain metrics listener, as a configuration problem (exit 2).
    let healthcheck = |metrics: &str| {
        Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .arg("healthcheck")
            .env("TETHER_INGRESS_TLS_CERT_FILE", d.join("server.crt"))
            .env("TETHER_INGRESS_TLS_KEY_FILE", d.join("server.key"))
            .env("TETHER_INGRESS_METRICS_LISTEN", metrics)
            .output()
            .unwrap()
    };
    let out = healthcheck("");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("set server.metrics_listen"), "{err}");
    // With one, the plain listener is asked (nothing listens there: 1).
    let closed = closed_port();
    let out = healthcheck(&format!("127.0.0.1:{}", closed.port));
    assert_eq!(out.status.code(), Some(1));
}

/// A TLS connection to the listener, trusting `ca`.
async fn tls_connect(
    port: u16,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = tether_ingress::client_config(tether_ingress::ClientFiles {
        ca: Some(ca),
        identity: None,
    })
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// `POST /api/webhook/workflow` for `wh_1` with the test key, HTTP/1.1 over
/// `io`.
async fn post_wh_1<I>(io: I) -> http::Response<hyper::body::Incoming>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post("/api/webhook/workflow")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {TEST_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"webhookId":"wh_1"}"#,
        )))
        .unwrap();
    sender.send_request(req).await.unwrap()
}

/// The plaintext listener's hostile-input cases (tests/protect.rs), over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_over_tls_gets_the_same_answers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "good", &["server"]);
    install(d, "server");
    let ca = d.join("good-ca.crt");
    let (redis, r) = redis_with_key_and_trigger(TEST_KEY, &["wf_a"]).await;
    let mut raw = Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.server.first_byte_timeout_ms = std::time::Duration::from_millis(2_000);
    raw.server.header_read_timeout_ms = std::time::Duration::from_millis(2_000);
    raw.server.body_read_timeout_ms = std::time::Duration::from_millis(300);
    raw.server.tls.cert_file = Some(d.join("listener.crt"));
    raw.server.tls.key_file = Some(d.join("listener.key"));
    let ingress = Ingress::spawn(raw.validate().unwrap()).await;
    let port = ingress.addr.port();
    let deadline = Instant::now() + Duration::from_secs(10);
    while curl(ca.clone(), vec![format!("https://localhost:{port}/readyz")])
        .await
        .0
        != "200"
    {
        assert!(Instant::now() < deadline, "not ready over TLS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A head over server.max_header_bytes: the JSON 431.
    let mut s = tls_connect(port, &ca).await;
    let filler = "a".repeat(20_000);
    s.write_all(
        format!(
            "POST /api/webhook/workflow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TEST_KEY}\r\nx-filler: {filler}\r\ncontent-length: 2\r\n\r\n{{}}"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 431, "{head}");
    assert!(body.contains("HEADERS_TOO_LARGE"), "{body}");
    // A body that stops arriving: 408 once the body deadline passes.
    let mut s = tls_connect(port, &ca).await;
    s.write_all(
        format!(
            "POST /api/webhook/workflow HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TEST_KEY}\r\ncontent-length: 100\r\n\r\n{{\"webhookId\""
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 408, "{head}");
    assert!(body.contains("BODY_TIMEOUT"), "{body}");
    // Plain HTTP on the TLS port (http:// for https://): an answer an HTTP
    // client reads, saying so, where it used to get a TLS alert it took for
    // an HTTP/0.9 reply.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let res = post_wh_1(tcp).await;
    assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "HTTPS_REQUIRED");
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 0);

    // Idle TCP connections, half-open handshakes and trickled heads over
    // TLS: everybody else is served, and the server closes all of them.
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut hostile = Vec::new();
    for i in 0..150 {
        let closed = closed.clone();
        let ca = ca.clone();
        hostile.push(tokio::spawn(async move {
            let mut b = [0u8; 64];
            match i % 3 {
                0 => {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .unwrap();
                    let _ = s.read(&mut b).await;
                }
                1 => {
                    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .unwrap();
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0x00]).await;
                    let _ = s.read(&mut b).await;
                }
                _ => {
                    let mut s = tls_connect(port, &ca).await;
                    let _ = s
                        .write_all(b"POST /api/webhook/workflow HTTP/1.1\r\n")
                        .await;
                    loop {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if s.write_all(b"x-slow: 1\r\n").await.is_err() {
                            break;
                        }
                        if s.flush().await.is_err() {
                            break;
                        }
                    }
                }
            }
            closed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }));
    }
    let normal: Vec<_> = (0..50)
        .map(|_| {
            let ca = ca.clone();
            tokio::spawn(async move { post_wh_1(tls_connect(port, &ca).await).await.status() })
        })
        .collect();
    for t in normal {
        assert_eq!(t.await.unwrap(), http::StatusCode::ACCEPTED);
    }
    assert_eq!(xlen(&r, "tether:jobs:workflow").await, 50);
    assert!(
        eventually(Duration::from_secs(30), || async {
            closed.load(std::sync::atomic::Ordering::Acquire) == 150
        })
        .await,
        "only {} of 150 hostile connections closed",
        closed.load(std::sync::atomic::Ordering::Acquire)
    );
}

/// The same swap through the binary's own SIGHUP handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_makes_the_binary_serve_the_new_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "good", &["server", "server2"]);
    install(d, "server");
    let ca = d.join("good-ca.crt");
    let redis = RedisServer::start();
    let ingress = IngressProcess::spawn(&[
        ("TETHER_INGRESS_REDIS_URL", redis.url()),
        (
            "TETHER_INGRESS_TLS_CERT_FILE",
            d.join("listener.crt").display().to_string(),
        ),
        (
            "TETHER_INGRESS_TLS_KEY_FILE",
            d.join("listener.key").display().to_string(),
        ),
    ]);
    let port = ingress.addr.port();
    let deadline = Instant::now() + Duration::from_secs(20);
    while curl(
        ca.clone(),
        vec![format!("https://localhost:{port}/healthz")],
    )
    .await
    .0 != "200"
    {
        assert!(Instant::now() < deadline, "the binary never served HTTPS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (first, second) = (
        serial_of(&d.join("server.crt")),
        serial_of(&d.join("server2.crt")),
    );
    assert_eq!(served_serial(port).await, first);
    install(d, "server2");
    signal(ingress.pid(), "HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while served_serial(port).await != second {
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not bring the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// When the listener's certificate expires, by `openssl` and `date`, in
/// Unix seconds.
fn not_after(file: &Path) -> f64 {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-enddate", "-in"])
        .arg(file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let date = text.trim().strip_prefix("notAfter=").unwrap();
    let out = Command::new("date")
        .args(["-d", date, "+%s"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A certificate's expiry is shown, at start and after a reload brings a
/// new one, and one that expires within two weeks is said: rustls presents
/// an expired certificate without a word, and every client refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_certificates_expiry_is_shown_and_said_when_near() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Leaves valid for two days; then one of them signed again for 30.
    pki(d, "good", &["server", "server2"]);
    support::tls::openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server2.csr",
            "-CA",
            "good-ca.crt",
            "-CAkey",
            "good-ca.key",
            "-out",
            "server30.crt",
            "-days",
            "30",
            "-extfile",
            "leaf.ext",
        ],
    );
    install(d, "server");
    let ca = d.join("good-ca.crt");
    let redis = RedisServer::start();
    let log = LogFile::new();
    let ingress = IngressProcess::spawn_logging(
        &[
            ("TETHER_INGRESS_REDIS_URL", redis.url()),
            (
                "TETHER_INGRESS_TLS_CERT_FILE",
                d.join("listener.crt").display().to_string(),
            ),
            (
                "TETHER_INGRESS_TLS_KEY_FILE",
                d.join("listener.key").display().to_string(),
            ),
        ],
        log.writer(),
    );
    let said = log
        .line_with("this certificate expires soon", Duration::from_secs(20))
        .await;
    assert!(
        said.contains("certificate=\"listener\"") || said.contains("certificate=listener"),
        "{said}"
    );
    // Two days, less the moments since it was made (0 s when in the same second).
    assert!(
        said.contains("expires_in_days=1") || said.contains("expires_in_days=2"),
        "{said}"
    );
    let port = ingress.addr.port();
    let shown = || {
        let ca = ca.clone();
        async move {
            let (status, _, body) =
                curl(ca, vec![format!("https://localhost:{port}/metrics")]).await;
            assert_eq!(status, "200");
            body.lines()
                .find_map(|l| {
                    l.strip_prefix(
                        "tether_tls_certificate_expiry_timestamp_seconds{certificate=\"listener\"} ",
                    )
                })
                .and_then(|v| v.parse::<f64>().ok())
        }
    };
    assert_eq!(shown().await, Some(not_after(&d.join("server.crt"))));
    // A reload brings the 30-day certificate: shown, and not said.
    std::fs::copy(d.join("server30.crt"), d.join("listener.crt")).unwrap();
    std::fs::copy(d.join("server2.key"), d.join("listener.key")).unwrap();
    signal(ingress.pid(), "HUP");
    let later = not_after(&d.join("server30.crt"));
    assert!(
        eventually(Duration::from_secs(10), || async {
            shown().await == Some(later)
        })
        .await,
        "the reloaded certificate's expiry was not shown"
    );
    assert_eq!(
        log.text().matches("this certificate expires soon").count(),
        1,
        "{}",
        log.text()
    );
}
