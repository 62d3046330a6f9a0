//! The digest of a lead's content: what tells two jobs of one request id
//! apart when a caller sends the same `X-Request-Id` with different leads.
//!
//! A BullMQ job id, and a stream worker's duplicate key, name the request
//! (its id), the caller and the match; a caller's retry resends the same
//! `X-Request-Id` and so finds the first job instead of adding a second.
//! But a caller may also send one `X-Request-Id` with many leads (a batch's
//! id on each of its leads): without the content in the id, every lead
//! after the first would be taken for a retry and dropped. The digest is
//! XXH3-64 (a fixed algorithm, the same in every process, version and
//! language), each part preceded by its length so no two splits collide.

use xxhash_rust::xxh3::Xxh3;

/// The digest of `parts` (a job's content beyond its ids).
pub(crate) fn content<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut hasher = Xxh3::new();
    for part in parts {
        hasher.update(&(part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.digest()
}

/// `digest` as 16 lowercase hex digits.
pub(crate) fn hex(digest: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (pair, byte) in out.chunks_exact_mut(2).zip(digest.to_be_bytes()) {
        pair.copy_from_slice(&crate::hex::byte(byte));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed values: a job id written by one version is found by the next,
    /// and a worker in another language computes the same key (Python's
    /// `xxhash.xxh3_64(struct.pack('<Q', 4) + b'wh_1' + struct.pack('<Q', 2)
    /// + b'{}').hexdigest()` is this one).
    #[test]
    fn digests_are_fixed_and_framed() {
        assert_eq!(&hex(content([&b"wh_1"[..], b"{}"])), b"e7ce170b0451401c");
        assert_ne!(content([&b"ab"[..], b"c"]), content([&b"a"[..], b"bc"]));
        assert_eq!(&hex(0x0123_4567_89ab_cdef), b"0123456789abcdef");
    }
}
