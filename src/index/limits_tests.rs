//! Index-time limits: the budget and blob guard alone, and through
//! [`crate::index::build`] (entries over several layers, long paths, blobs
//! longer or shorter than the manifest, an endless source, a zstd window
//! over the limit).

use super::*;
use crate::format::ImageMeta;
use crate::index::{build, IndexOptions, Progress};
use crate::oci::{LayerDesc, ResolvedImage};
use crate::source::{BlobSource, MemSource, SourceError};

fn entry(path: &[u8]) -> Entry {
    let mut es = Vec::new();
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_size(0);
    b.append_data(&mut h, "x", io::empty()).unwrap();
    crate::tar::read_entries(&b.into_inner().unwrap()[..], |e| {
        es.push(e);
        Ok(())
    })
    .unwrap();
    Entry {
        path: path.to_vec(),
        ..es.remove(0)
    }
}

#[test]
fn budget_counts_over_layers() {
    let d = Digest::of(b"layer");
    let limits = IndexLimits {
        max_entries: 3,
        max_path_len: 8,
        max_meta_bytes: 10,
    };
    let b = Budget::default();
    b.admit(&entry(b"abcd"), &limits, d).unwrap();
    assert!(matches!(
        b.admit(&entry(b"123456789"), &limits, d),
        Err(IndexError::PathTooLong {
            len: 9,
            limit: 8,
            ..
        })
    ));
    b.admit(&entry(b"efgh"), &limits, d).unwrap();
    assert!(matches!(
        b.admit(&entry(b"ijk"), &limits, d),
        Err(IndexError::TooMuchMetadata { limit: 10, .. })
    ));
    assert!(matches!(
        b.admit(&entry(b"l"), &limits, d),
        Err(IndexError::TooManyEntries { limit: 3, .. })
    ));
    let msg = b.admit(&entry(b"m"), &limits, d).unwrap_err().to_string();
    assert!(msg.contains("3 entries"), "{msg}");
}

#[test]
fn blob_guard_holds_the_stream_to_its_size() {
    let d = Digest::of(b"blob");
    let mut g = BlobGuard::new(&[1u8; 10][..], 10);
    let mut out = Vec::new();
    g.read_to_end(&mut out).unwrap();
    assert_eq!(out.len(), 10);
    assert!(g.length_error(d).is_none());
    // An endless source stops one byte past the size.
    let mut g = BlobGuard::new(io::repeat(7), 1000);
    let e = io::copy(&mut g, &mut io::sink()).unwrap_err();
    assert!(e.to_string().contains("longer"));
    assert!(matches!(
        g.length_error(d),
        Some(IndexError::BlobTooLong { expected: 1000, .. })
    ));
    let mut g = BlobGuard::new(&[1u8; 4][..], 10);
    let mut four = [0u8; 4];
    g.read_exact(&mut four).unwrap();
    assert!(g.length_error(d).is_none(), "not at its end yet");
    io::copy(&mut g, &mut io::sink()).unwrap();
    assert!(matches!(
        g.length_error(d),
        Some(IndexError::SizeMismatch {
            expected: 10,
            actual: 4,
            ..
        })
    ));
}

/// A plain tar of `n` small files named `f0`, `f1`, … under `prefix`.
fn tar_of(prefix: &str, n: usize) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for i in 0..n {
        let mut h = ::tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("{prefix}f{i}"), &b"x"[..])
            .unwrap();
    }
    b.into_inner().unwrap()
}

/// An image of uncompressed tar layers (manifest sizes as given).
fn image(layers: &[(&[u8], u64)]) -> (ResolvedImage, MemSource) {
    let mut src = MemSource::new();
    let mut img = ResolvedImage {
        manifest_digest: Digest::of(b"manifest"),
        manifest_raw: b"manifest".to_vec(),
        config_raw: b"config".to_vec(),
        platform: "linux/amd64".into(),
        layers: Vec::new(),
        diff_ids: Vec::new(),
    };
    for (tar, size) in layers {
        let digest = src.insert(tar.to_vec());
        img.layers.push(LayerDesc {
            digest,
            size: *size,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        });
        img.diff_ids.push(Digest::of(tar));
    }
    (img, src)
}

fn build_with(
    img: &ResolvedImage,
    src: &dyn BlobSource,
    limits: IndexLimits,
) -> Result<crate::format::IndexData, IndexError> {
    let opts = IndexOptions {
        threads: 2,
        limits,
        ..Default::default()
    };
    build(img, src, ImageMeta::default(), &opts, &Progress::default())
}

#[test]
fn entry_and_path_caps_hold_over_all_layers() {
    let (a, b) = (tar_of("a/", 3), tar_of("b/", 3));
    let (img, src) = image(&[(&a, a.len() as u64), (&b, b.len() as u64)]);
    let limits = IndexLimits {
        max_entries: 6,
        ..Default::default()
    };
    build_with(&img, &src, limits).unwrap();
    let limits = IndexLimits {
        max_entries: 5,
        ..Default::default()
    };
    let err = build_with(&img, &src, limits).unwrap_err();
    assert!(
        matches!(err, IndexError::TooManyEntries { limit: 5, .. }),
        "{err}"
    );
    let limits = IndexLimits {
        max_meta_bytes: 10,
        ..Default::default()
    };
    let err = build_with(&img, &src, limits).unwrap_err();
    assert!(matches!(err, IndexError::TooMuchMetadata { .. }), "{err}");
    // A 5000-byte path (PAX) against the default 4096.
    let long = tar_of(&"d/".repeat(2500), 1);
    let (img, src) = image(&[(&long, long.len() as u64)]);
    let err = build_with(&img, &src, IndexLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            IndexError::PathTooLong {
                len: 5002,
                limit: 4096,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn blob_length_is_held_to_the_manifest() {
    let t = tar_of("", 2);
    let n = t.len() as u64;
    let (img, src) = image(&[(&t, n - 100)]);
    let err = build_with(&img, &src, IndexLimits::default()).unwrap_err();
    assert!(
        matches!(err, IndexError::BlobTooLong { expected, .. } if expected == n - 100),
        "{err}"
    );
    let (img, src) = image(&[(&t, n + 100)]);
    let err = build_with(&img, &src, IndexLimits::default()).unwrap_err();
    assert!(
        matches!(err, IndexError::SizeMismatch { expected, actual, .. } if expected == n + 100 && actual == n),
        "{err}"
    );
}

/// A source that streams zeros forever.
#[derive(Debug)]
struct Endless;

impl BlobSource for Endless {
    fn read_at(&self, _: &Digest, _: u64, _: &mut [u8]) -> Result<usize, SourceError> {
        Ok(0)
    }
    fn open(&self, _: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(io::repeat(0)))
    }
}

#[test]
fn an_endless_source_stops_at_the_manifest_size() {
    let (img, _) = image(&[(&[0u8; 10240][..], 10240)]);
    let err = build_with(&img, &Endless, IndexLimits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            IndexError::BlobTooLong {
                expected: 10240,
                ..
            }
        ),
        "{err}"
    );
}
