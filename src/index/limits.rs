//! Bounds on what indexing reads and keeps, so a hostile registry or image
//! meets a named error instead of unbounded reading or memory: the number of
//! tar entries and the bytes of their paths, link targets, xattrs and sparse
//! maps (over all layers of the image, which are indexed in parallel), the
//! length of one path, and a layer blob's length held to the manifest's
//! size (the zstd window limit is in [`crate::zstd_limits`]).

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::digest::Digest;
use crate::tar::{Entry, SparseSegment};

use super::IndexError;

/// Default [`IndexLimits::max_entries`]: ten times the largest images seen
/// (a full TeX Live or CUDA image holds ~1 M entries).
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;
/// Default [`IndexLimits::max_path_len`]: Linux `PATH_MAX`; longer paths
/// cannot be created by any runtime.
pub const DEFAULT_MAX_PATH_LEN: usize = 4096;
/// Default [`IndexLimits::max_meta_bytes`]: 1 GiB.
pub const DEFAULT_MAX_META_BYTES: u64 = 1 << 30;

/// Caps applied while indexing one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLimits {
    /// Tar entries over all layers (whiteouts and directories included).
    pub max_entries: u64,
    /// Bytes of one entry's path or link target.
    pub max_path_len: usize,
    /// Bytes of paths, link targets, xattr names and values and sparse maps
    /// (24 bytes a segment) over all layers.
    pub max_meta_bytes: u64,
}

impl Default for IndexLimits {
    fn default() -> Self {
        IndexLimits {
            max_entries: DEFAULT_MAX_ENTRIES,
            max_path_len: DEFAULT_MAX_PATH_LEN,
            max_meta_bytes: DEFAULT_MAX_META_BYTES,
        }
    }
}

/// What all layers of one image have used of the [`IndexLimits`] so far.
#[derive(Debug, Default)]
pub(super) struct Budget {
    entries: AtomicU64,
    meta_bytes: AtomicU64,
}

fn lossy_prefix(p: &[u8]) -> String {
    const SHOWN: usize = 120;
    let mut s = String::from_utf8_lossy(&p[..p.len().min(SHOWN)]).into_owned();
    if p.len() > SHOWN {
        s.push('…');
    }
    s
}

impl Budget {
    /// Counts one entry of layer `digest` against `limits`.
    pub(super) fn admit(
        &self,
        e: &Entry,
        limits: &IndexLimits,
        digest: Digest,
    ) -> Result<(), IndexError> {
        let longest = e.path.len().max(e.link_target.len());
        if longest > limits.max_path_len {
            return Err(IndexError::PathTooLong {
                digest,
                path: lossy_prefix(&e.path),
                len: longest,
                limit: limits.max_path_len,
            });
        }
        if self.entries.fetch_add(1, Ordering::Relaxed) >= limits.max_entries {
            return Err(IndexError::TooManyEntries {
                digest,
                limit: limits.max_entries,
            });
        }
        let xattrs: usize = e.xattrs.iter().map(|(k, v)| k.len() + v.len()).sum();
        let sparse = e.sparse.as_ref().map_or(0, |s| s.len()) * size_of::<SparseSegment>();
        let bytes = (e.path.len() + e.link_target.len() + xattrs + sparse) as u64;
        if self.meta_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > limits.max_meta_bytes {
            return Err(IndexError::TooMuchMetadata {
                digest,
                limit: limits.max_meta_bytes,
            });
        }
        Ok(())
    }
}

/// A layer blob's stream held to the manifest's size: it yields at most
/// `expected` bytes, and remembers whether the source sent more (reading
/// stops one byte past the size, with an error) or ended early.
#[derive(Debug)]
pub(super) struct BlobGuard<R> {
    inner: R,
    expected: u64,
    read: u64,
    too_long: bool,
    ended: bool,
}

impl<R: Read> BlobGuard<R> {
    pub(super) fn new(inner: R, expected: u64) -> Self {
        BlobGuard {
            inner,
            expected,
            read: 0,
            too_long: false,
            ended: false,
        }
    }

    /// The named error if the stream did not have the manifest's length:
    /// longer (seen as soon as it happened) or shorter (once its end was
    /// reached).
    pub(super) fn length_error(&self, digest: Digest) -> Option<IndexError> {
        if self.too_long {
            Some(IndexError::BlobTooLong {
                digest,
                expected: self.expected,
            })
        } else if self.ended && self.read < self.expected {
            Some(IndexError::SizeMismatch {
                digest,
                expected: self.expected,
                actual: self.read,
            })
        } else {
            None
        }
    }
}

impl<R: Read> Read for BlobGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.too_long {
            return Err(too_long());
        }
        // One byte past the size is enough to know the source sent too much.
        let room = self.expected - self.read + 1;
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.ended |= n == 0 && want > 0;
        self.read += n as u64;
        if self.read > self.expected {
            self.too_long = true;
            return Err(too_long());
        }
        Ok(n)
    }
}

fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "the blob is longer than the manifest says",
    )
}

#[cfg(test)]
#[path = "limits_tests.rs"]
mod tests;
