//! Who sent a request: the principal an API key or a verified JWT stands
//! for. Its own file so the key table and the JWT verifier both name it
//! without importing each other.

use crate::{id::Id, limit::RateLimiter};

/// Who sent a request, as far as the control plane says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's user.
    pub user_id: Id,
    /// The key's organisation: triggers are matched in this org only.
    pub org_id: Id,
    /// Requests per second allowed for this key, if the record sets one.
    pub rate_limit_per_sec: Option<u32>,
    /// This key's rate state (ignored by `==`).
    pub limiter: RateLimiter,
    /// The API key's SHA-256, kept only with `rate_limit.scope = "global"`
    /// (the limit's key in Redis); `None` otherwise and for JWTs.
    pub digest: Option<Box<[u8; 32]>>,
}
