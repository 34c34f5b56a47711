//! Sparse files in the index (SPARSE_FILES, SPARSE_SEGMENTS; docs/format.md
//! §3.9): the checks done once at open, and the views the read path uses —
//! which parts of a byte range are data (and where in the layer) and which
//! are holes, and where the next data or hole starts (`SEEK_DATA`,
//! `SEEK_HOLE`).

use super::raw::{self, kind, InodeRec, LayerRec, SparseFileRec, SparseSegmentRec};
use super::reader::{records, InodeView};
use super::{FormatError, Index, NodeKind};

/// Where one piece of a file's byte range comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Piece {
    /// `len` bytes of the data layer's uncompressed stream from `layer_offset`.
    Data {
        /// Offset in the layer's uncompressed stream.
        layer_offset: u64,
        /// Length.
        len: u64,
    },
    /// `len` bytes of zeros.
    Hole {
        /// Length.
        len: u64,
    },
}

/// The pieces of a byte range of a file, in file order
/// ([`InodeView::pieces`]).
#[derive(Debug, Clone)]
pub struct Pieces<'a> {
    /// Data runs from the first one ending after `pos` (empty for a plain
    /// file).
    segments: &'a [SparseSegmentRec],
    /// `Some(data_offset)` for a plain file: one contiguous run.
    plain: Option<u64>,
    pos: u64,
    end: u64,
}

impl Iterator for Pieces<'_> {
    type Item = Piece;

    fn next(&mut self) -> Option<Piece> {
        if self.pos >= self.end {
            return None;
        }
        let pos = self.pos;
        let piece = match (self.plain, self.segments.first()) {
            (Some(base), _) => Piece::Data {
                layer_offset: base + pos,
                len: self.end - pos,
            },
            (None, Some(s)) if s.file_offset.get() <= pos => {
                let seg_end = s.file_offset.get() + s.len.get();
                if seg_end <= self.end {
                    self.segments = &self.segments[1..];
                }
                Piece::Data {
                    layer_offset: s.layer_offset.get() + (pos - s.file_offset.get()),
                    len: seg_end.min(self.end) - pos,
                }
            }
            (None, Some(s)) => Piece::Hole {
                len: s.file_offset.get().min(self.end) - pos,
            },
            (None, None) => Piece::Hole {
                len: self.end - pos,
            },
        };
        self.pos += match piece {
            Piece::Data { len, .. } | Piece::Hole { len } => len,
        };
        Some(piece)
    }
}

impl Index {
    /// The data runs of sparse file `ino`, `None` if it is not sparse.
    fn sparse_segments(&self, ino: u64) -> Result<Option<&[SparseSegmentRec]>, FormatError> {
        let files: &[SparseFileRec] = records(self.section(kind::SPARSE_FILES), "sparse files")?;
        let Ok(i) = files.binary_search_by_key(&ino, |f| u64::from(f.ino.get())) else {
            return Ok(None);
        };
        let segments: &[SparseSegmentRec] =
            records(self.section(kind::SPARSE_SEGMENTS), "sparse segments")?;
        let f = &files[i];
        let first = f.first_segment.get() as usize;
        segments
            .get(first..first.saturating_add(f.segment_count.get() as usize))
            .map(Some)
            .ok_or(FormatError::Corrupt("sparse segments out of bounds"))
    }

