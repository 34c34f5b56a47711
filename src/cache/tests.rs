//! Cache tests: every path agrees with the ground truth, single-flight,
//! fetch volume, fault injection. No network: blobs live in a `MemSource`
//! wrapped by [`FaultySource`].

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::digest::Digest;
use crate::format::{
    write_index, Checkpoint, Chunk, Index, IndexData, Layer, LayerKind, ProfileRange, WriteOptions,
    PROFILE_VERSION,
};
use crate::metrics::{Counters, ErrorKind, Metrics};
use crate::source::{BlobSource, MemSource, RemoteKind, SourceError};
use crate::testutil::{gzip_layer, sample_tar};

// ---------------------------------------------------------------- fakes

/// A `BlobSource` wrapper that counts calls and bytes, and can add latency,
/// fail, or corrupt one byte of what it returns.
#[derive(Debug, Default)]
struct FaultySource {
    inner: MemSource,
    calls: AtomicU64,
    bytes: AtomicU64,
    latency_ms: AtomicU64,
    fail: AtomicBool,
    /// Blob offset whose byte is flipped in every answer covering it.
    flip_at: Mutex<Option<u64>>,
    /// Every `(offset, len)` asked for.
    log: Mutex<Vec<(u64, usize)>>,
}

impl FaultySource {
    fn new(inner: MemSource) -> Self {
        FaultySource {
            inner,
            ..Default::default()
        }
    }
    fn calls(&self) -> u64 {
        self.calls.load(Relaxed)
    }
    fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }
    fn reset_counts(&self) {
        self.calls.store(0, Relaxed);
        self.bytes.store(0, Relaxed);
        self.log.lock().unwrap().clear();
    }
}

impl BlobSource for FaultySource {
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        self.calls.fetch_add(1, Relaxed);
        self.log.lock().unwrap().push((offset, buf.len()));
        let ms = self.latency_ms.load(Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if self.fail.load(Relaxed) {
            return Err(SourceError::remote(
                RemoteKind::Transient,
                "injected failure",
            ));
        }
        let n = self.inner.read_at(digest, offset, buf)?;
        self.bytes.fetch_add(n as u64, Relaxed);
        if let Some(at) = *self.flip_at.lock().unwrap() {
            if at >= offset && at < offset + n as u64 {
                buf[(at - offset) as usize] ^= 0x40;
            }
        }
        Ok(n)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        self.inner.open(digest)
    }
}

// ---------------------------------------------------------------- fixtures

/// Chunk records for spans starting at `starts`, with `in_end` from `hint`.
fn chunks_for(data: &[u8], starts: &[u64], chunk: u64, hint: impl Fn(u64) -> u64) -> Vec<Chunk> {
    let mut out = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(data.len() as u64);
        let mut p = s;
        while p < e {
            let q = (p + chunk).min(e);
            out.push(Chunk {
                digest: *Digest::of(&data[p as usize..q as usize]).as_bytes(),
                in_end: hint(q),
            });
            p = q;
        }
    }
    out
}

fn first_chunks(data_len: u64, starts: &[u64], chunk: u64) -> Vec<u32> {
    let mut n = 0u32;
    starts
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let e = starts.get(i + 1).copied().unwrap_or(data_len);
            let f = n;
            n += (e - s).div_ceil(chunk) as u32;
            f
        })
        .collect()
}

/// An uncompressed layer: blob == content, a checkpoint every `span`.
fn tar_layer(data: &[u8], span: u64, chunk: u64) -> (Layer, Vec<u8>) {
    let starts: Vec<u64> = (0..data.len() as u64).step_by(span as usize).collect();
    let firsts = first_chunks(data.len() as u64, &starts, chunk);
    let checkpoints = starts
        .iter()
        .zip(&firsts)
        .map(|(&s, &f)| Checkpoint {
            in_offset: s,
            out_offset: s,
            first_chunk: f,
            ..Default::default()
        })
        .collect();
    let layer = Layer {
        digest: Digest::of(data),
        diff_id: Digest::of(data),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        kind: LayerKind::Tar,
        compressed_size: data.len() as u64,
        uncompressed_size: data.len() as u64,
        chunk_size: chunk as u32,
        checkpoints,
        chunks: chunks_for(data, &starts, chunk, |q| q),
    };
    (layer, data.to_vec())
}

/// A zstd layer: one frame per span (`whole`: a single frame, one checkpoint).
fn zstd_layer(data: &[u8], span: u64, chunk: u64, whole: bool) -> (Layer, Vec<u8>) {
    let span = if whole { data.len() as u64 } else { span };
    let starts: Vec<u64> = (0..data.len() as u64).step_by(span as usize).collect();
    let firsts = first_chunks(data.len() as u64, &starts, chunk);
    let mut blob = Vec::new();
    let mut frame_ends = Vec::new();
    let mut checkpoints = Vec::new();
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(data.len() as u64);
        checkpoints.push(Checkpoint {
            in_offset: blob.len() as u64,
            out_offset: s,
            first_chunk: firsts[i],
            ..Default::default()
        });
        blob.extend(zstd::bulk::compress(&data[s as usize..e as usize], 3).unwrap());
        frame_ends.push((e, blob.len() as u64));
    }
    // Hint: the end of the frame holding the chunk's last byte.
    let hint = |q: u64| frame_ends.iter().find(|(e, _)| q <= *e).unwrap().1;
    let chunks = chunks_for(data, &starts, chunk, hint);
    let layer = Layer {
        digest: Digest::of(&blob),
        diff_id: Digest::of(data),
        media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
        kind: if whole {
            LayerKind::ZstdWhole
        } else {
            LayerKind::ZstdFrames
        },
        compressed_size: blob.len() as u64,
        uncompressed_size: data.len() as u64,
        chunk_size: chunk as u32,
        checkpoints,
        chunks,
    };
    (layer, blob)
}

