//! Reading a request body under a cap.
//!
//! A declared `Content-Length` over the cap is refused before a byte is read;
//! otherwise frames are copied into one buffer sized from the declared length,
//! and the read stops (413) as soon as the cap is passed, whatever the framing
//! (chunked, HTTP/2). The result is a `BytesMut` the parser may rewrite in place.
//!
//! Before a 413 a modestly oversized body is read to its end and dropped
//! (at most [`DRAIN_BYTES`] more, for at most [`DRAIN_TIME`]): a server that
//! closes with the client's bytes unread resets the connection, and the
//! client, still writing, never sees the answer. nginx's lingering close
//! does the same. A larger or slower body is cut off.

use bytes::BytesMut;
use http::{HeaderMap, header::CONTENT_LENGTH};
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::error::Reject;

/// Initial capacity when no length is declared.
const UNKNOWN_LENGTH_CAPACITY: usize = 4096;

/// Bytes past the cap read and dropped before a 413.
pub(crate) const DRAIN_BYTES: u64 = 64 * 1024;
/// Time spent on that at most.
pub(crate) const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// The declared body length, if the header is present and well formed.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Reads the whole body, refusing more than `max` bytes or (408) a body not
/// complete within `timeout`, so a trickling client cannot hold a request.
pub(crate) async fn read_limited<B>(
    headers: &HeaderMap,
    body: B,
    max: usize,
    timeout: std::time::Duration,
) -> Result<BytesMut, Reject>
where
    B: Body<Data = bytes::Bytes> + Unpin,
{
    tokio::time::timeout(timeout, read_capped(headers, body, max))
        .await
        .map_err(|_| Reject::BodyTimeout)?
}

async fn read_capped<B>(headers: &HeaderMap, mut body: B, max: usize) -> Result<BytesMut, Reject>
where
    B: Body<Data = bytes::Bytes> + Unpin,
{
    let declared = content_length(headers);
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        if n <= max as u64 + DRAIN_BYTES {
            drain(&mut body, n).await;
        }
        return Err(Reject::BodyTooLarge);
    }
    let capacity = declared.map_or(UNKNOWN_LENGTH_CAPACITY, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reject::BodyRead)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                drain(&mut body, DRAIN_BYTES).await;
                return Err(Reject::BodyTooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
}

/// Reads and drops up to `limit` bytes of the rest of `body`, for at most
/// [`DRAIN_TIME`].
async fn drain<B>(body: &mut B, limit: u64)
where
    B: Body<Data = bytes::Bytes> + Unpin,
{
    let read = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                seen += data.len() as u64;
                if seen > limit {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    const T: std::time::Duration = std::time::Duration::from_secs(5);

    fn headers(len: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(l) = len {
            h.insert(CONTENT_LENGTH, l.parse().unwrap());
        }
        h
    }

    #[tokio::test]
    async fn declared_length_over_cap_is_refused_unread() {
        let body = Full::new(Bytes::from_static(b"x"));
        assert!(matches!(
            read_limited(&headers(Some("11")), body, 10, T).await,
            Err(Reject::BodyTooLarge)
        ));
    }

    #[tokio::test]
    async fn streamed_body_over_cap_is_refused() {
        let chunks =
            futures::stream::iter((0..5).map(|_| {
                Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"abcd")))
            }));
        let body = StreamBody::new(chunks);
        assert!(matches!(
            read_limited(&headers(None), body, 10, T).await,
            Err(Reject::BodyTooLarge)
        ));
    }

    #[tokio::test]
    async fn a_modestly_oversized_body_is_read_to_its_end_before_the_refusal() {
        let yielded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = yielded.clone();
        let chunks = futures::stream::iter((0..40).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[b' '; 100])))
        }));
        assert!(matches!(
            read_limited(&headers(None), StreamBody::new(chunks), 1024, T).await,
            Err(Reject::BodyTooLarge)
        ));
        assert_eq!(yielded.load(std::sync::atomic::Ordering::Relaxed), 40);
        // Far past the cap, the rest is left unread.
        let yielded = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = yielded.clone();
        let chunks = futures::stream::iter((0..10_000).map(move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(&[b' '; 100])))
        }));
        assert!(matches!(
            read_limited(&headers(None), StreamBody::new(chunks), 1024, T).await,
            Err(Reject::BodyTooLarge)
        ));
        let n = yielded.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n < 1_000, "{n} chunks read");
    }

    #[tokio::test]
    async fn body_at_cap_is_read() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let got = read_limited(&headers(Some("10")), body, 10, T)
            .await
            .unwrap();
        assert_eq!(&got[..], b"0123456789");
    }
}
