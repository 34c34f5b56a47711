//! The `.clip` index file: bytes in, checked views out (normative spec:
//! `docs/format.md`).
//!
//! A leaf: no I/O beyond reading the file and the atomic write, no
//! network. No unsafe code: the file is read, not mapped. `index` builds an [`IndexData`] and calls [`write_index_file`];
//! `cache`, `fuse` and the CLI read through [`Index`], which verifies every
//! section's checksum on load and never panics on a corrupt file.

mod bomb;
mod model;
mod profile;
mod raw;
mod reader;
mod sparse;
mod writer;

use std::path::PathBuf;

pub use model::{
    Checkpoint, Chunk, DataRef, FileHint, ImageMeta, IndexData, Layer, LayerKind, Node, NodeKind,
    SparseSegment, Tree,
};
pub use profile::{AccessProfile, ProfileError, ProfileRange, MAX_RANGES, PROFILE_VERSION};
pub use raw::{MAJOR as FORMAT_MAJOR, MINOR as FORMAT_MINOR};
pub use reader::{DirEntry, DirIter, FileHints, Index, InodeView, LayerView, Xattr, ROOT_INO};
pub use sparse::{Piece, Pieces};
pub use writer::{write_index, write_index_file, WriteOptions};

/// Why an index file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file does not start with the clip index magic.
    #[error("not a clip index file (bad magic)")]
    NotAnIndex,
    /// Written by a newer, incompatible clip.
    #[error(
        "index format version {major}.{minor} is not supported (this clipctl reads version 2.x)"
    )]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// Incompatible feature bits this reader does not know.
    #[error("index uses unknown incompatible features {0:#x}; upgrade clipctl")]
    UnknownFeatures(u32),
    /// The file is shorter or longer than its header says.
    #[error("index file is truncated: header says {expected} bytes, file has {actual}")]
    Truncated {
        /// Size from the header.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// The section table names a section kind twice.
    #[error("index file is corrupt: section kind {0} appears twice")]
    DuplicateSection(u32),
    /// A compressed section declares far more bytes than its stored bytes
    /// can hold (a decompression bomb); refused before allocating.
    #[error(
        "index file is corrupt: the {section} declares {raw_len} bytes from {stored_len} compressed bytes (more than the format allows)"
    )]
    SectionBomb {
        /// Which section.
        section: &'static str,
        /// Its stored (compressed) length.
        stored_len: u64,
        /// The uncompressed length it declares.
        raw_len: u64,
    },
    /// A checksum did not match.
    #[error("index file is corrupt: checksum mismatch in the {0}")]
    Checksum(&'static str),
    /// A structural inconsistency.
    #[error("index file is corrupt: {0}")]
    Corrupt(&'static str),
    /// A value does not fit the format's fields.
    #[error("image too large for the index format: {0}")]
    TooLarge(&'static str),
    /// The in-memory data to write is inconsistent.
    #[error("cannot write index: {0}")]
    Invalid(&'static str),
    /// An inode number out of range.
    #[error("no inode {0} in the index")]
    NoSuchInode(u64),
    /// A layer number out of range.
    #[error("no layer {0} in the index")]
    NoSuchLayer(u32),
    /// A directory operation on a non-directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
    /// Reading or writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

#[cfg(test)]
mod section_tests;
#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;