/// An index over `layers` and a counting source holding their blobs.
fn image(layers: Vec<(Layer, Vec<u8>)>) -> (Arc<Index>, Arc<FaultySource>) {
    let mut mem = MemSource::new();
    let mut data = IndexData::default();
    for (layer, blob) in layers {
        assert_eq!(mem.insert(blob), layer.digest);
        data.layers.push(layer);
    }
    let bytes = write_index(&data, WriteOptions::default()).unwrap();
    (
        Arc::new(Index::from_bytes(bytes).unwrap()),
        Arc::new(FaultySource::new(mem)),
    )
}

fn cache(index: &Arc<Index>, src: &Arc<FaultySource>, config: CacheConfig) -> Arc<ContentCache> {
    Arc::new(ContentCache::new(index.clone(), src.clone(), config))
}

/// The cache's counters.
fn stats(c: &ContentCache) -> Counters {
    c.metrics().counters()
}

fn cfg(memory_bytes: u64) -> CacheConfig {
    CacheConfig {
        memory_bytes,
        ..Default::default()
    }
}

fn read_all(c: &ContentCache, layer: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let n = c.read(layer, offset, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Random reads (with a bias towards span/chunk boundaries and the layer's
/// end) compared with the ground truth.
fn check_random_reads(
    c: &ContentCache,
    layer: u32,
    truth: &[u8],
    reads: usize,
    seed: u64,
    span: u64,
    chunk: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = truth.len() as u64;
    for i in 0..reads {
        let off = match rng.gen_range(0..6) {
            0 => (rng.gen_range(0..=len / span) * span).saturating_sub(rng.gen_range(0..3)),
            1 => (rng.gen_range(0..=len / chunk) * chunk).saturating_sub(rng.gen_range(0..3)),
            2 => len.saturating_sub(rng.gen_range(1..3000)),
            _ => rng.gen_range(0..len + 10),
        };
        let n = match rng.gen_range(0..4) {
            0 => rng.gen_range(1..16),
            1 => rng.gen_range(1..(chunk as usize * 3)),
            2 => rng.gen_range(1..(span as usize + chunk as usize)),
            _ => 4096,
        };
        let got = read_all(c, layer, off, n);
        let lo = off.min(len) as usize;
        let hi = (off + n as u64).min(len) as usize;
        assert_eq!(got.len(), hi - lo, "read {i}: length at {off}+{n}");
        assert!(got == truth[lo..hi], "read {i}: bytes differ at {off}+{n}");
    }
    // The very last byte.
    assert_eq!(read_all(c, layer, len - 1, 10), truth[truth.len() - 1..]);
    assert!(read_all(c, layer, len, 10).is_empty());
}

/// Cold, warm, tiny budget and 4 concurrent threads must all agree.
fn check_every_path(
    layer: (Layer, Vec<u8>),
    truth: Vec<u8>,
    span: u64,
    chunk: u64,
    reads: usize,
    tiny_reads: usize,
) {
    let (index, src) = image(vec![layer]);
    let truth = Arc::new(truth);
    // Cold then warm on the same cache.
    let c = cache(&index, &src, cfg(512 << 20));
    check_random_reads(&c, 0, &truth, reads, 1, span, chunk);
    let before = stats(&c);
    check_random_reads(&c, 0, &truth, reads, 1, span, chunk);
    let warm = stats(&c);
    assert_eq!(
        warm.chunk_misses, before.chunk_misses,
        "second identical pass must be all hits"
    );
    assert_eq!(warm.fetch_count, before.fetch_count);
    // Tiny budget: constant eviction.
    let c = cache(&index, &src, cfg(3 * chunk));
    check_random_reads(&c, 0, &truth, tiny_reads, 2, span, chunk);
    assert!(stats(&c).cache_evictions > 0);
    assert!(c.memory_used() <= 3 * chunk);
    // Concurrent readers, modest budget so hits, misses and evictions mix.
    let c = cache(&index, &src, cfg(truth.len() as u64 / 3));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (c, truth) = (c.clone(), truth.clone());
            std::thread::spawn(move || {
                check_random_reads(&c, 0, &truth, reads / 4, 10 + t, span, chunk)
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Sequential pass through the whole layer.
    let c = cache(&index, &src, cfg(512 << 20));
    let mut off = 0;
    while off < truth.len() {
        let got = read_all(&c, 0, off as u64, 100_000);
        assert!(
            got == truth[off..(off + 100_000).min(truth.len())],
            "sequential at {off}"
        );
        off += got.len();
    }
}

// ---------------------------------------------------------------- tests

#[test]
fn tar_layer_every_path_agrees() {
    let data = sample_tar(1, 3 << 20);
    let (span, chunk) = (256 << 10, 64 << 10);
    check_every_path(tar_layer(&data, span, chunk), data, span, chunk, 1000, 300);
}

#[test]
fn gzip_every_path_agrees() {
    let data = sample_tar(11, 4 << 20);
    let (span, chunk) = (256 << 10, 64 << 10);
    let layer = gzip_layer(&data, span, chunk, 1);
    assert!(layer.0.checkpoints.len() > 8, "want many spans");
    check_every_path(layer, data, span, chunk, 800, 200);
}

#[test]
fn gzip_multi_member_every_path_agrees() {
    let data = sample_tar(12, 2 << 20);
    let (span, chunk) = (128 << 10, 32 << 10);
    check_every_path(
        gzip_layer(&data, span, chunk, 5),
        data,
        span,
        chunk,
        400,
        100,
    );
}

#[test]
fn gzip_sequential_read_fetches_blob_once() {
    let data = sample_tar(13, 4 << 20);
    for (step, seq) in [(4096, 0), (64 << 10, 0), (128 << 10, 1 << 20)] {
        let config = CacheConfig {
            sequential_fetch: seq,
            ..cfg(64 << 20)
        };
        check_sequential_volume(
            gzip_layer(&data, 256 << 10, 64 << 10, 1),
            &data,
            step,
            config,
        );
    }
    // Default readahead, multi-member.
    check_sequential_volume(
        gzip_layer(&data, 256 << 10, 64 << 10, 3),
        &data,
        128 << 10,
        cfg(64 << 20),
    );
}

#[test]
fn gzip_random_read_fetches_only_what_it_needs() {
    let data = sample_tar(14, 4 << 20);
    let (layer, blob) = gzip_layer(&data, 1 << 20, 64 << 10, 1);
    let (index, src) = image(vec![(layer, blob)]);
    let config = CacheConfig {
        fetch_slack: 0,
        ..cfg(64 << 20)
    };
    let c = cache(&index, &src, config);
    // A 4 KiB read in the middle of a span: one fetch from the checkpoint
    // to the chunk's in_end, nothing more.
    let view = index.layer(0).unwrap();
    let off = view.span_range(2).unwrap().start + 3 * (64 << 10) + 100;
    assert_eq!(
        read_all(&c, 0, off, 4096),
        data[off as usize..off as usize + 4096]
    );
    let cp = view.checkpoint(2).unwrap();
    let ck = view.chunk(cp.first_chunk + 3).unwrap();
    let start = crate::gzip::SpanDecoder::input_start(&cp);
    assert_eq!(
        *src.log.lock().unwrap(),
        vec![(start, (ck.in_end - start) as usize)]
    );
    // Chunks produced on the way (0..3 of the span) were verified and cached.
    src.reset_counts();
    assert_eq!(
        read_all(&c, 0, off - 3 * (64 << 10), 100),
        data[(off - 3 * (64 << 10)) as usize..][..100]
    );
    assert_eq!(src.calls(), 0);
    // The next chunk continues the parked decoder instead of restarting.
    assert_eq!(
        read_all(&c, 0, off + (64 << 10), 100),
        data[(off + (64 << 10)) as usize..][..100]
    );
    let st = stats(&c);
    assert_eq!((st.decoder_starts, st.decoder_resumes), (1, 1));
    assert_eq!(src.log.lock().unwrap()[0].0, ck.in_end);
}

#[test]
fn zstd_frames_every_path_agrees() {
    let data = sample_tar(2, 3 << 20);
    let (span, chunk) = (256 << 10, 64 << 10);
    check_every_path(
        zstd_layer(&data, span, chunk, false),
        data,
        span,
        chunk,
        600,
        200,
    );
}

#[test]
fn zstd_whole_every_path_agrees() {
    let data = sample_tar(3, 1 << 20);
    let chunk = 64 << 10;
    check_every_path(
        zstd_layer(&data, 0, chunk, true),
        data,
        256 << 10,
        chunk,
        300,
        20,
    );
}

#[test]
fn tar_reads_fetch_whole_chunks_once() {
    let data = sample_tar(4, 1 << 20);
    let (index, src) = image(vec![tar_layer(&data, 256 << 10, 64 << 10)]);
    let c = cache(&index, &src, cfg(64 << 20));
    assert_eq!(read_all(&c, 0, 70_000, 10), data[70_000..70_010]);
    assert_eq!(*src.log.lock().unwrap(), vec![(65536, 65536)]);
    // A read spanning three chunks of one span: one more fetch, of the two missing chunks.
    assert_eq!(read_all(&c, 0, 70_000, 150_000), data[70_000..220_000]);
    assert_eq!(src.log.lock().unwrap()[1], (131072, 131072));
    assert_eq!(src.calls(), 2);
}

#[test]
fn single_flight_for_one_cold_chunk() {
    let data = sample_tar(5, 1 << 20);
    for layer in [
        tar_layer(&data, 256 << 10, 64 << 10),
        zstd_layer(&data, 256 << 10, 64 << 10, false),
        gzip_layer(&data, 256 << 10, 64 << 10, 1),
    ] {
        let (index, src) = image(vec![layer]);
        src.latency_ms.store(100, Relaxed);
        let c = cache(&index, &src, cfg(64 << 20));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (c, b) = (c.clone(), barrier.clone());
                std::thread::spawn(move || {
                    b.wait();
                    read_all(&c, 0, 300_000, 1000)
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), data[300_000..301_000]);
        }
        assert_eq!(
            src.calls(),
            1,
            "8 concurrent cold reads of one chunk must share one fetch"
        );
        let st = stats(&c);
        assert_eq!(st.fetch_count, 1);
        assert_eq!(st.shared_fills + st.chunk_hits, 7);
    }
}

#[test]
fn flipped_source_byte_is_a_digest_mismatch_never_wrong_data() {
    let data = sample_tar(6, 1 << 20);
    let (index, src) = image(vec![tar_layer(&data, 256 << 10, 64 << 10)]);
    *src.flip_at.lock().unwrap() = Some(200_000);
    let c = cache(&index, &src, cfg(64 << 20));
    let mut buf = vec![0u8; 100];
    for _ in 0..2 {
        match c.read(0, 199_950, &mut buf) {
            Err(CacheError::DigestMismatch { layer: 0, chunk: 3 }) => {}
            other => panic!("expected a digest mismatch, got {other:?}"),
        }
    }
    assert_eq!(c.metrics().error_count(ErrorKind::DigestMismatch), 2);
    // Other chunks are fine; once the source is healthy the chunk is served.
    assert_eq!(read_all(&c, 0, 0, 1000), data[..1000]);
    *src.flip_at.lock().unwrap() = None;
    assert_eq!(read_all(&c, 0, 199_950, 100), data[199_950..200_050]);
}

#[test]
fn flipped_compressed_byte_never_serves_wrong_data() {
    let data = sample_tar(7, 1 << 20);
    for (layer, blob) in [
        zstd_layer(&data, 256 << 10, 64 << 10, false),
        gzip_layer(&data, 256 << 10, 64 << 10, 2),
    ] {
        let blob_len = blob.len() as u64;
        let (index, src) = image(vec![(layer, blob)]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut errors = 0;
        for _ in 0..30 {
            let at = rng.gen_range(0..blob_len);
            *src.flip_at.lock().unwrap() = Some(at);
            let c = cache(&index, &src, cfg(64 << 20));
            let mut buf = vec![0u8; data.len()];
            match c.read(0, 0, &mut buf) {
                Ok(n) => assert!(
                    buf[..n] == data[..n],
                    "wrong bytes served with byte {at} flipped"
                ),
                Err(CacheError::DigestMismatch { .. } | CacheError::Decode { .. }) => errors += 1,
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        assert!(errors > 20, "most flips must be detected ({errors}/30)");
    }
}

#[test]
fn source_errors_are_reported_with_the_layer() {
    let data = sample_tar(8, 512 << 10);
    let zl = gzip_layer(&data, 128 << 10, 64 << 10, 1);
    let digest = zl.0.digest;
    let (index, src) = image(vec![tar_layer(&data, 128 << 10, 64 << 10), zl]);
    src.fail.store(true, Relaxed);
    let c = cache(&index, &src, cfg(64 << 20));
    let mut buf = [0u8; 10];
    assert!(matches!(
        c.read(0, 5, &mut buf),
        Err(CacheError::Source { layer: 0, .. })
    ));
    match c.read(1, 300_000, &mut buf) {
        Err(CacheError::Source {
            layer: 1,
            digest: d,
            ..
        }) => assert_eq!(d, digest),
        other => panic!("{other:?}"),
    }
    // Recovers once the source does.
    src.fail.store(false, Relaxed);
    assert_eq!(read_all(&c, 1, 300_000, 10), data[300_000..300_010]);
    assert!(matches!(
        c.read(2, 0, &mut buf),
        Err(CacheError::NoSuchLayer { layer: 2 })
    ));
    assert_eq!(c.read(0, 1 << 40, &mut buf).unwrap(), 0);
    assert_eq!(c.read(0, 0, &mut []).unwrap(), 0);
}

#[test]
fn truncated_blob_is_a_decode_error() {
    let data = sample_tar(9, 512 << 10);
    for (mut layer, mut blob) in [
        zstd_layer(&data, 128 << 10, 64 << 10, false),
        gzip_layer(&data, 128 << 10, 64 << 10, 1),
    ] {
        // Cut inside the last chunk's compressed bytes.
        blob.truncate(blob.len() - 2000);
        layer.digest = Digest::of(&blob);
        layer.compressed_size = blob.len() as u64;
        let (index, src) = image(vec![(layer, blob)]);
        let c = cache(&index, &src, cfg(64 << 20));
        let mut buf = vec![0u8; 1000];
        let err = c.read(0, data.len() as u64 - 1000, &mut buf).unwrap_err();
        assert!(matches!(err, CacheError::Decode { layer: 0, .. }), "{err}");
        // Earlier spans are intact.
        assert_eq!(read_all(&c, 0, 0, 1000), data[..1000]);
    }
}

#[test]
fn zstd_frame_with_a_window_over_the_limit_is_refused_by_name() {
    use std::io::Write;
    let data = sample_tar(4, 64 << 10);
    let (mut layer, _) = zstd_layer(&data, 0, 16 << 10, true);
    // The same bytes in a frame asking for a 256 MiB window.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(28))
        .unwrap();
    enc.write_all(&data).unwrap();
    let blob = enc.finish().unwrap();
    layer.digest = Digest::of(&blob);
    layer.compressed_size = blob.len() as u64;
    layer
        .chunks
        .iter_mut()
        .for_each(|c| c.in_end = blob.len() as u64);
    let (index, src) = image(vec![(layer, blob)]);
    let c = cache(&index, &src, cfg(64 << 20));
    let err = c.read(0, 0, &mut [0u8; 100]).unwrap_err();
    assert!(
        matches!(err, CacheError::ZstdWindowTooLarge { layer: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("128 MiB"), "{err}");
}

/// Reads the whole layer front to back in `step`-byte reads and checks the
/// compressed bytes fetched stay close to the blob size (no re-fetching from
/// checkpoints) and the decoder is continued rather than restarted.
fn check_sequential_volume(
    layer: (Layer, Vec<u8>),
    truth: &[u8],
    step: usize,
    config: CacheConfig,
) -> Counters {
    let compressed = layer.1.len() as u64;
    let (index, src) = image(vec![layer]);
    let c = cache(&index, &src, config);
    src.reset_counts();
    let mut off = 0;
    while off < truth.len() {
        let got = read_all(&c, 0, off as u64, step);
        assert!(
            got == truth[off..(off + step).min(truth.len())],
            "sequential at {off}"
        );
        off += got.len();
    }
    let st = stats(&c);
    assert_eq!(st.bytes_fetched, src.bytes());
    assert!(
        src.bytes() as f64 <= 1.1 * compressed as f64,
        "fetched {} bytes for a {compressed}-byte blob",
        src.bytes()
    );
    assert_eq!(
        st.decoder_starts, 1,
        "sequential reads must keep one decoder going: {st:?}"
    );
    st
}

#[test]
fn zstd_frames_sequential_read_fetches_blob_once() {
    let data = sample_tar(10, 2 << 20);
    for (step, seq) in [(4096, 0), (64 << 10, 0), (200_000, 1 << 20)] {
        let config = CacheConfig {
            sequential_fetch: seq,
            ..cfg(64 << 20)
        };
        check_sequential_volume(
            zstd_layer(&data, 256 << 10, 64 << 10, false),
            &data,
            step,
            config,
        );
    }
}

// ---------------------------------------------------------------- prefetch

/// A cache with its prefetch threads running, one job per hint.
fn prefetching(index: &Arc<Index>, src: &Arc<FaultySource>, threads: usize) -> Arc<ContentCache> {
    prefetching_in_pieces(index, src, threads, 0)
}

/// A cache with its prefetch threads running, hints cut into `piece` bytes.
fn prefetching_in_pieces(
    index: &Arc<Index>,
    src: &Arc<FaultySource>,
    threads: usize,
    piece: u64,
) -> Arc<ContentCache> {
    let c = cache(
        index,
        src,
        CacheConfig {
            prefetch_threads: threads,
            prefetch_piece: piece,
            ..cfg(64 << 20)
        },
    );
    c.start_prefetch();
    c
}

/// Polls `done` for up to 10 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether every chunk holding `[start, end)` of layer 0 is in memory.
fn all_cached(c: &ContentCache, start: u64, end: u64) -> bool {
    let plan = &c.layers_for_tests()[0];
    let (first, last) = (plan.chunk_at(start).1, plan.chunk_at(end - 1).1);
    (first..=last).all(|k| c.mem_for_tests().contains(super::memory::key(0, k)))
}

#[test]
fn prefetch_fills_the_range_in_few_fetches() {
    let data = sample_tar(20, 4 << 20);
    let (layer, blob) = gzip_layer(&data, 256 << 10, 64 << 10, 1);
    let (index, src) = image(vec![(layer, blob)]);
    let c = prefetching(&index, &src, 2);
    // A "file" over ~10 spans, starting mid-span.
    let (start, end) = (300_000u64, 2_900_000u64);
    c.prefetch(0, start, end - start, Urgency::Now);
    wait_for("prefetched", || all_cached(&c, start, end));
    let st = stats(&c);
    assert_eq!(st.prefetch_jobs, 1);
    assert_eq!(st.prefetch_errors, 0);
    assert_eq!(st.prefetch_bytes, st.bytes_fetched);
    assert!(st.prefetch_bytes > 0);
    // One decoder carried across the spans: read ahead in big pieces.
    assert!(st.fetch_count <= 2, "{st:?}");
    assert_eq!(st.decoder_starts, 1, "{st:?}");
    // Reads of the range are now all hits.
    src.reset_counts();
    assert!(read_all(&c, 0, start, (end - start) as usize) == data[start as usize..end as usize]);
    assert_eq!(src.calls(), 0);
    assert_eq!(stats(&c).chunk_misses, 0);
    // A hint for cached bytes costs nothing.
    c.prefetch(0, start, 1000, Urgency::Now);
    wait_for("idle", || stats(&c).prefetch_jobs == 2);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(src.calls(), 0);
}

#[test]
fn a_hint_is_cut_into_pieces_fetched_in_parallel() {
    let data = sample_tar(22, 4 << 20);
    let (layer, blob) = gzip_layer(&data, 256 << 10, 64 << 10, 1);
    let (index, src) = image(vec![(layer, blob)]);
    // Pieces of 1 MiB over 256 KiB spans: 4 spans a piece.
    let c = prefetching_in_pieces(&index, &src, 4, 1 << 20);
    let (start, end) = (300_000u64, 3_900_000u64);
    let spans = {
        let plan = &c.layers_for_tests()[0];
        plan.span_of(end - 1) - plan.span_of(start) + 1
    };
    c.prefetch(0, start, end - start, Urgency::Now);
    wait_for("prefetched", || all_cached(&c, start, end));
    let st = stats(&c);
    let pieces = st.prefetch_jobs;
    assert_eq!(pieces as usize, spans.div_ceil(4), "{st:?}");
    // Every piece makes its own GET and, unless an earlier piece already
    // parked a decoder where it starts (a loaded machine runs them one after
    // another), starts its own decoder at its first span's checkpoint.
    assert!(
        st.decoder_starts >= 1 && st.decoder_starts <= pieces,
        "{st:?}"
    );
    assert!(
        st.fetch_count >= pieces && st.fetch_count <= 2 * pieces,
        "{st:?}"
    );
    assert!(read_all(&c, 0, start, (end - start) as usize) == data[start as usize..end as usize]);
}

#[test]
fn prefetch_hints_are_ignored_until_started_or_with_zero_threads() {
    let data = sample_tar(21, 1 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 256 << 10, 64 << 10, 1)]);
    let c = cache(&index, &src, cfg(64 << 20));
    c.prefetch(0, 0, 1 << 20, Urgency::Now);
    let c0 = prefetching(&index, &src, 0);
    c0.prefetch(0, 0, 1 << 20, Urgency::Now);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(src.calls(), 0);
    assert_eq!(stats(&c).prefetch_jobs + stats(&c0).prefetch_jobs, 0);
    assert_eq!(c0.prefetch_threads_live().load(Relaxed), 0);
}

#[test]
fn prefetch_and_reader_of_one_span_share_one_fetch() {
    let data = sample_tar(22, 2 << 20);
    for layer in [
        gzip_layer(&data, 256 << 10, 64 << 10, 1),
        zstd_layer(&data, 256 << 10, 64 << 10, false),
        tar_layer(&data, 256 << 10, 64 << 10),
    ] {
        let (index, src) = image(vec![layer]);
        src.latency_ms.store(50, Relaxed);
        let c = prefetching(&index, &src, 4);
        let span = index.layer(0).unwrap().span_range(3).unwrap();
        c.prefetch(0, span.start, span.end - span.start, Urgency::Now);
        // The reader wants the span's last chunk: whoever fills first fills
        // (and, compressed, decodes) the whole span, the other finds it cached.
        let off = span.end - 100;
        assert_eq!(read_all(&c, 0, off, 100), data[off as usize..][..100]);
        wait_for("prefetched", || all_cached(&c, span.start, span.end));
        std::thread::sleep(Duration::from_millis(100));
        if index.layer(0).unwrap().kind() == LayerKind::Tar {
            // Whole chunks, no decoder: never a byte fetched twice.
            assert_eq!(src.bytes(), span.end - span.start);
        } else {
            assert_eq!(src.calls(), 1, "{:?}", src.log.lock().unwrap());
        }
        assert_eq!(stats(&c).prefetch_errors, 0);
    }
}

#[test]
fn critical_path_gets_are_the_gets_readers_wait_for() {
    let data = sample_tar(25, 2 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 256 << 10, 64 << 10, 1)]);
    src.latency_ms.store(100, Relaxed);
    let c = prefetching(&index, &src, 2);
    let gets = || (stats(&c).fetch_count, stats(&c).critical_path_gets);
    let span = |i| index.layer(0).unwrap().span_range(i).unwrap();
    // A reader's own GET.
    let s1 = span(1);
    assert_eq!(
        read_all(&c, 0, s1.start, 10),
        data[s1.start as usize..][..10]
    );
    assert_eq!(gets(), (1, 1));
    // A reader that queues behind a prefetch's GET waited for it.
    let s3 = span(3);
    c.prefetch(0, s3.start, s3.end - s3.start, Urgency::Now);
    wait_for("prefetch GET started", || src.calls() == 2);
    let off = s3.end - 100;
    assert_eq!(read_all(&c, 0, off, 100), data[off as usize..][..100]);
    assert_eq!(gets(), (2, 2));
    // A prefetch done before the reader comes is nobody's wait.
    let s5 = span(5);
    c.prefetch(0, s5.start, s5.end - s5.start, Urgency::Now);
    wait_for("prefetched", || all_cached(&c, s5.start, s5.end));
    assert_eq!(
        read_all(&c, 0, s5.start, 10),
        data[s5.start as usize..][..10]
    );
    assert_eq!(gets(), (3, 2));
    // Only the reader's own GET counts as time blocked on the network.
    let t = c.metrics().snapshot(Default::default()).timings;
    assert_eq!(t.blocked_on_network.count, 1);
}

#[test]
fn prefetch_errors_are_counted_and_readers_still_see_theirs() {
    let data = sample_tar(23, 1 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 256 << 10, 64 << 10, 1)]);
    src.fail.store(true, Relaxed);
    let c = prefetching(&index, &src, 2);
    c.prefetch(0, 0, 1 << 20, Urgency::Now);
    wait_for("prefetch error", || stats(&c).prefetch_errors == 1);
    let mut buf = [0u8; 10];
    assert!(matches!(
        c.read(0, 500_000, &mut buf),
        Err(CacheError::Source { layer: 0, .. })
    ));
    // Bad hints are ignored.
    c.prefetch(7, 0, 10, Urgency::Now);
    c.prefetch(0, 1 << 40, 10, Urgency::Now);
    // Recovery: a new hint prefetches once the source is healthy.
    src.fail.store(false, Relaxed);
    c.prefetch(0, 0, 1 << 20, Urgency::Now);
    wait_for("prefetched", || {
        all_cached(&c, 0, (1 << 20).min(data.len() as u64))
    });
    assert_eq!(read_all(&c, 0, 500_000, 10), data[500_000..500_010]);
    assert_eq!(stats(&c).prefetch_errors, 1);
}

#[test]
fn dropping_the_cache_stops_the_prefetch_threads() {
    let data = sample_tar(24, 2 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 256 << 10, 64 << 10, 1)]);
    src.latency_ms.store(20, Relaxed);
    let c = prefetching(&index, &src, 3);
    c.start_prefetch(); // a second start is a no-op
    let live = c.prefetch_threads_live();
    assert_eq!(live.load(Relaxed), 3);
    // Threads busy and jobs queued when the last reference goes.
    for i in 0..8u64 {
        c.prefetch(0, i * (256 << 10), 256 << 10, Urgency::Now);
    }
    let weak = Arc::downgrade(&c);
    drop(c);
    wait_for("threads exit", || live.load(Relaxed) == 0);
    assert!(
        weak.upgrade().is_none(),
        "the threads must not keep the cache alive"
    );
}

// ---------------------------------------------------------------- profiles

#[test]
fn recording_lists_first_touches_in_order_and_merges_neighbours() {
    let data = sample_tar(30, 4 << 20);
    let (layer, blob) = gzip_layer(&data, 1 << 20, 64 << 10, 1);
    let (index, src) = image(vec![(layer, blob)]);
    let c = cache(&index, &src, cfg(64 << 20));
    // Not recording: nothing is noted.
    read_all(&c, 0, 0, 10);
    assert!(c.finish_recording().is_none());
    c.start_recording();
    assert!(c.is_recording());
    read_all(&c, 0, 3_000_000, 100_000); // chunks 45..=47 (64 KiB chunks)
    read_all(&c, 0, 0, 10); // chunk 0 (cached before: still a first touch)
    read_all(&c, 0, 3_000_000, 10); // again: not a new touch
    read_all(&c, 0, 65_536, 10); // chunk 1, right after chunk 0
    let p = c.finish_recording().unwrap();
    assert!(!c.is_recording());
    assert!(c.finish_recording().is_none(), "handed out once");
    let d = index.layer(0).unwrap().digest();
    let r = |offset: u64, len: u64| ProfileRange {
        layer: d,
        offset,
        len,
    };
    // Checkpoints sit on deflate block boundaries, so chunk edges are not
    // multiples of 64 KiB: check coverage, not exact offsets.
    assert_eq!(p.ranges.len(), 2, "{p:?}");
    let first = p.ranges[0];
    assert_eq!(first.layer, d);
    assert!(first.offset <= 3_000_000 && first.offset + first.len >= 3_100_000);
    assert!(first.len <= 3 * 65_536, "{p:?}");
    assert_eq!(p.ranges[1], r(0, 2 * 65_536), "{p:?}");
    assert_eq!(p.version, PROFILE_VERSION);
    assert_eq!(p.bytes(), first.len + 2 * 65_536);
}

#[test]
fn replaying_a_profile_prefetches_its_spans_so_reads_are_hits() {
    let data = sample_tar(31, 6 << 20);
    let (layer, blob) = gzip_layer(&data, 1 << 20, 64 << 10, 1);
    let (index, src) = image(vec![(layer, blob)]);
    let reads = [
        (5_000_000u64, 200_000usize),
        (100, 50_000),
        (5_100_000, 10),
        (2_500_000, 70_000),
    ];
    // The recording run.
    let rec = cache(&index, &src, cfg(64 << 20));
    rec.start_recording();
    for (off, len) in reads {
        assert_eq!(read_all(&rec, 0, off, len), data[off as usize..][..len]);
    }
    let mut profile = rec.finish_recording().unwrap();
    let recorded_bytes = stats(&rec).bytes_fetched;
    // A range of a layer this image does not have is ignored.
    profile.ranges.insert(
        0,
        ProfileRange {
            layer: crate::Digest::of(b"other layer"),
            offset: 0,
            len: 1 << 20,
        },
    );
    // A fresh cache replays it.
    src.reset_counts();
    let c = cache(&index, &src, cfg(64 << 20));
    let jobs = c.replay(&profile, 2);
    let l = index.layer(0).unwrap();
    let spans: std::collections::BTreeSet<u32> = reads
        .iter()
        .flat_map(|&(o, n)| [o, o + n as u64 - 1])
        .map(|o| l.checkpoint_for(o).unwrap())
        .collect();
    assert_eq!(jobs, spans.len(), "one job per span touched");
    for (off, len) in reads {
        let o = off;
        wait_for("replayed", || all_cached(&c, o, o + len as u64));
    }
    wait_for("replay threads done", || {
        c.prefetch_threads_live().load(Relaxed) == 0
    });
    let st = stats(&c);
    assert_eq!(st.prefetch_errors, 0);
    assert_eq!(st.prefetch_bytes, st.bytes_fetched);
    assert_eq!(src.calls(), jobs as u64, "one fetch per span");
    // No more than the recording run fetched, plus the fetch slack per span.
    assert!(
        st.bytes_fetched <= recorded_bytes + jobs as u64 * c.config().fetch_slack,
        "replay {} vs recording {recorded_bytes}",
        st.bytes_fetched
    );
    src.reset_counts();
    for (off, len) in reads {
        assert_eq!(read_all(&c, 0, off, len), data[off as usize..][..len]);
    }
    assert_eq!(src.calls(), 0);
    assert_eq!(stats(&c).chunk_misses, 0);
}

// ---------------------------------------------------------------- disk tier

/// The slab files of a store dir: (path, len).
fn disk_files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|f| f.file_name().to_string_lossy().starts_with("slab-"))
        .map(|f| (f.path(), f.metadata().unwrap().len()))
        .collect()
}

