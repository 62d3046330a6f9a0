//! Who called and how, as the backend is told (sidecar mode) and as the
//! ingress itself logs it: one rule for HTTP/1, HTTP/2 and upgrades, over
//! plaintext and TLS.
//!
//! A peer in `server.trusted_proxies` (the load balancer in front) forwards
//! what it saw: its `X-Forwarded-*`, `Forwarded` and `X-Real-IP` are kept,
//! the peer's address is appended to `X-Forwarded-For` and a `Forwarded`
//! element for this hop is added. From any other peer those headers are
//! the caller's claims and are replaced by what the ingress saw itself: its
//! own scheme, the request's `Host`, the peer's address.

use std::net::IpAddr;

use bytes::BytesMut;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::TrustedProxies;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = http::header::FORWARDED;

/// What the ingress saw of one request.
pub(crate) struct Hop<'a> {
    /// The connection's peer.
    pub(crate) peer: IpAddr,
    /// Whether the listener speaks TLS.
    pub(crate) tls: bool,
    /// The request's `Host` (or `:authority`).
    pub(crate) host: Option<&'a HeaderValue>,
    /// Whether the peer is a trusted proxy.
    pub(crate) trusted: bool,
}

/// Sets the forwarding headers of a request about to go upstream. Two
/// buffers at most: the peer's address (shared by the headers that carry
/// it) and this hop's `Forwarded` element.
pub(crate) fn rewrite(headers: &mut HeaderMap, hop: &Hop<'_>) {
    let peer = hop.peer.to_canonical();
    let proto = HeaderValue::from_static(if hop.tls { "https" } else { "http" });
    let mut element = BytesMut::with_capacity(64);
    push_node(&mut element, peer);
    if let Some(host) = hop.host.filter(|h| !h.as_bytes().contains(&b'"')) {
        element.extend_from_slice(b";host=\"");
        element.extend_from_slice(host.as_bytes());
        element.extend_from_slice(b"\"");
    }
    element.extend_from_slice(b";proto=");
    element.extend_from_slice(proto.as_bytes());
    let mut text = BytesMut::with_capacity(40);
    push_ip(&mut text, peer);
    let Ok(peer_value) = HeaderValue::from_maybe_shared(text.freeze()) else {
        return;
    };
    if hop.trusted {
        append(headers, X_FORWARDED_FOR, peer_value.as_bytes());
        append(headers, FORWARDED, &element);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, proto);
        }
        if let (false, Some(host)) = (headers.contains_key(&X_FORWARDED_HOST), hop.host) {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        if !headers.contains_key(&X_REAL_IP) {
            headers.insert(X_REAL_IP, peer_value);
        }
    } else {
        headers.insert(X_FORWARDED_FOR, peer_value.clone());
        headers.insert(X_REAL_IP, peer_value);
        set(headers, FORWARDED, element);
        headers.insert(X_FORWARDED_PROTO, proto);
        match hop.host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The caller's address: the peer's, unless the peer is a trusted proxy;
/// then the nearest address in `X-Forwarded-For` (read from the right)
/// that is not a trusted proxy itself, as nginx's `real_ip_recursive` does.
pub(crate) fn client(headers: &HeaderMap, peer: IpAddr, trusted: &TrustedProxies) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for part in text.rsplit(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) if trusted.contains(ip) => client = ip.to_canonical(),
                Ok(ip) => return ip.to_canonical(),
                Err(_) => return client,
            }
        }
    }
    client
}

/// Every `name` line of `headers` joined, then `, ` and `tail`.
fn append(headers: &mut HeaderMap, name: HeaderName, tail: &[u8]) {
    let mut value = BytesMut::with_capacity(64);
    for line in headers.get_all(&name) {
        value.extend_from_slice(line.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(tail);
    set(headers, name, value);
}

/// Replaces every `name` line with `value`.
fn set(headers: &mut HeaderMap, name: HeaderName, value: BytesMut) {
    match HeaderValue::from_maybe_shared(value.freeze()) {
        Ok(v) => {
            headers.insert(name, v);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

fn push_ip(out: &mut BytesMut, ip: IpAddr) {
    use std::fmt::Write as _;
    let _ = write!(out, "{ip}");
}

/// A `Forwarded` node (RFC 7239): `for=192.0.2.1` or `for="[2001:db8::1]"`.
fn push_node(out: &mut BytesMut, ip: IpAddr) {
    match ip {
        IpAddr::V4(_) => {
            out.extend_from_slice(b"for=");
            push_ip(out, ip);
        }
        IpAddr::V6(_) => {
            out.extend_from_slice(b"for=\"[");
            push_ip(out, ip);
            out.extend_from_slice(b"]\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(text: &str) -> TrustedProxies {
        text.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_address() {
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR,
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"),
        );
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let lb = trusted("10.0.0.0/8");
        assert_eq!(
            client(&h, peer, &lb),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        // An untrusted peer's claims count for nothing.
        assert_eq!(client(&h, peer, &trusted("")), peer);
        // A v4 peer on a dual-stack listener is matched as v4.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            client(&h, mapped, &lb),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }
}
