//! Tests of frame-checkpointed zstd indexing.
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::cache::{CacheConfig, ContentCache, ContentReader};
use crate::digest::Digest;
use crate::format::{
    write_index, Checkpoint, Chunk, ImageMeta, Index, IndexData, LayerKind, WriteOptions,
};
use crate::index::{build, IndexError, IndexOptions, Progress};
use crate::oci::{LayerDesc, ResolvedImage};
use crate::source::MemSource;

const MEDIA: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A tar of about `size` bytes: text-like, zero and random runs.
fn sample_tar(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = ::tar::Builder::new(Vec::new());
    let (mut total, mut i) = (0, 0);
    while total < size {
        let len = rng.gen_range(0..400_000usize);
        let mut data = Vec::with_capacity(len);
        while data.len() < len {
            let run = rng.gen_range(1..32 << 10).min(len - data.len());
            match rng.gen_range(0..3) {
                0 => {
                    let stop = data.len() + run;
                    while data.len() < stop {
                        data.extend_from_slice(b"fn main() { println!(\"hi\"); }\n");
                    }
                    data.truncate(stop);
                }
                1 => data.resize(data.len() + run, 0),
                _ => {
                    let s = data.len();
                    data.resize(s + run, 0);
                    rng.fill_bytes(&mut data[s..]);
                }
            }
        }
        let mut h = ::tar::Header::new_ustar();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("d{}/f{i}", i % 3), &data[..])
            .unwrap();
        total += len + 512;
        i += 1;
    }
    b.into_inner().unwrap()
}

fn skippable(magic_low: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = (0x184D_2A50u32 | u32::from(magic_low))
        .to_le_bytes()
        .to_vec();
    f.extend((payload.len() as u32).to_le_bytes());
    f.extend(payload);
    f
}

/// A frame of the test blob: blob range, uncompressed range.
#[derive(Debug, Clone, Copy)]
struct Frame {
    in_start: u64,
    in_end: u64,
    out_start: u64,
    out_end: u64,
}

/// `data` cut at `cuts` into independently compressed frames; a
/// skippable frame is put before frame `i` for every `i` in `skips`.
fn zstd_blob(data: &[u8], cuts: &[usize], skips: &[usize]) -> (Vec<u8>, Vec<Frame>) {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(data.len());
    let (mut blob, mut frames) = (Vec::new(), Vec::new());
    for (i, w) in bounds.windows(2).enumerate() {
        if skips.contains(&i) {
            let in_start = blob.len() as u64;
            blob.extend(skippable(i as u8 & 0xF, &vec![0xAB; 100 + i]));
            let out = w[0] as u64;
            frames.push(Frame {
                in_start,
                in_end: blob.len() as u64,
                out_start: out,
                out_end: out,
            });
        }
        let in_start = blob.len() as u64;
        // With content checksums, as the zstd CLI writes them.
        let mut z = zstd::bulk::Compressor::new(3).unwrap();
        z.include_checksum(true).unwrap();
        blob.extend(z.compress(&data[w[0]..w[1]]).unwrap());
        frames.push(Frame {
            in_start,
            in_end: blob.len() as u64,
            out_start: w[0] as u64,
            out_end: w[1] as u64,
        });
    }
    if skips.contains(&(bounds.len() - 1)) {
        // A skippable frame after the last data frame.
        let in_start = blob.len() as u64;
        blob.extend(skippable(0xF, b"trailer"));
        frames.push(Frame {
            in_start,
            in_end: blob.len() as u64,
            out_start: data.len() as u64,
            out_end: data.len() as u64,
        });
    }
    (blob, frames)
}

