//! `POST /api/webhook/outreach`: one lead → one `tether:jobs:outreach` entry.
//!
//! ```text
//! [webhook: auth (API key only) → ready? → rate limit → body → idempotency]
//! → parse → configurationId
//! → OutreachConfigs (owner, active, process/prompt) → group fields
//! (fixed: contacts/applications/conversations as given; raw: each field
//! routed by OrgProperties) → sink (XADD, acknowledged) → 200 with the entry id
//! ```
//! Values keep the caller's bytes: each group is assembled from the raw key
//! and value text of the body's members, never re-serialized. The two caches
//! are views of the shared replica ([`crate::replica`]).

use std::{collections::HashMap, ops::Range};

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use simd_json::Node;

pub(crate) use crate::outreach_views::Category;

use crate::{
    clock::now_ms,
    error::Reject,
    id::Id,
    parse::{Document, truthy, with_body},
    response::decimal,
    sink::{OutreachJob, Stored},
    webhook::{Ctx, Webhook},
};

/// Accepted spellings of the configuration id, in order of precedence: the
/// backend reads `configurationId || configuration_id || CONFIGURATION_ID`.
pub(crate) const CONFIGURATION_ID_KEYS: [&str; 3] =
    ["configurationId", "configuration_id", "CONFIGURATION_ID"];
/// The fixed-format group keys.
const GROUPS: [&str; 3] = ["contacts", "applications", "conversations"];

// === the route ===

/// What the body turned into, as ranges of one buffer.
struct Plan {
    configuration_id: Id,
    /// The id as sent, between its quotes (for the response).
    configuration_id_json: Range<usize>,
    fixed: bool,
    groups: Bytes,
    ranges: [Range<usize>; 3],
}

/// `POST /api/webhook/outreach`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outreach;

impl Webhook for Outreach {
    fn name(&self) -> &'static str {
        "outreach"
    }

    fn api_keys_only(&self) -> bool {
        true
    }

    fn accept(
        &self,
        ctx: &Ctx<'_>,
        body: BytesMut,
    ) -> impl std::future::Future<Output = Result<(StatusCode, Bytes), Reject>> + Send {
        // Boxed, like every path off the hot one: inline, its future would
        // grow the service's (and so the workflow route's) to its size.
        Box::pin(accept(ctx, body))
    }
}

