//! Serves uncompressed layer bytes: `(layer, offset) → bytes`.
//!
//! The FUSE layer reads file contents only through [`ContentReader`]; it
//! never sees HTTP, gzip or checkpoints. [`ContentCache`] fetches compressed
//! bytes from a `BlobSource`, inflates from the nearest checkpoint, verifies
//! the chunk digests from the index and keeps hot chunks in memory.
//!
//! Layout: `memory` (bounded chunk store), `disk` (the node's on-disk chunk
//! tier, by chunk digest), `plan` (per-layer span/chunk
//! geometry), `decoder` (resumable gzip/zstd decoders), `fill` (the
//! [`ContentCache`] read path, miss path, single-flight and decoder parking),
//! `prefetch` (background fill threads for [`ContentReader::prefetch`] and
//! profile replay), `profile` (record and replay of startup access
//! profiles). Counters and latencies go to a [`crate::metrics::Metrics`].

use std::fmt;

mod decoder;
mod disk;
mod fill;
mod memory;
mod plan;
mod prefetch;
mod profile;

#[cfg(test)]
mod tests;

pub use disk::{DiskCache, SlotHint};
pub use fill::ContentCache;

/// Why layer bytes could not be served.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The blob source failed.
    #[error("layer {layer} ({digest}): {source}")]
    Source {
        /// Layer number.
        layer: u32,
        /// Layer blob digest.
        digest: crate::Digest,
        /// The error.
        source: crate::source::SourceError,
    },
    /// Decoded bytes did not match the digest recorded in the index.
    #[error(
        "layer {layer} chunk {chunk}: content digest mismatch (refusing to serve wrong bytes)"
    )]
    DigestMismatch {
        /// Layer number.
        layer: u32,
        /// Chunk number in the layer.
        chunk: u32,
    },
    /// The compressed stream could not be decoded (corrupt or truncated blob).
    #[error("layer {layer} ({digest}) span {span}: {message}")]
    Decode {
        /// Layer number.
        layer: u32,
        /// Layer blob digest.
        digest: crate::Digest,
        /// Span (checkpoint number) being decoded.
        span: u32,
        /// What went wrong.
        message: String,
    },
    /// A zstd frame asks for a window over
    /// [`crate::zstd_limits::WINDOW_LOG_MAX`]: refused, not allocated.
    #[error(
        "layer {layer} ({digest}) span {span}: a zstd frame needs a window over {} MiB (the limit)",
        (1u64 << crate::zstd_limits::WINDOW_LOG_MAX) >> 20
    )]
    ZstdWindowTooLarge {
        /// Layer number.
        layer: u32,
        /// Layer blob digest.
        digest: crate::Digest,
        /// Span (checkpoint number) being decoded.
        span: u32,
    },
    /// The image has no such layer.
    #[error("no layer {layer} in the image")]
    NoSuchLayer {
        /// Layer number asked for.
        layer: u32,
    },
    /// The layer's index entry is inconsistent (checked when the cache is
    /// built; every read of the layer fails with this).
    #[error("layer {layer}: unusable index entry ({digest}): {reason}")]
    UnusableLayer {
        /// Layer number.
        layer: u32,
        /// Layer blob digest.
        digest: crate::Digest,
        /// What is inconsistent.
        reason: String,
    },
    /// A record the read needs could not be read from the index.
    #[error("layer {layer}: {what}: {source}")]
    Index {
        /// Layer number.
        layer: u32,
        /// Which record.
        what: String,
        /// The error.
        source: crate::format::FormatError,
    },
    /// The index has no record of this chunk.
    #[error("layer {layer}: no chunk {chunk} in the index")]
    NoSuchChunk {
        /// Layer number.
        layer: u32,
        /// Chunk number asked for.
        chunk: u32,
    },
    /// A checkpoint disagrees with the layer's chunk table.
    #[error(
        "layer {layer}: checkpoint {span} ({digest}) disagrees with the chunk table \
         (out {out_offset} chunk {first_chunk}, expected {want_offset} {want_chunk})"
    )]
    CheckpointMismatch {
        /// Layer number.
        layer: u32,
        /// Layer blob digest.
        digest: crate::Digest,
        /// Checkpoint (span) number.
        span: u32,
        /// Its uncompressed offset.
        out_offset: u64,
        /// Its first chunk.
        first_chunk: u32,
        /// The span start the chunk table implies.
        want_offset: u64,
        /// The first chunk the chunk table implies.
        want_chunk: u32,
    },
}

