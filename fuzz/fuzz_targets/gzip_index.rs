//! Invariants under test (differential; checks in `fuzz/src/invariants.rs`,
//! `gzip_index`). Inputs starting with the gzip magic are used as blobs;
//! others are gzipped first (1–4 members, level 0/1/6/9, optional zero
//! padding, several span/chunk sizes) so valid streams are explored too.
//! - `ZranReader` never panics; on a stream flate2 produced it succeeds and
//!   yields exactly the payload;
//! - whenever both succeed, it yields exactly what flate2's sequential
//!   `MultiGzDecoder` yields;
//! - its index is consistent: sizes equal the blob and output lengths,
//!   checkpoints start at 0 and ascend, fields are in range, `first_chunk`
//!   numbers and chunk digests equal sha256 of each span cut into
//!   `chunk_size` pieces;
//! - `read_range` from every checkpoint (and mid-span) returns the same bytes
//!   as the sequential decode, short only at the end of the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| clip_fuzz::invariants::gzip_index(data));
