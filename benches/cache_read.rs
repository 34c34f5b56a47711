//! Read-path latency and throughput of `cache::ContentCache` over an
//! in-memory gzip layer (no network: measures fetch bookkeeping, inflate,
//! verification and copying).
//!
//! - `cold_random_64k/span_*`: a 64 KiB read at a random offset with nothing
//!   cached and no parked decoder (restart from the nearest checkpoint).
//! - `warm_hit_64k`: the same read served from memory.
//! - `sequential/*`: a whole layer read front to back in 128 KiB reads by a
//!   fresh cache (decoder parking keeps one decoder going).
//! - `warm_hit_4k/{memory,store}`: what a FUSE READ of 4 KiB costs the daemon
//!   once the bytes are local (the transport's `would_block` check, then the
//!   read, at a 4 KiB-aligned file offset 512 bytes into a page as a tar
//!   layer puts files): from the 512 MiB memory tier vs from the node's
//!   mapped chunk store (`DiskCache`, 16 MiB memory tier beside it), both
//!   filled by one pass over the layer first.
//! - `chunk_256k/{store_put,sha256}`: what the fill path spends per verified
//!   256 KiB chunk on writing it into the store (`DiskCache::put`: page
//!   checksums, the locks, one `pwrite` into the page cache, CLOCK eviction
//!   once the 1 GiB store is full) next to verifying it (sha256).

#![allow(missing_docs)]

use std::sync::Arc;

use clip::cache::{CacheConfig, ContentCache, ContentReader, DiskCache};
use clip::format::Index;
use clip::source::MemSource;
use clip::testutil::{gzip_layer, index_of_layers, mixed_bytes};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SIZE: usize = 48 << 20;

/// Mixed content: source-like runs, zeros, random runs.
fn content() -> Vec<u8> {
    mixed_bytes(&mut StdRng::seed_from_u64(42), SIZE)
}

struct Fixture {
    index: Arc<Index>,
    source: Arc<MemSource>,
    size: u64,
}

fn fixture(data: &[u8], span: u64) -> Fixture {
    let (layer, blob) = gzip_layer(data, span, 256 << 10, 1);
    let mut src = MemSource::new();
    src.insert(blob);
    Fixture {
        index: Arc::new(index_of_layers(vec![layer])),
        source: Arc::new(src),
        size: data.len() as u64,
    }
}

fn cache(f: &Fixture, config: CacheConfig) -> ContentCache {
    ContentCache::new(f.index.clone(), f.source.clone(), config)
}

fn benches(c: &mut Criterion) {
    let data = content();
    let mut buf = vec![0u8; 64 << 10];
    let mut rng = StdRng::seed_from_u64(1);
    for span in [1u64 << 20, 4 << 20] {
        let f = fixture(&data, span);
        let mut g = c.benchmark_group("cold_random_64k");
        g.sample_size(20);
        g.throughput(Throughput::Bytes(64 << 10));
        // Nothing kept: every read is a miss restarting at a checkpoint.
        let cold = cache(
            &f,
            CacheConfig {
                memory_bytes: 0,
                parked_decoders: 0,
                ..Default::default()
            },
        );
        g.bench_function(format!("span_{}M", span >> 20), |b| {
            b.iter(|| {
                let off = rng.gen_range(0..f.size - (64 << 10));
                assert_eq!(cold.read(0, off, &mut buf).unwrap(), 64 << 10);
            })
        });
        g.finish();
        let st = cold.metrics().counters();
        eprintln!(
            "span {}M cold: {:.0} KiB fetched/read, {:.0} KiB inflated/read",
            span >> 20,
            st.bytes_fetched as f64 / st.chunk_misses.max(1) as f64 / 1024.0,
            st.inflate_bytes as f64 / st.chunk_misses.max(1) as f64 / 1024.0
        );
        if span == 1 << 20 {
            let warm = cache(&f, CacheConfig::default());
            let mut big = vec![0u8; 1 << 20];
            let mut off = 0;
            while off < f.size {
                off += warm.read(0, off, &mut big).unwrap() as u64;
            }
            let mut g = c.benchmark_group("warm_hit_64k");
            g.throughput(Throughput::Bytes(64 << 10));
            g.bench_function("span_1M", |b| {
                b.iter(|| {
                    let off = rng.gen_range(0..f.size - (64 << 10));
                    assert_eq!(warm.read(0, off, &mut buf).unwrap(), 64 << 10);
                })
            });
            g.finish();
        }
        let mut g = c.benchmark_group("sequential");
        g.sample_size(10);
        g.throughput(Throughput::Bytes(f.size));
        let mut big = vec![0u8; 128 << 10];
        g.bench_function(format!("span_{}M_128k_reads", span >> 20), |b| {
            b.iter_batched(
                || cache(&f, CacheConfig::default()),
                |c| {
                    let mut off = 0;
                    while off < f.size {
                        off += c.read(0, off, &mut big).unwrap() as u64;
                    }
                    c
                },
                BatchSize::PerIteration,
            )
        });
        g.finish();
    }
    warm_hit_4k(c, &data);
    chunk_256k(c, &data);
}

