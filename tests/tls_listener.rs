//! HTTPS on the listener: real TLS clients (curl over HTTP/1.1 and HTTP/2,
//! openssl s_client) against certificates made in the test; a certificate
//! swap on reload seen by its serial, a file that does not load kept out, a
//! stalled handshake closed by the timeout, a bad file at start refused.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{tls::pki, *};
use tether_ingress::config::RawConfig;

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
    let mut raw = RawConfig::default();
    raw.redis.url = redis_url.to_owned();
    raw.upstream.url = upstream.to_owned();
    raw.server.listen = "127.0.0.1:0".into();
    raw.server.header_read_timeout_ms = 500;
    raw.server.max_body_bytes = max_body_bytes;
    raw.server.tls.cert_file = dir.join("listener.crt").display().to_string();
    raw.server.tls.key_file = dir.join("listener.key").display().to_string();
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
    let (status, _, body) = curl(ca.clone(), vec![format!("{base}/api/leads")]).await;
    assert_eq!(status, "418", "{body}");
    let echoed: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["headers"]["x-forwarded-proto"], "https", "{body}");
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
            .env(
                "TETHER_INGRESS_LISTEN",
                format!("127.0.0.1:{}", free_port()),
            )
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.tls"), "{err}");
    }
}