/// The records the span rule implies, computed from the known frames.
fn expected(data: &[u8], frames: &[Frame], span: u64, chunk: u64) -> (Vec<Checkpoint>, Vec<Chunk>) {
    let mut cps = vec![Checkpoint::default()];
    for f in frames {
        // Not at the very end: a checkpoint needs output after it.
        if f.out_start - cps.last().unwrap().out_offset >= span && f.out_start < data.len() as u64 {
            cps.push(Checkpoint {
                in_offset: f.in_start,
                out_offset: f.out_start,
                ..Default::default()
            });
        }
    }
    let mut chunks = Vec::new();
    for i in 0..cps.len() {
        cps[i].first_chunk = chunks.len() as u32;
        let s = cps[i].out_offset;
        let e = cps.get(i + 1).map_or(data.len() as u64, |c| c.out_offset);
        let mut p = s;
        while p < e {
            let q = (p + chunk).min(e);
            // The frame holding byte q - 1.
            let f = frames
                .iter()
                .find(|f| f.out_start < q && q <= f.out_end)
                .unwrap();
            chunks.push(Chunk {
                digest: *Digest::of(&data[p as usize..q as usize]).as_bytes(),
                in_end: f.in_end,
            });
            p = q;
        }
    }
    (cps, chunks)
}

fn image(blob: &[u8], tar: &[u8]) -> (ResolvedImage, MemSource) {
    let mut src = MemSource::new();
    let digest = src.insert(blob.to_vec());
    let img = ResolvedImage {
        manifest_digest: Digest::of(b"manifest"),
        manifest_raw: b"manifest".to_vec(),
        config_raw: b"config".to_vec(),
        platform: "linux/amd64".into(),
        layers: vec![LayerDesc {
            digest,
            size: blob.len() as u64,
            media_type: MEDIA.into(),
        }],
        diff_ids: vec![Digest::of(tar)],
    };
    (img, src)
}

fn opts(span: u64, chunk: u32) -> IndexOptions {
    IndexOptions {
        span,
        chunk_size: chunk,
        threads: 1,
        ..Default::default()
    }
}

fn index(blob: &[u8], tar: &[u8], o: &IndexOptions) -> Result<(IndexData, MemSource), IndexError> {
    let (img, src) = image(blob, tar);
    let data = build(&img, &src, ImageMeta::default(), o, &Progress::default())?;
    Ok((data, src))
}

fn cache_over(data: &IndexData, src: MemSource) -> ContentCache {
    let bytes = write_index(data, WriteOptions::default()).unwrap();
    let index = Arc::new(Index::from_bytes(bytes).unwrap());
    let config = CacheConfig {
        memory_bytes: 1 << 20,
        ..Default::default()
    };
    ContentCache::new(index, Arc::new(src), config)
}

fn check_reads(c: &ContentCache, truth: &[u8], reads: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = truth.len() as u64;
    for _ in 0..reads {
        let off = rng.gen_range(0..len + 10);
        let n = rng.gen_range(1..300_000usize);
        let mut buf = vec![0u8; n];
        let got = c.read(0, off, &mut buf).unwrap();
        let want = &truth[(off.min(len) as usize)..((off + n as u64).min(len) as usize)];
        assert_eq!(got, want.len(), "read {n} at {off}");
        assert!(buf[..got] == *want, "bytes of read {n} at {off}");
    }
}

