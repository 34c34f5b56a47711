//! Cost of recording on the read path: an `OpTimer` (Instant::now twice +
//! one sharded histogram record), a bare histogram record, a counter add,
//! and the FUSE hook's collect/release pair; single-threaded and with 4
//! threads hammering one registry.
#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::sync::Arc;
use std::time::{Duration, Instant};

use clip::metrics::{Metrics, Op};
use criterion::{black_box, criterion_group, criterion_main, Criterion};

fn record(c: &mut Criterion) {
    let m = Metrics::new();
    c.bench_function("fuse_timer_create_drop", |b| {
        b.iter(|| drop(black_box(m.fuse_timer(Op::Read))))
    });
    c.bench_function("record_fuse_op", |b| {
        b.iter(|| m.record_fuse_op(Op::Read, black_box(Duration::from_nanos(12_345)), false))
    });
    c.bench_function("add_served", |b| b.iter(|| m.add_served(black_box(4096))));
    c.bench_function("instant_now_pair", |b| {
        b.iter(|| black_box(Instant::now()).elapsed())
    });
    let shared = Arc::new(Metrics::new());
    c.bench_function("record_fuse_op_4_threads", |b| {
        b.iter_custom(|iters| {
            let t0 = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..4 {
                    let m = shared.clone();
                    s.spawn(move || {
                        for _ in 0..iters {
                            m.record_fuse_op(
                                Op::Read,
                                black_box(Duration::from_nanos(12_345)),
                                false,
                            );
                        }
                    });
                }
            });
            // Wall time per record per thread.
            t0.elapsed()
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
