//! HS256 session JWTs: signature (ring HMAC, constant time), `alg` pinned,
//! `exp` required, `nbf` honoured, identity from `userId || sub` (as
//! JavaScript reads it) and `orgId`.
//!
//! The header and claims are parsed with the same simd-json layout as bodies
//! ([`crate::parse::with_document`]), which keeps duplicate keys, so a token
//! naming a claim twice is refused rather than resolved one way or the other.
//! Nothing here logs or returns token contents.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::hmac;
use simd_json::{Node, StaticNode};

use super::principal::Principal;
use crate::{
    config::Secret,
    error::Reject,
    id::Id,
    parse::{Document, truthy, with_document},
};

/// Longest token accepted (bytes); longer ones are refused before decoding.
const MAX_TOKEN: usize = 8 * 1024;

/// Verifies HS256 JWTs with one secret.
pub struct JwtVerifier {
    key: hmac::Key,
    leeway_secs: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtVerifier(**REDACTED**)")
    }
}

impl JwtVerifier {
    /// A verifier for `secret`, allowing `leeway_secs` of clock skew.
    pub fn new(secret: &Secret, leeway_secs: u64) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret.expose()),
            leeway_secs,
        }
    }

    /// Verifies `token` at unix time `now` (seconds) and returns its principal.
    pub fn verify(&self, token: &[u8], now: u64) -> Result<Principal, Reject> {
        if token.len() > MAX_TOKEN {
            return Err(Reject::InvalidJwt);
        }
        let mut parts = token.split(|&b| b == b'.');
        let (Some(header), Some(claims), Some(sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Reject::InvalidJwt);
        };
        let signature = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| Reject::InvalidJwt)?;
        let signed = &token[..header.len() + 1 + claims.len()];
        hmac::verify(&self.key, signed, &signature).map_err(|_| Reject::InvalidJwt)?;
        // Signed by us: now check what it says.
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| Reject::InvalidJwt)?;
        with_document(&header, |doc| {
            unique_keys(doc)?;
            match doc.member("alg").and_then(|m| doc.value(m)) {
                Some(Node::String("HS256")) => Ok(()),
                _ => Err(Reject::InvalidJwt),
            }
        })
        .map_err(|_| Reject::InvalidJwt)?;
        let claims = URL_SAFE_NO_PAD
            .decode(claims)
            .map_err(|_| Reject::InvalidJwt)?;
        with_document(&claims, |doc| {
            unique_keys(doc)?;
            let exp = number(doc, "exp")?.ok_or(Reject::InvalidJwt)?;
            if now >= exp.saturating_add(self.leeway_secs) {
                return Err(Reject::ExpiredJwt);
            }
            if let Some(nbf) = number(doc, "nbf")?
                && now.saturating_add(self.leeway_secs) < nbf
            {
                return Err(Reject::ExpiredJwt);
            }
            // `userId || sub`, as the backend's JavaScript reads them: `sub`
            // only when `userId` is absent or falsy, whatever `sub` holds
            // otherwise (an issuer's numeric `sub` beside a `userId`).
            let user = match truthy_string(doc, "userId")? {
                Some(user) => user,
                None => truthy_string(doc, "sub")?.ok_or(Reject::InvalidJwt)?,
            };
            let org = string(doc, "orgId")?.ok_or(Reject::InvalidJwt)?;
            Ok(Principal {
                user_id: Id::from_str_copy(user),
                org_id: Id::from_str_copy(org),
                rate_limit_per_sec: None,
                limiter: Default::default(),
                digest: None,
            })
        })
        .map_err(|e| match e {
            Reject::ExpiredJwt => Reject::ExpiredJwt,
            _ => Reject::InvalidJwt,
        })
    }
}

fn unique_keys(doc: &Document<'_>) -> Result<(), Reject> {
    for (i, a) in doc.members.iter().enumerate() {
        if doc.members[..i].iter().any(|b| doc.key(a) == doc.key(b)) {
            return Err(Reject::InvalidJwt);
        }
    }
    Ok(())
}

/// A numeric claim as whole seconds; present but not a number is invalid.
fn number(doc: &Document<'_>, name: &str) -> Result<Option<u64>, Reject> {
    let Some(m) = doc.member(name) else {
        return Ok(None);
    };
    match doc.value(m) {
        Some(Node::Static(StaticNode::U64(n))) => Ok(Some(*n)),
        Some(Node::Static(StaticNode::I64(n))) => Ok(Some((*n).max(0) as u64)),
        Some(Node::Static(StaticNode::F64(f))) if f.is_finite() => Ok(Some(f.max(0.0) as u64)),
        _ => Err(Reject::InvalidJwt),
    }
}