#[test]
fn frames_become_checkpoints_and_reads_agree() {
    let tar = sample_tar(7, 5 << 20);
    // Frames of 100 KiB..1 MiB, not aligned to chunks or spans.
    let mut rng = StdRng::seed_from_u64(8);
    let mut cuts = Vec::new();
    let mut p = 0;
    loop {
        p += rng.gen_range(100 << 10..1 << 20);
        if p >= tar.len() {
            break;
        }
        cuts.push(p);
    }
    assert!(cuts.len() >= 5, "{} frames", cuts.len() + 1);
    let (blob, frames) = zstd_blob(&tar, &cuts, &[0, 3]);
    let (span, chunk) = (768 << 10, 64 << 10);
    let (data, src) = index(&blob, &tar, &opts(span, chunk as u32)).unwrap();
    let layer = &data.layers[0];
    assert_eq!(layer.kind, LayerKind::ZstdFrames);
    assert_eq!(layer.compressed_size, blob.len() as u64);
    assert_eq!(layer.uncompressed_size, tar.len() as u64);
    let (cps, chunks) = expected(&tar, &frames, span, chunk);
    assert!(cps.len() >= 3, "{} checkpoints", cps.len());
    assert_eq!(layer.checkpoints, cps);
    assert_eq!(layer.chunks.len(), chunks.len());
    for (i, (a, b)) in layer.chunks.iter().zip(&chunks).enumerate() {
        assert_eq!(a, b, "chunk {i}");
    }
    // Independently of the span rule: every checkpoint is a frame start
    // from which the rest of the layer decodes with a fresh decoder.
    for cp in &layer.checkpoints[1..] {
        assert!(frames
            .iter()
            .any(|f| f.in_start == cp.in_offset && f.out_start == cp.out_offset));
        let rest = zstd::stream::decode_all(&blob[cp.in_offset as usize..]).unwrap();
        assert!(rest == tar[cp.out_offset as usize..]);
    }
    assert!(!data.tree.nodes.is_empty());

    let c = cache_over(&data, src);
    check_reads(&c, &tar, 150, 9);
    // A cold read at the end fetches about one span, not the blob.
    let c = cache_over(
        &data,
        index(&blob, &tar, &opts(span, chunk as u32)).unwrap().1,
    );
    let mut buf = [0u8; 100];
    let off = tar.len() as u64 - 100;
    assert_eq!(c.read(0, off, &mut buf).unwrap(), 100);
    assert!(buf[..] == tar[off as usize..]);
    let fetched = c.metrics().counters().bytes_fetched;
    assert!(
        fetched < blob.len() as u64 / 2,
        "fetched {fetched} of {}",
        blob.len()
    );
}

#[test]
fn frames_within_one_span_stay_whole() {
    let tar = sample_tar(11, 1 << 20);
    let third = tar.len() / 3;
    let (blob, _) = zstd_blob(&tar, &[third, 2 * third], &[1]);
    let (data, src) = index(&blob, &tar, &opts(4 << 20, 64 << 10)).unwrap();
    let layer = &data.layers[0];
    assert_eq!(layer.kind, LayerKind::ZstdWhole);
    assert_eq!(layer.checkpoints, vec![Checkpoint::default()]);
    assert!(layer.chunks.iter().all(|c| c.in_end == blob.len() as u64));
    check_reads(&cache_over(&data, src), &tar, 40, 12);
}

#[test]
fn single_frame_is_whole_and_reads_agree() {
    let tar = sample_tar(13, 2 << 20);
    let blob = zstd::bulk::compress(&tar, 3).unwrap();
    let (span, chunk) = (256 << 10, 64 << 10);
    let (data, src) = index(&blob, &tar, &opts(span, chunk as u32)).unwrap();
    let layer = &data.layers[0];
    assert_eq!(layer.kind, LayerKind::ZstdWhole);
    let frames = [Frame {
        in_start: 0,
        in_end: blob.len() as u64,
        out_start: 0,
        out_end: tar.len() as u64,
    }];
    let (cps, chunks) = expected(&tar, &frames, span, chunk);
    assert_eq!(cps.len(), 1);
    assert_eq!(layer.checkpoints, cps);
    assert!(layer.chunks == chunks);
    check_reads(&cache_over(&data, src), &tar, 60, 14);
}

#[test]
fn trailing_skippable_frame_adds_no_checkpoint() {
    let tar = sample_tar(19, 1 << 20);
    // One data frame then a skippable one, far past one span.
    let (blob, frames) = zstd_blob(&tar, &[], &[1]);
    assert_eq!(frames.len(), 2);
    let (data, src) = index(&blob, &tar, &opts(64 << 10, 16 << 10)).unwrap();
    let layer = &data.layers[0];
    assert_eq!(layer.kind, LayerKind::ZstdWhole);
    assert_eq!(layer.checkpoints, vec![Checkpoint::default()]);
    assert!(layer.chunks.iter().all(|c| c.in_end == blob.len() as u64));
    check_reads(&cache_over(&data, src), &tar, 20, 20);
}

