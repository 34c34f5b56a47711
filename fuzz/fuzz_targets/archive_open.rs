//! Invariants under test (checks in `fuzz/src/archive_invariants.rs`):
//! - `Archive::open` over an in-memory object never panics and never
//!   allocates from an unchecked length, whatever the bytes — as given and
//!   with the header (magic, version, sizes, CRC) and the embedded index's
//!   CRCs repaired, so mutations reach the structural checks;
//! - on an accepted archive: one data layer, the index and data ranges
//!   inside the object; every file read lazily through the chunk cache
//!   returns bytes or an error, never more than asked;
//! - extracting it into an empty directory succeeds or fails with an error,
//!   and writes nothing beside that directory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clip_fuzz::archive_invariants::archive_open(data));
