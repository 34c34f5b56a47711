//! The byte-source seam: [`BlobSource`] gives ranged and streamed access to
//! content-addressed blobs (image layers), whatever holds them.
//!
//! Implementors: `oci::RegistrySource` (HTTP Range GETs), `oci::LayoutSource`
//! (an OCI layout directory), [`MemSource`] (tests). Consumers: `index`
//! (streams whole layers once) and `cache` (ranged reads on a miss). Nothing
//! here knows about HTTP; retry policy lives in the implementors.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read};

use crate::digest::Digest;

/// Why a blob could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source has no blob with this digest.
    #[error("blob {digest} not found")]
    NotFound {
        /// The blob asked for.
        digest: Digest,
    },
    /// The requested range starts past the end of the blob.
    #[error("range starting at {offset} is past the end of blob {digest} ({len} bytes)")]
    OutOfRange {
        /// The blob.
        digest: Digest,
        /// Requested start.
        offset: u64,
        /// Blob length.
        len: u64,
    },
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The remote end failed or answered something unusable.
    #[error("{0}")]
    Remote(String),
}

/// Random and streamed access to blobs by digest.
pub trait BlobSource: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes of blob `digest` at `offset`; returns how
    /// many were read, fewer only at the end of the blob.
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError>;

    /// Streams the whole blob from its first byte.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError>;

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(
        &self,
        digest: &Digest,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), SourceError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(digest, offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(SourceError::Remote(format!(
                    "blob {digest} ended at {} while reading {} bytes at {offset}",
                    offset + done as u64,
                    buf.len()
                )));
            }
            done += n;
        }
        Ok(())
    }
}

/// Blobs held in memory: for tests, benches and fuzzing.
#[derive(Debug, Default, Clone)]
pub struct MemSource {
    blobs: HashMap<Digest, Vec<u8>>,
}

impl MemSource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a blob and returns its digest.
    pub fn insert(&mut self, data: Vec<u8>) -> Digest {
        let d = Digest::of(&data);
        self.blobs.insert(d, data);
        d
    }

    fn get(&self, digest: &Digest) -> Result<&[u8], SourceError> {
        self.blobs
            .get(digest)
            .map(Vec::as_slice)
            .ok_or(SourceError::NotFound { digest: *digest })
    }
}

impl BlobSource for MemSource {
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let blob = self.get(digest)?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start > blob.len() {
            return Err(SourceError::OutOfRange {
                digest: *digest,
                offset,
                len: blob.len() as u64,
            });
        }
        let n = buf.len().min(blob.len() - start);
        buf[..n].copy_from_slice(&blob[start..start + n]);
        Ok(n)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(io::Cursor::new(self.get(digest)?.to_vec())))
    }
}
