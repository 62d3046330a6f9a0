//! End-to-end tests of POST /api/webhook/workflow against a real redis-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use support::*;

const KEY: &str = TEST_KEY;
const STREAM: &str = "tether:jobs:workflow";
const WITHIN: Duration = Duration::from_secs(1);

async fn setup() -> (RedisServer, fred::clients::Client, Ingress) {
    start_with_key_and_trigger().await
}

#[tokio::test]
async fn accepted_request_writes_one_exact_entry_per_match() {
    let (_redis, r, ingress) = setup().await;
    let before = tether_ingress::now_ms();
    let body = r#"{"source":"zillow","webhookId":"wh_1","lead":{"phone":12345678901234567890123,"score":1.10,"name":"caf\u00e9"}}"#;
    let (status, headers, resp) = ingress.workflow(Some(KEY), body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let v = json(&resp);
    assert_eq!(
        v,
        serde_json::json!({"success":true,"message":"Webhook accepted","data":{"webhookId":"wh_1","matchedCount":2}})
    );
    let request_id = headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(!request_id.is_empty());

    let got = entries(&r, STREAM).await;
    assert_eq!(got.len(), 2);
    let workflows: Vec<&str> = got.iter().map(|(_, e)| field(e, "workflowId")).collect();
    assert_eq!(workflows, ["wf_a", "wf_b"]);
    for (_, e) in &got {
        let names: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "workflowId",
                "orgId",
                "userId",
                "webhookId",
                "payload",
                "receivedAt",
                "requestId"
            ]
        );
        assert_eq!(field(e, "orgId"), "o_1");
        assert_eq!(field(e, "userId"), "u_1");
        assert_eq!(field(e, "webhookId"), "wh_1");
        assert_eq!(
            field(e, "payload"),
            r#"{"source":"zillow","lead":{"phone":12345678901234567890123,"score":1.10,"name":"caf\u00e9"}}"#
        );
        assert_eq!(field(e, "requestId"), request_id);
        let at: u64 = field(e, "receivedAt").parse().unwrap();
        assert!(at >= before && at <= tether_ingress::now_ms());
    }
}

#[tokio::test]
async fn callers_request_id_is_echoed_and_stored() {
    let (_redis, r, ingress) = setup().await;
    let req = Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .header("x-request-id", "lead-42")
        .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
        .unwrap();
    let (status, headers, _) = ingress.request(req).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["x-request-id"], "lead-42");
    for (_, e) in entries(&r, STREAM).await {
        assert_eq!(field(&e, "requestId"), "lead-42");
    }
    // Errors carry a request id too.
    let (_, headers, _) = ingress.workflow(None, "{}").await;
    assert!(headers.contains_key("x-request-id"));
}

