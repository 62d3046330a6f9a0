//! Per-key rate limiting: GCRA (the generic cell rate algorithm) on one
//! atomic per key.
//!
//! A key with rate `r` per second and a bucket of `b` requests may send `b`
//! back to back, then one every `1/r` s. The state is a single "theoretical
//! arrival time" updated with compare-and-swap: no lock, no allocation, no
//! clock read beyond one `Instant` for keys that have a limit.
//!
//! Limits are per ingress instance by default: with N instances behind a
//! balancer a key gets up to N × its rate. With `rate_limit.scope =
//! "global"` the same GCRA runs in Redis instead ([`check_global`]): one
//! state per key shared by every instance, one pipelined script call per
//! limited request, Redis's own clock for all of them.

use std::{
    sync::{
        LazyLock, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use fred::prelude::*;

use crate::redis::Script;

const NANOS: u64 = 1_000_000_000;

/// Nanoseconds since the first call in this process (monotonic).
pub(crate) fn now_nanos() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// One key's limiter state.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Theoretical arrival time of the next request, ns (see [`now_nanos`]).
    tat: AtomicU64,
}

impl Clone for RateLimiter {
    fn clone(&self) -> Self {
        Self {
            tat: AtomicU64::new(self.tat.load(Ordering::Relaxed)),
        }
    }
}

impl PartialEq for RateLimiter {
    /// Limiter state is not part of a principal's identity.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for RateLimiter {}

impl RateLimiter {
    /// Admits one request at `now` (ns) for `per_sec` requests per second and
    /// a bucket of `burst` (0: `per_sec`). `Err(seconds)` tells when to retry.
    pub fn check(&self, per_sec: u32, burst: u32, now: u64) -> Result<(), u64> {
        let per_sec = u64::from(per_sec.max(1));
        let bucket = u64::from(if burst == 0 { per_sec as u32 } else { burst });
        let interval = NANOS / per_sec;
        let tolerance = interval.saturating_mul(bucket.saturating_sub(1));
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                let wait = start - now - tolerance;
                return Err(wait.div_ceil(NANOS).max(1));
            }
            match self.tat.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(current) => tat = current,
            }
        }
    }
}

/// GCRA on one key in Redis. `KEYS[1]`: the key's theoretical arrival time
/// (µs on Redis's clock); `ARGV`: the interval and the tolerance, µs.
/// Answers 0 when admitted, else how many µs until it would be.
const GCRA_SCRIPT: &str = r#"local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
if tat - now > tolerance then return tat - now - tolerance end
local next = tat + interval
redis.call('SET', KEYS[1], string.format('%d', next), 'PX', math.ceil((next - now) / 1000) + 1)
return 0
"#;

static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_SCRIPT));

/// Admits one request of the key whose limit state is `key` in Redis, for
/// `per_sec` requests per second and a bucket of `burst` (0: `per_sec`),
/// across every instance. `Ok(Err(seconds))` tells when to retry; `Err`:
/// Redis did not answer (the caller falls back to its own count).
pub(crate) async fn check_global(
    client: &Client,
    key: String,
    per_sec: u32,
    burst: u32,
) -> Result<Result<(), u64>, Error> {
    const MICROS: i64 = 1_000_000;
    let per_sec = i64::from(per_sec.max(1));
    let bucket = if burst == 0 {
        per_sec
    } else {
        i64::from(burst)
    };
    let interval = MICROS / per_sec;
    let tolerance = interval.saturating_mul(bucket - 1);
    let wait: i64 = GCRA
        .call(client, |script| {
            vec![
                script,
                Value::Integer(1),
                Value::from(key.as_str()),
                Value::Integer(interval),
                Value::Integer(tolerance),
            ]
        })
        .await?;
    Ok(if wait <= 0 {
        Ok(())
    } else {
        Err(u64::try_from(wait).map_or(1, |w| w.div_ceil(MICROS as u64).max(1)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_then_steady_rate() {
        let l = RateLimiter::default();
        let t0 = 10 * NANOS;
        // Bucket of 5 at 10/s: five at once, the sixth refused.
        for _ in 0..5 {
            assert!(l.check(10, 5, t0).is_ok());
        }
        assert_eq!(l.check(10, 5, t0), Err(1));
        // 100 ms later one more slot is free, and only one.
        assert!(l.check(10, 5, t0 + NANOS / 10).is_ok());
        assert!(l.check(10, 5, t0 + NANOS / 10).is_err());
        // After a long pause the whole bucket is back, not more.
        let later = t0 + 60 * NANOS;
        for _ in 0..5 {
            assert!(l.check(10, 5, later).is_ok());
        }
        assert!(l.check(10, 5, later).is_err());
    }

    #[test]
    fn default_bucket_is_one_second_and_retry_after_rounds_up() {
        let l = RateLimiter::default();
        for _ in 0..3 {
            assert!(l.check(3, 0, NANOS).is_ok());
        }
        assert_eq!(l.check(3, 0, NANOS), Err(1));
        let l = RateLimiter::default();
        // 1 per second, bucket 1: the next slot is a second away.
        assert!(l.check(1, 1, NANOS).is_ok());
        assert_eq!(l.check(1, 1, NANOS), Err(1));
        assert!(l.check(1, 1, 2 * NANOS).is_ok());
    }

    #[test]
    fn concurrent_callers_get_exactly_the_bucket() {
        let l = std::sync::Arc::new(RateLimiter::default());
        let now = NANOS;
        let admitted: usize = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || (0..100).filter(|_| l.check(1, 50, now).is_ok()).count())
            })
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(admitted, 50);
    }
}
