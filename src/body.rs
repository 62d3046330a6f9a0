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
//!
//! A body sent with `Content-Encoding: gzip` (or `x-gzip`), `deflate` or
//! `br` is inflated, as Node's `body-parser` does by default (`br` since
//! body-parser 2, Express 5), under the same cap ([`decoded`]); any other
//! coding is read as it came.

use std::io::Read as _;

use bytes::BytesMut;
use http::{
    HeaderMap,
    header::{CONTENT_ENCODING, CONTENT_LENGTH},
};
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

/// The body as the parser reads it: inflated when its `Content-Encoding`
/// is `gzip`, `x-gzip`, `deflate` (zlib) or `br`, to at most `max` bytes (413
/// past them, so a small body that inflates to gigabytes costs `max`); a
/// stream that does not inflate is malformed JSON (400). Without the
/// header, or with any other coding, the body is returned as it is.
pub(crate) fn decoded(headers: &HeaderMap, body: BytesMut, max: usize) -> Result<BytesMut, Reject> {
    let Some(coding) = headers.get(CONTENT_ENCODING) else {
        return Ok(body);
    };
    let coding = coding.as_bytes().trim_ascii();
    if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
        inflate(flate2::read::MultiGzDecoder::new(&body[..]), max)
    } else if coding.eq_ignore_ascii_case(b"deflate") {
        inflate(flate2::read::ZlibDecoder::new(&body[..]), max)
    } else if coding.eq_ignore_ascii_case(b"br") {
        inflate(brotli_decompressor::Decompressor::new(&body[..], 8192), max)
    } else {
        Ok(body)
    }
}

fn inflate(stream: impl std::io::Read, max: usize) -> Result<BytesMut, Reject> {
    let mut out = Vec::new();
    let read = stream
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| Reject::MalformedJson)?;
    if read > max {
        return Err(Reject::BodyTooLarge);
    }
    Ok(BytesMut::from(bytes::Bytes::from(out)))
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

    fn coded(coding: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, coding.parse().unwrap());
        h
    }

    fn gzip(data: &[u8]) -> BytesMut {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        BytesMut::from(&e.finish().unwrap()[..])
    }

    fn zlib(data: &[u8]) -> BytesMut {
        use std::io::Write as _;
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        BytesMut::from(&e.finish().unwrap()[..])
    }

    /// `{"webhookId":"wh_1","n":1.10}`, 10 MB of `0` and 1024 spaces, as
    /// Node's `zlib.brotliCompressSync` writes them.
    const BR_JSON: &[u8] = &[
        11, 14, 128, 123, 34, 119, 101, 98, 104, 111, 111, 107, 73, 100, 34, 58, 34, 119, 104, 95,
        49, 34, 44, 34, 110, 34, 58, 49, 46, 49, 48, 125, 3,
    ];
    const BR_BOMB: &[u8] = &[
        203, 255, 255, 63, 248, 37, 96, 226, 177, 64, 32, 247, 254, 47, 255, 44, 49, 240, 75, 0,
        196, 97, 17, 128, 142, 35, 6,
    ];
    const BR_1024: &[u8] = &[27, 255, 3, 248, 37, 64, 162, 177, 64, 32, 55];

    #[test]
    fn gzip_deflate_and_br_bodies_are_inflated_and_other_codings_left_alone() {
        let json = br#"{"webhookId":"wh_1","n":1.10}"#;
        for coding in ["gzip", "x-gzip", " GZIP "] {
            let got = decoded(&coded(coding), gzip(json), 1024).unwrap();
            assert_eq!(&got[..], json, "{coding}");
        }
        assert_eq!(
            &decoded(&coded("deflate"), zlib(json), 1024).unwrap()[..],
            json
        );
        // Two gzip members one after the other read as one body.
        let mut two = gzip(&json[..10]);
        two.extend_from_slice(&gzip(&json[10..]));
        assert_eq!(&decoded(&coded("gzip"), two, 1024).unwrap()[..], json);
        for coding in ["br", " BR"] {
            let got = decoded(&coded(coding), BytesMut::from(BR_JSON), 1024).unwrap();
            assert_eq!(&got[..], json, "{coding}");
        }
        for coding in ["identity", "zstd", "gzip, br"] {
            let got = decoded(&coded(coding), BytesMut::from(&json[..]), 1024).unwrap();
            assert_eq!(&got[..], json, "{coding}");
        }
        assert_eq!(
            &decoded(&HeaderMap::new(), BytesMut::from(&json[..]), 1024).unwrap()[..],
            json
        );
    }

    #[test]
    fn an_inflated_body_over_the_cap_or_a_broken_stream_is_refused() {
        // 10 MB of zeros in about 10 KB: refused at the cap, not inflated whole.
        let bomb = gzip(&vec![b'0'; 10_000_000]);
        assert!(bomb.len() < 20_000);
        assert!(matches!(
            decoded(&coded("gzip"), bomb, 1 << 20),
            Err(Reject::BodyTooLarge)
        ));
        let exact = gzip(&[b' '; 1024]);
        assert_eq!(decoded(&coded("gzip"), exact, 1024).unwrap().len(), 1024);
        assert!(matches!(
            decoded(&coded("br"), BytesMut::from(BR_BOMB), 1 << 20),
            Err(Reject::BodyTooLarge)
        ));
        let exact = BytesMut::from(BR_1024);
        assert_eq!(decoded(&coded("br"), exact, 1024).unwrap().len(), 1024);
        assert!(matches!(
            decoded(&coded("br"), BytesMut::from(BR_1024), 1023),
            Err(Reject::BodyTooLarge)
        ));
        for (coding, body) in [
            ("gzip", BytesMut::from(&br#"{"webhookId":"wh_1"}"#[..])),
            ("deflate", BytesMut::from(&b"not zlib"[..])),
            ("gzip", gzip(b"{}").split_to(8)),
            ("br", BytesMut::from(&b"not brotli at all"[..])),
            ("br", BytesMut::from(&BR_JSON[..20])),
        ] {
            assert!(
                matches!(
                    decoded(&coded(coding), body, 1024),
                    Err(Reject::MalformedJson)
                ),
                "{coding}"
            );
        }
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
