//! Unit tests: index building, random access, chunk digests, corruption.

use std::io::{Read, Write};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::testutil::{gzip, mixed_data};

/// gzip with sync flushes every `every` bytes (empty stored blocks) and a
/// header carrying FEXTRA, FNAME and FCOMMENT.
fn gzip_flushed(data: &[u8], every: usize) -> Vec<u8> {
    let mut e = flate2::GzBuilder::new()
        .filename("layer.tar")
        .comment("a comment")
        .extra(vec![1, 2, 3, 4])
        .write(Vec::new(), flate2::Compression::new(6));
    for piece in data.chunks(every) {
        e.write_all(piece).unwrap();
        e.flush().unwrap();
    }
    e.finish().unwrap()
}

fn build(blob: &[u8], span: u64, chunk_size: u32) -> Result<(Vec<u8>, ZranIndex), GzipError> {
    let mut r = ZranReader::new(blob, IndexerConfig { span, chunk_size });
    let mut out = Vec::new();
    let mut buf = vec![0u8; 100_000];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return Err(r.finish().expect_err("read failed, finish must too")),
        }
    }
    Ok((out, r.finish()?))
}

/// The chunk list the index should hold, computed from the ground truth.
fn check_chunks(data: &[u8], blob_len: u64, idx: &ZranIndex, chunk_size: u32) {
    let mut want = Vec::new();
    for (i, cp) in idx.checkpoints.iter().enumerate() {
        assert_eq!(
            cp.first_chunk as usize,
            want.len(),
            "checkpoint {i} first_chunk"
        );
        let end = idx
            .checkpoints
            .get(i + 1)
            .map_or(data.len() as u64, |n| n.out_offset) as usize;
        for piece in data[cp.out_offset as usize..end].chunks(chunk_size as usize) {
            want.push(<[u8; 32]>::from(Sha256::digest(piece)));
        }
    }
    let got: Vec<[u8; 32]> = idx.chunks.iter().map(|c| c.digest).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "chunk digests differ");
    let mut prev = 0;
    for c in &idx.chunks {
        assert!(
            c.in_end >= prev && c.in_end <= blob_len,
            "in_end {}",
            c.in_end
        );
        prev = c.in_end;
    }
}

fn check_index_shape(data: &[u8], blob: &[u8], idx: &ZranIndex, span: u64) {
    assert_eq!(idx.uncompressed_size, data.len() as u64);
    assert_eq!(idx.compressed_size, blob.len() as u64);
    let cps = &idx.checkpoints;
    assert_eq!(cps[0].out_offset, 0);
    assert!(cps[0].window.is_empty() && cps[0].bits == 0);
    for w in cps.windows(2) {
        assert!(w[1].out_offset >= w[0].out_offset + span);
        assert!(w[1].in_offset > w[0].in_offset);
        assert!(w[1].out_offset < data.len() as u64);
    }
    for cp in cps {
        assert!(cp.bits <= 7 && cp.window_len as usize <= WINDOW_SIZE);
        let w = decompress_window(&cp.window, cp.window_len).unwrap();
        let o = cp.out_offset as usize;
        // Trimmed: every byte is the real one or zeroed.
        let real = &data[o - w.len()..o];
        assert!(
            w.iter().zip(real).all(|(&g, &r)| g == r || g == 0),
            "window at {o}"
        );
    }
}

fn random_reads(data: &[u8], blob: &[u8], idx: &ZranIndex, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = vec![0u8; 200_000];
    for _ in 0..n {
        let start = rng.gen_range(0..data.len() as u64 + 10);
        let len = rng.gen_range(1..out.len());
        let got = read_range(blob, idx, start, &mut out[..len]).unwrap();
        let s = (start as usize).min(data.len());
        let want = &data[s..(s + len).min(data.len())];
        assert_eq!(got, want.len(), "read at {start} len {len}");
        assert!(&out[..got] == want, "read at {start} len {len}");
    }
}

