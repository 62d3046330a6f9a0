//! `/metrics` as Prometheus's own linter sees it: `promtool check metrics`
//! on a scrape taken after workflow, outreach, refused and proxied requests,
//! with the spool enabled. Its own test binary, so the process-wide recorder
//! holds this test's metrics alone.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use http::StatusCode;
use support::*;

#[tokio::test]
async fn promtool_accepts_every_metric_family_with_its_help_text() {
    let (redis, r) = redis_with_key_and_trigger(TEST_KEY, &["wf_a"]).await;
    put_outreach_config(
        &r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    )
    .await;
    let upstream = support::upstream::Upstream::start().await;
    let spool = tempfile::tempdir().unwrap();
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.server.listen = ([127, 0, 0, 1], 0).into();
    raw.upstream.url = Some(upstream.url().parse().unwrap());
    raw.spool.dir = Some(spool.path().into());
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;

    let body = r#"{"webhookId":"wh_1","lead":{"name":"Alex"}}"#;
    assert_eq!(
        ingress.workflow(Some(TEST_KEY), body).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        ingress.workflow(Some("no_such_key"), body).await.0,
        StatusCode::UNAUTHORIZED
    );
    let outreach = http::Request::post(ingress.uri("/api/webhook/outreach"))
        .header("authorization", format!("Bearer {TEST_KEY}"))
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            br#"{"configurationId":"cfg_1","contacts":{"email":"a@b.c"}}"#,
        )))
        .unwrap();
    assert_eq!(ingress.request(outreach).await.0, StatusCode::OK);
    assert_eq!(ingress.get("/api/leads").await.0, StatusCode::IM_A_TEAPOT);

    // Bodies taken only once mended are counted by what was mended; one
    // still malformed after the mend is not.
    for body in [
        &b"\xef\xbb\xbf{\"webhookId\":\"wh_1\",\"n\":\"Ren\xe9e\"}"[..],
        br#"{"webhookId":"wh_1","name":"Jo \ud83d","n":1e999}"#,
        br#"{"webhookId":"wh_1","n":-1E400}"#,
        b"\xef\xbb\xbf{\"webhookId\":\"wh_1\",}",
    ] {
        ingress.workflow(Some(TEST_KEY), body).await;
    }
    let (status, _, text) = ingress.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(text.to_vec()).unwrap();
    for (reason, n) in [
        ("byte_order_mark", 1.0),
        ("not_utf8", 1.0),
        ("lone_surrogate", 1.0),
        ("number_beyond_f64", 2.0),
    ] {
        let series = format!("tether_http_bodies_mended_total{{reason=\"{reason}\"}} ");
        assert_eq!(metric_in(&text, &series), n, "{series}");
    }
    // Which build runs, and the process's own figures.
    assert!(
        text.contains(&format!(
            "tether_build_info{{version=\"{}\",commit=\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    for series in [
        "process_resident_memory_bytes ",
        "process_open_fds ",
        "process_max_fds ",
    ] {
        assert!(metric_in(&text, series) > 0.0, "{series}");
    }
    assert!(metric_in(&text, "process_start_time_seconds ") > 1.6e9);
    // Every family the code declares is described.
    for (name, _, help) in tether_ingress::METRICS {
        if text.contains(&format!("\n{name}")) || text.starts_with(name) {
            assert!(
                text.contains(&format!("# HELP {name} {help}")),
                "{name} has no help text:\n{text}"
            );
        }
    }
    let Ok(mut promtool) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("promtool is not installed (scripts/test installs it): lint skipped");
        return;
    };
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n--- scrape ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ingress.shutdown().await);
}
