//! Moving file bytes from the [`ContentReader`] into the kernel reply.
//!
//! fuse-backend-rs builds the READ reply in the channel's buffer: a 16-byte
//! `fuse_out_header`, then the data. Anything written through
//! `io::Write` is `memcpy`'d to buffer+16. On this machine's CPU a `memcpy`
//! whose source and destination differ in alignment mod 64 runs ~10x slower
//! (glibc `rep movsb`; see BENCHMARKS.md and `GLIBC_TUNABLES` in
//! `mount/spawn.rs`), so a "read into my aligned buffer, then `write_all`"
//! path pays one fast copy plus one slow one. [`copy_direct`] instead hands the reader the reply buffer itself
//! (through `ZeroCopyWriter::write_from`), so there is exactly one copy, from
//! the cache into the reply. Measured against a read-into-aligned-buffer-then-copy
//! path (removed): 1.3–1.7 GB/s vs 0.5–1.6 GB/s; see BENCHMARKS.md.
//!
//! This is the one unsafe room of `fuse`: turning the writer's
//! `FileVolatileSlice` into the `&mut [u8]` the reader wants. The same path
//! serves both FUSE transports: over io_uring the reply buffer is the ring
//! entry's payload buffer, so the one copy goes straight to where the kernel
//! reads it.
#![allow(unsafe_code)]

use std::io;

use fuse_backend_rs::api::filesystem::ZeroCopyWriter;
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

use super::FsError;
use crate::cache::ContentReader;

/// A layer's uncompressed stream seen as a read-only "file" by the writer.
struct LayerFile<'a> {
    content: &'a dyn ContentReader,
    ino: u64,
    layer: u32,
    /// The reader's error, kept typed (the trait only carries `io::Error`).
    failed: Option<FsError>,
}

impl LayerFile<'_> {
    fn read_into(&mut self, slice: FileVolatileSlice<'_>, offset: u64) -> io::Result<usize> {
        // SAFETY: `slice` was made by fuse-backend-rs's reply writer after it
        // checked the capacity (`check_available_space(count)`): by
        // `FuseDevWriter::write_from_at` from the unused tail of the
        // `/dev/fuse` channel's buffer, or by `VirtioFsWriter::write_from_at`
        // from the writable descriptor naming an io_uring entry's payload
        // buffer (anonymous memory of this process, mapped for the life of
        // the queue: `mount/transport/uring/entries.rs`). Either way
        // `as_ptr()..+len()` is valid, writable memory of this process. The
        // writer is mutably borrowed for the whole call and nothing else
        // reads or writes that region until we return (the kernel writes an
        // entry's buffers only while the entry waits for a request, not while
        // its request is being served), so a unique `&mut [u8]` over it is
        // sound for this scope. The bytes are initialised `u8`s (zero-filled
        // at allocation or written before).
        let buf = unsafe { std::slice::from_raw_parts_mut(slice.as_ptr(), slice.len()) };
        match self.content.read(self.layer, offset, buf) {
            Ok(n) => Ok(n),
            Err(source) => {
                let e = FsError::Content {
                    ino: self.ino,
                    layer: self.layer,
                    offset,
                    source,
                };
                let io = io::Error::from_raw_os_error(e.errno());
                self.failed = Some(e);
                Err(io)
            }
        }
    }
}

impl FileReadWriteVolatile for LayerFile<'_> {
    fn read_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(FsError::NotPositional.into())
    }
    fn write_volatile(&mut self, _slice: FileVolatileSlice) -> io::Result<usize> {
        Err(FsError::ReadOnly.into())
    }
    fn read_at_volatile(&mut self, slice: FileVolatileSlice, offset: u64) -> io::Result<usize> {
        self.read_into(slice, offset)
    }
    fn write_at_volatile(&mut self, _slice: FileVolatileSlice, _offset: u64) -> io::Result<usize> {
        Err(FsError::ReadOnly.into())
    }
}

/// One copy: the reader writes into the reply buffer.
pub(super) fn copy_direct(
    content: &dyn ContentReader,
    ino: u64,
    layer: u32,
    start: u64,
    len: usize,
    w: &mut dyn ZeroCopyWriter,
) -> Result<(), FsError> {
    let mut src = LayerFile {
        content,
        ino,
        layer,
        failed: None,
    };
    let mut done = 0usize;
    while done < len {
        let off = start + done as u64;
        match w.write_from(&mut src, len - done, off) {
            Ok(0) => {
                return Err(FsError::ShortLayer {
                    ino,
                    layer,
                    offset: off,
                })
            }
            Ok(n) => done += n,
            Err(e) => return Err(src.failed.take().unwrap_or(FsError::Reply(e))),
        }
    }
    Ok(())
}

/// Writes `len` zeros (a sparse file's hole) into the reply.
pub(super) fn write_zeros(w: &mut dyn ZeroCopyWriter, mut len: usize) -> Result<(), FsError> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while len > 0 {
        let n = len.min(ZEROS.len());
        w.write_all(&ZEROS[..n]).map_err(FsError::Reply)?;
        len -= n;
    }
    Ok(())
}

/// An all-zero `statvfs64` (libc offers no safe constructor; it has private
/// padding fields).
pub(super) fn zeroed_statvfs() -> libc::statvfs64 {
    // SAFETY: `statvfs64` is a C struct of integers and integer arrays, for
    // which the all-zero bit pattern is a valid value.
    unsafe { std::mem::zeroed() }
}

/// A reply buffer for unit tests: what `read` wrote, in memory.
#[cfg(test)]
#[derive(Debug, Default)]
pub(super) struct VecWriter(pub Vec<u8>);

#[cfg(test)]
impl io::Write for VecWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl ZeroCopyWriter for VecWriter {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        let mut buf = vec![0u8; count];
        // SAFETY: `buf` is a live, writable allocation of `count` bytes that
        // nothing else touches until the slice is dropped at the end of this
        // call.
        let slice = unsafe { FileVolatileSlice::from_raw_ptr(buf.as_mut_ptr(), count) };
        let n = f.read_at_volatile(slice, off)?;
        self.0.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn available_bytes(&self) -> usize {
        usize::MAX
    }
}
