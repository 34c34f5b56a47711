//! Invariants under test (checks in `fuzz/src/invariants.rs`, `tar_entries`):
//! - the tar reader never panics, hangs or allocates without bound on any
//!   input, as given or with every block's header checksum repaired;
//! - every entry it delivers has a normalised path (no leading/trailing `/`,
//!   no empty, `.` or `..` component, no NUL; empty only for the root dir),
//!   block-aligned data offsets in stream order, size 0 unless a file, a link
//!   target only for links, sorted unique xattrs, nanoseconds < 1e9, and a
//!   sparse map only on a file, its runs non-empty, sorted, disjoint, inside
//!   its size and stored back to back from `data_offset`;
//! - an accepted stream was drained to EOF (the return value is its length)
//!   and every entry's stored data (`size` bytes, or a sparse file's runs)
//!   lies inside it;
//! - round trip: a ustar/PAX archive generated from the input (long paths and
//!   link targets, fractional mtimes, xattrs, hard links, sparse files in
//!   the old-GNU, PAX 0.0, 0.1 and 1.0 dialects) reads back as exactly the
//!   entries written, with the file bytes (or runs) at `data_offset`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clip_fuzz::invariants::tar_entries(data));
