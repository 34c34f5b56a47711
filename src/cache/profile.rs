//! Recording and replaying startup access profiles
//! ([`crate::format::AccessProfile`]): which layer bytes a workload read
//! first, and in what order, so that the next cold start of the image
//! fetches them ahead of the process instead of one round trip per page
//! fault.
//!
//! A mount records the chunks its readers touch during a window after it
//! starts ([`AccessRecorder`], one relaxed load per chunk read when off).
//! A later mount replays the profile: the ranges are
//! grouped per span in first-touch order and filled by a few background
//! threads through the cache's ordinary single-flight path
//! ([`super::ContentCache::replay`]), so a reader that needs a span being
//! replayed waits for that fetch instead of issuing its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use super::plan::LayerPlan;
use super::prefetch::Job;
use crate::digest::Digest;
use crate::format::{AccessProfile, LayerKind, ProfileRange, MAX_RANGES};
use crate::sync::lock;

/// Notes the first touch of every chunk while on; the hot path costs one
/// relaxed load when off.
#[derive(Debug)]
pub(super) struct AccessRecorder {
    on: AtomicBool,
    /// `seen[layer]`: one bit per chunk.
    seen: Vec<Vec<AtomicU64>>,
    /// `(layer, chunk)` in first-touch order.
    log: Mutex<Vec<(u32, u32)>>,
    /// When the first chunk was noted: the recording window starts there.
    first: OnceLock<Instant>,
}

impl AccessRecorder {
    /// A recorder (off) for layers with these chunk counts.
    pub fn new(chunk_counts: impl Iterator<Item = u32>) -> Self {
        AccessRecorder {
            on: AtomicBool::new(false),
            seen: chunk_counts
                .map(|n| (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
                .collect(),
            log: Mutex::new(Vec::new()),
            first: OnceLock::new(),
        }
    }

    pub fn start(&self) {
        self.on.store(true, Relaxed);
    }

    pub fn is_on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Records that `chunk` of `layer` was read (first time only).
    #[inline]
    pub fn note(&self, layer: u32, chunk: u32) {
        if !self.on.load(Relaxed) {
            return;
        }
        let Some(word) = self
            .seen
            .get(layer as usize)
            .and_then(|l| l.get(chunk as usize / 64))
        else {
            return;
        };
        let bit = 1u64 << (chunk % 64);
        if word.fetch_or(bit, Relaxed) & bit == 0 {
            self.first.get_or_init(Instant::now);
            let mut log = lock(&self.log);
            if log.len() < MAX_RANGES {
                log.push((layer, chunk));
            }
        }
    }

    /// When the first chunk was noted, if one was.
    pub fn first_touch(&self) -> Option<Instant> {
        self.first.get().copied()
    }

    /// Stops recording and hands out the log; `None` if it was not on (so
    /// exactly one caller gets it).
    pub fn stop(&self) -> Option<Vec<(u32, u32)>> {
        if !self.on.swap(false, Relaxed) {
            return None;
        }
        Some(std::mem::take(&mut *lock(&self.log)))
    }
}

/// Turns a first-touch chunk log into ranges, merging a chunk into the
/// previous range when it directly follows it in the same layer.
pub(super) fn ranges_of(log: &[(u32, u32)], plans: &[LayerPlan]) -> Vec<ProfileRange> {
    let mut out: Vec<ProfileRange> = Vec::new();
    for &(layer, chunk) in log {
        let Some(plan) = plans.get(layer as usize) else {
            continue;
        };
        let Some(r) = plan.chunk_range_of(chunk) else {
            continue;
        };
        match out.last_mut() {
            Some(last) if last.layer == plan.digest && last.offset + last.len == r.start => {
                last.len += r.end - r.start;
            }
            _ => out.push(ProfileRange {
                layer: plan.digest,
                offset: r.start,
                len: r.end - r.start,
            }),
        }
    }
    out
}

/// The replay jobs of a profile: one per (layer, span) touched, covering
/// the span's touched chunks, in the order the span was first touched.
/// Ranges of layers this index does not have, or past a layer's end, are
/// dropped; so are single-frame zstd layers (one decode from the start:
/// readers fetch those themselves).
pub(super) fn replay_jobs(profile: &AccessProfile, plans: &[LayerPlan]) -> Vec<Job> {
    let by_digest: HashMap<Digest, &LayerPlan> = plans
        .iter()
        .filter(|p| p.broken.is_none() && p.kind != LayerKind::ZstdWhole)
        .map(|p| (p.digest, p))
        .collect();
    let mut jobs: Vec<Job> = Vec::new();
    let mut slot: HashMap<(u32, usize), usize> = HashMap::new();
    for r in &profile.ranges {
        let Some(plan) = by_digest.get(&r.layer) else {
            continue;
        };
        let end = plan.size.min(r.offset.saturating_add(r.len));
        let mut pos = r.offset;
        while pos < end {
            let s = plan.span_of(pos);
            let hi = end.min(plan.spans[s].end);
            match slot.get(&(plan.number, s)) {
                Some(&j) => {
                    jobs[j].start = jobs[j].start.min(pos);
                    jobs[j].end = jobs[j].end.max(hi);
                }
                None => {
                    slot.insert((plan.number, s), jobs.len());
                    jobs.push(Job {
                        layer: plan.number,
                        start: pos,
                        end: hi,
                    });
                }
            }
            pos = hi;
        }
    }
    jobs
}