fn with_disk(
    index: &Arc<Index>,
    src: &Arc<FaultySource>,
    dir: &std::path::Path,
    budget: u64,
) -> Arc<ContentCache> {
    let metrics = Arc::new(Metrics::new());
    let disk = Arc::new(DiskCache::open(dir, budget, metrics.clone()).unwrap());
    Arc::new(
        ContentCache::new(index.clone(), src.clone(), cfg(64 << 20))
            .with_metrics(metrics)
            .with_disk(disk),
    )
}

#[test]
fn disk_tier_serves_a_restarted_cache_without_fetching() {
    let data = sample_tar(40, 3 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 1 << 20, 64 << 10, 1)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (off, len) = (1_500_000u64, 300_000usize);
    let first = with_disk(&index, &src, &dir, 1 << 30);
    assert_eq!(read_all(&first, 0, off, len), data[off as usize..][..len]);
    let produced = stats(&first).inflate_bytes / (64 << 10);
    // Stored as they were verified, not kept in anonymous memory.
    assert!(stats(&first).disk_writes >= produced);
    assert_eq!(first.memory_used(), 0);
    drop(first);

    // A fresh cache (a restarted daemon) over the same directory.
    src.reset_counts();
    let second = with_disk(&index, &src, &dir, 1 << 30);
    assert_eq!(read_all(&second, 0, off, len), data[off as usize..][..len]);
    assert_eq!(src.calls(), 0, "served from disk");
    let st = stats(&second);
    assert!(st.disk_hits >= 4, "{st:?}");
    assert_eq!(st.bytes_fetched, 0);
    assert!(!second.would_block(0, off, len as u64));
    drop(second);

    // A damaged slot is a miss: refetched, never served. One byte of the
    // first page of every slot flipped.
    for (path, flen) in disk_files(&dir) {
        let mut b = std::fs::read(&path).unwrap();
        for slot in 0..flen as usize / (256 << 10) {
            b[slot * (256 << 10) + 100] ^= 0xff;
        }
        std::fs::write(&path, b).unwrap();
    }
    let third = with_disk(&index, &src, &dir, 1 << 30);
    assert_eq!(read_all(&third, 0, off, len), data[off as usize..][..len]);
    assert!(src.calls() > 0);
    assert_eq!(third.metrics().error_count(ErrorKind::DigestMismatch), 0);
    assert!(stats(&third).disk_damaged > 0);
    // ... and repaired: the fill that replaced a damaged slot stores the
    // chunk again (the second chunk read: read from its first page on,
    // where the flip is; the first is read from its middle, past the flip,
    // and those pages are still served).
    let disk = third.disk_for_tests().unwrap();
    let c = third.layers_for_tests()[0].chunk_at(off).1 + 1;
    let want = Digest::from_bytes(index.layer(0).unwrap().chunk(c).unwrap().digest);
    let r = third.layers_for_tests()[0].chunk_range_of(c).unwrap();
    assert!(disk.get(&want, (r.end - r.start) as usize).is_some());
    drop(third);
    // The store is its three kinds of files, nothing else.
    for f in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        assert!(
            name == "lock" || name == "table" || name.starts_with("slab-"),
            "{name}"
        );
    }
}

