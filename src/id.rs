//! [`Id`]: a small UTF-8 identifier (user, org, workflow) held as `Bytes`, so
//! it is cloned into a stream entry with a reference-count bump, never copied.

use std::fmt;

use bytes::Bytes;

/// A UTF-8 identifier backed by shared bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(Bytes);

impl Id {
    /// Wraps `bytes` if they are UTF-8.
    pub fn new(bytes: Bytes) -> Option<Self> {
        std::str::from_utf8(&bytes).ok()?;
        Some(Self(bytes))
    }

    /// Copies `bytes` into an id of its own allocation, if they are UTF-8.
    /// For ids kept long (the replica's views): a slice of a Redis reply
    /// would keep the client's whole read buffer alive, and with it every
    /// other reply that arrived in the same read.
    pub fn copied(bytes: &[u8]) -> Option<Self> {
        std::str::from_utf8(bytes).ok().map(Self::from_str_copy)
    }

    /// Copies a string into a new id.
    pub fn from_str_copy(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Checked at construction; the fallback is unreachable.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared bytes (for a Redis field value).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