#[test]
fn broken_blobs_fail_naming_the_layer() {
    let tar = sample_tar(15, 1 << 20);
    let half = tar.len() / 2;
    let (blob, frames) = zstd_blob(&tar, &[half], &[]);
    let mid = (frames[1].in_start + frames[1].in_end) / 2;
    let mut cases = Vec::new();
    // Garbage in the middle of a frame.
    let mut bad = blob.clone();
    for b in &mut bad[mid as usize..mid as usize + 64] {
        *b ^= 0x5A;
    }
    cases.push(("corrupt", bad));
    // Cut inside the second frame; cut inside a frame header.
    cases.push(("truncated", blob[..mid as usize].to_vec()));
    cases.push((
        "cut header",
        blob[..frames[1].in_start as usize + 3].to_vec(),
    ));
    // Trailing bytes that are no frame.
    let mut trailing = blob.clone();
    trailing.extend_from_slice(b"not a zstd frame");
    cases.push(("trailing", trailing));
    // A bad frame magic at the start.
    let mut magic = blob.clone();
    magic[0] ^= 0xFF;
    cases.push(("magic", magic));
    for (what, bad) in cases {
        // The manifest digest is the broken blob's, so only decoding fails.
        let err = index(&bad, &tar, &opts(256 << 10, 64 << 10)).unwrap_err();
        let digest = Digest::of(&bad);
        let msg = err.to_string();
        assert!(msg.contains(&digest.to_string()), "{what}: {msg}");
        // Corrupt frame content may trip the tar parser before the
        // frame's checksum is checked; everything else is zstd's.
        let zstd_err = matches!(err, IndexError::Zstd { .. });
        let tar_err = what == "corrupt" && matches!(err, IndexError::Tar { .. });
        assert!(zstd_err || tar_err, "{what}: {err:?}");
    }
}

#[test]
fn empty_frames_and_tiny_chunks() {
    // Zero-length frames, skippable frames back to back, a span of 1:
    // checkpoints only where output advanced, chunks per span.
    let tar = sample_tar(17, 200 << 10);
    let cuts = [10_000, 10_000, 50_000, 120_000];
    let (blob, frames) = zstd_blob(&tar, &cuts, &[1, 2, 4, 5]);
    let (data, src) = index(&blob, &tar, &opts(1, 4096)).unwrap();
    let layer = &data.layers[0];
    assert_eq!(layer.kind, LayerKind::ZstdFrames);
    let (cps, chunks) = expected(&tar, &frames, 1, 4096);
    assert_eq!(layer.checkpoints, cps);
    assert!(layer.chunks == chunks);
    let outs: Vec<u64> = cps.iter().map(|c| c.out_offset).collect();
    assert!(outs.windows(2).all(|w| w[0] < w[1]), "{outs:?}");
    check_reads(&cache_over(&data, src), &tar, 40, 18);
}

#[test]
fn frame_with_a_window_over_the_limit_is_refused_by_name() {
    use std::io::Write;
    let tar = sample_tar(11, 64 << 10);
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(28))
        .unwrap();
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    let err = index(&blob, &tar, &opts(1 << 20, 64 << 10)).unwrap_err();
    assert!(
        matches!(err, IndexError::ZstdWindowTooLarge { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("128 MiB"), "{err}");
    // At the limit (window log 27) the same bytes index fine.
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(27))
        .unwrap();
    enc.write_all(&tar).unwrap();
    let blob = enc.finish().unwrap();
    index(&blob, &tar, &opts(1 << 20, 64 << 10)).unwrap();
}