/// The route's work on an authenticated request's body; returns the status
/// and body to send.
async fn accept(ctx: &Ctx<'_>, mut body: BytesMut) -> Result<(StatusCode, Bytes), Reject> {
    let Ctx {
        app,
        principal,
        request_id,
        settings,
    } = *ctx;
    let received_at = now_ms();
    let plan = with_body(&mut body, |body, doc| plan(ctx, body, doc))?;
    let body = body.freeze();
    let mut digits = [0u8; 20];
    let job = OutreachJob {
        configuration_id: plan.configuration_id.bytes().clone(),
        user_id: principal.user_id.bytes().clone(),
        org_id: principal.org_id.bytes().clone(),
        format: Bytes::from_static(if plan.fixed { b"fixed" } else { b"raw" }),
        contacts: plan.groups.slice(plan.ranges[0].clone()),
        applications: plan.groups.slice(plan.ranges[1].clone()),
        conversations: plan.groups.slice(plan.ranges[2].clone()),
        received_at: Bytes::copy_from_slice(decimal(received_at, &mut digits)),
        request_id: Bytes::copy_from_slice(request_id.as_bytes()),
    };
    let job_id = match app.sink.enqueue_outreach(&job, settings).await? {
        Stored::Redis(id) => Some(id),
        Stored::Spooled => None,
    };
    // Spooled: no stream entry id exists yet; 202 says "accepted, not yet
    // in the stream", jobId is null.
    let status = if job_id.is_some() {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    Ok((
        status,
        accepted(&body[plan.configuration_id_json], job_id.as_deref()),
    ))
}

fn plan(ctx: &Ctx<'_>, body: &[u8], doc: &Document<'_>) -> Result<Plan, Reject> {
    let (app, principal) = (ctx.app, ctx.principal);
    // JavaScript's `||`: a spelling whose value is falsy (`null`, `""`,
    // `false`, `0`) gives way to the next; none truthy is "missing".
    let id_member = CONFIGURATION_ID_KEYS
        .iter()
        .filter_map(|k| doc.member(k))
        .find(|m| doc.value(m).is_some_and(truthy))
        .ok_or(Reject::MissingConfigurationId)?;
    let Some(Node::String(id)) = doc.value(id_member) else {
        return Err(Reject::ConfigurationIdNotString);
    };
    // One answer for "no such id" and "someone else's", so ids can't be probed.
    let config = app
        .outreach_configs
        .lookup(id)
        .filter(|c| c.user_id == principal.user_id)
        .ok_or(Reject::ConfigurationNotFound)?;
    if !config.active {
        return Err(Reject::ConfigurationInactive);
    }
    if !config.runnable {
        return Err(Reject::ConfigurationIncomplete);
    }
    let configuration_id = Id::from_str_copy(id);
    let configuration_id_json = id_member.value_start + 1..id_member.value_end - 1;

    let properties = app.org_properties.lookup(principal.org_id.as_str());
    let (fixed, groups, ranges) = group_fields(body, doc, properties.as_deref())?;
    Ok(Plan {
        configuration_id,
        configuration_id_json,
        fixed,
        groups,
        ranges,
    })
}

/// The three groups (`contacts`, `applications`, `conversations`) of a body,
/// as JSON object texts in one buffer, built from the caller's raw bytes.
///
/// Fixed format when the body has any of the three group keys (each must be
/// an object; a missing one is `{}`); raw format otherwise: every top-level
/// member but the configuration id goes where `properties` says, unknown
/// fields to `contacts`. Returns (fixed?, buffer, the three ranges).
pub(crate) fn group_fields(
    body: &[u8],
    doc: &Document<'_>,
    properties: Option<&HashMap<Box<str>, Category>>,
) -> Result<(bool, Bytes, [Range<usize>; 3]), Reject> {
    let mut out = BytesMut::with_capacity(body.len() + 8);
    let mut ranges: [Range<usize>; 3] = [0..0, 0..0, 0..0];
    let fixed = GROUPS.iter().any(|g| doc.member(g).is_some());
    if fixed {
        for (i, g) in GROUPS.iter().enumerate() {
            let start = out.len();
            match doc.member(g) {
                Some(m) => {
                    if !matches!(doc.value(m), Some(Node::Object { .. })) {
                        return Err(Reject::GroupNotObject);
                    }
                    out.put_slice(&body[m.value_start..m.value_end]);
                }
                None => out.put_slice(b"{}"),
            }
            ranges[i] = start..out.len();
        }
    } else {
        let category_of = |key: &str| {
            properties
                .and_then(|p| p.get(key).copied())
                .unwrap_or(Category::Contact)
        };
        for (i, slot) in ranges.iter_mut().enumerate() {
            let start = out.len();
            out.put_u8(b'{');
            let mut first = true;
            for m in doc.members {
                let key = doc.key(m);
                if CONFIGURATION_ID_KEYS.contains(&key) || category_of(key).index() != i {
                    continue;
                }
                if !first {
                    out.put_u8(b',');
                }
                first = false;
                out.put_slice(&body[m.key_start..m.key_end]);
                out.put_u8(b':');
                out.put_slice(&body[m.value_start..m.value_end]);
            }
            out.put_u8(b'}');
            *slot = start..out.len();
        }
    }
    Ok((fixed, out.freeze(), ranges))
}

/// `{"success":true,"message":"Outreach processed successfully","data":{"configurationId":"…","jobId":"…"}}`;
/// when spooled, `jobId` is null and the message says so.
fn accepted(configuration_id_json: &[u8], job_id: Option<&[u8]>) -> Bytes {
    const HEAD: &[u8] = br#"{"success":true,"message":"Outreach processed successfully","data":{"configurationId":""#;
    const HEAD_SPOOLED: &[u8] = br#"{"success":true,"message":"Outreach accepted; it will be enqueued as soon as the job store is reachable","data":{"configurationId":""#;
    const MID: &[u8] = br#"","jobId":"#;
    const TAIL: &[u8] = b"}}";
    let head = if job_id.is_some() { HEAD } else { HEAD_SPOOLED };
    let id_len = job_id.map_or(4, |id| id.len() + 2);
    let mut buf = BytesMut::with_capacity(
        head.len() + configuration_id_json.len() + MID.len() + id_len + TAIL.len(),
    );
    buf.put_slice(head);
    buf.put_slice(configuration_id_json);
    buf.put_slice(MID);
    match job_id {
        Some(id) => {
            buf.put_u8(b'"');
            buf.put_slice(id);
            buf.put_u8(b'"');
        }
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(TAIL);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outreach_views::{OrgProperties, OutreachConfigs};
    use crate::replica::{Fetched, View};

    #[test]
    fn configs_parse_and_refuse_garbage() {
        let v = OutreachConfigs::new("tether:");
        v.apply(
            "c1",
            Fetched::String(Bytes::from_static(
                br#"{"userId":"u","orgId":"o","active":true,"processId":null,"promptId":"p"}"#,
            )),
            1,
        )
        .unwrap();
        let c = v.lookup("c1").unwrap();
        assert!(c.active && c.runnable);
        v.apply(
            "c2",
            Fetched::String(Bytes::from_static(
                br#"{"userId":"u","orgId":"o","active":true,"processId":null,"promptId":null}"#,
            )),
            1,
        )
        .unwrap();
        assert!(!v.lookup("c2").unwrap().runnable);
        assert!(
            v.apply("c1", Fetched::String(Bytes::from_static(b"garbage")), 2)
                .is_err()
        );
        assert!(v.lookup("c1").is_none());
    }

    /// `active`, `processId` and `promptId` are read by JavaScript's
    /// truthiness, as the backend's `if (!config.active)` reads them; the
    /// owner's ids must be strings.
    #[test]
    fn config_records_are_read_as_the_backend_reads_them() {
        let read = |record: &str| {
            let v = OutreachConfigs::new("tether:");
            let applied = v.apply("c", Fetched::String(Bytes::from(record.to_owned())), 1);
            (
                v.lookup("c").map(|c| (c.active, c.runnable)),
                applied.is_err(),
            )
        };
        let base = r#""userId":"u","orgId":"o""#;
        for (extra, want) in [
            (r#","active":true,"processId":"p""#, Some((true, true))),
            (r#","active":1,"processId":42"#, Some((true, true))),
            (r#","active":"yes","promptId":7"#, Some((true, true))),
            (r#","active":0,"processId":"p""#, Some((false, true))),
            (r#","processId":"p""#, Some((false, true))),
            (
                r#","active":true,"processId":"","promptId":0"#,
                Some((true, false)),
            ),
            (
                r#","active":true,"processId":null,"promptId":false"#,
                Some((true, false)),
            ),
            (r#","active":true,"processId":{}"#, Some((true, true))),
            (
                r#","active":false,"active":true,"promptId":"p""#,
                Some((true, true)),
            ),
        ] {
            let record = format!("{{{base}{extra}}}");
            assert_eq!(read(&record), (want, false), "{record}");
        }
        for bad in [
            r#"{"userId":7,"orgId":"o","active":true,"processId":"p"}"#,
            r#"{"userId":"","orgId":"o","active":true,"processId":"p"}"#,
            r#"{"userId":"u","active":true,"processId":"p"}"#,
            r#"["u"]"#,
        ] {
            assert_eq!(read(bad), (None, true), "{bad}");
        }
    }

    #[test]
    fn properties_keep_known_categories_only() {
        let v = OrgProperties::new("tether:");
        assert!(v.wants("o1:properties"));
        assert!(!v.wants("o1:settings"));
        assert!(!v.wants(":properties"));
        v.apply(
            "o1:properties",
            Fetched::Hash(vec![
                (
                    Bytes::from_static(b"job"),
                    Bytes::from_static(b"application"),
                ),
                (Bytes::from_static(b"odd"), Bytes::from_static(b"nonsense")),
            ]),
            1,
        )
        .unwrap_err();
        let p = v.lookup("o1").unwrap();
        assert_eq!(p.get("job"), Some(&Category::Application));
        assert_eq!(p.get("odd"), None);
    }
}
