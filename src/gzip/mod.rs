//! Random access into gzip streams (one or more members), zran style.
//!
//! This module owns the deflate-level work: [`ZranReader`] inflates a layer
//! once, front to back, yielding the uncompressed bytes while it records
//! resume points ([`Checkpoint`]: a deflate block boundary, its bit offset and
//! the preceding 32 KiB window, trimmed to the bytes decoding from there reads
//! — the rest are zeroed, see `trim`) and per-chunk sha256 digests ([`Chunk`]);
//! [`SpanDecoder`] later resumes inflating at any checkpoint from whatever
//! compressed bytes it is fed. Its neighbours: `index` builds layer indexes
//! with the reader, `cache` serves ranges with the decoder. It does no I/O of
//! its own (it reads from a caller's `Read` or slices) and knows nothing of
//! the network. All unsafe code (the `libz-rs-sys` calls) lives in `ffi`.

mod build;
mod ffi;
mod header;
mod inflate;
#[cfg(test)]
mod tests;
mod trim;

use std::io;

pub use build::ZranReader;
pub use inflate::{read_range, SpanDecoder};

/// A resume point inside a compressed layer (stored in the index as is:
/// `format::Layer::checkpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Offset in the blob of the first byte holding bits of the next block.
    /// For gzip with `bits > 0` the byte at `in_offset - 1` holds the
    /// `bits` high bits that start the block.
    pub in_offset: u64,
    /// Number of bits of byte `in_offset - 1` still unread (0..=7).
    pub bits: u8,
    /// Uncompressed offset of the checkpoint.
    pub out_offset: u64,
    /// The preceding window (up to 32 KiB), raw-deflate compressed; empty for
    /// a checkpoint at a member start or for non-gzip layers.
    pub window: Vec<u8>,
    /// Length of the window once inflated.
    pub window_len: u32,
    /// Index (into the layer's chunk list) of the first chunk of this span.
    pub first_chunk: u32,
}

/// A verification unit: a run of at most the layer's chunk size of
/// uncompressed bytes inside one span; spans are cut into chunks from
/// their start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chunk {
    /// sha256 of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
    /// Blob offset by which the compressed stream had produced the end of
    /// this chunk (a hint for how much to fetch; readers fetch more on demand).
    pub in_end: u64,
}

/// Consecutive inflate calls without visible progress before a decoder
/// gives up (the indexer and the span decoder alike).
const MAX_STALLS: u32 = 8;

/// Counts inflate calls in a row that made no progress (see [`MAX_STALLS`]).
#[derive(Debug, Default)]
struct Stalls(u32);

impl Stalls {
    /// Notes one inflate call that returned `code`: progress resets the
    /// count; more than [`MAX_STALLS`] calls in a row without is an error.
    fn note(&mut self, progressed: bool, code: i32) -> Result<(), GzipError> {
        if progressed {
            self.0 = 0;
            return Ok(());
        }
        self.0 += 1;
        if self.0 > MAX_STALLS {
            return Err(GzipError::Zlib {
                code,
                msg: "inflate makes no progress".into(),
            });
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.0 = 0;
    }
}

/// Largest deflate window, and so the most a checkpoint window holds.
pub const WINDOW_SIZE: usize = 32 * 1024;

/// Settings for index building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexerConfig {
    /// Minimum uncompressed distance between checkpoints; a checkpoint is
    /// placed at the first block boundary (or member start) at least this far
    /// past the previous one. Must be > 0.
    pub span: u64,
    /// Uncompressed size of a verification chunk (spans are cut into chunks
    /// from their start). Must be > 0.
    pub chunk_size: u32,
}

impl IndexerConfig {
    /// Default span between checkpoints (see the module tests/bench for the
    /// latency / index-size trade-off).
    pub const DEFAULT_SPAN: u64 = 1024 * 1024;
    /// Default chunk size.
    pub const DEFAULT_CHUNK_SIZE: u32 = 256 * 1024;
}

impl Default for IndexerConfig {
    fn default() -> Self {
        IndexerConfig {
            span: Self::DEFAULT_SPAN,
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
        }
    }
}

/// Everything one indexing pass learned about a gzip stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZranIndex {
    /// Resume points, ascending by `out_offset`; the first is at 0.
    pub checkpoints: Vec<Checkpoint>,
    /// Chunk digests, in uncompressed order.
    pub chunks: Vec<Chunk>,
    /// Bytes of compressed input consumed (the blob size, padding included).
    pub compressed_size: u64,
    /// Uncompressed size of the whole stream.
    pub uncompressed_size: u64,
}

