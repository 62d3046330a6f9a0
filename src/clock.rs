//! Wall-clock time as the ingress stores and compares it with other hosts:
//! a job's `receivedAt`, a token's `exp`, a certificate's expiry, the
//! replica's last sync. (Intervals inside the process use `Instant`.)

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds (0 on a clock set before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
