//! Builds a `.clip` index from an image: streams every layer once (layers in
//! parallel), verifies its digest and diff_id, records zran checkpoints and
//! chunk digests, parses the tar entries and merges the layers into one tree.
//!
//! Upstream: a resolved image and a [`BlobSource`] from `oci`. Downstream:
//! [`crate::format::IndexData`], written by `format`. Nothing here knows HTTP;
//! nothing here is used at mount time.

mod hints;
mod layer;
mod limits;
mod merge;
mod zstd;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

pub use layer::{layer_kind, IndexedLayer};
pub use limits::{IndexLimits, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_META_BYTES, DEFAULT_MAX_PATH_LEN};
pub use merge::{MergeError, Merger};

use crate::digest::Digest;
use crate::format::{ImageMeta, IndexData};
use crate::gzip::GzipError;
use crate::oci::ResolvedImage;
use crate::source::{BlobSource, SourceError};
use crate::tar::TarError;

/// Default uncompressed distance between checkpoints. Chosen by measurement
/// (BENCHMARKS.md): trimmed windows cost ~2 KiB each, so 1 MiB keeps the
/// python test image's index at 0.92 % of its compressed size, and a cold
/// read inflates at most 1 MiB (4 MiB: 0.6 %, but 4× the inflate and fetch
/// from the checkpoint on every cold access).
pub const DEFAULT_SPAN: u64 = 1 << 20;
/// Default verification chunk: the unit of fetch-ahead and of caching.
pub const DEFAULT_CHUNK: u32 = 256 << 10;

/// Why an index could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The layer's media type is not one we can serve.
    #[error("layer {digest}: unsupported media type {media_type:?}")]
    UnsupportedMediaType {
        /// Layer digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// The blob's bytes do not hash to its digest.
    #[error("layer {digest}: content digest mismatch (the blob hashes to {actual})")]
    DigestMismatch {
        /// Expected (manifest) digest.
        digest: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The uncompressed stream does not hash to the config's diff_id.
    #[error("layer {digest}: uncompressed digest {actual} does not match the config's diff_id {expected}")]
    DiffIdMismatch {
        /// Layer digest.
        digest: Digest,
        /// diff_id from the config.
        expected: Digest,
        /// What the uncompressed bytes hash to.
        actual: Digest,
    },
    /// The blob is shorter than the manifest says.
    #[error("layer {digest}: blob has {actual} bytes, the manifest says {expected}")]
    SizeMismatch {
        /// Layer digest.
        digest: Digest,
        /// Manifest size.
        expected: u64,
        /// Bytes read.
        actual: u64,
    },
    /// The source sent more bytes than the manifest's size (reading
    /// stopped one byte past it).
    #[error("layer {digest}: the source sent more than the manifest's {expected} bytes")]
    BlobTooLong {
        /// Layer digest.
        digest: Digest,
        /// Manifest size.
        expected: u64,
    },
    /// The image has more tar entries than [`IndexLimits::max_entries`].
    #[error("layer {digest}: the image has more than {limit} entries (the index limit)")]
    TooManyEntries {
        /// Layer where the limit was passed.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// An entry's path or link target is longer than
    /// [`IndexLimits::max_path_len`].
    #[error(
        "layer {digest}: entry {path:?} has a path or link target of {len} bytes (limit {limit})"
    )]
    PathTooLong {
        /// Layer digest.
        digest: Digest,
        /// The path (its start, lossily).
        path: String,
        /// Its length (or the link target's).
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Paths, link targets, xattrs and sparse maps together exceed
    /// [`IndexLimits::max_meta_bytes`].
    #[error("layer {digest}: the image's paths, link targets, xattrs and sparse maps exceed {limit} bytes (the index limit)")]
    TooMuchMetadata {
        /// Layer where the limit was passed.
        digest: Digest,
        /// The limit.
        limit: u64,
    },
    /// A zstd frame needs a larger window than
    /// [`crate::zstd_limits::WINDOW_LOG_MAX`] allows.
    #[error("layer {digest}: a zstd frame needs a window over {} MiB (the limit)", (1u64 << crate::zstd_limits::WINDOW_LOG_MAX) >> 20)]
    ZstdWindowTooLarge {
        /// Layer digest.
        digest: Digest,
    },
    /// Reading the blob failed.
    #[error("layer {digest}: {source}")]
    Source {
        /// Layer digest.
        digest: Digest,
        /// The error.
        source: SourceError,
    },
    /// The gzip stream is broken.
    #[error("layer {digest}: {source}")]
    Gzip {
        /// Layer digest.
        digest: Digest,
        /// The error.
        source: GzipError,
    },
    /// The tar stream is broken.
    #[error("layer {digest}: {source}")]
    Tar {
        /// Layer digest.
        digest: Digest,
        /// The error.
        source: TarError,
    },
    /// The zstd stream is broken.
    #[error("layer {digest}: zstd: {source}")]
    Zstd {
        /// Layer digest.
        digest: Digest,
        /// The error.
        source: std::io::Error,
    },
    /// The layers do not merge.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// Indexing stopped because another layer failed.
    #[error("indexing stopped after another layer failed")]
    Aborted,
    /// The manifest and config disagree.
    #[error("image has {layers} layers but its config lists {diff_ids} diff_ids")]
    LayerCountMismatch {
        /// Layers in the manifest.
        layers: usize,
        /// diff_ids in the config.
        diff_ids: usize,
    },
}

/// Settings for [`build`].
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Uncompressed distance between checkpoints.
    pub span: u64,
    /// Verification chunk size.
    pub chunk_size: u32,
    /// Layers indexed at once.
    pub threads: usize,
    /// Caps on entries and path bytes.
    pub limits: IndexLimits,
}