    /// Checks the sparse sections once, at open: files sorted by inode, each
    /// a regular file whose runs are in bounds, non-empty, sorted, disjoint,
    /// inside its size and inside its data layer. `incompat` is the header's
    /// feature bits.
    pub(super) fn validate_sparse(
        &self,
        incompat: u32,
        inodes: &[InodeRec],
        layers: &[LayerRec],
    ) -> Result<(), FormatError> {
        let corrupt = FormatError::Corrupt;
        let files: &[SparseFileRec] = records(self.section(kind::SPARSE_FILES), "sparse files")?;
        let segments: &[SparseSegmentRec] =
            records(self.section(kind::SPARSE_SEGMENTS), "sparse segments")?;
        if !files.is_empty() && incompat & raw::INCOMPAT_SPARSE == 0 {
            return Err(corrupt("sparse files without the sparse feature bit"));
        }
        let mut prev_ino = 0u32;
        for f in files {
            let ino = f.ino.get();
            if ino <= prev_ino {
                return Err(corrupt("sparse files not sorted by inode"));
            }
            prev_ino = ino;
            let inode = inodes
                .get(ino as usize - 1)
                .filter(|i| i.mode.get() & 0o170000 == NodeKind::File.type_bits())
                .ok_or(corrupt("sparse file record names no regular file"))?;
            let first = f.first_segment.get() as usize;
            let run = segments
                .get(first..first + f.segment_count.get() as usize)
                .ok_or(corrupt("sparse segments out of bounds"))?;
            if run.is_empty() {
                if inode.data_layer.get() != u32::MAX {
                    return Err(corrupt("all-hole sparse file with a data layer"));
                }
                continue;
            }
            let layer_size = layers
                .get(inode.data_layer.get() as usize)
                .ok_or(corrupt("sparse file without a data layer"))?
                .uncompressed_size
                .get();
            let mut prev_end = 0u64;
            for s in run {
                let end = s.file_offset.get().checked_add(s.len.get());
                let layer_end = s.layer_offset.get().checked_add(s.len.get());
                if s.len.get() == 0
                    || s.file_offset.get() < prev_end
                    || end.is_none_or(|e| e > inode.size.get())
                    || layer_end.is_none_or(|e| e > layer_size)
                {
                    return Err(corrupt("sparse segment out of order or out of bounds"));
                }
                prev_end = end.unwrap_or(u64::MAX);
            }
        }
        Ok(())
    }
}

impl<'a> InodeView<'a> {
    fn segments(&self) -> Result<Option<&'a [SparseSegmentRec]>, FormatError> {
        self.index.sparse_segments(self.ino)
    }

    /// Whether the file is sparse (reads as zeros outside its data runs).
    pub fn is_sparse(&self) -> bool {
        matches!(self.segments(), Ok(Some(_)))
    }

    /// Bytes of the file that are data, not holes (its size unless sparse).
    pub fn allocated_size(&self) -> u64 {
        match self.segments() {
            Ok(Some(segs)) => segs.iter().map(|s| s.len.get()).sum(),
            _ => self.size(),
        }
    }

    /// Where the bytes `[offset, offset + len)` of a regular file come from
    /// (the range is clamped to the file's size).
    pub fn pieces(&self, offset: u64, len: u64) -> Result<Pieces<'a>, FormatError> {
        let end = offset.saturating_add(len).min(self.size());
        let (segments, plain) = match self.segments()? {
            Some(segs) => {
                let skip = segs.partition_point(|s| s.file_offset.get() + s.len.get() <= offset);
                (&segs[skip..], None)
            }
            None if offset >= end => (&[][..], None),
            None => {
                let (_, data_offset) = self.data().ok_or(FormatError::Corrupt(
                    "regular file with bytes but no data reference",
                ))?;
                (&[][..], Some(data_offset))
            }
        };
        Ok(Pieces {
            segments,
            plain,
            pos: offset,
            end,
        })
    }

    /// `SEEK_DATA`: the first data byte at or after `offset`, `None` if
    /// there is none (a hole runs to the end, or `offset` is past it).
    pub fn seek_data(&self, offset: u64) -> Result<Option<u64>, FormatError> {
        if offset >= self.size() {
            return Ok(None);
        }
        let Some(segs) = self.segments()? else {
            return Ok(Some(offset));
        };
        let i = segs.partition_point(|s| s.file_offset.get() + s.len.get() <= offset);
        Ok(segs.get(i).map(|s| s.file_offset.get().max(offset)))
    }

    /// `SEEK_HOLE`: the first hole byte at or after `offset` (the end of the
    /// file counts as a hole), `None` if `offset` is past the end.
    pub fn seek_hole(&self, offset: u64) -> Result<Option<u64>, FormatError> {
        if offset >= self.size() {
            return Ok(None);
        }
        let Some(segs) = self.segments()? else {
            return Ok(Some(self.size()));
        };
        let mut pos = offset;
        let i = segs.partition_point(|s| s.file_offset.get() + s.len.get() <= offset);
        for s in &segs[i..] {
            if s.file_offset.get() > pos {
                break;
            }
            pos = s.file_offset.get() + s.len.get();
        }
        Ok(Some(pos))
    }
}