/// Random access to the uncompressed bytes of an image's layers.
pub trait ContentReader: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes of layer `layer`'s uncompressed stream at
    /// `offset`; returns the count, fewer only at the end of the layer.
    fn read(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError>;

    /// Hints that `[offset, offset+len)` of layer `layer` will probably be
    /// read soon: the reader may start fetching it in the background. Best
    /// effort, never blocks on I/O and never fails (default: does nothing).
    fn prefetch(&self, layer: u32, offset: u64, len: u64, urgency: Urgency) {
        let _ = (layer, offset, len, urgency);
    }

    /// Whether reading `[offset, offset+len)` of layer `layer` now could wait
    /// on the network (some of it is neither in memory nor on local disk).
    /// The FUSE transports serve a READ that would not block on the thread
    /// that received it and hand the others to a pool, so a slow source
    /// never stalls metadata requests. A cheap, side-effect-free guess: a
    /// range evicted right after the answer is read anyway. Default: `true`
    /// (an unknown reader may block).
    fn would_block(&self, layer: u32, offset: u64, len: u64) -> bool {
        let _ = (layer, offset, len);
        true
    }

    /// Whether a startup profile is being (or was) replayed into this
    /// reader: it knows what the workload reads, so a filesystem does not
    /// speculate on top (default: `false`).
    fn replaying(&self) -> bool {
        false
    }
}

/// How sure a prefetch hint is, and so where it queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// A reader is on it now (the rest of the file it just started): ahead
    /// of everything speculative.
    Now,
    /// Speculation (a program's libraries, a directory's other small
    /// files): after every urgent hint, newest first.
    Later,
}

/// Tuning knobs of a [`ContentCache`].
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Bytes of verified chunks kept in memory (default 512 MiB).
    pub memory_bytes: u64,
    /// Extra compressed bytes fetched past the last needed chunk's `in_end`,
    /// on top of `fetch_slack` (default 0).
    pub fetch_ahead: u64,
    /// Compressed bytes fetched past a chunk's `in_end` hint so the decoder
    /// rarely starves right at the end of a chunk (default 16 KiB).
    pub fetch_slack: u64,
    /// Minimum size of a follow-up fetch when the decoder ran out of input
    /// mid-fill; doubles on each further starvation (default 256 KiB).
    pub min_refetch: u64,
    /// Readahead of a streaming decoder: once a parked decoder has been
    /// continued exactly where it stopped several fills in a row, fills
    /// fetch this many compressed bytes past what they need, doubling with
    /// every further continuation (default 256 KiB; 0 disables).
    pub sequential_fetch: u64,
    /// Cap of that readahead (default 4 MiB). A parked decoder keeps what
    /// it read ahead and has not inflated yet, so besides `memory_bytes`
    /// up to `parked_decoders × sequential_max` of compressed input can be
    /// held (128 MiB with the defaults, in practice a few streams' worth).
    pub sequential_max: u64,
    /// At most this many `read_at` calls in flight at once (default 16).
    pub max_in_flight: usize,
    /// Live decoders kept parked for resumption (default 32).
    pub parked_decoders: usize,
    /// Background threads serving [`ContentReader::prefetch`] hints, started
    /// by [`ContentCache::start_prefetch`] (default 6; 0: hints are
    /// ignored). A first start waits one registry round trip per cold read;
    /// these threads keep several GETs in flight for what the warming rules
    /// expect next, so the waits overlap. They also bound how many prefetch
    /// fetches are in flight, leaving the rest of `max_in_flight` to readers.
    pub prefetch_threads: usize,
    /// Jobs waiting for a prefetch thread; beyond, the oldest speculative
    /// jobs are dropped (default 1024).
    pub prefetch_queue: usize,
    /// A hinted range is cut into jobs of about this many uncompressed
    /// bytes, on span boundaries, so the prefetch threads fetch the pieces
    /// of one file in parallel: a round trip per piece, all at once,
    /// instead of one after another (default 2 MiB; 0: one job per hint).
    pub prefetch_piece: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            memory_bytes: 512 << 20,
            fetch_ahead: 0,
            fetch_slack: 16 << 10,
            min_refetch: 256 << 10,
            sequential_fetch: 256 << 10,
            sequential_max: 4 << 20,
            max_in_flight: 16,
            parked_decoders: 32,
            prefetch_threads: 6,
            prefetch_queue: 1024,
            prefetch_piece: 2 << 20,
        }
    }
}
