//! On-disk header of a `.clip` archive.
//!
//! NB: documented in docs/format.md (section 7, "Archive files"); change both
//! in one commit. Only plain declarations live here; `open.rs` checks them.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// File magic of an archive: the `CLIP` family, kind `ARC` (an index is `CLIPIDX\0`).
pub const MAGIC: [u8; 8] = *b"CLIPARC\0";
/// Major version this code reads and writes.
pub const MAJOR: u16 = 1;
/// Minor version written; readers accept any minor of their major.
pub const MINOR: u16 = 0;
/// Incompatible feature bits this reader understands (none defined).
pub const INCOMPAT_KNOWN: u32 = 0;
/// Size of the header on disk.
pub const HEADER_SIZE: usize = 64;

/// The fixed header at offset 0.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// Major version.
    pub major: U16,
    /// Minor version.
    pub minor: U16,
    /// Incompatible feature bits: a reader refuses bits it does not know.
    pub incompat: U32,
    /// Compatible feature bits: a reader ignores bits it does not know.
    pub compat: U32,
    /// CRC-32 of the header with this field zero.
    pub header_crc: U32,
    /// Offset of the embedded index file (64).
    pub index_offset: U64,
    /// Length of the embedded index file.
    pub index_len: U64,
    /// Offset of the data section (8-aligned, at or after the index's end).
    pub data_offset: U64,
    /// Length of the data section.
    pub data_len: U64,
    /// Total archive length: `data_offset + data_len`.
    pub file_size: U64,
}

// Layouts are part of the file format: a reordered field is a format change.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(offset_of!(Header, header_crc) == 20);
    assert!(offset_of!(Header, index_offset) == 24);
    assert!(offset_of!(Header, data_offset) == 40);
    assert!(offset_of!(Header, file_size) == 56);
};
