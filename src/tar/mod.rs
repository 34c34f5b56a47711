//! Streaming tar reader: turns an uncompressed layer stream into [`Entry`]
//! records carrying the offset of each file's data, so [`crate::index`] can
//! record `(layer, offset)` references instead of copying bytes.
//!
//! A small self-contained parser (v7, ustar, GNU long names/links, PAX with
//! fractional mtime, sizes over 8 GiB and `SCHILY.xattr.*`, base-256 numeric
//! fields). It reads with bounded memory (extension members are capped at
//! [`MAX_META_SIZE`]), never seeks, and drains its input to EOF so a digest
//! computed underneath (see [`crate::digest`]) covers the whole layer.
//! Neighbours: fed by [`crate::gzip`] (or a raw tar blob), consumed by
//! [`crate::index`].

mod entry;
mod error;
mod header;
mod pax;
mod reader;

pub use entry::{Entry, EntryKind};
pub use error::TarError;
pub use reader::read_entries;

/// Largest accepted PAX header or GNU long name/link member (1 MiB).
pub const MAX_META_SIZE: u64 = 1 << 20;

#[cfg(test)]
mod tests;
