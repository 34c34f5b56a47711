//! Invariants under test (checks in `fuzz/src/invariants.rs`, `format_open`):
//! - `Index::from_bytes` never panics and never allocates from an unchecked
//!   length, whatever the bytes — both as given and with magic, version,
//!   size and every CRC repaired (so mutations reach the structural checks);
//! - on an accepted file: inode 1 is a directory, `inode(i)` succeeds exactly
//!   for `1..=inode_count()`, readdir cookies count up and resume at the same
//!   entry, non-directories refuse readdir/lookup, layer/checkpoint accessors
//!   stay in range, and a checkpoint's (hostile) window is refused by
//!   `SpanDecoder::new` rather than crashing it;
//! - round trip: an `IndexData` generated from the input is accepted by
//!   `write_index` (plain and zstd sections), reads back field for field,
//!   and every directory entry of the written file resolves (lookup and
//!   `inode`) to a valid inode of the advertised kind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clip_fuzz::invariants::format_open(data));
