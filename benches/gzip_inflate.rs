//! gzip module benchmarks: index-build throughput against a plain
//! `MultiGzDecoder` pass, and 64 KiB reads from a cold checkpoint.
//!
//! Run: `cargo bench --bench gzip_inflate -- --quick`.
#![allow(missing_docs)] // criterion_group! generates an undocumented fn

use std::hint::black_box;
use std::io::Read;
use std::time::{Duration, Instant};

use clip::gzip::{IndexerConfig, SpanDecoder, ZranIndex, ZranReader};
use clip::testutil::{gzip, mixed_data};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DATA_LEN: usize = 32 << 20;
const READ_LEN: usize = 64 * 1024;

fn build_index(blob: &[u8], span: u64) -> ZranIndex {
    build_index_with(blob, span, true)
}

fn build_index_with(blob: &[u8], span: u64, trim: bool) -> ZranIndex {
    let cfg = IndexerConfig {
        span,
        chunk_size: IndexerConfig::DEFAULT_CHUNK_SIZE,
    };
    let mut r = ZranReader::new(blob, cfg);
    r.set_window_trimming(trim);
    let mut buf = vec![0u8; 256 * 1024];
    while r.read(&mut buf).unwrap() > 0 {}
    r.finish().unwrap()
}

fn gunzip(blob: &[u8]) -> u64 {
    let mut d = flate2::read::MultiGzDecoder::new(blob);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match d.read(&mut buf).unwrap() {
            0 => return n,
            k => n += k as u64,
        }
    }
}

/// One cold 64 KiB read at `start`: new decoder at the best checkpoint, skip, read.
fn cold_read(blob: &[u8], idx: &ZranIndex, start: u64, out: &mut [u8], skip: &mut [u8]) {
    let cp = &idx.checkpoints[idx.checkpoint_for(start)];
    let mut dec = SpanDecoder::new(cp).unwrap();
    let mut pos = dec.input_position() as usize;
    let mut done = 0;
    while done < out.len() && !dec.is_finished() {
        let input = &blob[pos..(pos + 64 * 1024).min(blob.len())];
        let gap = start - dec.output_position().min(start);
        let (used, made) = if gap > 0 {
            let n = (gap as usize).min(skip.len());
            dec.decode(input, &mut skip[..n]).unwrap()
        } else {
            dec.decode(input, &mut out[done..]).unwrap()
        };
        if gap == 0 {
            done += made;
        }
        pos += used;
    }
}

fn offsets(n: usize, max: u64) -> Vec<u64> {
    let mut rng = StdRng::seed_from_u64(99);
    (0..n).map(|_| rng.gen_range(0..max)).collect()
}

/// Prints index size and a latency distribution that criterion's mean hides.
fn report(blob: &[u8], data_len: u64) {
    let t = Instant::now();
    let n = gunzip(blob);
    let plain = t.elapsed();
    eprintln!(
        "MultiGzDecoder: {:.0} MB/s ({} MiB out)",
        n as f64 / plain.as_secs_f64() / 1e6,
        n >> 20
    );
    for span in [256 << 10, 1 << 20, 2 << 20, 4 << 20] {
        let t = Instant::now();
        let full = build_index_with(blob, span, false);
        let build_full = t.elapsed();
        let full_wins: usize = full.checkpoints.iter().map(|c| c.window.len()).sum();
        let t = Instant::now();
        let idx = build_index(blob, span);
        let build = t.elapsed();
        eprintln!(
            "span {:>4} KiB full windows: build {:.0} MB/s, window {} B/checkpoint ({:.2}% of gzip)",
            span >> 10,
            data_len as f64 / build_full.as_secs_f64() / 1e6,
            full_wins / full.checkpoints.len().max(1),
            full_wins as f64 * 100.0 / blob.len() as f64,
        );
        let wins: usize = idx.checkpoints.iter().map(|c| c.window.len()).sum();
        let cps = idx.checkpoints.len();
        let mut out = vec![0u8; READ_LEN];
        let mut skip = vec![0u8; 256 * 1024];
        let mut lat: Vec<Duration> = offsets(200, data_len - READ_LEN as u64)
            .into_iter()
            .map(|o| {
                let t = Instant::now();
                cold_read(blob, &idx, o, &mut out, &mut skip);
                t.elapsed()
            })
            .collect();
        lat.sort();
        if span == 1 << 20 {
            window_levels(&idx);
        }
        eprintln!(
            "span {:>4} KiB trimmed: build {:.0} MB/s, {cps} checkpoints, window {} B/checkpoint \
             ({:.2}% of gzip); cold 64 KiB read p50 {:?} p90 {:?} max {:?}",
            span >> 10,
            data_len as f64 / build.as_secs_f64() / 1e6,
            wins / cps.max(1),
            wins as f64 * 100.0 / blob.len() as f64,
            lat[lat.len() / 2],
            lat[lat.len() * 9 / 10],
            lat[lat.len() - 1],
        );
    }
}

/// Size and time of compressing the real checkpoint windows at several
/// libdeflate levels (the index stores them; building pays the time).
fn window_levels(idx: &ZranIndex) {
    let raw: Vec<Vec<u8>> = idx
        .checkpoints
        .iter()
        .map(|c| clip::gzip::decompress_window(&c.window, c.window_len).unwrap())
        .filter(|w| !w.is_empty())
        .collect();
    for lvl in [1, 4, 6, 9, 12] {
        let mut c = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(lvl).unwrap());
        let mut out = vec![0u8; 64 * 1024];
        let t = Instant::now();
        let bytes: usize = raw
            .iter()
            .map(|w| c.deflate_compress(w, &mut out).unwrap())
            .sum();
        let el = t.elapsed();
        eprintln!(
            "window level {lvl:>2}: {} B/window, {:?}/window",
            bytes / raw.len().max(1),
            el / raw.len().max(1) as u32
        );
    }
}

fn benches(c: &mut Criterion) {
    let data = mixed_data(DATA_LEN, 1);
    let blob = gzip(&data, 6);
    drop(data);
    report(&blob, DATA_LEN as u64);

    let mut g = c.benchmark_group("index_build");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(DATA_LEN as u64));
    g.bench_function("multigz_decoder", |b| b.iter(|| black_box(gunzip(&blob))));
    for span in [1u64 << 20, 4 << 20] {
        g.bench_function(format!("zran_span_{}k", span >> 10), |b| {
            b.iter(|| black_box(build_index(&blob, span)))
        });
        g.bench_function(format!("zran_span_{}k_full_windows", span >> 10), |b| {
            b.iter(|| black_box(build_index_with(&blob, span, false)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("cold_read_64k");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .throughput(Throughput::Bytes(READ_LEN as u64));
    for span in [1u64 << 20, 4 << 20] {
        let idx = build_index(&blob, span);
        let offs = offsets(1000, DATA_LEN as u64 - READ_LEN as u64);
        let mut out = vec![0u8; READ_LEN];
        let mut skip = vec![0u8; 256 * 1024];
        let mut i = 0;
        g.bench_function(format!("span_{}k", span >> 10), |b| {
            b.iter(|| {
                i = (i + 1) % offs.len();
                cold_read(&blob, &idx, offs[i], &mut out, &mut skip);
                black_box(&out);
            })
        });
    }
    g.finish();
}

criterion_group!(gzip_benches, benches);
criterion_main!(gzip_benches);
