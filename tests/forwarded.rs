//! The forwarding headers the backend receives in sidecar mode, read back
//! from a real upstream that records them: a caller's claims are replaced
//! unless it is a trusted proxy, whose values are kept and extended; the
//! same over HTTP/1, HTTP/2, TLS and a WebSocket upgrade.
#![allow(clippy::unwrap_used, missing_docs, clippy::disallowed_methods)]

mod support;

use std::process::Command;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::{upstream::Upstream, *};
use tether_ingress::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every forwarding header a spoofing client (or a load balancer) sends.
const CLAIMS: [(&str, &str); 5] = [
    ("x-forwarded-proto", "https"),
    ("x-forwarded-for", "6.6.6.6"),
    ("forwarded", "for=6.6.6.6;proto=https"),
    ("x-real-ip", "6.6.6.6"),
    ("x-forwarded-host", "evil.example"),
];

async fn ingress(
    upstream: &Upstream,
    redis: &RedisServer,
    tweak: impl FnOnce(&mut Config),
) -> Ingress {
    let mut config = config_for(&redis.url());
    config.upstream.url = Some(upstream.url().parse().unwrap());
    tweak(&mut config);
    Ingress::start_with(config.validate().unwrap()).await
}

/// The headers the upstream saw for a GET with the claims.
async fn seen(ingress: &Ingress) -> serde_json::Value {
    let mut req = Request::get(ingress.uri("/api/other"));
    for (name, value) in CLAIMS {
        req = req.header(name, value);
    }
    let (_, _, body) = ingress
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await;
    json(&body)["headers"].clone()
}

#[tokio::test]
async fn an_untrusted_callers_claims_are_replaced_by_what_the_ingress_saw() {
    let (up, redis) = (Upstream::start().await, RedisServer::start());
    let ingress = ingress(&up, &redis, |_| {}).await;
    let h = seen(&ingress).await;
    let host = ingress.addr.to_string();
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-real-ip"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], host.as_str());
    assert_eq!(
        h["forwarded"],
        format!("for=127.0.0.1;host=\"{host}\";proto=http").as_str()
    );
    // A range that does not hold the peer trusts nobody here either.
    let ingress = self::ingress(&up, &redis, |c| {
        c.server.trusted_proxies = "10.0.0.0/8, fd00::/8".parse().unwrap();
    })
    .await;
    assert_eq!(seen(&ingress).await["x-forwarded-for"], "127.0.0.1");
}

#[tokio::test]
async fn a_trusted_proxys_values_are_kept_and_extended() {
    let (up, redis) = (Upstream::start().await, RedisServer::start());
    let ingress = ingress(&up, &redis, |c| {
        c.server.trusted_proxies = "10.0.0.0/8, 127.0.0.0/8".parse().unwrap();
    })
    .await;
    let h = seen(&ingress).await;
    let host = ingress.addr.to_string();
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
    assert_eq!(h["x-real-ip"], "6.6.6.6");
    assert_eq!(h["x-forwarded-host"], "evil.example");
    assert_eq!(
        h["forwarded"],
        format!("for=6.6.6.6;proto=https, for=127.0.0.1;host=\"{host}\";proto=http").as_str()
    );
}

#[tokio::test]
async fn ipv6_peers_are_matched_by_ipv6_ranges() {
    let (up, redis) = (Upstream::start().await, RedisServer::start());
    let on_v6 = |trusted: &'static str| {
        move |c: &mut Config| {
            c.server.listen = "[::1]:0".parse().unwrap();
            c.server.trusted_proxies = trusted.parse().unwrap();
        }
    };
    let untrusted = ingress(&up, &redis, on_v6("fd00::/8")).await;
    assert!(untrusted.addr.is_ipv6());
    let h = seen(&untrusted).await;
    assert_eq!(h["x-forwarded-for"], "::1");
    let forwarded = h["forwarded"].as_str().unwrap();
    assert!(forwarded.starts_with("for=\"[::1]\";"), "{forwarded}");
    let trusted = ingress(&up, &redis, on_v6("::1/128")).await;
    assert_eq!(seen(&trusted).await["x-forwarded-for"], "6.6.6.6, ::1");
}

#[tokio::test]
async fn http2_and_websocket_upgrades_carry_the_same_headers() {
    let (up, redis) = (Upstream::start().await, RedisServer::start());
    let ingress = ingress(&up, &redis, |_| {}).await;
    // HTTP/2 (h2c with prior knowledge).
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut req = Request::get(ingress.uri("/api/other"));
    for (name, value) in CLAIMS {
        req = req.header(name, value);
    }
    let res = h2
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let h = &json(&body)["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    // A WebSocket upgrade: the upstream tells back on its 101 what it got.
    let mut s = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    let mut head = String::from(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    for (name, value) in CLAIMS {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        answer.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    for line in [
        "x-seen-x-forwarded-for: 127.0.0.1\r\n",
        "x-seen-x-forwarded-proto: http\r\n",
        "x-seen-x-real-ip: 127.0.0.1\r\n",
        "x-seen-x-forwarded-host: x\r\n",
        "x-seen-forwarded: for=127.0.0.1;host=\"x\";proto=http\r\n",
    ] {
        assert!(answer.contains(line), "{line:?} missing from {answer}");
    }
}

#[test]
fn check_config_shows_the_setting_and_a_bad_range_stops_the_start() {
    let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
        .arg("check-config")
        .env(
            "TETHER_INGRESS_TRUSTED_PROXIES",
            "10.0.0.0/8,fd00::/8, 192.0.2.7",
        )
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("server.trusted_proxies = 10.0.0.0/8, fd00::/8, 192.0.2.7/32"),
        "{text}"
    );
    for bad in ["10.0.0.0/33", "10.0.0", "fd00::/8;x"] {
        let out = Command::new(env!("CARGO_BIN_EXE_tether-ingress"))
            .env("TETHER_INGRESS_TRUSTED_PROXIES", bad)
            .env("TETHER_INGRESS_LISTEN", "127.0.0.1:0")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("server.trusted_proxies (from TETHER_INGRESS_TRUSTED_PROXIES)"),
            "{bad}: {err}"
        );
    }
}
