//! `openapi/openapi.json` against real responses: every documented path and
//! status is produced and its body validates against the documented schema.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::*;

/// A small validator for the subset of JSON Schema the document uses.
fn validate(doc: &Value, schema: &Value, v: &Value, at: &str) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/components/schemas/");
        return validate(doc, &doc["components"]["schemas"][name], v, at);
    }
    if v.is_null() && schema.get("nullable") == Some(&Value::Bool(true)) {
        return;
    }
    // `type` is a name or a list of names (OpenAPI 3.1).
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    if !types.is_empty() {
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "boolean" => v.is_boolean(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            _ => true,
        });
        assert!(ok, "{at}: expected {types:?}, got {v}");
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        assert!(e.contains(v), "{at}: {v} not in {e:?}");
    }
    if let Some(min) = schema.get("minimum").and_then(Value::as_i64) {
        assert!(v.as_i64().unwrap() >= min, "{at}: {v} < {min}");
    }
    if schema.get("pattern").and_then(Value::as_str) == Some("^[0-9]+-[0-9]+$") {
        let s = v.as_str().unwrap();
        let (a, b) = s.split_once('-').unwrap_or(("", ""));
        assert!(
            !a.is_empty()
                && !b.is_empty()
                && (a.to_owned() + b).bytes().all(|c| c.is_ascii_digit()),
            "{at}: {s}"
        );
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for req in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            assert!(
                obj.contains_key(req.as_str().unwrap()),
                "{at}: missing {req}"
            );
        }
        for (k, val) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(doc, s, val, &format!("{at}.{k}")),
                None => assert!(
                    schema.get("additionalProperties") != Some(&Value::Bool(false)),
                    "{at}: unexpected {k}"
                ),
            }
        }
    }
}

fn check(
    doc: &Value,
    path: &str,
    method: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &Bytes,
) {
    let op = &doc["paths"][path][method];
    let res = &op["responses"][status.as_str()];
    assert!(
        res.is_object(),
        "{method} {path} {status} is not documented"
    );
    assert!(
        headers.contains_key("x-request-id"),
        "{method} {path} {status}: no X-Request-Id"
    );
    if res["headers"].get("Retry-After").is_some() {
        assert!(
            headers.contains_key("retry-after"),
            "{method} {path} {status}: no Retry-After"
        );
    }
    if let Some(schema) = res["content"].get("application/json").map(|c| &c["schema"]) {
        let v: Value = serde_json::from_slice(body).unwrap();
        validate(doc, schema, &v, &format!("{method} {path} {status}"));
    }
}

#[tokio::test]
async fn real_responses_match_the_document() {
    let doc: Value = serde_json::from_str(include_str!("../openapi/openapi.json")).unwrap();
    // Before Redis exists: readiness 503 and webhooks 503.
    let down = closed_port();
    let starting = Ingress::spawn(config_for(&format!("redis://127.0.0.1:{}", down.port))).await;
    assert!(
        eventually(std::time::Duration::from_secs(5), || async {
            starting.get("/healthz").await.0 == StatusCode::OK
        })
        .await
    );
    let (s, h, b) = starting.get("/readyz").await;
    check(&doc, "/readyz", "get", s, &h, &b);
    let (s, h, b) = starting
        .workflow(Some("user_x"), r#"{"webhookId":"w"}"#)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    check(&doc, "/api/webhook/workflow", "post", s, &h, &b);

    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, "user_oa", r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    add_trigger(&r, "o_1", "wh_1", &["wf_a"]).await;
    put_outreach_config(
        &r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p","promptId":null}"#,
    )
    .await;
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.server.max_body_bytes = 512;
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    let post = |path: &'static str, token: Option<&'static str>, body: String| {
        let ingress = &ingress;
        async move {
            let mut b = Request::post(ingress.uri(path));
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            ingress
                .request(b.body(Full::new(Bytes::from(body))).unwrap())
                .await
        }
    };
    let big = format!(r#"{{"webhookId":"wh_1","p":"{}"}}"#, "x".repeat(600));
    let cases = [
        (
            "/api/webhook/workflow",
            Some("user_oa"),
            r#"{"webhookId":"wh_1"}"#.to_owned(),
            StatusCode::ACCEPTED,
        ),
        (
            "/api/webhook/workflow",
            Some("user_oa"),
            "{}".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/webhook/workflow",
            None,
            "{}".to_owned(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/webhook/workflow",
            Some("user_oa"),
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "/api/webhook/outreach",
            Some("user_oa"),
            r#"{"configurationId":"cfg_1","a":1}"#.to_owned(),
            StatusCode::OK,
        ),
        (
            "/api/webhook/outreach",
            Some("user_oa"),
            r#"{"configurationId":"nope"}"#.to_owned(),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/webhook/outreach",
            Some("user_oa"),
            "[]".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/webhook/outreach",
            Some("user_bad"),
            "{}".to_owned(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "/api/webhook/outreach",
            Some("user_oa"),
            big,
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (path, token, body, want) in cases {
        let (s, h, b) = post(path, token, body).await;
        assert_eq!(s, want, "{path}");
        check(&doc, path, "post", s, &h, &b);
    }
    for path in ["/api/webhook/workflow", "/api/webhook/outreach"] {
        let (s, h, b) = ingress.get(path).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        check(&doc, path, "post", s, &h, &b);
    }
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (s, h, b) = ingress.get(path).await;
        assert_eq!(s, StatusCode::OK);
        check(&doc, path, "get", s, &h, &b);
    }
    // Redis gone: 503 with Retry-After, as documented.
    drop(r);
    let mut redis = redis;
    redis.kill();
    let (s, h, b) = ingress
        .workflow(Some("user_oa"), r#"{"webhookId":"wh_1"}"#)
        .await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    check(&doc, "/api/webhook/workflow", "post", s, &h, &b);
}