/// Drives a SpanDecoder with tiny random input pieces and output sizes.
fn decoder_reads(data: &[u8], blob: &[u8], idx: &ZranIndex, n: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..n {
        let ci = rng.gen_range(0..idx.checkpoints.len());
        let cp = &idx.checkpoints[ci];
        let mut dec = SpanDecoder::new(cp).unwrap();
        assert_eq!(dec.input_position(), SpanDecoder::input_start(cp));
        assert_eq!(dec.output_position(), cp.out_offset);
        let want_len = rng.gen_range(0..150_000usize);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while got.len() < want_len && !dec.is_finished() {
            let pos = dec.input_position() as usize;
            let piece = rng.gen_range(1..3_000usize);
            let input = &blob[pos..(pos + piece).min(blob.len())];
            let outn = rng.gen_range(0..buf.len());
            let (used, made) = dec.decode(input, &mut buf[..outn]).unwrap();
            assert!(used <= input.len() && made <= outn);
            assert_eq!(dec.input_position(), (pos + used) as u64);
            got.extend_from_slice(&buf[..made]);
            assert_eq!(dec.output_position(), cp.out_offset + got.len() as u64);
        }
        let s = cp.out_offset as usize;
        let want = &data[s..(s + got.len()).min(data.len())];
        assert_eq!(got.len(), want.len());
        assert!(got == want, "decoder from checkpoint {ci}");
    }
}

fn full_check(name: &str, data: &[u8], blob: &[u8], span: u64, reads: usize) -> ZranIndex {
    let chunk = 48 * 1024;
    let (out, idx) = build(blob, span, chunk).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(out == data, "{name}: output differs");
    check_index_shape(data, blob, &idx, span);
    check_chunks(data, blob.len() as u64, &idx, chunk);
    random_reads(data, blob, &idx, reads, 1);
    decoder_reads(data, blob, &idx, reads / 4, 2);
    idx
}

#[test]
fn levels_1_6_9_many_mid_byte_checkpoints() {
    let data = mixed_data(3 << 20, 7);
    for level in [1, 6, 9] {
        let blob = gzip(&data, level);
        let idx = full_check(&format!("level {level}"), &data, &blob, 64 * 1024, 300);
        let mid = idx.checkpoints.iter().filter(|c| c.bits != 0).count();
        eprintln!(
            "level {level}: {} checkpoints, {mid} mid-byte",
            idx.checkpoints.len()
        );
        if level == 1 {
            // zlib-rs level 1 ("quick") emits very long blocks: few boundaries.
            continue;
        }
        assert!(
            idx.checkpoints.len() > 15,
            "level {level}: {}",
            idx.checkpoints.len()
        );
        assert!(
            mid * 2 > idx.checkpoints.len() / 2,
            "level {level}: {mid} mid-byte"
        );
    }
}

#[test]
fn stored_blocks_level_0() {
    let data = mixed_data(1 << 20, 8);
    let blob = gzip(&data, 0);
    let idx = full_check("level 0", &data, &blob, 64 * 1024, 300);
    assert!(idx.checkpoints.len() > 10);
}

#[test]
fn sync_flushes_and_header_fields() {
    let data = mixed_data(1 << 20, 9);
    let blob = gzip_flushed(&data, 10_000);
    full_check("flushed", &data, &blob, 32 * 1024, 300);
}

#[test]
fn two_members() {
    let data = mixed_data(2 << 20, 10);
    let cut = 700_001;
    let mut blob = gzip(&data[..cut], 6);
    blob.extend_from_slice(&gzip(&data[cut..], 9));
    full_check("two members", &data, &blob, 64 * 1024, 400);
}

#[test]
fn many_small_members_get_member_start_checkpoints() {
    let data = mixed_data(1 << 20, 11);
    let mut blob = Vec::new();
    let mut starts = Vec::new();
    for (i, piece) in data.chunks(20_000).enumerate() {
        starts.push(i as u64 * 20_000);
        blob.extend_from_slice(&gzip(piece, 6));
        if i % 7 == 3 {
            blob.extend_from_slice(&gzip(&[], 6)); // empty member
        }
    }
    let idx = full_check("small members", &data, &blob, 64 * 1024, 300);
    let at_start = idx
        .checkpoints
        .iter()
        .filter(|c| c.window.is_empty() && starts.contains(&c.out_offset))
        .count();
    assert!(at_start > 8, "{at_start} member-start checkpoints");
}