#[test]
fn disk_tier_stays_within_its_budget() {
    let data = sample_tar(41, 4 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 1 << 20, 64 << 10, 1)]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let budget = 10 * (64 << 10);
    let c = with_disk(&index, &src, &dir, budget);
    assert_eq!(read_all(&c, 0, 0, data.len()), data);
    let chunks = index.layer(0).unwrap().chunk_count() as u64;
    assert_eq!(stats(&c).disk_writes, chunks);
    let used: u64 = disk_files(&dir).iter().map(|f| f.1).sum();
    assert!(used <= budget, "{used} > {budget}");
    assert!(stats(&c).disk_evictions > 0);
    // Read again: right bytes, from the store where it still holds them.
    assert_eq!(read_all(&c, 0, 0, data.len()), data);
}

#[test]
fn a_long_stream_reads_ahead_in_growing_pieces() {
    let data = sample_tar(50, 8 << 20);
    let (index, src) = image(vec![gzip_layer(&data, 1 << 20, 64 << 10, 1)]);
    let read_in_steps = |config: CacheConfig| {
        src.reset_counts();
        let c = cache(&index, &src, config);
        for off in (0..data.len()).step_by(64 << 10) {
            let n = (64 << 10).min(data.len() - off);
            assert_eq!(read_all(&c, 0, off as u64, n), data[off..off + n]);
        }
        (src.calls(), src.bytes())
    };
    let (calls_off, bytes_off) = read_in_steps(CacheConfig {
        sequential_fetch: 0,
        ..cfg(64 << 20)
    });
    let (calls_on, bytes_on) = read_in_steps(cfg(64 << 20));
    // One GET per chunk without read-ahead; a handful with it.
    assert!(calls_off >= 64, "{calls_off}");
    assert!(calls_on * 4 < calls_off, "{calls_on} vs {calls_off}");
    // The whole blob once either way (a stream wastes nothing).
    let blob = index.layer(0).unwrap().compressed_size();
    assert!(bytes_on <= blob && bytes_off <= blob + (64 << 10));
}