impl ZranIndex {
    /// Index of the checkpoint to resume from for uncompressed offset `out`:
    /// the last one at or before it.
    pub fn checkpoint_for(&self, out: u64) -> usize {
        self.checkpoints
            .partition_point(|c| c.out_offset <= out)
            .saturating_sub(1)
    }
}

/// Why a gzip stream could not be indexed or decoded. Offsets name where.
#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    /// A gzip member header is malformed.
    #[error("bad gzip header at blob offset {in_offset}: {msg}")]
    BadHeader {
        /// Blob offset of the offending byte.
        in_offset: u64,
        /// What was wrong.
        msg: &'static str,
    },
    /// The deflate data or a member trailer is invalid.
    #[error(
        "corrupt gzip data at blob offset {in_offset} (uncompressed offset {out_offset}): {msg}"
    )]
    Corrupt {
        /// Blob offset near the error (next unread byte).
        in_offset: u64,
        /// Uncompressed offset reached.
        out_offset: u64,
        /// What was wrong.
        msg: String,
    },
    /// The input ended inside a member.
    #[error("gzip stream truncated at blob offset {in_offset} (uncompressed offset {out_offset})")]
    Truncated {
        /// Blob offset where input ended.
        in_offset: u64,
        /// Uncompressed offset reached.
        out_offset: u64,
    },
    /// Non-zero bytes follow the last member.
    #[error("unexpected data after gzip member at blob offset {in_offset}")]
    TrailingGarbage {
        /// Blob offset of the first unexpected byte.
        in_offset: u64,
    },
    /// A checkpoint, window or index is unusable.
    #[error("bad checkpoint at uncompressed offset {out_offset}: {msg}")]
    BadCheckpoint {
        /// The checkpoint's uncompressed offset.
        out_offset: u64,
        /// What was wrong.
        msg: String,
    },
    /// zlib reported an unexpected condition.
    #[error("zlib error {code}: {msg}")]
    Zlib {
        /// zlib return code.
        code: i32,
        /// zlib's message.
        msg: String,
    },
    /// Invalid [`IndexerConfig`].
    #[error("invalid indexer config: {0}")]
    Config(&'static str),
    /// Reading the input failed.
    #[error("reading gzip input: {0}")]
    Io(#[from] io::Error),
}

impl GzipError {
    /// Maps a failed `inflate` return code: data errors (Z_DATA_ERROR,
    /// Z_NEED_DICT) are corruption at the current offsets, anything else a
    /// zlib failure.
    pub(crate) fn from_inflate(code: i32, msg: String, in_offset: u64, out_offset: u64) -> Self {
        const Z_DATA_ERROR: i32 = -3;
        const Z_NEED_DICT: i32 = 2;
        if code == Z_DATA_ERROR || code == Z_NEED_DICT {
            GzipError::Corrupt {
                in_offset,
                out_offset,
                msg: if msg.is_empty() {
                    "invalid deflate data".into()
                } else {
                    msg
                },
            }
        } else {
            GzipError::Zlib { code, msg }
        }
    }

    /// A copy of this error (an `Io` error keeps its kind and message).
    pub(crate) fn duplicate(&self) -> GzipError {
        match self {
            GzipError::BadHeader { in_offset, msg } => GzipError::BadHeader {
                in_offset: *in_offset,
                msg,
            },
            GzipError::Corrupt {
                in_offset,
                out_offset,
                msg,
            } => GzipError::Corrupt {
                in_offset: *in_offset,
                out_offset: *out_offset,
                msg: msg.clone(),
            },
            GzipError::Truncated {
                in_offset,
                out_offset,
            } => GzipError::Truncated {
                in_offset: *in_offset,
                out_offset: *out_offset,
            },
            GzipError::TrailingGarbage { in_offset } => GzipError::TrailingGarbage {
                in_offset: *in_offset,
            },
            GzipError::BadCheckpoint { out_offset, msg } => GzipError::BadCheckpoint {
                out_offset: *out_offset,
                msg: msg.clone(),
            },
            GzipError::Zlib { code, msg } => GzipError::Zlib {
                code: *code,
                msg: msg.clone(),
            },
            GzipError::Config(m) => GzipError::Config(m),
            GzipError::Io(e) => GzipError::Io(io::Error::new(e.kind(), e.to_string())),
        }
    }
}

impl From<GzipError> for io::Error {
    fn from(e: GzipError) -> Self {
        match e {
            GzipError::Io(e) => e,
            GzipError::Truncated { .. } => io::Error::new(io::ErrorKind::UnexpectedEof, e),
            e @ GzipError::Config(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// libdeflate level for checkpoint windows. Measured on 32 KiB windows of
/// mixed data (see `benches/gzip_inflate.rs`): level 1 costs ~0.3 ms and
/// 14.9 KB per window, level 6 ~1 ms / 13.9 KB, level 12 ~20 ms / 13.4 KB.
/// Compression runs inline in the indexing pass (about 2.5 ms of inflate per
/// MiB), so level 1 keeps the pass near plain-gunzip speed for ~11 % bigger
/// windows (~0.3 % of the gzip size at a 1 MiB span).
const WINDOW_LEVEL: i32 = 1;

/// Compresses a checkpoint window (at most [`WINDOW_SIZE`] bytes) as raw
/// deflate (fast level; see `WINDOW_LEVEL`).
pub fn compress_window(window: &[u8]) -> Vec<u8> {
    let mut c = window_compressor();
    compress_window_with(&mut c, window)
}

/// The compressor [`compress_window`] uses (reuse it across windows).
pub(crate) fn window_compressor() -> libdeflater::Compressor {
    let lvl = libdeflater::CompressionLvl::new(WINDOW_LEVEL)
        .unwrap_or_else(|_| libdeflater::CompressionLvl::fastest());
    libdeflater::Compressor::new(lvl)
}

/// libdeflate level for trimmed windows (mostly zeros). Measured on a real
/// python layer (`tests::real_layer_window_stats`): level 1 gives 1963 B and
/// ~0.14 ms per window, level 6 1883 B / ~0.18 ms, level 9 1874 B / ~0.6 ms,
/// level 12 1764 B / ~13 ms. Level 6 costs about what level 1 did on full
/// windows.
const TRIMMED_WINDOW_LEVEL: i32 = 6;

/// The compressor for trimmed windows.
pub(crate) fn trimmed_window_compressor() -> libdeflater::Compressor {
    let lvl = libdeflater::CompressionLvl::new(TRIMMED_WINDOW_LEVEL)
        .unwrap_or_else(|_| libdeflater::CompressionLvl::fastest());
    libdeflater::Compressor::new(lvl)
}

pub(crate) fn compress_window_with(c: &mut libdeflater::Compressor, window: &[u8]) -> Vec<u8> {
    if window.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0u8; c.deflate_compress_bound(window.len())];
    // The buffer is sized by deflate_compress_bound, so this cannot run out of
    // space; fall back to a stored encoding rather than panic regardless.
    match c.deflate_compress(window, &mut out) {
        Ok(n) => out.truncate(n),
        Err(_) => return stored_deflate(window),
    }
    out
}

/// Raw deflate of `data` as stored blocks (used only as a fallback).
fn stored_deflate(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 65535 * 5 + 5);
    let mut pieces = data.chunks(65535).peekable();
    while let Some(p) = pieces.next() {
        out.push(u8::from(pieces.peek().is_none()));
        let len = p.len() as u16; // chunks(65535) bounds the length
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(p);
    }
    out
}

/// Inflates a checkpoint window of `window_len` bytes (≤ [`WINDOW_SIZE`]).
pub fn decompress_window(data: &[u8], window_len: u32) -> Result<Vec<u8>, GzipError> {
    let len = window_len as usize;
    let bad = |msg: String| GzipError::BadCheckpoint { out_offset: 0, msg };
    if len > WINDOW_SIZE {
        return Err(bad(format!("window length {len} exceeds 32 KiB")));
    }
    let mut out = vec![0u8; len];
    if len == 0 {
        return if data.is_empty() {
            Ok(out)
        } else {
            Err(bad("non-empty window data for an empty window".into()))
        };
    }
    let mut d = libdeflater::Decompressor::new();
    match d.deflate_decompress(data, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(n) => Err(bad(format!("window inflated to {n} bytes, expected {len}"))),
        Err(e) => Err(bad(format!("window does not inflate: {e}"))),
    }
}
