//! The store's table file: a header and one [`Record`] per slot, mapped
//! shared by every daemon of the node. NB: documented in docs/store.md;
//! change both in one commit.
//!
//! Records are made of atomics: they live in memory that other processes
//! change while this one reads, so every field is read and written with
//! atomic operations (and any bit pattern, even one a damaged file holds,
//! is a valid value). The header is read once, with `pread`, and validated.

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `CLIPSTOR` as a little-endian u64.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"CLIPSTOR");
/// Table layout version.
pub(super) const VERSION: u32 = 1;
/// Bytes before the first record.
pub(super) const HEADER_BYTES: usize = 4096;
/// Checksummed unit of a slot.
pub(super) const PAGE: usize = 4096;
/// Bytes of a slot: the index's default chunk size (`index::DEFAULT_CHUNK`,
/// 256 KiB; larger chunks are not stored). The cache may not name the
/// index builder (module layering), so the value is written out.
pub(super) const SLOT_BYTES: usize = 256 << 10;
/// Pages (and so page checksums) per slot.
pub(super) const SLOT_PAGES: usize = SLOT_BYTES / PAGE;

/// The table file's header (the first bytes of its first page).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub(super) struct Header {
    /// [`MAGIC`].
    pub magic: U64,
    /// [`VERSION`].
    pub version: U32,
    /// [`SLOT_BYTES`] when created.
    pub slot_bytes: U32,
    /// Slots in the store (a multiple of `ways`).
    pub slots: U32,
    /// Slots per set.
    pub ways: U32,
    /// Slots per slab file (the last may hold fewer).
    pub slab_slots: U32,
    /// Zero.
    pub reserved: U32,
}

const _: () = {
    assert!(size_of::<Header>() == 32);
    assert!(offset_of!(Header, slots) == 16);
    assert!(offset_of!(Header, slab_slots) == 24);
};

/// One slot's record. `gen` is a sequence number: odd while a writer
/// changes the slot, even when stable; a record holds a chunk when `gen`
/// is even and `len` is not 0.
#[repr(C)]
#[derive(Debug)]
pub(super) struct Record {
    /// Sequence number (odd: being written).
    pub gen: AtomicU32,
    /// Bytes of the chunk in the slot (0: empty).
    pub len: AtomicU32,
    /// sha256 of the chunk.
    pub digest: [AtomicU64; 4],
    /// CLOCK reference bit (set by readers, cleared by the hand).
    pub referenced: AtomicU32,
    /// The set's CLOCK hand (meaningful in a set's first record only).
    pub hand: AtomicU32,
    /// crc32 of each page of the chunk (the last may be partial).
    pub crc: [AtomicU32; SLOT_PAGES],
    /// Zero.
    pub reserved: [AtomicU32; 4],
}

/// Bytes of a record.
pub(super) const RECORD_BYTES: usize = 320;

const _: () = {
    assert!(size_of::<Record>() == RECORD_BYTES);
    assert!(offset_of!(Record, digest) == 8);
    assert!(offset_of!(Record, referenced) == 40);
    assert!(offset_of!(Record, crc) == 48);
    assert!(RECORD_BYTES.is_multiple_of(8) && HEADER_BYTES.is_multiple_of(8));
};

impl Record {
    /// Whether the record names chunk `digest` of `len` bytes.
    pub(super) fn names(&self, digest: &[u64; 4], len: u32) -> bool {
        self.len.load(Ordering::Relaxed) == len
            && self
                .digest
                .iter()
                .zip(digest)
                .all(|(a, b)| a.load(Ordering::Relaxed) == *b)
    }
}

/// A digest as the four words a record stores.
pub(super) fn digest_words(d: &crate::Digest) -> [u64; 4] {
    let b = d.as_bytes();
    std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap()))
}

/// Bytes of the table file of a store of `slots` slots.
pub(super) fn table_bytes(slots: usize) -> usize {
    HEADER_BYTES + slots * RECORD_BYTES
}
