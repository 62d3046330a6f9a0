//! The histograms every request records (its latency, its sink write's, its
//! batch size), kept in fixed buckets of relaxed atomic counters and
//! rendered here, beside the recorder's text.
//!
//! The recorder keeps each sample with a timestamp in a lock-free list until
//! its upkeep sorts it into buckets: three of those per request cost about 3%
//! of the requests/s with one match (BENCHMARKS.md §22). Here a sample is
//! two uncontended atomic adds in the recording thread's own shard, and
//! nothing is kept beyond the counts.

use std::{
    cell::Cell,
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

use metrics::{Histogram, HistogramFn};

/// Shards per series: serving threads spread over them, so two threads
/// rarely add to the same cache line.
const SHARDS: usize = 4;

/// The most buckets a series has, `+Inf` included (`metrics.rs` checks its
/// bounds against it when it compiles).
pub(super) const MAX_BUCKETS: usize = 16;

/// One thread's counts, on cache lines of its own.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Samples per bucket (not cumulative); the last one past every bound.
    counts: [AtomicU64; MAX_BUCKETS],
    /// The samples' sum, in units of `1 / scale`.
    sum: AtomicU64,
}

/// One series: a family with one label set.
struct Series {
    /// Upper bounds, ascending; at most `MAX_BUCKETS - 1`.
    bounds: &'static [f64],
    /// Units kept per unit recorded (1e9: seconds kept as nanoseconds).
    scale: f64,
    shards: [Shard; SHARDS],
}

thread_local! {
    /// This thread's shard, taken in turn when it first records.
    static SHARD: Cell<Option<usize>> = const { Cell::new(None) };
}

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    SHARD.with(|shard| {
        shard.get().unwrap_or_else(|| {
            let index = NEXT.fetch_add(1, Relaxed) % SHARDS;
            shard.set(Some(index));
            index
        })
    })
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        let Some(shard) = self.shards.get(shard_index()) else {
            return;
        };
        if let Some(count) = shard.counts.get(bucket) {
            count.fetch_add(1, Relaxed);
        }
        // A negative or NaN sample adds nothing to the sum (`as` saturates).
        shard.sum.fetch_add((value * self.scale) as u64, Relaxed);
    }
}

impl Series {
    /// Appends the series in Prometheus's text format.
    fn render(&self, name: &str, label: Option<(&str, &str)>, out: &mut String) {
        let count = |bucket: usize| -> u64 {
            self.shards
                .iter()
                .filter_map(|s| s.counts.get(bucket))
                .map(|c| c.load(Relaxed))
                .sum()
        };
        // `route="workflow",` before `le`, and `{route="workflow"}` alone.
        let (before_le, alone) = match label {
            Some((key, value)) => (
                format!("{key}=\"{value}\","),
                format!("{{{key}=\"{value}\"}}"),
            ),
            None => (String::new(), String::new()),
        };
        let mut total = 0;
        for (bucket, bound) in self.bounds.iter().enumerate() {
            total += count(bucket);
            let _ = writeln!(out, "{name}_bucket{{{before_le}le=\"{bound}\"}} {total}");
        }
        total += count(self.bounds.len());
        let _ = writeln!(out, "{name}_bucket{{{before_le}le=\"+Inf\"}} {total}");
        let sum: u64 = self.shards.iter().map(|s| s.sum.load(Relaxed)).sum();
        let _ = writeln!(out, "{name}_sum{alone} {}", sum as f64 / self.scale);
        let _ = writeln!(out, "{name}_count{alone} {total}");
    }
}

/// A registered series: its family, its one label (if any), its counts.
struct Registered {
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    series: Arc<Series>,
}

/// Every series registered in this process (like the recorder, one per
/// process: ingresses started in one test binary share them).
static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());

fn registry() -> std::sync::MutexGuard<'static, Vec<Registered>> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The handle of family `name` with `label`, bucketed by `bounds` (at most
/// 15, ascending), its sum kept in units of `1 / scale`. Registering the
/// same series again returns the same counts.
pub(crate) fn histogram(
    name: &'static str,
    label: Option<(&'static str, &'static str)>,
    bounds: &'static [f64],
    scale: f64,
) -> Histogram {
    let bounds = bounds.get(..MAX_BUCKETS - 1).unwrap_or(bounds);
    let mut registry = registry();
    if let Some(known) = registry.iter().find(|r| r.name == name && r.label == label) {
        return Histogram::from_arc(known.series.clone());
    }
    let series = Arc::new(Series {
        bounds,
        scale,
        shards: Default::default(),
    });
    registry.push(Registered {
        name,
        label,
        series: series.clone(),
    });
    Histogram::from_arc(series)
}

/// Appends every registered family to `out`, each with its `# HELP` (from
/// `help`) and `# TYPE` lines once, then its series.
pub(crate) fn render(help: impl Fn(&str) -> &'static str, out: &mut String) {
    let registry = registry();
    let mut done: Vec<&str> = Vec::new();
    for first in registry.iter() {
        if done.contains(&first.name) {
            continue;
        }
        done.push(first.name);
        let name = first.name;
        let _ = writeln!(out, "# HELP {name} {}", help(name));
        let _ = writeln!(out, "# TYPE {name} histogram");
        for r in registry.iter().filter(|r| r.name == name) {
            r.series.render(name, r.label, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_cumulative_buckets_with_sum_and_count() {
        let h = histogram(
            "test_hot_seconds",
            Some(("route", "r")),
            &[0.001, 0.01],
            1e9,
        );
        for v in [0.0005, 0.001, 0.005, 0.5] {
            h.record(v);
        }
        let mut out = String::new();
        render(|_| "Help.", &mut out);
        for line in [
            "# HELP test_hot_seconds Help.",
            "# TYPE test_hot_seconds histogram",
            "test_hot_seconds_bucket{route=\"r\",le=\"0.001\"} 2",
            "test_hot_seconds_bucket{route=\"r\",le=\"0.01\"} 3",
            "test_hot_seconds_bucket{route=\"r\",le=\"+Inf\"} 4",
            "test_hot_seconds_sum{route=\"r\"} 0.5065",
            "test_hot_seconds_count{route=\"r\"} 4",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        // Registered again, the same counts.
        histogram("test_hot_seconds", Some(("route", "r")), &[0.001], 1e9).record(0.0);
        let mut again = String::new();
        render(|_| "Help.", &mut again);
        assert!(
            again.contains("test_hot_seconds_count{route=\"r\"} 5"),
            "{again}"
        );
    }
}