impl Default for IndexOptions {
    fn default() -> Self {
        IndexOptions {
            span: DEFAULT_SPAN,
            chunk_size: DEFAULT_CHUNK,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            limits: IndexLimits::default(),
        }
    }
}

/// Bytes of compressed input consumed so far, for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Compressed bytes read from the source.
    pub bytes_read: AtomicU64,
}

/// Indexes `image` whose blobs `source` serves. `meta` carries where the
/// image came from; the rest of it is filled in here.
pub fn build(
    image: &ResolvedImage,
    source: &dyn BlobSource,
    mut meta: ImageMeta,
    opts: &IndexOptions,
    progress: &Progress,
) -> Result<IndexData, IndexError> {
    if image.layers.len() != image.diff_ids.len() {
        return Err(IndexError::LayerCountMismatch {
            layers: image.layers.len(),
            diff_ids: image.diff_ids.len(),
        });
    }
    // Refuse unsupported layers before streaming anything.
    for l in &image.layers {
        layer_kind(&l.media_type).ok_or_else(|| IndexError::UnsupportedMediaType {
            digest: l.digest,
            media_type: l.media_type.clone(),
        })?;
    }
    let results: Vec<Mutex<Option<Result<IndexedLayer, IndexError>>>> =
        image.layers.iter().map(|_| Mutex::new(None)).collect();
    // Largest layers first: with fewer threads than layers this keeps the
    // biggest layer from starting last and finishing alone.
    let mut order: Vec<usize> = (0..image.layers.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(image.layers[i].size));
    let next = AtomicU64::new(0);
    let budget = limits::Budget::default();
    let threads = opts.threads.clamp(1, image.layers.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&i) = order.get(n) else { break };
                let (Some(desc), Some(diff_id)) = (image.layers.get(i), image.diff_ids.get(i))
                else {
                    break;
                };
                let r = layer::index_layer(desc, *diff_id, source, opts, &budget, progress);
                let failed = r.is_err();
                *results[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                if failed {
                    // Stop handing out work: the first error is reported.
                    next.store(u64::MAX / 2, Ordering::Relaxed);
                }
            });
        }
    });
    let slots: Vec<_> = results
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
        .collect();
    // Report the first failed layer; a slot is empty only after a failure.
    if let Some(pos) = slots.iter().position(|s| matches!(s, Some(Err(_)))) {
        if let Some(Some(Err(e))) = slots.into_iter().nth(pos) {
            return Err(e);
        }
        return Err(IndexError::Aborted);
    }
    let mut merger = Merger::new();
    let mut layers = Vec::with_capacity(image.layers.len());
    let mut elf = Vec::with_capacity(image.layers.len());
    for (i, slot) in slots.into_iter().enumerate() {
        let indexed = slot.ok_or(IndexError::Aborted)??;
        merger.apply_layer(i as u32, indexed.entries)?;
        layers.push(indexed.layer);
        elf.push(indexed.elf);
    }
    let tree = merger.finish();
    // ELF facts of the files that made it into the merged tree.
    let facts: HashMap<u32, hints::ElfFacts> = tree
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(n, node)| {
            let d = node.data?;
            let f = elf.get(d.layer as usize)?.get(&d.offset)?;
            Some((n as u32, f.clone()))
        })
        .collect();
    let file_hints = hints::resolve(&tree, &facts);
    meta.manifest_digest = Some(image.manifest_digest);
    meta.manifest = String::from_utf8_lossy(&image.manifest_raw).into_owned();
    meta.config = String::from_utf8_lossy(&image.config_raw).into_owned();
    meta.platform = image.platform.clone();
    meta.compressed_size = image.layers.iter().map(|l| l.size).sum();
    meta.span = opts.span;
    meta.writer = format!("clipctl {}", env!("CARGO_PKG_VERSION"));
    Ok(IndexData {
        meta,
        layers,
        tree,
        profile: None,
        hints: file_hints,
    })
}