#[test]
fn empty_stream_and_padding() {
    let blob = gzip(&[], 6);
    let (out, idx) = build(&blob, 1024, 1024).unwrap();
    assert!(out.is_empty());
    assert_eq!(idx.checkpoints.len(), 1);
    assert!(idx.chunks.is_empty());
    assert_eq!(idx.uncompressed_size, 0);

    let data = mixed_data(100_000, 12);
    let mut padded = gzip(&data, 6);
    padded.extend_from_slice(&[0u8; 5000]);
    let (out, idx) = build(&padded, 16 * 1024, 4096).unwrap();
    assert!(out == data);
    assert_eq!(idx.compressed_size, padded.len() as u64);
    random_reads(&data, &padded, &idx, 50, 3);

    let mut garbage = padded.clone();
    garbage.push(7);
    assert!(matches!(
        build(&garbage, 16 * 1024, 4096),
        Err(GzipError::TrailingGarbage { .. })
    ));
    let mut garbage = gzip(&data, 6);
    garbage.extend_from_slice(b"PK\x03\x04");
    assert!(matches!(
        build(&garbage, 16 * 1024, 4096),
        Err(GzipError::TrailingGarbage { .. })
    ));
    assert!(matches!(
        build(&[], 1024, 1024),
        Err(GzipError::Truncated { .. })
    ));
}

#[test]
fn small_reads_give_same_output_and_index() {
    let data = mixed_data(600_000, 13);
    let blob = gzip(&data, 6);
    let cfg = IndexerConfig {
        span: 50_000,
        chunk_size: 10_000,
    };
    let (_, big) = build(&blob, cfg.span, cfg.chunk_size).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let mut r = ZranReader::new(&blob[..], cfg);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = rng.gen_range(1..buf.len());
        match r.read(&mut buf[..n]).unwrap() {
            0 => break,
            k => out.extend_from_slice(&buf[..k]),
        }
    }
    assert!(out == data);
    let small = r.finish().unwrap();
    // Checkpoint placement does not depend on read sizes.
    assert_eq!(small.checkpoints, big.checkpoints);
    let d = |i: &ZranIndex| i.chunks.iter().map(|c| c.digest).collect::<Vec<_>>();
    assert_eq!(d(&small), d(&big));
}

#[test]
fn finish_drains_unread_data() {
    let data = mixed_data(300_000, 14);
    let blob = gzip(&data, 6);
    let mut r = ZranReader::new(&blob[..], IndexerConfig::default());
    let mut buf = [0u8; 1000];
    r.read_exact(&mut buf).unwrap();
    let idx = r.finish().unwrap();
    assert_eq!(idx.uncompressed_size, data.len() as u64);
    check_chunks(
        &data,
        blob.len() as u64,
        &idx,
        IndexerConfig::DEFAULT_CHUNK_SIZE,
    );
}

#[test]
fn truncation_always_errors() {
    let data = mixed_data(200_000, 15);
    let blob = gzip(&data, 6);
    let mut rng = StdRng::seed_from_u64(5);
    let mut cuts: Vec<usize> = (0..40).chain(blob.len() - 40..blob.len()).collect();
    cuts.extend((0..150).map(|_| rng.gen_range(0..blob.len())));
    for cut in cuts {
        let r = build(&blob[..cut], 16 * 1024, 8192);
        assert!(r.is_err(), "truncated at {cut} of {} accepted", blob.len());
    }
}

#[test]
fn corruption_errors_or_is_harmless() {
    let data = mixed_data(200_000, 16);
    let blob = gzip(&data, 6);
    let mut rng = StdRng::seed_from_u64(6);
    let mut detected = 0;
    for i in 0..300 {
        let mut bad = blob.clone();
        let pos = if i < 30 {
            i
        } else {
            rng.gen_range(0..bad.len())
        };
        bad[pos] ^= 1 << rng.gen_range(0..8);
        match build(&bad, 16 * 1024, 8192) {
            Err(_) => detected += 1,
            // Only header fields zlib ignores (MTIME, XFL, OS) may change.
            Ok((out, _)) => {
                assert!(out == data, "flip at {pos} changed output silently");
                assert!((4..10).contains(&pos), "flip at {pos} undetected");
            }
        }
    }
    assert!(detected > 250);
}

