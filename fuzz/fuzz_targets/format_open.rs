//! Invariants under test (checks in `fuzz/src/invariants.rs`, `format_open`):
//! - `Index::from_bytes` never panics and never allocates from an unchecked
//!   length (a zstd section's declared size is checked against its frame and
//!   the format's ratio first), whatever the bytes — both as given and with
//!   magic, version, size and every CRC repaired (so mutations reach the
//!   structural checks);
//! - on an accepted file: inode 1 is a directory, `inode(i)` succeeds exactly
//!   for `1..=inode_count()`, readdir cookies count up and resume at the same
//!   entry, non-directories refuse readdir/lookup, layer/checkpoint accessors
//!   stay in range, a checkpoint's (hostile) window is refused by
//!   `SpanDecoder::new` rather than crashing it, and every regular file's
//!   pieces (data runs and holes) tile any range of it exactly, a sparse
//!   file's data pieces lie inside its layer and SEEK_DATA/SEEK_HOLE agree;
//! - round trip: an `IndexData` generated from the input is accepted by
//!   `write_index` (plain and zstd sections, sparse files among the nodes),
//!   reads back field for field (a sparse file piece by piece),
//!   and every directory entry of the written file resolves (lookup and
//!   `inode`) to a valid inode of the advertised kind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clip_fuzz::invariants::format_open(data));
