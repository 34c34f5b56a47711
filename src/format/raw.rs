//! On-disk records of the `.clip` index file.
//!
//! NB: documented in docs/format.md; change both in one commit. Only plain
//! declarations live here; `reader.rs` turns them into checked views.

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// File magic: identifies a clip index (not a v1 archive).
pub const MAGIC: [u8; 8] = *b"CLIPIDX\0";
/// Major version this code reads and writes; a file with a larger major is refused.
pub const MAJOR: u16 = 2;
/// Minor version written; readers accept any minor of their major.
pub const MINOR: u16 = 3;

/// Incompatible feature: some sections are zstd-compressed (section flag bit 0).
pub const INCOMPAT_ZSTD_SECTIONS: u32 = 1;
/// Incompatible feature: some regular files are sparse (SPARSE_FILES is not
/// empty); a reader that ignored the map would serve wrong bytes. Since 2.2.
pub const INCOMPAT_SPARSE: u32 = 2;
/// Every incompatible feature this reader understands.
pub const INCOMPAT_KNOWN: u32 = INCOMPAT_ZSTD_SECTIONS | INCOMPAT_SPARSE;

/// Section flag: the section's bytes are one zstd frame.
pub const SECTION_ZSTD: u32 = 1;

/// Section kinds (the `kind` of a [`SectionEntry`]). Unknown kinds are skipped.
pub mod kind {
    /// JSON image metadata (`ImageMeta`).
    pub const META: u32 = 1;
    /// [`super::LayerRec`] array.
    pub const LAYERS: u32 = 2;
    /// [`super::CheckpointRec`] array.
    pub const CHECKPOINTS: u32 = 3;
    /// [`super::ChunkRec`] array.
    pub const CHUNKS: u32 = 4;
    /// Concatenated raw-deflate windows.
    pub const WINDOWS: u32 = 5;
    /// [`super::InodeRec`] array; inode number = index + 1.
    pub const INODES: u32 = 6;
    /// [`super::DirentRec`] array, per directory sorted by name bytes.
    pub const DIRENTS: u32 = 7;
    /// Concatenated names, link targets, xattr names and values, media types.
    pub const STRINGS: u32 = 8;
    /// [`super::XattrRec`] array.
    pub const XATTRS: u32 = 9;
    /// Embedded startup access profile (JSON, [`crate::format::AccessProfile`]); since 2.1.
    pub const PROFILE: u32 = 10;
    /// [`super::SparseFileRec`] array, sorted by inode; since 2.2.
    pub const SPARSE_FILES: u32 = 11;
    /// [`super::SparseSegmentRec`] array: the files' data runs; since 2.2.
    pub const SPARSE_SEGMENTS: u32 = 12;
    /// [`super::FileHintRec`] array, sorted by inode; since 2.3.
    pub const FILE_HINTS: u32 = 16;
    /// Little-endian u32 inode numbers: the files' dependencies; since 2.3.
    pub const HINT_DEPS: u32 = 17;
    /// [`super::HintRangeRec`] array: the files' hot ranges; since 2.3.
    pub const HINT_RANGES: u32 = 18;
    /// One past the largest kind this reader knows.
    pub const END: u32 = 19;
}

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
    /// Number of entries in the section table.
    pub section_count: U32,
    /// Offset of the section table.
    pub section_table: U64,
    /// Total file length (detects truncation).
    pub file_size: U64,
    /// CRC-32 of the header with this field zero.
    pub header_crc: U32,
    /// CRC-32 of the section table.
    pub table_crc: U32,
    /// Zero.
    pub reserved: [u8; 16],
}

/// One entry of the section table.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SectionEntry {
    /// Section kind (see [`kind`]).
    pub kind: U32,
    /// Flags ([`SECTION_ZSTD`]).
    pub flags: U32,
    /// Offset of the stored bytes.
    pub offset: U64,
    /// Length of the stored bytes.
    pub stored_len: U64,
    /// Length once decompressed (== stored_len when not compressed).
    pub raw_len: U64,
    /// CRC-32 of the stored bytes.
    pub crc: U32,
    /// Zero.
    pub reserved: U32,
}

/// One layer.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct LayerRec {
    /// sha256 of the blob.
    pub digest: [u8; 32],
    /// sha256 of the uncompressed tar (diff_id).
    pub diff_id: [u8; 32],
    /// `LayerKind` byte.
    pub kind: u8,
    /// Zero.
    pub pad: [u8; 3],
    /// Verification chunk size.
    pub chunk_size: U32,
    /// Blob size.
    pub compressed_size: U64,
    /// Uncompressed size.
    pub uncompressed_size: U64,
    /// First checkpoint index in CHECKPOINTS.
    pub first_checkpoint: U32,
    /// Number of checkpoints.
    pub checkpoint_count: U32,
    /// First chunk index in CHUNKS.
    pub first_chunk: U32,
    /// Number of chunks.
    pub chunk_count: U32,
    /// Media type: offset in STRINGS.
    pub media_type_off: U32,
    /// Media type: length.
    pub media_type_len: U32,
}

