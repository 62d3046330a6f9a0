//! Body parsing: simd-json validation plus the byte layout of the top-level
//! object, so the caller's bytes are kept exactly.
//!
//! simd-json rewrites its input (it unescapes strings in place) and does not
//! keep number text, so it parses a *scratch copy* of the body while the body
//! itself is never rewritten by it. Semantics (decoded keys, value types) come
//! from simd-json's tape; byte positions come from its stage-1 structural
//! indexes, walked here to find where each top-level member starts and ends.
//!
//! The scratch buffer, simd-json's `Buffers` and the tape are kept per thread
//! and reused, so parsing allocates nothing once warm.
//!
//! [`parse_envelope`] is the workflow route's use: it finds the `webhookId`
//! member and splices it out of the body in place (rotating it to the end of
//! the same buffer), so the payload and the id are both slices of one
//! allocation: big integers, `1.10` and escapes stay as sent.

use std::{cell::RefCell, ops::Range};

use bytes::{Buf, Bytes, BytesMut};
use simd_json::{Buffers, ErrorType, INPUT_PADDING, Node, StaticNode, Tape};

use crate::{error::Reject, id::Id};

/// One top-level member of the body's object, located in the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Tape index of the decoded key.
    pub key_node: usize,
    /// Tape index of the value's first node.
    pub value_node: usize,
    /// Position of the key's opening quote.
    pub key_start: usize,
    /// End (exclusive) of the key's raw text, closing quote included.
    pub key_end: usize,
    /// The value's raw bytes (no surrounding whitespace).
    pub value_start: usize,
    /// End (exclusive) of the value's raw bytes.
    pub value_end: usize,
    /// Position of the `,` or `}` that ends this member.
    pub terminator: usize,
}

/// A validated JSON object: its tape and its members' byte layout.
pub(crate) struct Document<'a> {
    /// simd-json's tape over the scratch copy.
    pub tape: &'a Tape<'a>,
    /// Members in document order.
    pub members: &'a [Member],
    /// Position of the opening `{`.
    pub open: usize,
    /// Position of the closing `}`.
    pub close: usize,
}

/// Whether JavaScript takes `value` as true in a condition.
pub(crate) fn truthy(value: &Node<'_>) -> bool {
    match value {
        Node::String(s) => !s.is_empty(),
        Node::Static(StaticNode::Null) => false,
        Node::Static(StaticNode::Bool(b)) => *b,
        Node::Static(StaticNode::I64(n)) => *n != 0,
        Node::Static(StaticNode::U64(n)) => *n != 0,
        // `!= 0.0` is false for -0.0 and true for NaN, which JSON can't spell.
        Node::Static(StaticNode::F64(f)) => *f != 0.0,
        Node::Object { .. } | Node::Array { .. } => true,
    }
}

impl Document<'_> {
    /// The member with decoded key `name`: the last, if repeated, as
    /// JavaScript's `JSON.parse` (the backend's reading of the same body)
    /// keeps the last.
    pub(crate) fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().rev().find(|m| self.key(m) == name)
    }

    /// The decoded key of member `m`.
    pub(crate) fn key(&self, m: &Member) -> &str {
        match self.tape.0.get(m.key_node) {
            Some(Node::String(s)) => s,
            _ => "",
        }
    }

    /// The value node of member `m`.
    pub(crate) fn value(&self, m: &Member) -> Option<&Node<'_>> {
        self.tape.0.get(m.value_node)
    }
}

struct Scratch {
    input: Vec<u8>,
    buffers: Buffers,
    tape: Option<Tape<'static>>,
    members: Vec<Member>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        input: Vec::with_capacity(16 * 1024),
        buffers: Buffers::new(16 * 1024),
        tape: Some(Tape::null().reset()),
        members: Vec::with_capacity(64),
    });
}

/// Validates `body` as a JSON object and calls `f` with its layout.
/// `body` itself is not modified.
pub(crate) fn with_document<R>(
    body: &[u8],
    f: impl FnOnce(&Document<'_>) -> Result<R, Reject>,
) -> Result<R, Reject> {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => scratch.parse(body, f),
        // Re-entrant use on one thread cannot happen on the request path;
        // a fresh scratch keeps it correct if it ever does.
        Err(_) => Scratch {
            input: Vec::new(),
            buffers: Buffers::default(),
            tape: None,
            members: Vec::new(),
        }
        .parse(body, f),
    })
}