#[test]
fn span_decoder_on_garbage_and_bad_checkpoints() {
    let data = mixed_data(400_000, 17);
    let blob = gzip(&data, 6);
    let (_, idx) = build(&blob, 32 * 1024, 8192).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    let mut garbage = vec![0u8; 300_000];
    rng.fill_bytes(&mut garbage);
    let mut out = vec![0u8; 64 * 1024];
    let mut errors = 0;
    for cp in &idx.checkpoints {
        let mut dec = SpanDecoder::new(cp).unwrap();
        let mut pos = 0;
        let res = loop {
            let input = &garbage[pos..(pos + 4096).min(garbage.len())];
            match dec.decode(input, &mut out) {
                Ok((used, made)) => {
                    pos += used;
                    if input.is_empty() || dec.is_finished() || (used == 0 && made == 0) {
                        break Ok(());
                    }
                }
                Err(e) => break Err(e),
            }
        };
        errors += usize::from(res.is_err());
    }
    assert!(errors * 10 >= idx.checkpoints.len() * 9, "{errors} errors");

    let mut cp = idx.checkpoints[1].clone();
    cp.bits = 9;
    assert!(SpanDecoder::new(&cp).is_err());
    let mut cp = idx.checkpoints[1].clone();
    cp.window_len += 1;
    assert!(SpanDecoder::new(&cp).is_err());
    let mut cp = idx.checkpoints[1].clone();
    cp.window = garbage[..500].to_vec();
    assert!(SpanDecoder::new(&cp).is_err());
    let mut cp = idx.checkpoints[1].clone();
    cp.window_len = 40_000;
    assert!(SpanDecoder::new(&cp).is_err());
    // Truncated input inside deflate data.
    let cp = &idx.checkpoints[1];
    let mut dec = SpanDecoder::new(cp).unwrap();
    let s = SpanDecoder::input_start(cp) as usize;
    let (used, _) = dec.decode(&blob[s..s + 100], &mut out).unwrap();
    assert_eq!(used, 100);
    assert!(matches!(
        dec.decode(&[], &mut out),
        Err(GzipError::Truncated { .. })
    ));
}

#[test]
fn window_roundtrip_and_bad_config() {
    let data = mixed_data(WINDOW_SIZE, 18);
    let c = compress_window(&data);
    assert!(c.len() < data.len());
    assert_eq!(decompress_window(&c, WINDOW_SIZE as u32).unwrap(), data);
    assert!(compress_window(&[]).is_empty());
    assert!(decompress_window(&[], 0).unwrap().is_empty());
    assert!(decompress_window(&c, 100).is_err());

    let blob = gzip(b"hello", 6);
    let cfg = IndexerConfig {
        span: 0,
        chunk_size: 1,
    };
    let mut r = ZranReader::new(&blob[..], cfg);
    assert!(r.read(&mut [0u8; 10]).is_err());
    assert!(matches!(r.finish(), Err(GzipError::Config(_))));
}

#[test]
fn io_error_wraps_gzip_error_and_types_are_send() {
    fn send<T: Send>() {}
    send::<SpanDecoder>();
    send::<ZranReader<std::fs::File>>();
    let mut r = ZranReader::new(&b"not gzip at all"[..], IndexerConfig::default());
    let e = r.read(&mut [0u8; 100]).unwrap_err();
    let inner = e.get_ref().and_then(|e| e.downcast_ref::<GzipError>());
    assert!(matches!(
        inner,
        Some(GzipError::BadHeader { in_offset: 0, .. })
    ));
    assert!(r.read(&mut [0u8; 100]).is_err());
}

#[test]
fn no_checkpoint_at_stream_end_after_sync_flush() {
    for len in [40_000usize, 100_000, 250_000] {
        let data = mixed_data(len, 19 + len as u64);
        // One sync flush after all the data, then the final (empty) block.
        let blob = gzip_flushed(&data, len);
        let (out, idx) = build(&blob, 8 * 1024, 4096).unwrap();
        assert!(out == data);
        check_index_shape(&data, &blob, &idx, 8 * 1024);
        check_chunks(&data, blob.len() as u64, &idx, 4096);
        random_reads(&data, &blob, &idx, 40, 8);
    }
}

