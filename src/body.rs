//! Reading a request body under a cap.
//!
//! A declared `Content-Length` over the cap is refused before a byte is read;
//! otherwise frames are copied into one buffer sized from the declared length,
//! and the read stops (413) as soon as the cap is passed, whatever the framing
//! (chunked, HTTP/2). The result is a `BytesMut` the parser may rewrite in place.

use bytes::BytesMut;
use http::{HeaderMap, header::CONTENT_LENGTH};
use http_body_util::BodyExt;
use hyper::body::Body;

use crate::error::Reject;

/// Initial capacity when no length is declared.
const UNKNOWN_LENGTH_CAPACITY: usize = 4096;

/// The declared body length, if the header is present and well formed.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
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
pub async fn read_limited<B>(
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
    if declared.is_some_and(|n| n > max as u64) {
        return Err(Reject::BodyTooLarge);
    }
    let capacity = declared.map_or(UNKNOWN_LENGTH_CAPACITY, |n| n as usize);
    let mut buf = BytesMut::with_capacity(capacity);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Reject::BodyRead)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(Reject::BodyTooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf)
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
    async fn body_at_cap_is_read() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let got = read_limited(&headers(Some("10")), body, 10, T)
            .await
            .unwrap();
        assert_eq!(&got[..], b"0123456789");
    }
}