impl Scratch {
    fn parse<R>(
        &mut self,
        body: &[u8],
        f: impl FnOnce(&Document<'_>) -> Result<R, Reject>,
    ) -> Result<R, Reject> {
        let mut tape: Tape<'_> = self.tape.take().unwrap_or_else(Tape::null).reset();
        let filled = fill(&mut self.input, &mut self.buffers, &mut tape, body, false);
        // Two things are valid JSON to the backend's JSON.parse, not to
        // simd-json: a lone surrogate escape (`"\ud83d"`: JavaScript's
        // JSON.stringify of a string cut inside an emoji) and a number
        // beyond f64 (`1e999`, Infinity to JSON.parse). Only a body
        // simd-json refuses is looked at again: its copy gets text of the
        // same length in their place (`\ufffd`; a finite number of the same
        // sign), so positions stay the body's, which is kept as sent.
        let (tape, filled) = match filled {
            Err(e) if !matches!(e.error(), ErrorType::DepthLimitExceeded) => {
                let lone = has_lone_surrogate(body);
                let infinite = || infinite_numbers(body).next().is_some();
                if lone || matches!(e.error(), ErrorType::InvalidNumber) && infinite() {
                    let mut again = tape.reset();
                    let filled = fill(&mut self.input, &mut self.buffers, &mut again, body, true);
                    if filled.is_ok() {
                        mended(lone, "lone_surrogate");
                        mended(infinite(), "number_beyond_f64");
                    }
                    (again, filled)
                } else {
                    (tape, Err(e))
                }
            }
            filled => (tape, filled),
        };
        let result = match filled {
            Err(e) => Err(match e.error() {
                ErrorType::DepthLimitExceeded => Reject::TooDeep,
                _ => Reject::MalformedJson,
            }),
            Ok(()) => match tape.0.first() {
                Some(Node::Object { .. }) => {
                    match layout(
                        body,
                        self.buffers.structural_indexes(),
                        &tape,
                        &mut self.members,
                    ) {
                        Some((open, close)) => f(&Document {
                            tape: &tape,
                            members: &self.members,
                            open,
                            close,
                        }),
                        None => Err(Reject::MalformedJson),
                    }
                }
                _ => Err(Reject::NotAnObject),
            },
        };
        self.tape = Some(tape.reset());
        result
    }
}

/// [`with_document`] over a body the route owns, read as the backend's body
/// parser reads it when simd-json refuses it as it came:
/// - a leading UTF-8 byte-order mark (what .NET's `Encoding.UTF8` writers
///   put first) is dropped, as the parser's decoder drops it;
/// - a body that is not UTF-8 is rewritten as the decoder makes it: each
///   invalid sequence becomes U+FFFD (Node's decoder and `from_utf8_lossy`
///   replace the same maximal subparts), so a Latin-1 `é` from a legacy
///   sender is taken, and the stored text is what a Worker's decoder would
///   have made of the bytes anyway.
///
/// Looked at only after simd-json (which validates UTF-8) refused the body;
/// a body that parses costs nothing more.
pub(crate) fn with_body<R>(
    body: &mut BytesMut,
    f: impl Fn(&[u8], &Document<'_>) -> Result<R, Reject>,
) -> Result<R, Reject> {
    let first = {
        let b: &[u8] = body;
        with_document(b, |doc| f(b, doc))
    };
    let Err(Reject::MalformedJson) = first else {
        return first;
    };
    let bom = body.starts_with(BOM);
    if bom {
        body.advance(BOM.len());
    }
    let utf8 = std::str::from_utf8(body).is_ok();
    if !utf8 {
        // `Bytes` takes the String's buffer and `BytesMut` takes it back
        // (sole owner), so the decoded text is not copied again.
        *body = BytesMut::from(Bytes::from(String::from_utf8_lossy(body).into_owned()));
    }
    if !bom && utf8 {
        return first;
    }
    let b: &[u8] = body;
    let again = with_document(b, |doc| f(b, doc));
    if !matches!(again, Err(Reject::MalformedJson | Reject::TooDeep)) {
        mended(bom, "byte_order_mark");
        mended(!utf8, "not_utf8");
    }
    again
}

/// Counts a body read only once `what` was mended (when `did`), so an
/// operator sees which senders send what simd-json alone would refuse.
fn mended(did: bool, what: &'static str) {
    if did {
        metrics::counter!(crate::metrics::BODIES_MENDED, "reason" => what).increment(1);
    }
}

/// UTF-8's byte-order mark.
const BOM: &[u8] = b"\xef\xbb\xbf";

/// Copies `body` into the scratch `input` (padded as simd-json needs it;
/// when `mend`, with each lone surrogate escape written `\ufffd` and each
/// number beyond f64 written `1.00…` after its sign) and fills `tape` from
/// it.
fn fill<'de>(
    input: &'de mut Vec<u8>,
    buffers: &mut Buffers,
    tape: &mut Tape<'de>,
    body: &[u8],
    mend: bool,
) -> simd_json::Result<()> {
    let len = body.len();
    input.clear();
    input.extend_from_slice(body);
    input.resize(len + INPUT_PADDING, b' ');
    if mend {
        for at in lone_surrogates(body) {
            input[at..at + 4].copy_from_slice(b"fffd");
        }
        for number in infinite_numbers(body) {
            // At least `2e308`: room for `1.0`. Finite, non-zero and of the
            // same sign, so it reads as Infinity does in a condition.
            let digits = number.start + usize::from(body[number.start] == b'-');
            if number.end - digits < 3 {
                continue;
            }
            input[digits..number.end].fill(b'0');
            input[digits] = b'1';
            input[digits + 1] = b'.';
        }
    }
    simd_json::fill_tape_padded(input, len, buffers, tape)
}

fn has_lone_surrogate(body: &[u8]) -> bool {
    lone_surrogates(body).next().is_some()
}

/// Where the four hex digits of each `\uXXXX` escape of `body` that is a
/// surrogate outside a high-low pair start.
fn lone_surrogates(body: &[u8]) -> impl Iterator<Item = usize> + '_ {
    let unit = |at: usize| -> Option<u16> {
        let hex = std::str::from_utf8(body.get(at..at + 4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    };
    let escape_at = |at: usize| body.get(at..at + 2) == Some(b"\\u".as_slice());
    let mut i = 0;
    std::iter::from_fn(move || {
        while let Some(found) = body.get(i..)?.iter().position(|&b| b == b'\\') {
            let at = i + found;
            // Past the escape: `\\` is one, so its second backslash starts
            // nothing.
            i = at + 2;
            if !escape_at(at) {
                continue;
            }
            i = at + 6;
            match unit(at + 2) {
                Some(0xD800..=0xDBFF)
                    if escape_at(at + 6) && matches!(unit(at + 8), Some(0xDC00..=0xDFFF)) =>
                {
                    i = at + 12;
                }
                Some(0xD800..=0xDFFF) => return Some(at + 2),
                _ => {}
            }
        }
        None
    })
}

/// Where each number of `body` (outside strings) that is valid JSON but
/// beyond f64, so Infinity to JSON.parse, lies.
fn infinite_numbers(body: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut i = 0;
    let mut in_string = false;
    std::iter::from_fn(move || {
        while let Some(&c) = body.get(i) {
            let at = i;
            i += 1;
            match c {
                b'"' => in_string = !in_string,
                b'\\' if in_string => i += 1,
                b'-' | b'0'..=b'9' if !in_string => {
                    let len = body[at..]
                        .iter()
                        .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                        .unwrap_or(body.len() - at);
                    i = at + len;
                    let text = &body[at..i];
                    // Only an exponent or over 308 digits reaches past f64.
                    if text.len() <= 308 && !text.iter().any(|b| matches!(b, b'e' | b'E')) {
                        continue;
                    }
                    let infinite = std::str::from_utf8(text)
                        .ok()
                        .and_then(|t| t.parse::<f64>().ok())
                        .is_some_and(f64::is_infinite);
                    if infinite && json_number(text) {
                        return Some(at..i);
                    }
                }
                _ => {}
            }
        }
        None
    })
}

/// Whether `text` is a number in JSON's grammar:
/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn json_number(text: &[u8]) -> bool {
    let digits = |t: &[u8]| t.iter().take_while(|b| b.is_ascii_digit()).count();
    let t = text.strip_prefix(b"-").unwrap_or(text);
    let int = digits(t);
    if int == 0 || (int > 1 && t[0] == b'0') {
        return false;
    }
    let mut t = &t[int..];
    if let Some(rest) = t.strip_prefix(b".") {
        let frac = digits(rest);
        if frac == 0 {
            return false;
        }
        t = &rest[frac..];
    }
    if let Some(rest) = t.strip_prefix(b"e").or_else(|| t.strip_prefix(b"E")) {
        let rest = rest
            .strip_prefix(b"+")
            .or_else(|| rest.strip_prefix(b"-"))
            .unwrap_or(rest);
        let exp = digits(rest);
        if exp == 0 {
            return false;
        }
        t = &rest[exp..];
    }
    t.is_empty()
}

/// Number of tape nodes taken by the value starting at `i`.
fn node_span(tape: &Tape<'_>, i: usize) -> usize {
    match tape.0.get(i) {
        Some(Node::Object { count, .. } | Node::Array { count, .. }) => 1 + count,
        _ => 1,
    }
}

/// Walks the structural indexes of a valid top-level object and fills
/// `members`; returns the positions of its `{` and `}`.
fn layout(
    body: &[u8],
    structurals: &[u32],
    tape: &Tape<'_>,
    members: &mut Vec<Member>,
) -> Option<(usize, usize)> {
    members.clear();
    let mut depth = 0usize;
    let mut open = None;
    let mut expect_key = false;
    let mut after_colon = false;
    let mut node = 1usize; // tape index of the next member's key
    let mut current: Option<Member> = None;
    for &p in structurals {
        let p = p as usize;
        let Some(&c) = body.get(p) else { break };
        if depth == 1 {
            match c {
                b'"' if expect_key => {
                    expect_key = false;
                    let value_node = node + 1;
                    current = Some(Member {
                        key_node: node,
                        value_node,
                        key_start: p,
                        key_end: p + 1,
                        value_start: 0,
                        value_end: 0,
                        terminator: 0,
                    });
                    node = value_node + node_span(tape, value_node);
                    continue;
                }
                b':' => {
                    after_colon = true;
                    if let Some(m) = current.as_mut() {
                        m.key_end = trim_end(body, m.key_start, p);
                    }
                    continue;
                }
                b',' | b'}' => {
                    if let Some(mut m) = current.take() {
                        m.terminator = p;
                        m.value_end = trim_end(body, m.value_start, p);
                        members.push(m);
                    }
                    if c == b'}' {
                        return Some((open?, p));
                    }
                    expect_key = true;
                    continue;
                }
                _ => {}
            }
        }
        if after_colon {
            after_colon = false;
            if let Some(m) = current.as_mut() {
                m.value_start = p;
            }
        }
        match c {
            b'{' | b'[' => {
                depth += 1;
                if depth == 1 {
                    open = Some(p);
                    expect_key = true;
                }
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    None
}

fn trim_end(body: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(body[end - 1], b' ' | b'\t' | b'\n' | b'\r') {
        end -= 1;
    }
    end
}

/// The workflow route's reading of a body.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The decoded `webhookId`.
    pub webhook_id: Id,
    /// `webhookId` as sent, between its quotes: valid JSON string content,
    /// echoed verbatim in the response.
    pub webhook_id_json: Bytes,
    /// The top-level object without its `webhookId` member, byte for byte.
    pub payload: Bytes,
}

/// What validation found of a workflow body.
enum Found {
    /// One `webhookId`: spliced out of the body in place.
    Splice(Splice),
    /// Several: the envelope, copied (a rare body, off the hot path).
    Copied(Envelope),
}

/// The envelope of a body naming `webhookId` more than once: the id of
/// member `id` (the last), and a payload of every other member, each as
/// sent, in body order.
fn without_ids(body: &[u8], doc: &Document<'_>, id: &Member, decoded: &str) -> Envelope {
    let raw = &body[id.value_start + 1..id.value_end - 1];
    let mut out = BytesMut::with_capacity(body.len() + raw.len());
    out.extend_from_slice(b"{");
    let kept = doc.members.iter().filter(|m| doc.key(m) != "webhookId");
    for (n, m) in kept.enumerate() {
        if n > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(&body[m.key_start..m.value_end]);
    }
    out.extend_from_slice(b"}");
    let payload_len = out.len();
    out.extend_from_slice(raw);
    let frozen = out.freeze();
    Envelope {
        webhook_id: Id::from_str_copy(decoded),
        webhook_id_json: frozen.slice(payload_len..),
        payload: frozen.slice(..payload_len),
    }
}

/// Where the `webhookId` member is, found during validation.
struct Splice {
    /// Bytes removed from the object: the member and one adjacent separator.
    remove: Range<usize>,
    /// The id's raw string content.
    raw: Range<usize>,
    /// The decoded id, when it differs from the raw text (escapes).
    decoded: Option<Id>,
    open: usize,
    close: usize,
}

/// Parses a workflow body: validates it, takes out `webhookId`, and turns
/// the rest into the payload without copying it.
pub fn parse_envelope(mut body: BytesMut) -> Result<Envelope, Reject> {
    let found = with_body(&mut body, |body, doc| {
        // As the backend's JSON.parse reads the body: a `webhookId` given
        // more than once is the last one, and the payload has none of them.
        let mut ids = doc
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| doc.key(m) == "webhookId");
        let (i, m) = ids.next_back().ok_or(Reject::MissingWebhookId)?;
        let Some(Node::String(decoded)) = doc.value(m) else {
            return Err(Reject::WebhookIdNotString);
        };
        if ids.next().is_some() {
            return Ok(Found::Copied(without_ids(body, doc, m, decoded)));
        }
        let members = doc.members;
        let m = members[i];
        let remove = match (i, members.len()) {
            (_, 1) => m.key_start..doc.close,
            (0, _) => m.key_start..members[1].key_start,
            _ => members[i - 1].terminator..m.terminator,
        };
        let raw = m.value_start + 1..m.value_end - 1;
        let decoded = (body[raw.clone()].contains(&b'\\')).then(|| Id::from_str_copy(decoded));
        Ok(Found::Splice(Splice {
            remove,
            raw,
            decoded,
            open: doc.open,
            close: doc.close,
        }))
    })?;
    let splice = match found {
        Found::Splice(splice) => splice,
        Found::Copied(envelope) => return Ok(envelope),
    };
    // Move the removed bytes out of the object's way inside the same buffer,
    // shifting whichever side of them is shorter (usually the prefix: leads
    // tend to start with webhookId). The payload becomes contiguous and the
    // id's text stays in the buffer.
    let Splice {
        remove,
        raw,
        decoded,
        open,
        close,
    } = splice;
    let removed_len = remove.len();
    let (payload, raw_moved) = if remove.start - open <= close + 1 - remove.end {
        body[open..remove.end].rotate_right(removed_len);
        // The removed bytes now start at `open`.
        (
            open + removed_len..close + 1,
            open + (raw.start - remove.start)..open + (raw.end - remove.start),
        )
    } else {
        body[remove.start..=close].rotate_left(removed_len);
        let payload_end = close + 1 - removed_len;
        (
            open..payload_end,
            raw.start - remove.start + payload_end..raw.end - remove.start + payload_end,
        )
    };
    let frozen = body.freeze();
    let webhook_id_json = frozen.slice(raw_moved);
    let webhook_id = match decoded {
        Some(id) => id,
        None => Id::new(webhook_id_json.clone()).ok_or(Reject::MalformedJson)?,
    };
    Ok(Envelope {
        webhook_id,
        webhook_id_json,
        payload: frozen.slice(payload),
    })
}

#[cfg(test)]
mod tests;