/// A gzip, deflate or br body is inflated, as Node's `body-parser` does by
/// default (br since body-parser 2, Express 5): the entry's payload is the
/// inflated JSON's bytes. One that inflates past `server.max_body_bytes` is
/// 413, a stream that does not inflate 400 `INVALID_JSON`, like any body
/// that is not JSON.
#[tokio::test]
async fn a_gzip_deflate_or_br_body_is_inflated_and_capped() {
    use std::io::Write as _;
    let (_redis, r, ingress) = setup().await;
    let body = br#"{"webhookId":"wh_1","lead":{"phone":12345678901234567890123,"score":1.10}}"#;
    let post = |coding: &'static str, bytes: Vec<u8>| {
        let req = Request::post(ingress.uri("/api/webhook/workflow"))
            .header("authorization", format!("Bearer {KEY}"))
            .header("content-type", "application/json")
            .header("content-encoding", coding)
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        ingress.request(req)
    };
    let gzip = |data: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zlib.write_all(body).unwrap();
    for (coding, bytes) in [
        ("gzip", gzip(body)),
        ("deflate", zlib.finish().unwrap()),
        ("br", node::brotli(body).await),
    ] {
        let (status, _, resp) = post(coding, bytes).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{coding}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(json(&resp)["data"]["matchedCount"], 2);
        let got = entries(&r, STREAM).await;
        let (_, last) = got.last().unwrap();
        assert_eq!(
            field(last, "payload"),
            r#"{"lead":{"phone":12345678901234567890123,"score":1.10}}"#,
            "{coding}"
        );
    }
    assert_eq!(xlen(&r, STREAM).await, 6);
    // 2 MiB of JSON in a few KB: over the 1 MiB default once inflated.
    let big = format!(r#"{{"webhookId":"wh_1","pad":"{}"}}"#, " ".repeat(2 << 20));
    for (coding, bytes) in [
        ("gzip", gzip(big.as_bytes())),
        ("br", node::brotli(big.as_bytes()).await),
    ] {
        let (status, _, resp) = post(coding, bytes).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{coding}");
        assert_eq!(json(&resp)["code"], "PAYLOAD_TOO_LARGE");
    }
    for coding in ["gzip", "br"] {
        let (status, _, resp) = post(coding, body.to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{coding}");
        assert_eq!(json(&resp)["code"], "INVALID_JSON");
    }
    assert_eq!(xlen(&r, STREAM).await, 6);
}

#[tokio::test]
async fn payload_keeps_the_callers_bytes() {
    let (_redis, r, ingress) = setup().await;
    let cases = [
        (r#"{"webhookId":"wh_1","a":1}"#, r#"{"a":1}"#),
        (
            r#"{"a":1,"webhookId":"wh_1","b":[1,2]}"#,
            r#"{"a":1,"b":[1,2]}"#,
        ),
        (
            r#"{"a":-98765432109876543210987,"webhookId":"wh_1"}"#,
            r#"{"a":-98765432109876543210987}"#,
        ),
        (r#"{"webhookId":"wh_1"}"#, r#"{}"#),
        (
            "{ \"x\" : 1.10 ,\n \"webhookId\" : \"wh_1\" }",
            "{ \"x\" : 1.10 }",
        ),
        (
            r#"{"s":"a\"b\\c\u0000\ud83d\ude00","webhookId":"wh_1"}"#,
            r#"{"s":"a\"b\\c\u0000\ud83d\ude00"}"#,
        ),
        (
            r#"{"n":{"webhookId":"inner","d":[{"e":1E+2}]},"webhookId":"wh_1"}"#,
            r#"{"n":{"webhookId":"inner","d":[{"e":1E+2}]}}"#,
        ),
        (r#"{"webhook\u0049d":"wh_1","k":"v"}"#, r#"{"k":"v"}"#),
        // A lone surrogate (JSON.stringify of a string cut inside an emoji):
        // JSON.parse takes it, and so does the ingress, bytes unchanged.
        (
            r#"{"name":"Jo \ud83d","webhookId":"wh_1"}"#,
            r#"{"name":"Jo \ud83d"}"#,
        ),
    ];
    for (body, payload) in cases {
        let (status, _, resp) = ingress.workflow(Some(KEY), body).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{body}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(json(&resp)["data"]["matchedCount"], 2, "{body}");
        let got = entries(&r, STREAM).await;
        let (_, last) = got.last().unwrap();
        assert_eq!(field(last, "payload"), payload, "{body}");
        let _: () = fred::prelude::KeysInterface::del(&r, STREAM).await.unwrap();
    }
}

/// A body that is not UTF-8 (a legacy sender's Latin-1 `é`) is taken as
/// the backend's body parser takes it: each invalid sequence is read as the
/// U+FFFD Node's own decoder makes of it, and the stored text is that.
#[tokio::test]
async fn bodies_that_are_not_utf8_are_read_as_node_decodes_them() {
    let (_redis, r, ingress) = setup().await;
    let bad: [&[u8]; 6] = [
        b"Jos\xe9",
        b"\xff\xfe",
        b"\xe2\x82!",
        b"\xc0\xaf",
        b"\xed\xa0\x80x",
        b"\xf4\x90\x80\x80\xf0\x9f\x98",
    ];
    let decoded = node::utf8_decode(&bad).await;
    for (bytes, text) in bad.iter().zip(&decoded) {
        assert!(text.contains('\u{fffd}'), "{text:?}");
        let mut body = br#"{"name":""#.to_vec();
        body.extend_from_slice(bytes);
        body.extend_from_slice(br#"","webhookId":"wh_1"}"#);
        let (status, _, resp) = ingress.workflow(Some(KEY), &body).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "{text:?}: {}",
            String::from_utf8_lossy(&resp)
        );
        assert_eq!(json(&resp)["data"]["matchedCount"], 2, "{text:?}");
        let got = entries(&r, STREAM).await;
        let (_, last) = got.last().unwrap();
        assert_eq!(field(last, "payload"), format!(r#"{{"name":"{text}"}}"#));
        let _: () = fred::prelude::KeysInterface::del(&r, STREAM).await.unwrap();
    }
    // In the id too: it reads (and is echoed) with U+FFFD, and matches
    // nothing here.
    let (status, _, resp) = ingress
        .workflow(Some(KEY), b"{\"webhookId\":\"wh_\xff\"}")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        json(&resp)["data"],
        serde_json::json!({"webhookId":"wh_\u{fffd}","matchedCount":0})
    );
    // A bad byte outside a string is malformed JSON to JSON.parse too.
    let (status, _, resp) = ingress
        .workflow(Some(KEY), b"{\"webhookId\":\"wh_1\",\"a\":1\xff}")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&resp)["code"], "INVALID_JSON");
    assert_eq!(xlen(&r, STREAM).await, 0);
}

/// The backend reads a request with Express's JSON body parser; the ingress
/// takes exactly the bodies it takes (with a string `webhookId`) and stores
/// a payload that reads as its body. body-parser 1 (Express 4) and 2
/// (Express 5) judge every case (`tests/node/body-parser.js`).
#[tokio::test]
async fn bodies_are_taken_as_the_backends_body_parser_takes_them() {
    let (_redis, r, ingress) = setup().await;
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let big = format!(r#"{{"webhookId":"wh_1","n":{}}}"#, "9".repeat(400));
    let cases: Vec<&[u8]> = vec![
        // Taken.
        b"\xef\xbb\xbf{\"webhookId\":\"wh_1\",\"a\":1}",
        b"{\"webhookId\":\"wh_1\",\"name\":\"Jos\xe9\"}",
        b"{\"webhookId\":\"wh_1\",\"s\":\"\xe2\x82!\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xf0\x9f\x98\"}",
        b"\xef\xbb\xbf{\"webhookId\":\"wh_1\",\"n\":\"Ren\xe9e\"}",
        br#"{"name":"Jo \ud83d","webhookId":"wh_1"}"#,
        br#"{"webhookId":"wh_1","a":1e999,"b":[-1E+400,1e-999]}"#,
        big.as_bytes(),
        br#"{"webhookId":"wh_1","phone":12345678901234567890123,"x":1.10}"#,
        b" \t\r\n{ \"webhookId\" : \"wh_1\" ,\n\"a\" : [ 1 , { } ] } \n",
        br#"{"n":{"webhookId":"inner"},"webhook\u0049d":"wh_1","k":"\u0000\u2028"}"#,
        br#"{"a":1,"a":2,"webhookId":"wh_1","__proto__":{"x":1}}"#,
        br#"{"webhookId":"wh_2","a":1,"webhookId":"wh_1"}"#,
        br#"{"webhookId":7,"webhookId":"wh_1","b":{"webhookId":"x"}}"#,
        // Refused.
        b"",
        b"  ",
        br#""wh_1""#,
        b"[]",
        b"null",
        br#"{"webhookId":"wh_1"} x"#,
        br#"{"webhookId":1}"#,
        br#"{"webhookId":"wh_1","webhookId":7}"#,
        br#"{"webhookId":"wh_1",}"#,
        b"{\"webhookId\":\"wh_1\",\"a\":1\xff}",
        b"{\"webhookId\":\"wh_1\"}\x00",
        b"{\"webhookId\":\"wh_1\",\"a\":\"\t\"}",
        b"{\"webhookId\":\"wh_1\"\xc2\xa0}",
        b"\xef\xbb\xbf\xef\xbb\xbf{\"webhookId\":\"wh_1\"}",
        br#"{"webhookId":"wh_1","a":01}"#,
        br#"{"webhookId":"wh_1","a":.5}"#,
        br#"{"webhookId":"wh_1","a":NaN}"#,
        br#"{'webhookId':'wh_1'}"#,
    ];
    let mut lines = String::new();
    for body in &cases {
        let (status, _, _) = ingress.workflow(Some(KEY), body).await;
        let got = entries(&r, STREAM).await;
        let stored = got.last().map(|(_, e)| {
            (
                field(e, "webhookId").to_owned(),
                hex(field(e, "payload").as_bytes()),
            )
        });
        let (webhook_id, payload) = stored.unzip();
        lines.push_str(
            &serde_json::json!({
                "body": hex(body),
                "status": status.as_u16(),
                "webhookId": webhook_id,
                "payload": payload,
            })
            .to_string(),
        );
        lines.push('\n');
        let _: () = fred::prelude::KeysInterface::del(&r, STREAM).await.unwrap();
    }
    let verdicts = node::body_parser_verdicts(&lines).await;
    assert_eq!(verdicts.len(), cases.len());
    let wrong: Vec<String> = cases
        .iter()
        .zip(&verdicts)
        .filter(|(_, v)| v["ok"] != true)
        .map(|(body, v)| format!("{:?}: {}", String::from_utf8_lossy(body), v["why"]))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[tokio::test]
async fn bad_bodies_get_400_and_write_nothing() {
    let (_redis, r, ingress) = setup().await;
    let cases = [
        ("", "INVALID_JSON"),
        ("not json", "INVALID_JSON"),
        (r#"{"webhookId":"wh_1""#, "INVALID_JSON"),
        (r#"{"webhookId":"wh_1"} trailing"#, "INVALID_JSON"),
        ("[]", "INVALID_BODY"),
        (r#""wh_1""#, "INVALID_BODY"),
        ("{}", "MISSING_WEBHOOK_ID"),
        (r#"{"webhookid":"wh_1"}"#, "MISSING_WEBHOOK_ID"),
        (r#"{"webhookId":42}"#, "INVALID_WEBHOOK_ID"),
        (r#"{"webhookId":null}"#, "INVALID_WEBHOOK_ID"),
        (r#"{"webhookId":{"id":"wh_1"}}"#, "INVALID_WEBHOOK_ID"),
        // Named twice, the last counts, as to JSON.parse: here not a string.
        (
            r#"{"webhookId":"wh_1","webhookId":7}"#,
            "INVALID_WEBHOOK_ID",
        ),
    ];
    for (body, code) in cases {
        let (status, _, resp) = ingress.workflow(Some(KEY), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let v = json(&resp);
        assert_eq!(v["success"], false);
        assert_eq!(v["code"], code, "{body}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let deep = format!(
        r#"{{"webhookId":"wh_1","d":{}{}}}"#,
        "[".repeat(1100),
        "]".repeat(1100)
    );
    let (status, _, resp) = ingress.workflow(Some(KEY), &deep).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&resp)["code"], "JSON_TOO_DEEP");
    assert_eq!(xlen(&r, STREAM).await, 0);
}

#[tokio::test]
async fn bad_credentials_get_401_and_write_nothing() {
    let (_redis, r, ingress) = setup().await;
    put_key(
        &r,
        "inactive_key",
        r#"{"userId":"u_2","orgId":"o_1","active":false}"#,
    )
    .await;
    let body = r#"{"webhookId":"wh_1"}"#;
    let with_header = |value: &'static str| {
        Request::post(ingress.uri("/api/webhook/workflow"))
            .header("authorization", value)
            .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
            .unwrap()
    };
    let mut answers = vec![];
    answers.push(ingress.workflow(None, body).await);
    answers.push(ingress.request(with_header("Basic dXNlcjpwYXNz")).await);
    answers.push(ingress.request(with_header("Bearer")).await);
    answers.push(ingress.request(with_header("Bearer   ")).await);
    answers.push(ingress.workflow(Some("user_unknown"), body).await);
    answers.push(ingress.workflow(Some("inactive_key"), body).await);
    // A JWT with no secret and no upstream configured.
    answers.push(
        ingress
            .workflow(Some("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln"), body)
            .await,
    );
    let codes: Vec<String> = answers
        .iter()
        .map(|(status, _, resp)| {
            assert_eq!(*status, StatusCode::UNAUTHORIZED);
            let v = json(resp);
            assert_eq!(v["success"], false);
            v["code"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        codes,
        [
            "AUTH_REQUIRED",
            "AUTH_SCHEME_UNSUPPORTED",
            "AUTH_REQUIRED",
            "AUTH_REQUIRED",
            "INVALID_API_KEY",
            "INVALID_API_KEY",
            "JWT_NOT_ACCEPTED"
        ]
    );
    // Unknown and inactive are indistinguishable.
    assert_eq!(answers[4].2, answers[5].2);
    // The key never appears in an answer.
    for (_, h, b) in &answers {
        assert!(!String::from_utf8_lossy(b).contains("user_unknown"));
        assert!(!format!("{h:?}").contains("user_unknown"));
    }
    assert_eq!(xlen(&r, STREAM).await, 0);
}

#[tokio::test]
async fn triggers_of_other_orgs_do_not_match() {
    let (_redis, r, ingress) = setup().await;
    add_trigger(&r, "o_2", "wh_other", &["wf_x"]).await;
    put_key(&r, "key_o2", r#"{"userId":"u_9","orgId":"o_2"}"#).await;
    assert!(
        eventually(WITHIN, || async {
            ingress
                .workflow(Some("key_o2"), r#"{"webhookId":"wh_other"}"#)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await
    );
    let _: () = fred::prelude::KeysInterface::del(&r, STREAM).await.unwrap();
    let (status, _, resp) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_other"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&resp)["data"]["matchedCount"], 0);
    let (_, _, resp) = ingress
        .workflow(Some("key_o2"), r#"{"webhookId":"wh_1"}"#)
        .await;
    assert_eq!(json(&resp)["data"]["matchedCount"], 0);
    assert_eq!(xlen(&r, STREAM).await, 0);
}

#[tokio::test]
async fn a_trigger_key_with_an_org_id_holding_a_colon_is_never_matched() {
    let (_redis, r, ingress) = setup().await;
    // `tether:triggers:o_1:x:w` is org `o_1:x` (the backend's typo) or
    // webhookId `x:w` of org `o_1`: the ingress skips it rather than guess.
    add_trigger(&r, "o_1:x", "w", &["wf_other_org"]).await;
    assert!(
        eventually(WITHIN, || async {
            metric_value(
                &ingress,
                "tether_replica_skipped_keys_total{view=\"triggers\"}",
            )
            .await
                >= 1.0
        })
        .await,
        "the key was not counted as skipped"
    );
    let (status, _, resp) = ingress.workflow(Some(KEY), r#"{"webhookId":"x:w"}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&resp)["data"]["matchedCount"], 0);
}

#[tokio::test]
async fn control_plane_changes_are_seen_within_a_second() {
    let (_redis, r, ingress) = setup().await;
    let body = r#"{"webhookId":"wh_1"}"#;
    let status_of = |key: &'static str| {
        let ingress = &ingress;
        async move { ingress.workflow(Some(key), body).await.0 }
    };
    let matched = || async {
        json(
            &ingress
                .workflow(Some(KEY), r#"{"webhookId":"wh_new"}"#)
                .await
                .2,
        )["data"]["matchedCount"]
            .as_u64()
    };

    // Key added.
    assert_eq!(status_of("user_new_key").await, StatusCode::UNAUTHORIZED);
    put_key(&r, "user_new_key", r#"{"userId":"u_3","orgId":"o_1"}"#).await;
    assert!(
        eventually(WITHIN, || async {
            status_of("user_new_key").await == StatusCode::ACCEPTED
        })
        .await,
        "key add"
    );
    // Key deactivated.
    put_key(
        &r,
        "user_new_key",
        r#"{"userId":"u_3","orgId":"o_1","active":false}"#,
    )
    .await;
    assert!(
        eventually(WITHIN, || async {
            status_of("user_new_key").await == StatusCode::UNAUTHORIZED
        })
        .await,
        "deactivate"
    );
    // Reactivated, then revoked with DEL.
    put_key(&r, "user_new_key", r#"{"userId":"u_3","orgId":"o_1"}"#).await;
    assert!(
        eventually(WITHIN, || async {
            status_of("user_new_key").await == StatusCode::ACCEPTED
        })
        .await,
        "reactivate"
    );
    let _: () = fred::prelude::KeysInterface::del(
        &r,
        format!("tether:apikey:{}", sha256_hex("user_new_key")),
    )
    .await
    .unwrap();
    assert!(
        eventually(WITHIN, || async {
            status_of("user_new_key").await == StatusCode::UNAUTHORIZED
        })
        .await,
        "revoke"
    );

    // Trigger added, grown, shrunk, removed.
    assert_eq!(matched().await, Some(0));
    add_trigger(&r, "o_1", "wh_new", &["wf_1"]).await;
    assert!(
        eventually(WITHIN, || async { matched().await == Some(1) }).await,
        "trigger add"
    );
    add_trigger(&r, "o_1", "wh_new", &["wf_2", "wf_3"]).await;
    assert!(
        eventually(WITHIN, || async { matched().await == Some(3) }).await,
        "trigger sadd"
    );
    let _: () = fred::prelude::SetsInterface::srem(&r, "tether:triggers:o_1:wh_new", "wf_1")
        .await
        .unwrap();
    assert!(
        eventually(WITHIN, || async { matched().await == Some(2) }).await,
        "trigger srem"
    );
    let _: () = fred::prelude::KeysInterface::del(&r, "tether:triggers:o_1:wh_new")
        .await
        .unwrap();
    assert!(
        eventually(WITHIN, || async { matched().await == Some(0) }).await,
        "trigger del"
    );
}

#[tokio::test]
async fn redis_outage_gives_503_then_resyncs_everything() {
    let (mut redis, r, ingress) = setup().await;
    put_key(&r, "user_doomed", r#"{"userId":"u_4","orgId":"o_1"}"#).await;
    assert!(
        eventually(WITHIN, || async {
            ingress
                .workflow(Some("user_doomed"), r#"{"webhookId":"wh_1"}"#)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await
    );
    let _: () = fred::prelude::KeysInterface::del(&r, STREAM).await.unwrap();
    redis.save();
    drop(r);
    redis.kill();

    // A write racing the close is sent and then unconfirmed (503
    // JOB_STORE_UNCONFIRMED); once the writer has seen its connection go,
    // nothing is sent.
    assert_eq!(
        ingress.wh_1_status(KEY).await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Down: the cached key still authenticates, but nothing can be stored.
    let (status, headers, resp) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(json(&resp)["code"], "JOB_STORE_UNAVAILABLE");
    // Bad input is still 4xx, not 503.
    assert_eq!(
        ingress.workflow(Some(KEY), "{}").await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        ingress.workflow(Some("nope"), "{}").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(ingress.get("/healthz").await.0, StatusCode::OK);

    // Changes made while the ingress cannot see Redis.
    let doomed = format!("tether:apikey:{}", sha256_hex("user_doomed"));
    let born = format!("tether:apikey:{}", sha256_hex("user_born"));
    redis.edit_offline(&[
        &["DEL", &doomed],
        &["SET", &born, r#"{"userId":"u_5","orgId":"o_1"}"#],
        &["SREM", "tether:triggers:o_1:wh_1", "wf_a"],
        &["SADD", "tether:triggers:o_1:wh_2", "wf_z"],
    ]);
    redis.restart();

    assert!(
        eventually(Duration::from_secs(10), || async {
            ingress
                .workflow(Some("user_born"), r#"{"webhookId":"wh_2"}"#)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await,
        "serving again with the new key"
    );
    assert_eq!(
        ingress
            .workflow(Some("user_doomed"), r#"{"webhookId":"wh_1"}"#)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (_, _, resp) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(json(&resp)["data"]["matchedCount"], 1);
    let r = redis.client().await;
    let got = entries(&r, STREAM).await;
    for (id, e) in &got {
        eprintln!(
            "{id} {} {} {}",
            field(e, "workflowId"),
            field(e, "requestId"),
            field(e, "receivedAt")
        );
    }
    assert_eq!(
        got.len(),
        2,
        "wh_2 → wf_z, wh_1 → wf_b; nothing from the outage"
    );
    assert_eq!(field(&got[0].1, "workflowId"), "wf_z");
    assert_eq!(field(&got[1].1, "workflowId"), "wf_b");
}

#[tokio::test]
async fn two_thousand_concurrent_requests_write_exactly_their_entries() {
    let (_redis, r, ingress) = setup().await;
    let ingress = std::sync::Arc::new(ingress);
    let mut tasks = Vec::new();
    for i in 0..2000 {
        let ingress = ingress.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!(r#"{{"webhookId":"wh_1","n":{i}}}"#);
            let (status, headers, _) = ingress.workflow(Some(KEY), &body).await;
            (status, headers["x-request-id"].to_str().unwrap().to_owned())
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, id) = t.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 2000);
    let got = entries(&r, STREAM).await;
    assert_eq!(got.len(), 4000);
    let mut per_request = std::collections::HashMap::<String, Vec<String>>::new();
    for (_, e) in &got {
        per_request
            .entry(field(e, "requestId").to_owned())
            .or_default()
            .push(field(e, "workflowId").to_owned());
    }
    assert_eq!(per_request.len(), 2000);
    assert!(per_request.values().all(|w| w == &["wf_a", "wf_b"]));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.server.max_body_bytes = 1024;
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;

    let big = format!(r#"{{"webhookId":"wh_1","pad":"{}"}}"#, "x".repeat(2000));
    let (status, _, resp) = ingress.workflow(Some(KEY), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&resp)["code"], "PAYLOAD_TOO_LARGE");
    // Chunked (no Content-Length).
    let chunks = futures::stream::iter((0..40).map(|_| {
        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from_static(
            &[b' '; 100],
        )))
    }));
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = Request::post(ingress.uri("/api/webhook/workflow"))
        .header("authorization", format!("Bearer {KEY}"))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let res = client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // At the limit is fine.
    let fits = format!(
        r#"{{"webhookId":"wh_1","pad":"{}"}}"#,
        "x".repeat(1024 - 29)
    );
    assert_eq!(fits.len(), 1024);
    assert_eq!(
        ingress.workflow(Some(KEY), &fits).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(xlen(&r, STREAM).await, 1);
}

#[tokio::test]
async fn other_routes_and_methods() {
    let (_redis, _r, ingress) = setup().await;
    let (status, headers, resp) = ingress.get("/api/webhook/workflow").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["allow"], "POST");
    assert_eq!(json(&resp)["code"], "METHOD_NOT_ALLOWED");
    let (status, headers, resp) = ingress.get("/api/contacts").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&resp)["code"], "NOT_FOUND");
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(ingress.get("/healthz").await.0, StatusCode::OK);
    assert_eq!(ingress.get("/readyz").await.0, StatusCode::OK);
    ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    let (status, _, text) = ingress.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&text);
    for needle in [
        r#"tether_http_requests_total{route="workflow",status="202"}"#,
        "tether_http_request_duration_seconds_bucket",
        r#"tether_jobs_written_total{stream="workflow"}"#,
        r#"tether_replica_entries{view="api_keys"}"#,
        r#"tether_replica_entries{view="triggers"}"#,
        "tether_sink_batch_size_bucket",
        "tether_sink_write_duration_seconds_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    // The accepted request was counted in each histogram it records.
    for series in [
        r#"tether_http_request_duration_seconds_count{route="workflow"}"#,
        "tether_sink_write_duration_seconds_count",
        "tether_sink_batch_size_count",
    ] {
        let count = text
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse::<u64>().ok());
        assert!(count >= Some(1), "{series}: {count:?} in\n{text}");
    }
    assert!(!text.contains(KEY));
}

/// The two webhook paths match as the backend's Express 4 and 5 match
/// them with default settings, held to Express itself: one trailing `/`
/// and any ASCII case (`/API/Webhook/Workflow/`) take the route, a second
/// `/`, an escape or an extension do not. Before, a caller writing the
/// path in another case was answered 404 (or forwarded) where the backend
/// queues the lead.
#[tokio::test]
async fn webhook_paths_match_as_express_matches_them() {
    let (_redis, r, ingress) = setup().await;
    put_outreach_config(
        &r,
        "cfg_1",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#,
    )
    .await;
    let paths = [
        "/api/webhook/workflow",
        "/api/webhook/workflow/",
        "/api/webhook/outreach",
        "/api/webhook/outreach/",
        "/API/WEBHOOK/WORKFLOW",
        "/Api/Webhook/Outreach/",
        "/api/webHook/workFlow?source=x",
        "/api/webhook/workflow/?source=x",
        "/api/webhook/workflow//",
        "//api/webhook/workflow",
        "/api//webhook/workflow",
        "/api/webhook/workflow.json",
        "/api/webhook/workflowx",
        "/api/webhook/workflow;x",
        "/api/webhook/%77orkflow",
        "/api/webhook/workflow%2F",
        "/api/webhook/./workflow",
        "/api/webhook",
        "/api/webhook/workflow/x",
    ];
    let express = support::node::express_routes(&paths).await;
    assert_eq!(express.len(), paths.len());
    let mut taken = 0;
    for (path, [four, five]) in paths.iter().zip(express) {
        assert_eq!(four, five, "{path}: Express 4 and 5 differ");
        let req = Request::post(ingress.uri(path))
            .header("authorization", format!("Bearer {TEST_KEY}"))
            .body(Full::new(Bytes::from_static(
                br#"{"webhookId":"wh_1","configurationId":"cfg_1"}"#,
            )))
            .unwrap();
        let (status, _, body) = ingress.request(req).await;
        let answer = json(&body);
        let routed = match (status, answer["message"].as_str()) {
            (StatusCode::ACCEPTED, Some("Webhook accepted")) => Some("workflow"),
            (StatusCode::OK, Some("Outreach processed successfully")) => Some("outreach"),
            (StatusCode::NOT_FOUND, _) if answer["code"] == "NOT_FOUND" => None,
            _ => panic!("{path}: {status} {answer}"),
        };
        assert_eq!(routed, four.as_deref(), "{path}");
        taken += usize::from(routed.is_some());
    }
    assert_eq!(taken, 8);
}

#[tokio::test]
async fn not_ready_until_redis_is_loaded() {
    let down = closed_port();
    let ingress = Ingress::spawn(config_for(&format!("redis://127.0.0.1:{}", down.port))).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            ingress.get("/healthz").await.0 == StatusCode::OK
        })
        .await
    );
    let (status, headers, _) = ingress.get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    let (status, _, resp) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&resp)["code"], "NOT_READY");
}

#[tokio::test]
async fn silent_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let redis = RedisServer::start();
    let mut raw = tether_ingress::config::Config::default();
    raw.redis.url = redis.url();
    raw.server.first_byte_timeout_ms = std::time::Duration::from_millis(200);
    raw.server.header_read_timeout_ms = std::time::Duration::from_millis(200);
    let ingress = Ingress::start_with(raw.validate().unwrap()).await;
    // Sends nothing.
    let mut silent = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    // Sends half a head.
    let mut slow = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut slow,
        b"POST /api/webhook/workflow HTTP/1.1\r\nHost: x\r\n",
    )
    .await
    .unwrap();
    for conn in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
        assert!(n.is_ok(), "connection was not closed");
    }
}

#[tokio::test]
async fn the_first_connect_loads_the_replica_exactly_once() {
    let (redis, r, ingress) = setup().await;
    // Something written after readiness and seen by the ingress: the replica
    // task has handled every event queued before it, a stale resync included.
    put_key(&r, "user_after_ready", r#"{"userId":"u_2","orgId":"o_1"}"#).await;
    assert!(
        eventually(WITHIN, || async {
            ingress
                .workflow(Some("user_after_ready"), r#"{"webhookId":"wh_1"}"#)
                .await
                .0
                == StatusCode::ACCEPTED
        })
        .await
    );
    let stats = redis.cli(&["INFO", "commandstats"]);
    let scans: u64 = stats
        .lines()
        .find(|l| l.starts_with("cmdstat_scan:"))
        .and_then(|l| l.split("calls=").nth(1)?.split(',').next()?.parse().ok())
        .unwrap_or(0);
    // A keyspace this small is one SCAN page: one full load.
    assert_eq!(scans, 1, "{stats}");
}

#[tokio::test]
async fn control_plane_keys_of_the_wrong_type_are_ignored() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    // A key record stored as a set, a trigger stored as a string, properties as a list.
    let _: () = fred::prelude::SetsInterface::sadd(
        &r,
        format!("tether:apikey:{}", sha256_hex("user_set")),
        "x",
    )
    .await
    .unwrap();
    let _: () = fred::prelude::KeysInterface::set(
        &r,
        "tether:triggers:o_1:wh_str",
        "wf_x",
        None,
        None,
        false,
    )
    .await
    .unwrap();
    let _: () = fred::prelude::ListInterface::rpush(&r, "tether:org:o_1:properties", "x")
        .await
        .unwrap();
    let ingress = Ingress::start(&redis.url()).await;
    assert_eq!(
        ingress
            .workflow(Some("user_set"), r#"{"webhookId":"wh_1"}"#)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, resp) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_str"}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&resp)["data"]["matchedCount"], 0);
    let (_, _, resp) = ingress.workflow(Some(KEY), r#"{"webhookId":"wh_1"}"#).await;
    assert_eq!(json(&resp)["data"]["matchedCount"], 1);
}

/// Each serving thread writes its requests' jobs through a Redis connection
/// of its own: two connections accepted one after the other are dealt to
/// the two threads, and Redis sees XADD from both serving threads' writer
/// connections (the shared client alone would be one).
#[tokio::test]
async fn each_serving_thread_writes_through_its_own_redis_connection() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_a"]).await;
    let mut config = config_for(&redis.url());
    config.server.serving_threads = tether_ingress::config::ServingThreads::Count(2);
    let ingress = Ingress::start_with(config).await;
    // Both connections are open before either sends, so they are accepted
    // back to back and land on different threads.
    let mut senders = Vec::new();
    for _ in 0..2 {
        let tcp = tokio::net::TcpStream::connect(ingress.addr).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(conn);
        senders.push(sender);
    }
    for sender in &mut senders {
        let req = Request::post("/api/webhook/workflow")
            .header("host", ingress.addr.to_string())
            .header("authorization", format!("Bearer {KEY}"))
            .body(Full::new(Bytes::from_static(br#"{"webhookId":"wh_1"}"#)))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(xlen(&r, STREAM).await, 2);
    let clients = redis.cli(&["CLIENT", "LIST"]);
    // The serving threads' writers (the main one's last command may be its
    // permission check, an XADD too).
    let writers: Vec<&str> = clients
        .lines()
        .filter(|l| l.split_whitespace().any(|f| f == "cmd=xadd"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|f| f.strip_prefix("name=tether-ingress:serve-"))
        })
        .collect();
    assert_eq!(writers.len(), 2, "{clients}");
    assert_ne!(writers[0], writers[1], "{clients}");
    assert!(ingress.shutdown().await);
}

/// A request's jobs leave as native `XADD`s, one per match, with no script
/// call (Redis spends less on a native `XADD` than on one run from Lua).
#[tokio::test]
async fn a_requests_jobs_are_native_xadds() {
    let (redis, r, ingress) = setup().await;
    let calls = |command: &str| {
        let stats = redis.cli(&["INFO", "commandstats"]);
        let prefix = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
            .and_then(|rest| rest.split(',').next().map(str::to_owned))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    let (xadds, evals) = (calls("xadd"), calls("eval") + calls("evalsha"));
    let (status, _, _) = ingress
        .workflow(Some(KEY), r#"{"webhookId":"wh_1","n":1}"#)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(xlen(&r, STREAM).await, 2);
    assert_eq!(calls("xadd") - xadds, 2);
    assert_eq!(calls("eval") + calls("evalsha"), evals);
}

#[tokio::test]
async fn redis_over_a_unix_socket_serves_keys_and_takes_jobs() {
    let (redis, r) = redis_with_key_and_trigger(KEY, &["wf_b", "wf_a"]).await;
    let ingress = Ingress::start(&redis.unix_url()).await;
    let body = r#"{"webhookId":"wh_1","lead":{"name":"Alex"}}"#;
    let (status, _, resp) = ingress.workflow(Some(KEY), body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&resp)["data"]["matchedCount"], 2);
    assert_eq!(xlen(&r, STREAM).await, 2);
    // The replica tracks over the socket too: a revoked key stops working.
    let _: i64 =
        fred::prelude::KeysInterface::del(&r, format!("tether:apikey:{}", sha256_hex(KEY)))
            .await
            .unwrap();
    assert!(
        eventually(WITHIN, || async {
            ingress.workflow(Some(KEY), body).await.0 == StatusCode::UNAUTHORIZED
        })
        .await,
        "a key revoked through Redis kept working over the unix socket"
    );
    assert!(ingress.shutdown().await);
}
