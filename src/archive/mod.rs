//! `.clip` archives: a file tree *with* its data, made from a directory or
//! an image, kept locally or in S3, extracted or mounted lazily.
//!
//! An archive is a 64-byte header, a complete `.clip` index file (the tree,
//! one data "layer" of kind `ZstdFrames`, its checkpoints and chunk
//! digests), then the data section: the file bytes in independent zstd
//! frames (spec: docs/format.md, section 7). The metadata comes first and
//! is small, so a remote reader starts with one short range read; mounting
//! is opening the embedded index and serving the data section as the layer
//! blob through [`Archive::blob_source`], so `cache` and `fuse` see an
//! ordinary index and never branch on archives.
//!
//! Layout: `raw` (header declaration), `open` ([`Archive`]: checked open
//! over any [`crate::object::ObjectRead`]), `walk` (directory input),
//! `image` (image input from an index and its layer blobs), `create` (the
//! multi-threaded compressor), `extract` and `restore` (parallel, confined
//! extraction). Upstream: `format`, `source`, `object`, `digest`. Nothing
//! here knows HTTP or S3: objects are injected.

mod create;
mod extract;
mod image;
mod open;
mod raw;
mod restore;
mod walk;

use std::path::PathBuf;

pub use create::{
    create, CreateOptions, CreateProgress, CreateSummary, DataItem, Input, DEFAULT_CHUNK,
    DEFAULT_FRAME, DEFAULT_LEVEL,
};
pub use extract::{extract, ExtractOptions, ExtractProgress, ExtractSummary};
pub use open::{sniff, Archive, FileKind};

use crate::digest::Digest;
use crate::format::FormatError;
use crate::source::SourceError;

/// Media type recorded for an archive's data section (its one layer).
pub const DATA_MEDIA_TYPE: &str = "application/vnd.clip.archive.data.v1+zstd";

impl Input {
    /// Input from a directory tree (walked now; file bytes are read later,
    /// by [`create`]).
    pub fn from_dir(root: &std::path::Path) -> Result<Self, ArchiveError> {
        walk::walk_dir(root)
    }

    /// Input from an indexed image: the merged tree of `data`, file bytes
    /// read by streaming the layer blobs `source` serves (each blob checked
    /// against its digest).
    pub fn from_image(
        data: crate::format::IndexData,
        source: std::sync::Arc<dyn crate::source::BlobSource>,
    ) -> Result<Self, ArchiveError> {
        image::image_input(data, source)
    }
}

/// Why an archive could not be made, read or extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The object is not an archive.
    #[error("not a clip archive (bad magic)")]
    NotAnArchive,
    /// The object is a metadata-only index, not an archive.
    #[error("this is a clip index (metadata only), not an archive")]
    IsIndex,
    /// Written by a newer, incompatible clip.
    #[error("archive format version {major}.{minor} is not supported (this clipctl reads 1.x)")]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Incompatible feature bits this reader does not know.
    #[error("archive uses unknown incompatible features {0:#x}; upgrade clipctl")]
    UnknownFeatures(u32),
    /// The object is shorter or longer than its header says.
    #[error("archive is truncated or padded: its header says {expected} bytes, it has {actual}")]
    Truncated {
        /// Size from the header.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// A structural inconsistency or a checksum mismatch.
    #[error("archive is corrupt: {0}")]
    Corrupt(String),
    /// The embedded index is damaged.
    #[error("archive index: {0}")]
    Index(#[from] FormatError),
    /// Reading or writing the archive object failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Data bytes did not match their chunk digest.
    #[error("archive is corrupt: content digest mismatch in data chunk {chunk} (refusing to write wrong bytes)")]
    DigestMismatch {
        /// Chunk number.
        chunk: u64,
    },
    /// A frame could not be decoded.
    #[error("archive is corrupt: data frame {frame}: {message}")]
    Decode {
        /// Frame number.
        frame: u64,
        /// What zstd said.
        message: String,
    },
    /// Reading the input failed.
    #[error("{}: {source}", path.display())]
    Input {
        /// The input file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An input file changed between the walk and reading its bytes.
    #[error("{} changed while being archived ({what})", path.display())]
    Changed {
        /// The file.
        path: PathBuf,
        /// How.
        what: String,
    },
    /// A layer of the input image could not be read or did not verify.
    #[error("layer {digest}: {message}")]
    Layer {
        /// The layer blob.
        digest: Digest,
        /// What went wrong.
        message: String,
    },
    /// An option is out of range.
    #[error("{0}")]
    Options(&'static str),
    /// zstd failed while compressing.
    #[error("compression failed: {0}")]
    Compress(String),
    /// A value does not fit the format.
    #[error("input too large for the archive format: {0}")]
    TooLarge(&'static str),
    /// Writing the extracted tree failed.
    #[error("{}: {source}", path.display())]
    Output {
        /// The output path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The extraction target is not empty.
    #[error("{}: output directory is not empty", path.display())]
    NotEmpty {
        /// The directory.
        path: PathBuf,
    },
    /// The archive would write outside the target or clobber what it wrote.
    #[error("refusing unsafe archive entry {path:?}: {why}")]
    Unsafe {
        /// The entry's path inside the archive.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

#[cfg(test)]
mod tests;