fn chunk_256k(c: &mut Criterion, data: &[u8]) {
    let tmp = tempfile::tempdir().unwrap();
    let disk = DiskCache::open(
        &tmp.path().join("store"),
        1 << 30,
        Arc::new(clip::metrics::Metrics::new()),
    )
    .unwrap();
    let chunk = &data[..256 << 10];
    let mut g = c.benchmark_group("chunk_256k");
    g.throughput(Throughput::Bytes(256 << 10));
    let mut n = 0u64;
    g.bench_function("store_put", |b| {
        b.iter(|| {
            // A new name each time: every put writes a slot.
            n += 1;
            let mut name = [0u8; 32];
            name[..8].copy_from_slice(&n.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_le_bytes());
            name[8..16].copy_from_slice(&n.to_le_bytes());
            assert!(disk.put(&clip::Digest::from_bytes(name), chunk));
        })
    });
    g.bench_function("sha256", |b| b.iter(|| clip::Digest::of(chunk)));
    g.finish();
}

fn warm_hit_4k(c: &mut Criterion, data: &[u8]) {
    let f = fixture(data, 1 << 20);
    let tmp = tempfile::tempdir().unwrap();
    let memory = cache(&f, CacheConfig::default());
    let disk = DiskCache::open(
        &tmp.path().join("store"),
        1 << 30,
        Arc::new(clip::metrics::Metrics::new()),
    )
    .unwrap();
    let store = cache(
        &f,
        CacheConfig {
            memory_bytes: 16 << 20,
            ..Default::default()
        },
    )
    .with_disk(Arc::new(disk));
    let mut g = c.benchmark_group("warm_hit_4k");
    g.throughput(Throughput::Bytes(4096));
    for (name, cc) in [("memory", &memory), ("store", &store)] {
        let mut big = vec![0u8; 1 << 20];
        let mut off = 0;
        while off < f.size {
            off += cc.read(0, off, &mut big).unwrap() as u64;
        }
        let misses = cc.metrics().counters().chunk_misses;
        let mut rng = StdRng::seed_from_u64(7);
        let mut buf = vec![0u8; 4096];
        let pages = f.size / 4096 - 1;
        g.bench_function(name, |b| {
            b.iter(|| {
                let off = rng.gen_range(0..pages) * 4096 + 512;
                assert!(!cc.would_block(0, off, 4096));
                assert_eq!(cc.read(0, off, &mut buf).unwrap(), 4096);
            })
        });
        let st = cc.metrics().counters();
        assert_eq!(st.chunk_misses, misses, "{name}: every read a hit");
    }
    g.finish();
}

criterion_group!(cache_read, benches);
criterion_main!(cache_read);
