//! Per-layer geometry, computed once when the cache is built: span bounds and
//! the first chunk of each span, so the hit path maps an offset to a chunk
//! without touching checkpoint windows.

use std::ops::Range;
use std::sync::Mutex;

use super::disk::SlotHint;
use crate::digest::Digest;
use crate::format::{LayerKind, LayerView};

/// One span: `[start, end)` uncompressed, chunks from `first_chunk`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpanInfo {
    pub start: u64,
    pub end: u64,
    pub first_chunk: u32,
}

/// Geometry and single-flight locks of one layer.
#[derive(Debug)]
pub(crate) struct LayerPlan {
    pub number: u32,
    pub digest: Digest,
    pub kind: LayerKind,
    pub compressed_size: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub spans: Vec<SpanInfo>,
    /// One lock per span: holders fill the span, others wait (single-flight).
    /// It holds the GETs a prefetch thread made in its last hold of the lock:
    /// a reader that had to wait for the lock waited for those GETs.
    pub locks: Vec<Mutex<u32>>,
    /// Why the layer cannot be served, if its index entry is inconsistent.
    pub broken: Option<String>,
    /// Per chunk, the node store's slot and `gen` where this process last
    /// served it from (`disk::SlotHint`; 0: none): while that slot keeps
    /// that `gen` and names the chunk, the store's hit path probes no
    /// other slot. The bytes are checked as on any read.
    pub disk_slots: Box<[SlotHint]>,
}

impl LayerPlan {
    /// Derives the geometry from the index (spans are cut into chunks from
    /// their start, so chunk numbers follow from span lengths).
    pub fn new(l: &LayerView<'_>) -> Self {
        let size = l.uncompressed_size();
        let chunk_size = u64::from(l.chunk_size());
        let mut spans = Vec::new();
        let mut broken = None;
        let mut next_chunk: u64 = 0;
        let n = l.checkpoint_count();
        let ranges: Vec<Range<u64>> = if n == 0 {
            std::iter::once(0..size).collect()
        } else {
            (0..n).filter_map(|i| l.span_range(i)).collect()
        };
        if ranges.len() != n.max(1) as usize || ranges.first().map(|r| r.start) != Some(0) {
            broken = Some("checkpoints are not ascending from offset 0".to_string());
        }
        if chunk_size == 0 && size > 0 {
            broken = Some("chunk size is 0".to_string());
        }
        for r in &ranges {
            spans.push(SpanInfo {
                start: r.start,
                end: r.end,
                first_chunk: next_chunk.min(u32::MAX as u64) as u32,
            });
            if chunk_size > 0 {
                next_chunk += (r.end - r.start).div_ceil(chunk_size);
            }
        }
        if broken.is_none() && next_chunk != u64::from(l.chunk_count()) {
            broken = Some(format!(
                "index lists {} chunks, spans imply {next_chunk}",
                l.chunk_count()
            ));
        }
        if broken.is_none() && l.kind() == LayerKind::Tar && l.compressed_size() < size {
            broken = Some("uncompressed layer blob is shorter than its content".to_string());
        }
        let locks = (0..spans.len()).map(|_| Mutex::new(0)).collect();
        let disk_slots = match broken {
            None => (0..next_chunk).map(|_| SlotHint::new(0)).collect(),
            Some(_) => Box::default(),
        };
        LayerPlan {
            number: l.number(),
            digest: l.digest(),
            kind: l.kind(),
            compressed_size: l.compressed_size(),
            size,
            chunk_size,
            spans,
            locks,
            broken,
            disk_slots,
        }
    }

    /// A layer the index could not describe; every read fails with `why`.
    pub fn broken(number: u32, why: String) -> Self {
        LayerPlan {
            number,
            digest: Digest::from_bytes([0; 32]),
            kind: LayerKind::Tar,
            compressed_size: 0,
            size: 0,
            chunk_size: 0,
            spans: Vec::new(),
            locks: Vec::new(),
            broken: Some(why),
            disk_slots: Box::default(),
        }
    }

    /// Span containing uncompressed offset `off` (< size).
    pub fn span_of(&self, off: u64) -> usize {
        self.spans
            .partition_point(|s| s.start <= off)
            .saturating_sub(1)
    }

    /// `(span, chunk)` containing `off` (< size).
    pub fn chunk_at(&self, off: u64) -> (usize, u32) {
        let s = self.span_of(off);
        let sp = &self.spans[s];
        (
            s,
            sp.first_chunk + ((off - sp.start) / self.chunk_size) as u32,
        )
    }

    /// Uncompressed range of `chunk`, which lies in span `s`.
    pub fn chunk_range(&self, s: usize, chunk: u32) -> Range<u64> {
        let sp = &self.spans[s];
        let start = sp.start + u64::from(chunk - sp.first_chunk) * self.chunk_size;
        start..(start + self.chunk_size).min(sp.end)
    }

    /// Uncompressed range of `chunk` (any span); `None` past the last chunk.
    pub fn chunk_range_of(&self, chunk: u32) -> Option<Range<u64>> {
        let s = self
            .spans
            .partition_point(|sp| sp.first_chunk <= chunk)
            .checked_sub(1)?;
        let r = self.chunk_range(s, chunk);
        (r.start < self.spans[s].end).then_some(r)
    }

    /// Index of the single-flight lock guarding span `s`.
    pub fn lock_for(&self, s: usize) -> usize {
        // A single-frame zstd layer is one decode from the start: one lock.
        if self.kind == LayerKind::ZstdWhole {
            0
        } else {
            s
        }
    }
}
