//! Why a tar stream was rejected.

use std::io;

/// An error reading a tar stream. Offsets are byte positions in the
/// (uncompressed) tar stream; paths are shown lossily as UTF-8.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    /// The underlying reader failed.
    #[error("tar: read error at offset {offset}: {source}")]
    Io {
        /// Stream position of the failed read.
        offset: u64,
        /// The reader's error.
        #[source]
        source: io::Error,
    },
    /// The stream ended inside a header, a header's data or its padding.
    #[error("tar: stream truncated at offset {offset} (needed {needed} more bytes)")]
    Truncated {
        /// Stream position where the data ran out.
        offset: u64,
        /// How many more bytes the current record needed.
        needed: u64,
    },
    /// A header block's checksum does not match its contents (or the block is
    /// not a tar header at all).
    #[error("tar: bad header checksum at offset {offset}")]
    BadChecksum {
        /// Offset of the header block.
        offset: u64,
    },
    /// A numeric header field is malformed or out of range.
    #[error("tar: bad {field} field in header at offset {offset}")]
    BadNumber {
        /// Offset of the header block.
        offset: u64,
        /// Field name (`size`, `uid`, `mtime`, …).
        field: &'static str,
    },
    /// A PAX extended header is malformed.
    #[error("tar: malformed PAX header at offset {offset}: {reason}")]
    BadPax {
        /// Offset of the PAX header block.
        offset: u64,
        /// What is wrong.
        reason: &'static str,
    },
    /// A PAX or GNU long-name/long-link member is larger than the limit.
    #[error("tar: {what} member at offset {offset} is {size} bytes (limit {limit})")]
    MetaTooLarge {
        /// Offset of the member's header block.
        offset: u64,
        /// Which kind of member (`PAX header`, `GNU long name`, `GNU long link`).
        what: &'static str,
        /// Its declared size.
        size: u64,
        /// The limit ([`super::MAX_META_SIZE`]).
        limit: u64,
    },
    /// An entry's path (or hard link target) cannot be used.
    #[error("tar: invalid path {path:?} at offset {offset}: {reason}")]
    InvalidPath {
        /// The path as found in the archive.
        path: String,
        /// Offset of the entry's header block.
        offset: u64,
        /// What is wrong (`".." component`, `NUL byte`, …).
        reason: &'static str,
    },
    /// A GNU sparse file (type `S` or PAX `GNU.sparse.*`) whose map is
    /// malformed or does not fit its data.
    #[error("tar: sparse file {path:?} at offset {offset}: {reason}")]
    BadSparse {
        /// The entry's path.
        path: String,
        /// Offset of the entry's header block.
        offset: u64,
        /// What is wrong (`"sparse segments overlap or are not sorted"`, …).
        reason: &'static str,
    },
    /// The entry has a type flag this reader does not know how to represent.
    #[error("tar: entry {path:?} at offset {offset} has unsupported type {typeflag:?}")]
    UnsupportedType {
        /// The entry's path.
        path: String,
        /// Offset of the entry's header block.
        offset: u64,
        /// The raw type flag byte, as a char.
        typeflag: char,
    },
    /// The per-entry callback failed.
    #[error("tar: entry callback failed: {0}")]
    Callback(#[source] Box<dyn std::error::Error + Send + Sync>),
}