/// The gzip blob `real_layer_window_stats` measures: `CLIP_REAL_LAYER`, or the
/// largest gzip blob of the python test image.
fn real_layer() -> Option<std::path::PathBuf> {
    if let Ok(p) = std::env::var("CLIP_REAL_LAYER") {
        return Some(p.into());
    }
    let dir = std::fs::read_dir("/var/tmp/clip-testbed/oci/python/blobs/sha256").ok()?;
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            let mut magic = [0u8; 2];
            std::fs::File::open(e.path())
                .and_then(|mut f| f.read_exact(&mut magic))
                .is_ok()
                && magic == [0x1f, 0x8b]
        })
        .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .map(|e| e.path())
}

/// Checkpoint window sizes and indexing speed on a real layer, with and
/// without window trimming, plus trimmed-window compression levels. Run with
/// `cargo test --release --lib gzip::tests::real_layer_window_stats -- --ignored --nocapture`.
#[test]
#[ignore = "needs a real layer; prints measurements"]
fn real_layer_window_stats() {
    let Some(path) = real_layer() else {
        eprintln!("no real layer found; set CLIP_REAL_LAYER");
        return;
    };
    let blob = std::fs::read(&path).unwrap();
    eprintln!("{}: {} bytes", path.display(), blob.len());
    // CLIP_SPANS_KIB=1024,1536 picks other spans.
    let spans: Vec<u64> = std::env::var("CLIP_SPANS_KIB")
        .map(|v| {
            v.split(',')
                .map(|s| s.trim().parse::<u64>().unwrap() << 10)
                .collect()
        })
        .unwrap_or_else(|_| vec![1 << 20, 2 << 20, 4 << 20]);
    for span in spans {
        let cfg = IndexerConfig {
            span,
            chunk_size: IndexerConfig::DEFAULT_CHUNK_SIZE,
        };
        let mut idxs = Vec::new();
        for trim in [false, true] {
            // Best of three runs (the machine is shared).
            let mut el = f64::MAX;
            let mut idx = ZranIndex::default();
            for _ in 0..3 {
                let t = std::time::Instant::now();
                let mut r = ZranReader::new(&blob[..], cfg);
                r.set_window_trimming(trim);
                idx = r.finish().unwrap();
                el = el.min(t.elapsed().as_secs_f64());
            }
            let cps = idx.checkpoints.len();
            let wins: usize = idx.checkpoints.iter().map(|c| c.window.len()).sum();
            let kept: usize = idx
                .checkpoints
                .iter()
                .map(|c| {
                    let w = decompress_window(&c.window, c.window_len).unwrap();
                    w.iter().filter(|&&b| b != 0).count()
                })
                .sum();
            eprintln!(
                "span {} KiB trim {trim:5}: {cps} checkpoints, {} B window/checkpoint \
                 ({} non-zero raw), windows {:.3}% of blob, index {:.0} MB/s out \
                 ({:.0} MB/s in)",
                span >> 10,
                wins / cps.max(1),
                kept / cps.max(1),
                wins as f64 * 100.0 / blob.len() as f64,
                idx.uncompressed_size as f64 / el / 1e6,
                blob.len() as f64 / el / 1e6,
            );
            idxs.push(idx);
        }
        // Trimmed windows decode exactly like full ones from every checkpoint.
        let (full, trimmed) = (&idxs[0], &idxs[1]);
        assert_eq!(full.checkpoints.len(), trimmed.checkpoints.len());
        let untrimmed = full
            .checkpoints
            .iter()
            .zip(&trimmed.checkpoints)
            .filter(|(f, t)| f.window_len > 0 && f.window == t.window)
            .count();
        eprintln!("  {untrimmed} windows left untrimmed");
        let (mut a, mut b) = (vec![0u8; 40_000], vec![0u8; 40_000]);
        for cp in &full.checkpoints {
            let na = read_range(&blob, full, cp.out_offset, &mut a).unwrap();
            let nb = read_range(&blob, trimmed, cp.out_offset, &mut b).unwrap();
            assert!(
                na == nb && a[..na] == b[..nb],
                "checkpoint at {}",
                cp.out_offset
            );
        }
        if span == 1 << 20 {
            let raw: Vec<Vec<u8>> = trimmed
                .checkpoints
                .iter()
                .map(|c| decompress_window(&c.window, c.window_len).unwrap())
                .filter(|w| !w.is_empty())
                .collect();
            for lvl in [1, 4, 6, 9, 12] {
                let lv = libdeflater::CompressionLvl::new(lvl).unwrap();
                let mut c = libdeflater::Compressor::new(lv);
                let t = std::time::Instant::now();
                let bytes: usize = raw
                    .iter()
                    .map(|w| compress_window_with(&mut c, w).len())
                    .sum();
                eprintln!(
                    "  trimmed windows at level {lvl:>2}: {} B/window, {:?}/window",
                    bytes / raw.len().max(1),
                    t.elapsed() / raw.len().max(1) as u32
                );
            }
        }
    }
}

