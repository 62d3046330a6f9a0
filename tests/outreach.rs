//! End-to-end tests of POST /api/webhook/outreach against a real redis-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod support;

use std::time::Duration;

use http::StatusCode;
use support::*;

const KEY: &str = "user_outreach_key_01";
const STREAM: &str = "tether:jobs:outreach";
const WITHIN: Duration = Duration::from_secs(1);
const CFG: &str =
    r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":"p_1","promptId":null}"#;

async fn set(r: &fred::clients::Client, key: &str, value: &str) {
    let _: () = fred::prelude::KeysInterface::set(r, key, value, None, None, false)
        .await
        .unwrap();
}

async fn setup() -> (RedisServer, fred::clients::Client, Ingress) {
    let redis = RedisServer::start();
    let r = redis.client().await;
    put_key(&r, KEY, r#"{"userId":"u_1","orgId":"o_1"}"#).await;
    put_key(&r, "user_other", r#"{"userId":"u_2","orgId":"o_1"}"#).await;
    set(&r, "tether:outreach:config:cfg_1", CFG).await;
    let _: () = fred::prelude::HashesInterface::hset(
        &r,
        "tether:org:o_1:properties",
        vec![
            ("jobTitle", "application"),
            ("company", "application"),
            ("lastMessage", "conversation"),
            ("email", "contact"),
        ],
    )
    .await
    .unwrap();
    let ingress = Ingress::start(&redis.url()).await;
    (redis, r, ingress)
}

async fn post(
    ingress: &Ingress,
    token: Option<&str>,
    body: impl AsRef<[u8]>,
) -> (StatusCode, serde_json::Value) {
    let mut b = http::Request::post(ingress.uri("/api/webhook/outreach"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let (status, _, body) = ingress
        .request(
            b.body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(
                body.as_ref(),
            )))
            .unwrap(),
        )
        .await;
    (status, json(&body))
}

#[tokio::test]
async fn raw_fields_are_routed_by_the_org_properties() {
    let (_redis, r, ingress) = setup().await;
    let body = r#"{"configurationId":"cfg_1","firstName":"Jane","email":"jane@example.com","phoneNumber":12345678901234567890,"jobTitle":"Engineer","company":{"name":"Acme","size":1.10},"lastMessage":"hi \u00e9","unknownField":[1,2]}"#;
    let (status, v) = post(&ingress, Some(KEY), body).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["success"], true);
    assert_eq!(v["message"], "Outreach processed successfully");
    assert_eq!(v["data"]["configurationId"], "cfg_1");
    let got = entries(&r, STREAM).await;
    assert_eq!(got.len(), 1);
    let (id, e) = &got[0];
    assert_eq!(v["data"]["jobId"], id.as_str());
    let names: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        names,
        [
            "configurationId",
            "userId",
            "orgId",
            "format",
            "contacts",
            "applications",
            "conversations",
            "receivedAt",
            "requestId"
        ]
    );
    assert_eq!(field(e, "configurationId"), "cfg_1");
    assert_eq!(field(e, "userId"), "u_1");
    assert_eq!(field(e, "orgId"), "o_1");
    assert_eq!(field(e, "format"), "raw");
    assert_eq!(
        field(e, "contacts"),
        r#"{"firstName":"Jane","email":"jane@example.com","phoneNumber":12345678901234567890,"unknownField":[1,2]}"#
    );
    assert_eq!(
        field(e, "applications"),
        r#"{"jobTitle":"Engineer","company":{"name":"Acme","size":1.10}}"#
    );
    assert_eq!(field(e, "conversations"), r#"{"lastMessage":"hi \u00e9"}"#);
    assert!(field(e, "receivedAt").parse::<u64>().is_ok());
    assert!(!field(e, "requestId").is_empty());
}

#[tokio::test]
async fn raw_without_properties_goes_to_contacts_and_empty_groups_are_braces() {
    let (_redis, r, ingress) = setup().await;
    put_key(&r, "user_o9", r#"{"userId":"u_9","orgId":"o_9"}"#).await;
    set(
        &r,
        "tether:outreach:config:cfg_9",
        r#"{"userId":"u_9","orgId":"o_9","active":true,"processId":null,"promptId":"pr_1"}"#,
    )
    .await;
    assert!(
        eventually(WITHIN, || async {
            post(
                &ingress,
                Some("user_o9"),
                r#"{"configurationId":"cfg_9","jobTitle":"x"}"#,
            )
            .await
            .0 == StatusCode::OK
        })
        .await
    );
    let got = entries(&r, STREAM).await;
    let e = &got.last().unwrap().1;
    assert_eq!(field(e, "contacts"), r#"{"jobTitle":"x"}"#);
    assert_eq!(field(e, "applications"), "{}");
    assert_eq!(field(e, "conversations"), "{}");
    // Only the id: every group empty.
    let (status, _) = post(&ingress, Some("user_o9"), r#"{"configurationId":"cfg_9"}"#).await;
    assert_eq!(status, StatusCode::OK);
    let got = entries(&r, STREAM).await;
    assert_eq!(field(&got.last().unwrap().1, "contacts"), "{}");
}

#[tokio::test]
async fn fixed_groups_are_taken_as_given() {
    let (_redis, r, ingress) = setup().await;
    let cases = [
        (
            r#"{"configurationId":"cfg_1","contacts":{"firstName":"Jane","n":1E2}}"#,
            [r#"{"firstName":"Jane","n":1E2}"#, "{}", "{}"],
        ),
        (
            r#"{"configurationId":"cfg_1","contacts":{"a":1},"applications":{ "jobTitle" : "Eng" },"ignored":true}"#,
            [r#"{"a":1}"#, r#"{ "jobTitle" : "Eng" }"#, "{}"],
        ),
        (
            r#"{"applications":{},"configurationId":"cfg_1","conversations":{"m":[1,{"x":null}]},"contacts":{"p":98765432109876543210}}"#,
            [
                r#"{"p":98765432109876543210}"#,
                "{}",
                r#"{"m":[1,{"x":null}]}"#,
            ],
        ),
    ];
    for (body, [c, a, v]) in cases {
        let (status, resp) = post(&ingress, Some(KEY), body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {resp}");
        let got = entries(&r, STREAM).await;
        let (id, e) = got.last().unwrap();
        assert_eq!(resp["data"]["jobId"], id.as_str());
        assert_eq!(field(e, "format"), "fixed");
        assert_eq!(
            (
                field(e, "contacts"),
                field(e, "applications"),
                field(e, "conversations")
            ),
            (c, a, v),
            "{body}"
        );
    }
}

#[tokio::test]
async fn the_three_spellings_of_the_configuration_id() {
    let (_redis, r, ingress) = setup().await;
    for spelling in ["configurationId", "configuration_id", "CONFIGURATION_ID"] {
        let body = format!(r#"{{"{spelling}":"cfg_1","email":"a@b.c"}}"#);
        let (status, v) = post(&ingress, Some(KEY), &body).await;
        assert_eq!(status, StatusCode::OK, "{spelling}");
        assert_eq!(v["data"]["configurationId"], "cfg_1");
        let got = entries(&r, STREAM).await;
        let e = &got.last().unwrap().1;
        assert_eq!(field(e, "configurationId"), "cfg_1");
        // The id is not routed as a field.
        assert_eq!(field(e, "contacts"), r#"{"email":"a@b.c"}"#);
    }
    // A name given twice is read as the backend's JSON.parse reads it: the
    // last one counts.
    let (status, v) = post(
        &ingress,
        Some(KEY),
        r#"{"configurationId":"cfg_nope","email":"a@b.c","configurationId":"cfg_1"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["configurationId"], "cfg_1");
    assert_eq!(
        field(
            &entries(&r, STREAM).await.last().unwrap().1,
            "configurationId"
        ),
        "cfg_1"
    );
    let (status, v) = post(
        &ingress,
        Some(KEY),
        r#"{"configurationId":"cfg_1","configurationId":"cfg_nope"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    // The spellings are read as the backend's `a || b || c`: a falsy value
    // gives way to the next spelling.
    for body in [
        r#"{"configurationId":null,"configuration_id":"cfg_1"}"#,
        r#"{"configurationId":"","CONFIGURATION_ID":"cfg_1","configuration_id":0}"#,
        r#"{"configuration_id":false,"CONFIGURATION_ID":"cfg_1","configurationId":-0.0}"#,
    ] {
        let (status, v) = post(&ingress, Some(KEY), body).await;
        assert_eq!(status, StatusCode::OK, "{body}: {v}");
        assert_eq!(v["data"]["configurationId"], "cfg_1", "{body}");
        let got = entries(&r, STREAM).await;
        let e = &got.last().unwrap().1;
        assert_eq!(field(e, "configurationId"), "cfg_1", "{body}");
        assert_eq!(field(e, "contacts"), "{}", "{body}");
    }
    // A body that is not UTF-8 (a Latin-1 `é`) is read as the backend's
    // body parser decodes it: U+FFFD in its place.
    let (status, v) = post(
        &ingress,
        Some(KEY),
        b"{\"configuration_id\":\"cfg_1\",\"firstName\":\"Jos\xe9\"}",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let got = entries(&r, STREAM).await;
    assert_eq!(
        field(&got.last().unwrap().1, "contacts"),
        "{\"firstName\":\"Jos\u{fffd}\"}"
    );
    let (status, _) = post(
        &ingress,
        Some(KEY),
        r#"{"configurationId":"cfg_1","contacts":{"a":1},"contacts":{"b":2}}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        field(&entries(&r, STREAM).await.last().unwrap().1, "contacts"),
        r#"{"b":2}"#
    );
}

#[tokio::test]
async fn refusals_leave_the_stream_untouched() {
    let (_redis, r, ingress) = setup().await;
    set(
        &r,
        "tether:outreach:config:cfg_off",
        r#"{"userId":"u_1","orgId":"o_1","active":false,"processId":"p","promptId":null}"#,
    )
    .await;
    set(
        &r,
        "tether:outreach:config:cfg_empty",
        r#"{"userId":"u_1","orgId":"o_1","active":true,"processId":null,"promptId":null}"#,
    )
    .await;
    assert!(
        eventually(WITHIN, || async {
            post(&ingress, Some(KEY), r#"{"configurationId":"cfg_empty"}"#)
                .await
                .0
                == StatusCode::BAD_REQUEST
        })
        .await
    );
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VySWQiOiJ1XzEifQ.c2ln";
    let cases: &[(Option<&str>, &str, StatusCode, &str)] = &[
        (
            None,
            r#"{"configurationId":"cfg_1"}"#,
            StatusCode::UNAUTHORIZED,
            "AUTH_REQUIRED",
        ),
        (
            Some("user_nope"),
            r#"{"configurationId":"cfg_1"}"#,
            StatusCode::UNAUTHORIZED,
            "INVALID_API_KEY",
        ),
        (
            Some(jwt),
            r#"{"configurationId":"cfg_1"}"#,
            StatusCode::UNAUTHORIZED,
            "API_KEY_REQUIRED",
        ),
        (Some(KEY), "{", StatusCode::BAD_REQUEST, "INVALID_JSON"),
        (Some(KEY), "[]", StatusCode::BAD_REQUEST, "INVALID_BODY"),
        (
            Some(KEY),
            r#"{"email":"a@b.c"}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_CONFIGURATION_ID",
        ),
        (
            Some(KEY),
            r#"{"configurationId":7}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONFIGURATION_ID",
        ),
        (
            Some(KEY),
            r#"{"configuration_id":null}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_CONFIGURATION_ID",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"","CONFIGURATION_ID":0}"#,
            StatusCode::BAD_REQUEST,
            "MISSING_CONFIGURATION_ID",
        ),
        (
            Some(KEY),
            r#"{"configurationId":false,"configuration_id":["cfg_1"]}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_CONFIGURATION_ID",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"cfg_none"}"#,
            StatusCode::NOT_FOUND,
            "CONFIGURATION_NOT_FOUND",
        ),
        (
            Some("user_other"),
            r#"{"configurationId":"cfg_1"}"#,
            StatusCode::NOT_FOUND,
            "CONFIGURATION_NOT_FOUND",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"cfg_off"}"#,
            StatusCode::BAD_REQUEST,
            "CONFIGURATION_INACTIVE",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"cfg_empty"}"#,
            StatusCode::BAD_REQUEST,
            "CONFIGURATION_INCOMPLETE",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"cfg_1","contacts":[1]}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_GROUP",
        ),
        (
            Some(KEY),
            r#"{"configurationId":"cfg_1","contacts":{},"applications":"x"}"#,
            StatusCode::BAD_REQUEST,
            "INVALID_GROUP",
        ),
    ];
    let mut bodies = std::collections::HashMap::new();
    for (token, body, status, code) in cases {
        let (got, v) = post(&ingress, *token, body).await;
        assert_eq!(
            (got, v["code"].as_str().unwrap()),
            (*status, *code),
            "{body}"
        );
        assert_eq!(v["success"], false);
        bodies.entry(*code).or_insert_with(Vec::new).push(v);
    }
    // Someone else's configuration is indistinguishable from a missing one.
    let nf = &bodies["CONFIGURATION_NOT_FOUND"];
    assert_eq!(nf[0], nf[1]);
    assert_eq!(xlen(&r, STREAM).await, 0);
    let (status, _, _) = ingress.get("/api/webhook/outreach").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn configuration_and_properties_changes_are_seen_within_a_second() {
    let (_redis, r, ingress) = setup().await;
    let status = || async {
        post(
            &ingress,
            Some(KEY),
            r#"{"configurationId":"cfg_1","hobby":"golf"}"#,
        )
        .await
        .0
    };
    let contacts_of_last = || async {
        let got = entries(&r, STREAM).await;
        got.last().map(|(_, e)| {
            (
                field(e, "contacts").to_owned(),
                field(e, "applications").to_owned(),
            )
        })
    };
    assert_eq!(status().await, StatusCode::OK);
    set(
        &r,
        "tether:outreach:config:cfg_1",
        &CFG.replace(r#""active":true"#, r#""active":false"#),
    )
    .await;
    assert!(
        eventually(WITHIN, || async {
            status().await == StatusCode::BAD_REQUEST
        })
        .await,
        "deactivated"
    );
    let _: () = fred::prelude::KeysInterface::del(&r, "tether:outreach:config:cfg_1")
        .await
        .unwrap();
    assert!(
        eventually(WITHIN, || async { status().await == StatusCode::NOT_FOUND }).await,
        "deleted"
    );
    set(&r, "tether:outreach:config:cfg_1", CFG).await;
    assert!(
        eventually(WITHIN, || async { status().await == StatusCode::OK }).await,
        "recreated"
    );

    assert_eq!(contacts_of_last().await.unwrap().0, r#"{"hobby":"golf"}"#);
    let _: () = fred::prelude::HashesInterface::hset(
        &r,
        "tether:org:o_1:properties",
        ("hobby", "application"),
    )
    .await
    .unwrap();
    assert!(
        eventually(WITHIN, || async {
            status().await == StatusCode::OK
                && contacts_of_last().await.unwrap().1 == r#"{"hobby":"golf"}"#
        })
        .await,
        "property added"
    );
    let _: () = fred::prelude::HashesInterface::hdel(&r, "tether:org:o_1:properties", "hobby")
        .await
        .unwrap();
    assert!(
        eventually(WITHIN, || async {
            status().await == StatusCode::OK
                && contacts_of_last().await.unwrap().0 == r#"{"hobby":"golf"}"#
        })
        .await,
        "property removed"
    );
}
