//! Replays the fuzz corpora (`fuzz/corpus/<target>/`) and every input a
//! fuzzer ever crashed on (`fuzz/regressions/<target>/`) through the same
//! checks the fuzz targets run, on stable Rust, in every test run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "{target}: no corpus found");
}

#[test]
fn envelope_corpus() {
    replay("envelope", tether_ingress::fuzzing::envelope);
}

#[test]
fn authorization_corpus() {
    replay("authorization", tether_ingress::fuzzing::authorization);
}

#[test]
fn outreach_corpus() {
    replay("outreach", tether_ingress::fuzzing::outreach);
}
