//! Entry points for the fuzz targets in `fuzz/` and for the regression test
//! that replays their corpora on stable Rust (`tests/fuzz_corpus.rs`).
//!
//! Each function takes arbitrary bytes, runs one parser on them and checks
//! what must hold whatever the input; a violated property panics, which is
//! what the fuzzer reports. None of this is on the request path.

use std::{collections::HashMap, sync::Arc};

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};

use crate::{
    auth::{bearer_token, jwt::JwtVerifier, jwt::sign, looks_like_jwt},
    config::Secret,
    error::Reject,
    outreach::{CONFIGURATION_ID_KEYS, Category, group_fields},
    parse::{parse_envelope, with_document},
};

/// Members of a JSON object text, by serde_json, in order; `None` if it is
/// not one serde_json accepts.
fn members(text: &[u8]) -> Option<Vec<(String, serde_json::Value)>> {
    let v: serde_json::Value = serde_json::from_slice(text).ok()?;
    // serde_json's map keeps one value per key, so repeated keys cannot be
    // compared member by member; such bodies are checked for no-panic only.
    let serde_json::Value::Object(map) = v else {
        return None;
    };
    Some(map.into_iter().collect())
}

/// The workflow body parser and the `webhookId` splice.
///
/// When a body is accepted: the payload is a JSON object holding exactly the
/// body's other members with their values, and the id is the body's
/// `webhookId`. A body refused as malformed is one serde_json refuses too.
pub fn envelope(data: &[u8]) {
    let result = parse_envelope(BytesMut::from(data));
    let original = members(data);
    match result {
        Ok(env) => {
            let Some(original) = original else {
                // Accepted by simd-json but not serde_json (e.g. a lone
                // surrogate escape): the bytes pass through unchanged.
                return;
            };
            let expected: Vec<_> = original
                .iter()
                .filter(|(k, _)| k != "webhookId")
                .cloned()
                .collect();
            let Some(payload) = members(&env.payload) else {
                panic!("payload is not a JSON object: {:?}", env.payload);
            };
            if original.len() == expected.len() + 1 {
                let mut expected = expected;
                let mut payload = payload;
                expected.sort_by(|a, b| a.0.cmp(&b.0));
                payload.sort_by(|a, b| a.0.cmp(&b.0));
                assert_eq!(payload, expected, "payload members differ");
                let id = original
                    .iter()
                    .find(|(k, _)| k == "webhookId")
                    .and_then(|(_, v)| v.as_str().map(str::to_owned));
                assert_eq!(id.as_deref(), Some(env.webhook_id.as_str()));
            }
        }
        Err(Reject::MalformedJson) => {
            // serde_json caps nesting at 128; simd-json at 1024. A body
            // serde_json accepts must not be called malformed here.
            assert!(
                original.is_none() && serde_json::from_slice::<serde_json::Value>(data).is_err(),
                "accepted by serde_json but refused as malformed"
            );
        }
        Err(_) => {}
    }
}

const SECRET: &str = "fuzz-secret";
/// Unix time the JWT checks run at.
const NOW: u64 = 1_700_000_000;

/// The `Authorization` header parser and the HS256 JWT verifier.
///
/// The input is used three ways: as a whole header value; as a token given to
/// the verifier unsigned (it must be refused: the signature cannot match);
/// and split at the first NUL into header and claims JSON that are signed
/// with the test secret, so the claim checks behind the signature are reached.
pub fn authorization(data: &[u8]) {
    let verifier = JwtVerifier::new(&Secret::new(SECRET), 5);
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        if let Ok(token) = bearer_token(&headers) {
            assert!(!token.is_empty());
            assert!(!token.starts_with(b" ") && !token.ends_with(b" "));
            if looks_like_jwt(token) {
                assert!(
                    verifier.verify(token, NOW).is_err(),
                    "unsigned token accepted"
                );
            }
        }
    }
    assert!(
        verifier.verify(data, NOW).is_err(),
        "unsigned token accepted"
    );
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (header, claims) = data.split_at(split);
    let claims = claims.get(1..).unwrap_or_default();
    let (Ok(header), Ok(claims)) = (std::str::from_utf8(header), std::str::from_utf8(claims))
    else {
        return;
    };
    let token = sign(SECRET.as_bytes(), header, claims);
    if let Ok(principal) = verifier.verify(token.as_bytes(), NOW) {
        assert!(!principal.org_id.as_str().is_empty());
        assert!(!principal.user_id.as_str().is_empty());
        let header: serde_json::Value =
            serde_json::from_str(header).unwrap_or(serde_json::Value::Null);
        assert_eq!(header["alg"], "HS256", "a token not HS256 was accepted");
        let claims: serde_json::Value =
            serde_json::from_str(claims).unwrap_or(serde_json::Value::Null);
        if let Some(exp) = claims["exp"].as_u64() {
            assert!(exp + 5 > NOW, "an expired token was accepted");
        }
    }
}

/// The outreach router: a body parsed, its fields grouped raw or fixed.
///
/// Every group is a JSON object; in raw format the groups hold exactly the
/// body's members less the configuration id, each where the properties say.
pub fn outreach(data: &[u8]) {
    let properties: HashMap<Box<str>, Category> = [
        ("job", Category::Application),
        ("message", Category::Conversation),
        ("email", Category::Contact),
    ]
    .into_iter()
    .map(|(k, c)| (Box::from(k), c))
    .collect();
    let properties = Arc::new(properties);
    let Ok((fixed, groups, ranges, count)) = with_document(data, |doc| {
        let keys: Vec<&str> = doc
            .members
            .iter()
            .map(|m| doc.key(m))
            .filter(|k| !CONFIGURATION_ID_KEYS.contains(k))
            .collect();
        let distinct = keys.iter().collect::<std::collections::HashSet<_>>().len();
        let unique = (distinct == keys.len()).then_some(keys.len());
        group_fields(data, doc, Some(&properties)).map(|(f, g, r)| (f, g, r, unique))
    }) else {
        return;
    };
    let Some(original) = members(data) else {
        return;
    };
    let mut all = Vec::new();
    for (i, range) in ranges.iter().enumerate() {
        let Some(group) = members(&groups[range.clone()]) else {
            panic!(
                "group {i} is not a JSON object: {:?}",
                &groups[range.clone()]
            );
        };
        if !fixed {
            for (k, _) in &group {
                let want = properties
                    .get(k.as_str())
                    .copied()
                    .unwrap_or(Category::Contact);
                let at = match want {
                    Category::Contact => 0,
                    Category::Application => 1,
                    Category::Conversation => 2,
                };
                assert_eq!(at, i, "field {k:?} in the wrong group");
            }
        }
        all.extend(group);
    }
    // With repeated keys serde_json keeps one value each: compare only
    // bodies without them.
    if let (false, Some(count)) = (fixed, count) {
        assert_eq!(all.len(), count, "raw groups lost or invented a field");
        let mut expected: Vec<_> = original
            .into_iter()
            .filter(|(k, _)| !CONFIGURATION_ID_KEYS.contains(&k.as_str()))
            .collect();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        all.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(all, expected, "raw groups lost or invented a field");
    }
}
