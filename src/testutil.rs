//! Test data shared by unit tests, integration tests, benches and the fuzz
//! crate: deterministic content generators, gzip helpers and an indexed
//! gzip layer. Compiled for `cfg(test)` and with the `testutil` feature
//! (the benches and integration tests get it through the crate's
//! dev-dependency on itself); never part of a release build.
//!
//! Everything here is seeded: the same arguments give the same bytes, so a
//! failure reproduces and a bench measures the same input every run.

use std::io::{Read, Write};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::digest::Digest;
use crate::format::{write_index, Index, IndexData, Layer, LayerKind, WriteOptions};
use crate::gzip::{IndexerConfig, ZranReader};

/// `len` bytes of text-like word runs (compressible, with a mix of short
/// and long matches) and incompressible random runs, 1–60 KB each.
pub fn mixed_data(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "layer",
        "image",
        "container",
        "lazy",
        "gzip",
        "block",
        "window",
        "span",
        "checkpoint",
        "fuse",
        "inode",
        "/usr/lib/x86_64-linux-gnu/",
        "libc.so.6",
        "0x7f",
        "\n",
        "{\"key\": ",
        "}",
        "ERROR",
        "warn",
        "42",
        "-",
        "=",
        "\t",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = rng.gen_range(1_000..60_000);
        if rng.gen_bool(0.3) {
            let start = out.len();
            out.resize(start + run, 0);
            rng.fill_bytes(&mut out[start..]);
        } else {
            let end = out.len() + run;
            while out.len() < end {
                out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())].as_bytes());
                out.push(b' ');
            }
        }
    }
    out.truncate(len);
    out
}

/// `len` bytes of file-like content from `rng`: source-code-like runs,
/// runs of zeros and incompressible random runs (up to 64 KiB each), the
/// mix a layer's files have.
pub fn mixed_bytes(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const WORDS: [&[u8]; 6] = [
        b"import ",
        b"numpy ",
        b"def f(x):\n",
        b"    return ",
        b"self.",
        b"# comment\n",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        let run = rng.gen_range(1..64 << 10).min(len - out.len());
        match rng.gen_range(0..3) {
            0 => {
                let stop = out.len() + run;
                while out.len() < stop {
                    out.extend_from_slice(WORDS[rng.gen_range(0..WORDS.len())]);
                }
                out.truncate(len);
            }
            1 => out.resize(out.len() + run, 0),
            _ => {
                let start = out.len();
                out.resize(start + run, 0);
                rng.fill_bytes(&mut out[start..]);
            }
        }
    }
    out
}

/// A multi-file ustar archive of about `size` bytes of [`mixed_bytes`]
/// files, from tiny to 1.5 MB, in five directories.
pub fn sample_tar(seed: u64, size: usize) -> Vec<u8> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut b = ::tar::Builder::new(Vec::new());
    let mut total = 0;
    let mut i = 0;
    while total < size {
        let len = match i % 4 {
            0 => rng.gen_range(0..2000),
            1 => rng.gen_range(0..100_000),
            2 => rng.gen_range(100_000..1_500_000),
            _ => rng.gen_range(0..300_000),
        };
        let data = mixed_bytes(&mut rng, len);
        let mut h = ::tar::Header::new_ustar();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, format!("dir{}/file{i}.bin", i % 5), &data[..])
            .expect("appending to an in-memory tar");
        total += len + 512;
        i += 1;
    }
    b.into_inner().expect("finishing an in-memory tar")
}

/// `data` as one gzip member at compression `level` (0–9).
pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(data).expect("writing to a Vec");
    e.finish().expect("writing to a Vec")
}

/// `data` as a gzip layer of `members` concatenated members (level 6),
/// indexed by [`ZranReader`] with checkpoints every `span` bytes and
/// `chunk`-byte chunks; returns the index record and the blob. Panics if
/// the indexer's output differs from `data`.
pub fn gzip_layer(data: &[u8], span: u64, chunk: u64, members: usize) -> (Layer, Vec<u8>) {
    let mut blob = Vec::new();
    let per = data.len().div_ceil(members.max(1));
    for part in data.chunks(per.max(1)) {
        blob.extend(gzip(part, 6));
    }
    let mut r = ZranReader::new(
        &blob[..],
        IndexerConfig {
            span,
            chunk_size: chunk as u32,
        },
    );
    let mut out = Vec::new();
    r.read_to_end(&mut out).expect("indexing a gzip blob");
    assert!(out == data, "gunzip ground truth");
    let idx = r.finish().expect("indexing a gzip blob");
    assert_eq!(idx.compressed_size, blob.len() as u64);
    let layer = Layer {
        digest: Digest::of(&blob),
        diff_id: Digest::of(data),
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        kind: LayerKind::Gzip,
        compressed_size: idx.compressed_size,
        uncompressed_size: idx.uncompressed_size,
        chunk_size: chunk as u32,
        checkpoints: idx.checkpoints,
        chunks: idx.chunks,
    };
    (layer, blob)
}

/// An index holding only `layers` (an empty tree).
pub fn index_of_layers(layers: Vec<Layer>) -> Index {
    let data = IndexData {
        layers,
        ..Default::default()
    };
    Index::from_bytes(write_index(&data, WriteOptions::default()).expect("writing an index"))
        .expect("reading back an index")
}

/// The environment variable that turns every test skip into a failure
/// (`.ci/run` sets it to `1`): a CI run that lacks root, FUSE, the registry,
/// promtool, prometheus, setpriv or runc fails instead of passing green.
pub const REQUIRE_ENV: &str = "CLIP_REQUIRE_PRIVILEGED";

/// Whether skipping is forbidden ([`REQUIRE_ENV`] is `1`).
pub fn skips_forbidden() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| v == "1")
}

/// The one way a test gives up because a prerequisite is missing: prints
/// `SKIP <test>: <why>`, or panics when [`REQUIRE_ENV`] is `1`. The test
/// name is the thread's (libtest names each test's thread after it).
pub fn skip(why: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    assert!(
        !skips_forbidden(),
        "{test}: cannot run ({why}) and {REQUIRE_ENV}=1 forbids skipping"
    );
    eprintln!("SKIP {test}: {why}");
}

#[cfg(test)]
mod skip_tests {
    use super::{skip, REQUIRE_ENV};

    #[test]
    #[ignore = "helper: run by a_skip_fails_when_skips_are_forbidden"]
    fn skipping_child() {
        skip("a prerequisite this test pretends is missing");
    }

    /// The test binary runs [`skipping_child`] with and without
    /// `CLIP_REQUIRE_PRIVILEGED=1`: it must fail with it, pass without.
    #[test]
    fn a_skip_fails_when_skips_are_forbidden() {
        let exe = std::env::current_exe().unwrap();
        let run = |value: &str| {
            std::process::Command::new(&exe)
                .args(["--exact", "testutil::skip_tests::skipping_child"])
                .args(["--ignored", "--test-threads=1"])
                .env(REQUIRE_ENV, value)
                .output()
                .unwrap()
        };
        let forbidden = run("1");
        let text = String::from_utf8_lossy(&forbidden.stdout);
        assert!(!forbidden.status.success(), "{text}");
        assert!(text.contains("1 failed"), "{text}");
        let allowed = run("0");
        let text = String::from_utf8_lossy(&allowed.stdout);
        assert!(allowed.status.success(), "{text}");
        assert!(text.contains("1 passed"), "{text}");
    }
}
