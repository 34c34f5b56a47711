//! Opening an archive over any [`ObjectRead`]: one range read of the head
//! (header + embedded index, a second read only for a very large index),
//! every field checked before use, the embedded index verified by the
//! `format` reader, and the data layer's records checked against the data
//! section, so later readers (extract, the cache) can trust the geometry.

use std::ops::Range;
use std::sync::Arc;

use zerocopy::{FromBytes, IntoBytes};

use super::raw::{self, Header};
use super::ArchiveError;
use crate::format::{Index, LayerKind};
use crate::object::{ObjectRead, SlicedSource};

/// Bytes read at once when opening: header plus, usually, the whole index.
const HEAD_READ: u64 = 256 << 10;
/// Largest embedded index accepted (the index reader's own cap is 4 GiB).
const MAX_INDEX: u64 = 1 << 30;

/// What a file's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A metadata-only `.clip` index (`CLIPIDX\0`).
    Index,
    /// A `.clip` archive (`CLIPARC\0`).
    Archive,
    /// Neither.
    Other,
}

/// The kind of `.clip` file whose first 8 bytes are `head`.
pub fn sniff(head: &[u8]) -> FileKind {
    match head.get(..8) {
        Some(m) if m == raw::MAGIC => FileKind::Archive,
        Some(m) if m == b"CLIPIDX\0" => FileKind::Index,
        _ => FileKind::Other,
    }
}

/// An opened archive: header checked, embedded index verified.
#[derive(Debug, Clone)]
pub struct Archive {
    object: Arc<dyn ObjectRead>,
    index: Arc<Index>,
    index_range: Range<u64>,
    data: Range<u64>,
}

fn corrupt(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Corrupt(what.into())
}

impl Archive {
    /// Opens the archive `object` holds.
    pub fn open(object: Arc<dyn ObjectRead>) -> Result<Self, ArchiveError> {
        let len = object.len();
        let mut head = vec![0u8; len.min(HEAD_READ) as usize];
        object.read_exact_at(0, &mut head)?;
        match sniff(&head) {
            FileKind::Archive => {}
            FileKind::Index => return Err(ArchiveError::IsIndex),
            FileKind::Other => return Err(ArchiveError::NotAnArchive),
        }
        let header = head
            .get(..raw::HEADER_SIZE)
            .and_then(|h| Header::read_from_bytes(h).ok())
            .ok_or(ArchiveError::Truncated {
                expected: raw::HEADER_SIZE as u64,
                actual: len,
            })?;
        if header.major.get() != raw::MAJOR {
            return Err(ArchiveError::UnsupportedVersion {
                major: header.major.get(),
                minor: header.minor.get(),
            });
        }
        let mut zeroed = header;
        zeroed.header_crc = 0.into();
        if crc32fast::hash(zeroed.as_bytes()) != header.header_crc.get() {
            return Err(corrupt("checksum mismatch in the header"));
        }
        let unknown = header.incompat.get() & !raw::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(ArchiveError::UnknownFeatures(unknown));
        }
        let expected = header.file_size.get();
        if expected != len {
            return Err(ArchiveError::Truncated {
                expected,
                actual: len,
            });
        }
        let index_start = header.index_offset.get();
        let index_end = index_start
            .checked_add(header.index_len.get())
            .ok_or_else(|| corrupt("index range overflows"))?;
        let data_start = header.data_offset.get();
        let data_end = data_start
            .checked_add(header.data_len.get())
            .ok_or_else(|| corrupt("data range overflows"))?;
        if index_start < raw::HEADER_SIZE as u64
            || index_end > data_start
            || data_end != expected
            || data_start - index_end > MAX_INDEX
            || header.index_len.get() > MAX_INDEX
        {
            return Err(corrupt("header ranges are inconsistent"));
        }
        // The index and the zero padding after it, usually inside the head read.
        let front = if data_start <= head.len() as u64 {
            head[index_start as usize..data_start as usize].to_vec()
        } else {
            let mut buf = vec![0u8; (data_start - index_start) as usize];
            object.read_exact_at(index_start, &mut buf)?;
            buf
        };
        let (index_bytes, padding) = front.split_at((index_end - index_start) as usize);
        if padding.iter().any(|&b| b != 0) {
            return Err(corrupt("non-zero bytes between the index and the data"));
        }
        let index_bytes = index_bytes.to_vec();
        let index = Index::from_bytes(index_bytes)?;
        let archive = Archive {
            object,
            index: Arc::new(index),
            index_range: index_start..index_end,
            data: data_start..data_end,
        };
        archive.check_data_layer()?;
        Ok(archive)
    }

    /// The one data layer must describe exactly the data section: frames
    /// ascending from 0, chunk fetch hints inside the section.
    fn check_data_layer(&self) -> Result<(), ArchiveError> {
        if self.index.layer_count() != 1 {
            return Err(corrupt("an archive has exactly one data layer"));
        }
        let layer = self.index.layer(0)?;
        let stored = self.data.end - self.data.start;
        if layer.kind() != LayerKind::ZstdFrames || layer.compressed_size() != stored {
            return Err(corrupt("data layer does not describe the data section"));
        }
        let n = layer.checkpoint_count();
        let (mut prev_in, mut prev_out) = (0u64, 0u64);
        for i in 0..n {
            let cp = layer.checkpoint(i)?;
            let first = i == 0 && (cp.in_offset != 0 || cp.out_offset != 0);
            let later = i > 0 && (cp.in_offset <= prev_in || cp.out_offset <= prev_out);
            if first || later || cp.bits != 0 || cp.window_len != 0 {
                return Err(corrupt("data frames are not ascending from offset 0"));
            }
            if cp.in_offset >= stored.max(1) || cp.out_offset > layer.uncompressed_size() {
                return Err(corrupt("data frame outside the data section"));
            }
            (prev_in, prev_out) = (cp.in_offset, cp.out_offset);
        }
        if n == 0
            || (0..layer.chunk_count()).any(|c| layer.chunk(c).is_none_or(|c| c.in_end > stored))
        {
            return Err(corrupt("data chunks outside the data section"));
        }
        Ok(())
    }

    /// The verified embedded index.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The object the archive is read from.
    pub fn object(&self) -> &Arc<dyn ObjectRead> {
        &self.object
    }

    /// Byte range of the embedded index in the object.
    pub fn index_range(&self) -> Range<u64> {
        self.index_range.clone()
    }

    /// Byte range of the data section in the object.
    pub fn data_range(&self) -> Range<u64> {
        self.data.clone()
    }

    /// Serves the data layer's blob (the data section) by its digest, for a
    /// `cache::ContentCache` over [`Archive::index`].
    pub fn blob_source(&self) -> Result<SlicedSource, ArchiveError> {
        let digest = self.index.layer(0)?.digest();
        Ok(SlicedSource::new(self.object.clone()).with_blob(digest, self.data_range()))
    }
}