/// A claim JavaScript counts as true, when it is a string: `None` when it
/// is absent or falsy (`null`, `false`, `0`, `""`); a truthy value that is
/// not a string (a number id) is invalid, as no job could carry it as the
/// backend would.
fn truthy_string<'a>(doc: &'a Document<'_>, name: &str) -> Result<Option<&'a str>, Reject> {
    let Some(m) = doc.member(name) else {
        return Ok(None);
    };
    match doc.value(m) {
        Some(Node::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(value) if !truthy(value) => Ok(None),
        _ => Err(Reject::InvalidJwt),
    }
}

/// A non-empty string claim; present but not a string is invalid.
fn string<'a>(doc: &'a Document<'_>, name: &str) -> Result<Option<&'a str>, Reject> {
    let Some(m) = doc.member(name) else {
        return Ok(None);
    };
    match doc.value(m) {
        Some(Node::String(s)) if !s.is_empty() => Ok(Some(s)),
        _ => Err(Reject::InvalidJwt),
    }
}

/// Signs `header.claims` (JSON texts) with `secret`: for tests and tools.
pub fn sign(secret: &[u8], header: &str, claims: &str) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let signing = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let tag = hmac::sign(&key, signing.as_bytes());
    format!("{signing}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"test-secret";
    const NOW: u64 = 1_800_000_000;
    const HS: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&Secret::new("test-secret"), 5)
    }

    fn check(header: &str, claims: &str) -> Result<Principal, Reject> {
        verifier().verify(sign(SECRET, header, claims).as_bytes(), NOW)
    }

    #[test]
    fn valid_token_gives_identity() {
        let p = check(
            HS,
            &format!(
                r#"{{"userId":"u_1","sub":"x","orgId":"o_1","exp":{}}}"#,
                NOW + 60
            ),
        )
        .unwrap();
        assert_eq!((p.user_id.as_str(), p.org_id.as_str()), ("u_1", "o_1"));
        let p = check(
            HS,
            &format!(r#"{{"sub":"u_2","orgId":"o_1","exp":{}}}"#, NOW + 60),
        )
        .unwrap();
        assert_eq!(p.user_id.as_str(), "u_2");
    }

    /// Identity is `userId || sub`: `sub` is read only when `userId` is
    /// absent or falsy, so a numeric `sub` beside a `userId` is no reason
    /// to refuse the token, and a `null` `userId` falls back to `sub`.
    #[test]
    fn user_is_user_id_or_else_sub_as_javascript_reads_it() {
        let user = |claims: &str| {
            let claims = format!(r#"{{"orgId":"o_1","exp":{},{claims}}}"#, NOW + 60);
            check(HS, &claims)
                .map(|p| p.user_id.as_str().to_owned())
                .ok()
        };
        assert_eq!(user(r#""userId":"u_1","sub":42"#).as_deref(), Some("u_1"));
        assert_eq!(user(r#""userId":"u_1","sub":null"#).as_deref(), Some("u_1"));
        assert_eq!(user(r#""userId":null,"sub":"u_2""#).as_deref(), Some("u_2"));
        assert_eq!(user(r#""userId":"","sub":"u_2""#).as_deref(), Some("u_2"));
        assert_eq!(user(r#""userId":0,"sub":"u_2""#).as_deref(), Some("u_2"));
        assert_eq!(
            user(r#""userId":false,"sub":"u_2""#).as_deref(),
            Some("u_2")
        );
        assert_eq!(user(r#""userId":7,"sub":"u_2""#), None);
        assert_eq!(user(r#""userId":{},"sub":"u_2""#), None);
        assert_eq!(user(r#""userId":null,"sub":42"#), None);
        assert_eq!(user(r#""userId":null,"sub":"""#), None);
        assert_eq!(user(r#""userId":null"#), None);
    }

    #[test]
    fn time_claims() {
        let exp = |e: u64| format!(r#"{{"userId":"u","orgId":"o","exp":{e}}}"#);
        assert!(matches!(check(HS, &exp(NOW - 10)), Err(Reject::ExpiredJwt)));
        assert!(check(HS, &exp(NOW - 2)).is_ok(), "within leeway");
        assert!(matches!(
            check(HS, r#"{"userId":"u","orgId":"o"}"#),
            Err(Reject::InvalidJwt)
        ));
        assert!(matches!(
            check(HS, r#"{"userId":"u","orgId":"o","exp":"soon"}"#),
            Err(Reject::InvalidJwt)
        ));
        let nbf = |n: u64| {
            format!(
                r#"{{"userId":"u","orgId":"o","exp":{},"nbf":{n}}}"#,
                NOW + 60
            )
        };
        assert!(matches!(check(HS, &nbf(NOW + 30)), Err(Reject::ExpiredJwt)));
        assert!(check(HS, &nbf(NOW + 3)).is_ok());
    }

    #[test]
    fn refusals() {
        let claims = format!(r#"{{"userId":"u","orgId":"o","exp":{}}}"#, NOW + 60);
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS512"}"#,
            r#"{"alg":"RS256"}"#,
            r#"{}"#,
            r#"{"alg":"HS256","alg":"none"}"#,
        ] {
            assert!(
                matches!(check(header, &claims), Err(Reject::InvalidJwt)),
                "{header}"
            );
        }
        let dup = format!(
            r#"{{"userId":"u","orgId":"o","orgId":"evil","exp":{}}}"#,
            NOW + 60
        );
        assert!(matches!(check(HS, &dup), Err(Reject::InvalidJwt)));
        assert!(matches!(
            check(HS, &format!(r#"{{"userId":"u","exp":{}}}"#, NOW + 60)),
            Err(Reject::InvalidJwt)
        ));
        let wrong = sign(b"other", HS, &claims);
        assert!(matches!(
            verifier().verify(wrong.as_bytes(), NOW),
            Err(Reject::InvalidJwt)
        ));
        let mut tampered = sign(SECRET, HS, &claims);
        tampered.push('A');
        assert!(matches!(
            verifier().verify(tampered.as_bytes(), NOW),
            Err(Reject::InvalidJwt)
        ));
        for garbage in ["a.b.c", "...", "x", "eyJ.eyJ.", ""] {
            assert!(
                matches!(
                    verifier().verify(garbage.as_bytes(), NOW),
                    Err(Reject::InvalidJwt)
                ),
                "{garbage}"
            );
        }
        // alg none with an empty signature.
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(&claims)
        );
        assert!(matches!(
            verifier().verify(none.as_bytes(), NOW),
            Err(Reject::InvalidJwt)
        ));
    }
}