fn build_with(blob: &[u8], span: u64, chunk_size: u32, trim: bool) -> ZranIndex {
    let mut r = ZranReader::new(blob, IndexerConfig { span, chunk_size });
    r.set_window_trimming(trim);
    r.finish().unwrap()
}

/// Builds `blob` with and without window trimming; checks the indexes agree
/// but for windows, that trimmed windows only zero bytes, that decoding from
/// every checkpoint gives the same bytes either way, and random reads.
/// Returns (trimmed index, stored window bytes full, trimmed).
fn trim_check(name: &str, data: &[u8], blob: &[u8], span: u64) -> (ZranIndex, usize, usize) {
    let full = build_with(blob, span, 16 * 1024, false);
    let trimmed = build_with(blob, span, 16 * 1024, true);
    let strip = |i: &ZranIndex| -> Vec<(u64, u8, u64, u32, u32)> {
        i.checkpoints
            .iter()
            .map(|c| {
                (
                    c.in_offset,
                    c.bits,
                    c.out_offset,
                    c.window_len,
                    c.first_chunk,
                )
            })
            .collect()
    };
    assert_eq!(strip(&full), strip(&trimmed), "{name}");
    assert_eq!(full.chunks, trimmed.chunks, "{name}");
    check_index_shape(data, blob, &trimmed, span);
    let (mut a, mut b) = (vec![0u8; 40_000], vec![0u8; 40_000]);
    for (f, t) in full.checkpoints.iter().zip(&trimmed.checkpoints) {
        let wf = decompress_window(&f.window, f.window_len).unwrap();
        let o = f.out_offset as usize;
        assert!(wf == data[o - wf.len()..o], "{name}: full window at {o}");
        let na = read_range(blob, &full, f.out_offset, &mut a).unwrap();
        let nb = read_range(blob, &trimmed, t.out_offset, &mut b).unwrap();
        assert_eq!(na, nb);
        assert!(a[..na] == b[..nb], "{name}: decode from {o}");
        assert!(a[..na] == data[o..o + na], "{name}: decode from {o}");
    }
    random_reads(data, blob, &trimmed, 150, 21);
    decoder_reads(data, blob, &trimmed, 40, 22);
    let size = |i: &ZranIndex| i.checkpoints.iter().map(|c| c.window.len()).sum::<usize>();
    let (f, t) = (size(&full), size(&trimmed));
    (trimmed, f, t)
}