/// One checkpoint.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct CheckpointRec {
    /// Blob offset of the first byte holding bits of the next block.
    pub in_offset: U64,
    /// Uncompressed offset.
    pub out_offset: U64,
    /// Offset of the compressed window in WINDOWS.
    pub window_off: U64,
    /// Stored (compressed) window length.
    pub window_stored_len: U32,
    /// Inflated window length (≤ 32 KiB).
    pub window_len: U32,
    /// Chunk index (relative to the layer's first chunk) where this span starts.
    pub first_chunk: U32,
    /// Unread bits in byte `in_offset - 1` (0..=7).
    pub bits: u8,
    /// Zero.
    pub pad: [u8; 3],
}

/// One verification chunk.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct ChunkRec {
    /// sha256 of the chunk's uncompressed bytes.
    pub digest: [u8; 32],
    /// Blob offset by which the chunk's end was produced (fetch hint).
    pub in_end: U64,
}

/// One inode.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct InodeRec {
    /// `st_mode`: type bits and permission bits.
    pub mode: U32,
    /// Owner.
    pub uid: U32,
    /// Group.
    pub gid: U32,
    /// Link count.
    pub nlink: U32,
    /// Nanoseconds of mtime.
    pub mtime_nsec: U32,
    /// Layer holding the data (`u32::MAX`: none).
    pub data_layer: U32,
    /// Seconds of mtime.
    pub mtime: I64,
    /// Size in bytes.
    pub size: U64,
    /// Offset of the data in the layer's uncompressed stream.
    pub data_offset: U64,
    /// Device major.
    pub rdev_major: U32,
    /// Device minor.
    pub rdev_minor: U32,
    /// Symlink target: offset in STRINGS.
    pub target_off: U32,
    /// Symlink target: length.
    pub target_len: U32,
    /// Directories: first entry in DIRENTS.
    pub dirent_first: U32,
    /// Directories: number of entries.
    pub dirent_count: U32,
    /// First xattr in XATTRS.
    pub xattr_first: U32,
    /// Number of xattrs.
    pub xattr_count: U32,
}

/// One directory entry.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct DirentRec {
    /// Name: offset in STRINGS.
    pub name_off: U32,
    /// Name length.
    pub name_len: U16,
    /// `NodeKind` byte of the target (saves an inode read in readdir).
    pub kind: u8,
    /// Zero.
    pub pad: u8,
    /// Inode number.
    pub ino: U32,
}

/// One extended attribute.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct XattrRec {
    /// Name: offset in STRINGS.
    pub name_off: U32,
    /// Name length.
    pub name_len: U32,
    /// Value: offset in STRINGS.
    pub value_off: U32,
    /// Value length.
    pub value_len: U32,
}

/// Read hints of one file (an ELF program or library): the files a
/// loader opens after it and the ranges of it a loader touches.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct FileHintRec {
    /// Inode number of the file.
    pub ino: U32,
    /// First dependency in HINT_DEPS.
    pub first_dep: U32,
    /// Number of dependencies.
    pub dep_count: U32,
    /// First range in HINT_RANGES.
    pub first_range: U32,
    /// Number of hot ranges.
    pub range_count: U32,
    /// Zero.
    pub reserved: U32,
}

/// A sparse regular file: its run of [`SparseSegmentRec`]s.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SparseFileRec {
    /// Inode number of the file.
    pub ino: U32,
    /// First segment in SPARSE_SEGMENTS.
    pub first_segment: U32,
    /// Number of segments (0: the file is all hole).
    pub segment_count: U32,
    /// Zero.
    pub reserved: U32,
}

/// A byte range of a file.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct HintRangeRec {
    /// Offset in the file.
    pub offset: U64,
    /// Length.
    pub len: U64,
}

/// One data run of a sparse file; the bytes between runs read as zeros.
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned)]
#[repr(C)]
pub struct SparseSegmentRec {
    /// Offset of the run in the file.
    pub file_offset: U64,
    /// Length of the run (> 0).
    pub len: U64,
    /// Offset of its first byte in the data layer's uncompressed stream.
    pub layer_offset: U64,
}

/// Size of the header on disk.
pub const HEADER_SIZE: usize = 64;

// Layouts are part of the file format: a reordered field is a format change.
const _: () = {
    use std::mem::{offset_of, size_of};
    assert!(size_of::<Header>() == HEADER_SIZE);
    assert!(offset_of!(Header, section_table) == 24);
    assert!(offset_of!(Header, header_crc) == 40);
    assert!(size_of::<SectionEntry>() == 40);
    assert!(size_of::<LayerRec>() == 112);
    assert!(size_of::<CheckpointRec>() == 40);
    assert!(offset_of!(CheckpointRec, bits) == 36);
    assert!(size_of::<ChunkRec>() == 40);
    assert!(size_of::<InodeRec>() == 80);
    assert!(offset_of!(InodeRec, mtime) == 24);
    assert!(size_of::<DirentRec>() == 12);
    assert!(size_of::<XattrRec>() == 16);
    assert!(size_of::<FileHintRec>() == 24);
    assert!(offset_of!(FileHintRec, range_count) == 16);
    assert!(size_of::<HintRangeRec>() == 16);
    assert!(size_of::<SparseFileRec>() == 16);
    assert!(size_of::<SparseSegmentRec>() == 24);
    assert!(offset_of!(SparseSegmentRec, layer_offset) == 16);
};
