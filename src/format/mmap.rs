//! The one unsafe room of `format`: mapping an index file read-only.
#![allow(unsafe_code)]

use std::fs::File;

use memmap2::Mmap;

/// Maps `file` read-only.
pub(super) fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the mapping is read-only and private to this process. Index
    // files are only ever replaced by rename (format::write_index_file), never
    // rewritten in place, so the mapped bytes do not change under us; every
    // access through the mapping is bounds-checked by the reader.
    unsafe { Mmap::map(file) }
}
