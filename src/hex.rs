//! Lowercase hex: the one encoder of key digests, script SHAs, request ids
//! and JSON `\u00XX` escapes.

/// The two lowercase hex digits of `b`.
pub(crate) fn byte(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]
}

/// Appends `bytes` as lowercase hex to `out` (no allocation beyond `out`'s
/// growth).
pub(crate) fn push(out: &mut String, bytes: &[u8]) {
    out.reserve(bytes.len() * 2);
    for &b in bytes {
        out.extend(byte(b).map(char::from));
    }
}
