//! Serves uncompressed layer bytes: `(layer, offset) → bytes`.
//!
//! The FUSE layer reads file contents only through [`ContentReader`]; it
//! never sees HTTP, gzip or checkpoints. Implementations fetch compressed
//! bytes from a `BlobSource`, inflate from the nearest checkpoint, verify the
//! chunk digests from the index and keep hot chunks in memory.

use std::fmt;

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
    #[error("layer {layer} chunk {chunk}: content digest mismatch (refusing to serve wrong bytes)")]
    DigestMismatch {
        /// Layer number.
        layer: u32,
        /// Chunk number in the layer.
        chunk: u32,
    },
    /// Anything else, with its context.
    #[error("layer {layer}: {message}")]
    Other {
        /// Layer number.
        layer: u32,
        /// What went wrong.
        message: String,
    },
}

/// Random access to the uncompressed bytes of an image's layers.
pub trait ContentReader: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes of layer `layer`'s uncompressed stream at
    /// `offset`; returns the count, fewer only at the end of the layer.
    fn read(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError>;
}
