//! The spool's group commit: what one spooled request costs when 64 arrive
//! together (one write + fdatasync serves all waiting) against one at a time
//! (a sync each), in the same run on the same disk.
#![allow(missing_docs, clippy::unwrap_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tether_ingress::{Spool, spool_record as encode};

/// One workflow entry of the 440-byte lead, framed.
fn record() -> Vec<u8> {
    let payload = vec![b'x'; 420];
    let mut out = Vec::new();
    encode(
        &mut out,
        b"tether:jobs:workflow",
        [
            (&b"workflowId"[..], &b"wf_1"[..]),
            (b"orgId", b"o_1"),
            (b"userId", b"u_1"),
            (b"webhookId", b"wh_1"),
            (b"payload", &payload[..]),
            (b"receivedAt", b"1700000000000"),
            (b"requestId", b"0123456789abcdef"),
        ]
        .into_iter(),
    );
    out
}

fn spool(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), u64::MAX).unwrap();
    let rec = record();
    let mut g = c.benchmark_group("spool");
    g.sample_size(10);
    g.throughput(Throughput::Elements(64));
    g.bench_function("64 requests, one at a time", |b| {
        b.iter(|| {
            rt.block_on(async {
                for _ in 0..64 {
                    spool.append(rec.clone()).await.unwrap();
                }
            })
        })
    });
    g.bench_function("64 requests, concurrent (group commit)", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..64)
                    .map(|_| {
                        let (s, r) = (spool.clone(), rec.clone());
                        tokio::spawn(async move { s.append(r).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap().unwrap();
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, spool);
criterion_main!(benches);