#[test]
fn trimmed_windows_decode_like_full_ones() {
    let data = mixed_data(3 << 20, 23);
    for level in [1, 6, 9] {
        let blob = gzip(&data, level);
        let (idx, full, trimmed) = trim_check(&format!("level {level}"), &data, &blob, 64 << 10);
        eprintln!(
            "level {level}: {} checkpoints, windows {full} -> {trimmed} bytes",
            idx.checkpoints.len()
        );
        if idx.checkpoints.len() > 3 {
            assert!(trimmed * 2 < full, "level {level}: {full} -> {trimmed}");
        }
    }
    // Stored blocks reference nothing: every window is all zeros.
    let blob = gzip(&data[..1 << 20], 0);
    let (idx, _, _) = trim_check("stored", &data[..1 << 20], &blob, 64 << 10);
    assert!(idx.checkpoints.len() > 10);
    for cp in &idx.checkpoints {
        let w = decompress_window(&cp.window, cp.window_len).unwrap();
        let nonzero = w.iter().filter(|&&b| b != 0).count();
        // At most the 256 positions 257 * x a literal x could have come from.
        assert!(nonzero <= 256, "stored: {nonzero} bytes kept");
    }
    // Several members, flushes, and spans under 32 KiB (trims overlap).
    let cut = 700_001;
    let mut blob = gzip(&data[..cut], 6);
    blob.extend_from_slice(&gzip_flushed(&data[cut..1 << 21], 7_000));
    blob.extend_from_slice(&gzip(&data[1 << 21..], 9));
    for span in [1u64, 5_000, 20 << 10, 64 << 10] {
        let (_, full, trimmed) = trim_check(&format!("members span {span}"), &data, &blob, span);
        assert!(trimmed * 2 < full, "span {span}: {full} -> {trimmed}");
    }
}

#[test]
fn trim_checkpoint_right_before_member_end() {
    let data = mixed_data(400_000, 24);
    // Member 1 ends 1..30_000 bytes after a sync flush (a checkpoint).
    for tail in [1usize, 100, 5_000, 30_000, 40_000] {
        let cut = 150_000 + tail;
        let mut e = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(6));
        e.write_all(&data[..150_000]).unwrap();
        e.flush().unwrap();
        e.write_all(&data[150_000..cut]).unwrap();
        let mut blob = e.finish().unwrap();
        blob.extend_from_slice(&gzip(&data[cut..], 6));
        let (idx, _, _) = trim_check(&format!("tail {tail}"), &data, &blob, 140_000);
        let cp = idx
            .checkpoints
            .iter()
            .find(|c| c.out_offset == 150_000)
            .unwrap_or_else(|| panic!("tail {tail}: no checkpoint at the flush"));
        // Trimmed with the member's remaining output only.
        let w = decompress_window(&cp.window, cp.window_len).unwrap();
        let kept = w.iter().filter(|&&b| b != 0).count();
        assert!(kept < WINDOW_SIZE / 2, "tail {tail}: {kept} bytes kept");
    }
}

#[test]
fn trim_very_short_streams() {
    for len in [1usize, 2, 100, 1_000, 5_000, 33_000, 40_000] {
        let data = mixed_data(len, 25 + len as u64);
        for blob in [gzip(&data, 6), gzip(&data, 0), gzip_flushed(&data, 300)] {
            for span in [1u64, 64, 4096] {
                let (out, idx) = build(&blob, span, 512).unwrap();
                assert!(out == data);
                check_index_shape(&data, &blob, &idx, span);
                check_chunks(&data, blob.len() as u64, &idx, 512);
                trim_check(&format!("len {len} span {span}"), &data, &blob, span);
            }
        }
    }
}

/// A long run of empty stored blocks right after a checkpoint overflows the
/// trim log: that checkpoint keeps its full window and decoding still works.
#[test]
fn trim_log_overflow_keeps_full_window() {
    let data = mixed_data(300_000, 26);
    let split = 100_000;
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(&data[..split]).unwrap();
    e.flush().unwrap(); // ends byte-aligned after an empty stored block
    let n1 = e.get_ref().len();
    e.write_all(&data[split..]).unwrap();
    let raw = e.finish().unwrap();
    let mut blob = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
    blob.extend_from_slice(&raw[..n1]);
    for _ in 0..60_000 {
        blob.extend_from_slice(&[0, 0, 0, 0xff, 0xff]); // empty stored block
    }
    blob.extend_from_slice(&raw[n1..]);
    blob.extend_from_slice(&crc32fast::hash(&data).to_le_bytes());
    blob.extend_from_slice(&(data.len() as u32).to_le_bytes());
    let (idx, _, _) = trim_check("log overflow", &data, &blob, 90_000);
    let cp = idx
        .checkpoints
        .iter()
        .find(|c| c.out_offset == split as u64)
        .expect("checkpoint at the flush");
    let w = decompress_window(&cp.window, cp.window_len).unwrap();
    assert!(
        w == data[split - WINDOW_SIZE..split],
        "full window expected"
    );
}
