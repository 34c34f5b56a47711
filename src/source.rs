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
    /// The blob ended before the bytes asked for.
    #[error("blob {digest} ended at {at} while reading {wanted} bytes at {offset}")]
    Truncated {
        /// The blob.
        digest: Digest,
        /// Where it ended.
        at: u64,
        /// Bytes asked for.
        wanted: usize,
        /// Where the read started.
        offset: u64,
    },
    /// The remote end failed or answered something unusable; `source` is
    /// the implementor's own error (e.g. `oci::OciError`), kept whole.
    #[error("{source}")]
    Remote {
        /// What kind of failure it was.
        kind: RemoteKind,
        /// The implementor's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The kind of a [`SourceError::Remote`] failure: what a caller needs to
/// decide (retry later, ask for credentials, count a timeout) without
/// parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteKind {
    /// The remote has no such blob, document or repository.
    NotFound,
    /// Access was refused, or credentials could not be found.
    Unauthorized,
    /// No progress within the deadline.
    Timeout,
    /// The remote could not be reached (name lookup, connect, TLS).
    Unreachable,
    /// A failure that may pass (5xx, 429, reset, broken body), still there
    /// after the implementor's retries.
    Transient,
    /// A failure that will not pass by itself (refused request, malformed
    /// or inconsistent answer, local policy).
    Permanent,
}

impl SourceError {
    /// A [`SourceError::Remote`] of `kind` around `source`.
    pub fn remote(
        kind: RemoteKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        SourceError::Remote {
            kind,
            source: source.into(),
        }
    }

    /// The remote failure kind, if this is a remote failure.
    pub fn remote_kind(&self) -> Option<RemoteKind> {
        match self {
            SourceError::Remote { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// Random and streamed access to blobs by digest.
pub trait BlobSource: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes of blob `digest` at `offset`; returns how
    /// many were read, fewer only at the end of the blob.
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError>;

    /// Streams the whole blob from its first byte.
    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError>;

    /// Opens up to `connections` connections to the source at once, so that
    /// the first parallel reads do not each pay a connection setup (a round
    /// trip, more with TLS). Best effort; the default does nothing.
    fn warm_up(&self, digest: &Digest, connections: usize) {
        let _ = (digest, connections);
    }

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
                return Err(SourceError::Truncated {
                    digest: *digest,
                    at: offset + done as u64,
                    wanted: buf.len(),
                    offset,
                });
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
