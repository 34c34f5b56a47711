//! Invariants under test (checks in `fuzz/src/read_invariants.rs`):
//! - a hostile index (as given, and with every CRC repaired so mutations
//!   reach the semantics) over a fixed image of gzip, tar and zstd layers
//!   held in memory: building the content cache and `ClipFs`, first-start
//!   warming, a walk of the tree (readdirplus, lookup, getattr, readlink,
//!   whole-file reads) and a script of arbitrary lookups, readdirs,
//!   getattrs, reads, readlinks, lseeks and xattr calls on arbitrary inodes
//!   never panic;
//! - every successful READ returns exactly the bytes asked for (clamped to
//!   the file size), never more than the reply holds, and each of them is
//!   the layer's true uncompressed byte at the offset the index names, or a
//!   zero in a hole: a hostile index may make reads fail, never serve
//!   bytes that are not the layer's verified bytes;
//! - no single allocation is over 256 MiB (checked by the allocator below:
//!   with `--sanitizer none` libFuzzer's own malloc limit is not active).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

use libfuzzer_sys::fuzz_target;

/// The system allocator, aborting (a crash libFuzzer records) on any single
/// request above `MAX_ALLOC`: an allocation sized from a hostile length.
struct Capped;

const MAX_ALLOC: usize = 256 << 20;

fn too_big() -> ! {
    let _ = std::io::stderr().write_all(b"fuse_read: an allocation over 256 MiB\n");
    std::process::abort()
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged (so `System`'s guarantees hold), after a size check that aborts
// without allocating or unwinding.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_big()
        }
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_ALLOC {
            too_big()
        }
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_ALLOC {
            too_big()
        }
        // SAFETY: forwarded unchanged (see the impl).
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Capped = Capped;

fuzz_target!(|data: &[u8]| clip_fuzz::read_invariants::fuse_read(data));
