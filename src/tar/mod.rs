//! Streaming tar reader: turns an uncompressed layer stream into [`Entry`]
//! records carrying the offset of each file's data, so [`crate::index`] can
//! record `(layer, offset)` references instead of copying bytes.
//!
//! A small self-contained parser (v7, ustar, GNU long names/links, PAX with
//! fractional mtime, sizes over 8 GiB and `SCHILY.xattr.*`, base-256 numeric
//! fields, GNU sparse files in all four dialects: see `sparse.rs`). It reads
//! with bounded memory (extension members and sparse maps are capped at
//! [`MAX_META_SIZE`]), never seeks, and drains its input to EOF so a digest
//! computed underneath (see [`crate::digest`]) covers the whole layer.
//! Neighbours: fed by [`crate::gzip`] (or a raw tar blob), consumed by
//! [`crate::index`].

mod entry;
mod error;
mod header;
mod pax;
mod reader;
mod sparse;

pub use entry::{Entry, EntryKind};
pub use error::TarError;
pub use reader::read_entries;
pub use sparse::SparseSegment;

/// Largest accepted PAX header, GNU long name/link member or sparse map
/// (1 MiB).
pub const MAX_META_SIZE: u64 = 1 << 20;

#[cfg(test)]
mod sparse_tests;
#[cfg(test)]
mod tests;
