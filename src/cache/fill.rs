//! [`ContentCache`]: the read path (hit → copy out), the miss path (fetch the
//! compressed bytes a chunk needs, inflate, verify, cache), single-flight per
//! span and decoder parking.
//!
//! Locking, in acquisition order (never the reverse):
//! 1. a span's single-flight lock (`LayerPlan::locks`), held for a whole fill
//!    (fetch + inflate); readers of the same span wait on it and then find the
//!    chunk in memory;
//! 2. short leaf locks: the parked-decoder pool, a memory shard, the
//!    in-flight semaphore. None of them is held across I/O or decoding.

use crate::metrics::{Counter, ErrorKind, Metrics};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, TryLockError};
use std::time::Instant;

use super::decoder::{DecodeError, Decoder};
use super::disk::DiskCache;
use super::memory::{key, MemoryCache};
use super::plan::LayerPlan;
use super::prefetch::{count_get, gets_on_this_thread, in_prefetch_thread, Job, Prefetcher};
use super::profile::{self, AccessRecorder};
use super::{CacheConfig, CacheError, ContentReader, Urgency};
use crate::digest::Digest;
use crate::format::{AccessProfile, Index, LayerKind, PROFILE_VERSION};
use crate::source::{BlobSource, RemoteKind};
use crate::sync::{lock, wait};

/// Largest follow-up fetch when a decoder keeps starving within one fill.
const MAX_REFETCH: u64 = 8 << 20;

/// Continuations in a row after which a decoder counts as a stream and
/// fills read ahead. Measured (cold, python image): from 4 on, `import
/// numpy` fetches no more than without read-ahead (21.0 MB; 24.1 MB from
/// 2) while `tar -cf - . | cat` of the tree takes 5.2 s instead of 9.5 s
/// (276 GETs instead of 1255, 144 MB fetched for the 120 MB image).
const STREAM_AFTER: u32 = 8;

/// Reads from this size on hint the disk tier first (`MADV_WILLNEED` on
/// their chunks' slots): the large reads of streams and kernel read-ahead,
/// which after a restart or a page-cache eviction would otherwise fault
/// their slots in piece after piece. Smaller (random) reads skip the
/// system call.
const WILL_NEED_FROM: u64 = 64 << 10;

/// Largest read-ahead piece of a prefetch (one GET).
const PREFETCH_PIECE: u64 = 4 << 20;

/// Largest single fetch of compressed input, whatever the index says a
/// span needs (a hostile or corrupt checkpoint can name a range of
/// gigabytes; a whole-layer zstd decode asks for the whole blob): memory
/// per decoder stays bounded, and a starving decoder fetches again.
const MAX_FETCH: u64 = 64 << 20;

/// A decoder with the compressed bytes already fetched for it:
/// `input[consumed..]` starts at `dec.input_position()`.
#[derive(Debug)]
struct Parked {
    dec: Decoder,
    input: Vec<u8>,
    consumed: usize,
    /// Fills in a row that continued this decoder (0 for a fresh one).
    streak: u32,
}

impl Parked {
    /// Blob offset just past the bytes held.
    fn have_end(&self) -> u64 {
        self.dec.input_position() + (self.input.len() - self.consumed) as u64
    }
}

/// Live decoders parked after a fill, keyed by `(layer, span of their output
/// position)`; bounded, least recently parked dropped first.
#[derive(Debug)]
struct ParkPool {
    map: HashMap<(u32, usize), (Parked, u64)>,
    generation: u64,
    cap: usize,
}

impl ParkPool {
    fn take(&mut self, layer: u32, span: usize) -> Option<Parked> {
        self.map.remove(&(layer, span)).map(|(p, _)| p)
    }

    fn put(&mut self, layer: u32, span: usize, p: Parked) {
        if self.cap == 0 {
            return;
        }
        self.generation += 1;
        self.map.insert((layer, span), (p, self.generation));
        if self.map.len() > self.cap {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, g))| *g)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.map.remove(&k);
            }
        }
    }
}

/// Counting semaphore bounding concurrent source reads.
#[derive(Debug)]
struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Semaphore);

impl Semaphore {
    fn new(n: usize) -> Self {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) -> Permit<'_> {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = wait(&self.cv, free);
        }
        *free -= 1;
        Permit(self)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.cv.notify_one();
    }
}

/// Lazily fetching, verifying, caching reader of an image's layer contents.
pub struct ContentCache {
    index: Arc<Index>,
    source: Arc<dyn BlobSource>,
    config: CacheConfig,
    layers: Vec<LayerPlan>,
    mem: MemoryCache,
    parked: Mutex<ParkPool>,
    in_flight: Semaphore,
    /// Every counter and latency of the cache (a private registry unless
    /// [`ContentCache::with_metrics`] shares the mount's).
    metrics: Arc<Metrics>,
    prefetcher: Prefetcher,
    /// [`ContentCache::replay`] was called.
    replaying: AtomicBool,
    recorder: AccessRecorder,
    disk: Option<Arc<DiskCache>>,
}

impl fmt::Debug for ContentCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentCache")
            .field("layers", &self.layers.len())
            .field("config", &self.config)
            .field("mem", &self.mem)
            .finish_non_exhaustive()
    }
}

impl ContentCache {
    /// A cache serving the layers of `index` from `source`.
    pub fn new(index: Arc<Index>, source: Arc<dyn BlobSource>, config: CacheConfig) -> Self {
        let layers: Vec<LayerPlan> = (0..index.layer_count())
            .map(|i| match index.layer(i) {
                Ok(l) => LayerPlan::new(&l),
                Err(e) => LayerPlan::broken(i, e.to_string()),
            })
            .collect();
        let recorder = AccessRecorder::new(
            (0..index.layer_count()).map(|i| index.layer(i).map_or(0, |l| l.chunk_count())),
        );
        ContentCache {
            recorder,
            disk: None,
            mem: MemoryCache::new(config.memory_bytes),
            parked: Mutex::new(ParkPool {
                map: HashMap::new(),
                generation: 0,
                cap: config.parked_decoders,
            }),
            in_flight: Semaphore::new(config.max_in_flight),
            index,
            source,
            config,
            layers,
            metrics: Arc::new(Metrics::new()),
            prefetcher: Prefetcher::default(),
            replaying: AtomicBool::new(false),
        }
    }

    /// Starts the `config.prefetch_threads` background threads that serve
    /// [`ContentReader::prefetch`] hints (until then, and with 0 threads,
    /// hints are ignored). The threads hold only a weak reference: they exit
    /// once the last `Arc` of the cache is dropped. Calling again is a no-op.
    pub fn start_prefetch(self: &Arc<Self>) {
        self.prefetcher.start(
            self.config.prefetch_threads,
            self.config.prefetch_queue,
            Arc::downgrade(self),
            Self::run_prefetch,
        );
    }

    /// Starts recording which chunks readers touch, in first-touch order,
    /// until [`ContentCache::finish_recording`].
    pub fn start_recording(&self) {
        self.recorder.start();
    }

    /// Whether a recording is running.
    pub fn is_recording(&self) -> bool {
        self.recorder.is_on()
    }

    /// When the running recording noted its first chunk (the recording
    /// window is measured from there), if it has.
    pub fn recording_since(&self) -> Option<Instant> {
        self.recorder.first_touch()
    }

    /// Stops the recording and returns it as a profile; `None` if no
    /// recording was running, so exactly one of several callers gets it.
    pub fn finish_recording(&self) -> Option<AccessProfile> {
        let since = self.recorder.first_touch();
        let log = self.recorder.stop()?;
        Some(AccessProfile {
            version: PROFILE_VERSION,
            manifest: self.index.meta().manifest_digest,
            window_secs: since.map_or(0, |t| t.elapsed().as_secs()),
            ranges: profile::ranges_of(&log, &self.layers),
        })
    }

    /// Fetches what `profile` lists in the background: one job per span it
    /// touches, in first-touch order, spread over `threads` threads (the
    /// fetches count as prefetch bytes). Returns the number of jobs.
    pub fn replay(self: &Arc<Self>, profile: &AccessProfile, threads: usize) -> usize {
        self.replaying
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let jobs = profile::replay_jobs(profile, &self.layers);
        let n = jobs.len();
        self.metrics.count(Counter::PrefetchJobs, n as u64);
        self.prefetcher.run_list(
            threads.max(1),
            jobs,
            Arc::downgrade(self),
            Self::run_prefetch,
        );
        n
    }

    /// Whether a startup profile is being (or was) replayed into the cache.
    pub fn replaying(&self) -> bool {
        self.replaying.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Count of live prefetch threads (stays readable after the cache is gone).
    pub fn prefetch_threads_live(&self) -> Arc<AtomicUsize> {
        self.prefetcher.live()
    }

    /// Queues jobs for `[offset, offset+len)`: pieces of about
    /// `prefetch_piece` bytes cut on span boundaries, in order.
    fn queue_prefetch(&self, layer: u32, offset: u64, len: u64, urgency: Urgency) {
        if !self.prefetcher.started() {
            return;
        }
        let Ok(plan) = self.plan(layer) else { return };
        // A single-frame zstd layer decodes from its start: a hint about one
        // file would inflate the whole layer. Leave it to readers.
        if plan.kind == LayerKind::ZstdWhole || offset >= plan.size || len == 0 {
            return;
        }
        let end = plan.size.min(offset.saturating_add(len));
        let piece = self.config.prefetch_piece;
        let mut jobs = Vec::new();
        let mut start = offset;
        while start < end {
            let mut s = plan.span_of(start);
            // Whole spans until the piece is full (at least one span).
            let mut stop = plan.spans[s].end;
            while piece > 0 && stop < end && stop - start < piece && s + 1 < plan.spans.len() {
                s += 1;
                stop = plan.spans[s].end;
            }
            let stop = if piece == 0 { end } else { stop.min(end) };
            jobs.push(Job {
                layer,
                start,
                end: stop,
            });
            start = stop;
        }
        let queued = self.prefetcher.send(urgency, jobs);
        self.metrics.count(Counter::PrefetchJobs, queued as u64);
    }

    /// A prefetch thread's job: fill, span after span, the chunks of the
    /// job's range that are not in memory, reading the compressed bytes ahead
    /// in large pieces (one decoder carried from span to span, so a file
    /// costs a few big GETs rather than one per span). Errors are counted and
    /// logged, never surfaced: a reader that needs the bytes fills (and
    /// reports) on its own.
    fn run_prefetch(&self, job: Job) {
        let Ok(plan) = self.plan(job.layer) else {
            return;
        };
        if let Err(e) = self.prefetch_range(plan, job.start, job.end) {
            self.metrics.count(Counter::PrefetchErrors, 1);
            tracing::debug!(
                layer = job.layer,
                start = job.start,
                end = job.end,
                error = %e,
                "prefetch failed (readers will retry)"
            );
        }
    }

    fn prefetch_range(&self, plan: &LayerPlan, start: u64, end: u64) -> Result<(), CacheError> {
        let end = end.min(plan.size);
        if start >= end {
            return Ok(());
        }
        // What the store holds of the range is read into the page cache
        // now, asynchronously, all of it at once (a replayed startup
        // profile after a restart: many I/Os in flight instead of one
        // page fault after another as the workload reads).
        self.disk_will_need(plan, start, end);
        // Compressed bytes up to the end of the range's last chunk.
        let ahead = match plan.kind {
            LayerKind::Tar => 0,
            _ => self
                .layer_chunk(plan, plan.chunk_at(end - 1).1)?
                .in_end
                .saturating_add(self.config.fetch_slack),
        };
        let mut s = plan.span_of(start);
        while s < plan.spans.len() && plan.spans[s].start < end {
            let sp = plan.spans[s];
            let (lo, hi) = (start.max(sp.start), end.min(sp.end));
            if lo < hi {
                let first = plan.chunk_at(lo).1;
                let last = plan.chunk_at(hi - 1).1;
                let mut flight = lock(&plan.locks[plan.lock_for(s)]);
                let gets = gets_on_this_thread();
                let missing = |c: &u32| {
                    !self.mem.contains(key(plan.number, *c))
                        && !plan
                            .chunk_range_of(*c)
                            .is_some_and(|r| self.on_disk(plan, *c, r.end - r.start))
                };
                let filled = match (first..=last).find(missing) {
                    Some(first) => {
                        let last = (first..=last).rev().find(missing).unwrap_or(first);
                        self.fill_locked(plan, s, first, last, ahead).map(drop)
                    }
                    None => Ok(()),
                };
                // Readers queued on the lock meanwhile are waiting for these GETs.
                *flight = u32::try_from(gets_on_this_thread() - gets).unwrap_or(u32::MAX);
                filled?;
            }
            s += 1;
        }
        Ok(())
    }

    /// Records latencies and counters into `metrics` (fetches, inflate,
    /// hits and misses, bytes served, errors, evictions) instead of a
    /// private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Also keeps verified chunks in `disk` and looks there before fetching.
    pub fn with_disk(mut self, disk: Arc<DiskCache>) -> Self {
        self.disk = Some(disk);
        self
    }

    /// Where the cache records its counters and latencies.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Bytes of verified chunks currently held in memory.
    pub fn memory_used(&self) -> u64 {
        self.mem.bytes()
    }

    #[cfg(test)]
    pub(crate) fn layers_for_tests(&self) -> &[LayerPlan] {
        &self.layers
    }

    #[cfg(test)]
    pub(crate) fn disk_for_tests(&self) -> Option<&DiskCache> {
        self.disk.as_deref()
    }

    #[cfg(test)]
    pub(crate) fn mem_for_tests(&self) -> &MemoryCache {
        &self.mem
    }

    /// The index being served.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// The configuration in use.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    fn plan(&self, layer: u32) -> Result<&LayerPlan, CacheError> {
        let plan = self
            .layers
            .get(layer as usize)
            .ok_or(CacheError::NoSuchLayer { layer })?;
        match &plan.broken {
            Some(why) => Err(CacheError::UnusableLayer {
                layer,
                digest: plan.digest,
                reason: why.clone(),
            }),
            None => Ok(plan),
        }
    }

    /// Serves a read; `missed` is set when any chunk had to be filled.
    fn read_impl(
        &self,
        layer: u32,
        offset: u64,
        buf: &mut [u8],
        missed: &mut bool,
    ) -> Result<usize, CacheError> {
        let plan = self.plan(layer)?;
        if offset >= plan.size || buf.is_empty() {
            return Ok(0);
        }
        let end = plan.size.min(offset.saturating_add(buf.len() as u64));
        let mut pos = offset;
        // Copies the overlap of chunk `data` (at `start`) into `buf`, advancing `pos`.
        let copy = |buf: &mut [u8], pos: &mut u64, start: u64, data: &[u8]| {
            let from = (*pos - start) as usize;
            let to = ((end - start) as usize).min(data.len());
            let dst = (*pos - offset) as usize;
            buf[dst..dst + (to - from)].copy_from_slice(&data[from..to]);
            *pos += (to - from) as u64;
        };
        if end - offset >= WILL_NEED_FROM {
            self.disk_will_need(plan, offset, end);
        }
        while pos < end {
            let (s, c) = plan.chunk_at(pos);
            self.recorder.note(layer, c);
            let range = plan.chunk_range(s, c);
            let start = range.start;
            // A chunk this process served from the store before, from a
            // slot no one has changed since: straight from there (no
            // lookup, the bytes checked as always).
            let dst = &mut buf[(pos - offset) as usize..(end - offset) as usize];
            if let Some(n) = self.read_by_hint(plan, c, range.clone(), pos - start, dst) {
                pos += n as u64;
                continue;
            }
            if let Some(data) = self.mem.get(key(layer, c)) {
                self.metrics.count(Counter::ChunkHits, 1);
                copy(buf, &mut pos, start, &data);
                continue;
            }
            let dst = &mut buf[(pos - offset) as usize..(end - offset) as usize];
            if let Some(n) = self.read_from_disk(plan, c, range, pos - start, dst) {
                pos += n as u64;
                continue;
            }
            self.metrics.count(Counter::ChunkMisses, 1);
            *missed = true;
            let (_, last) = plan.chunk_at(end.min(plan.spans[s].end) - 1);
            let waited = Instant::now();
            let chunks = self.fill(plan, s, c, last)?;
            tracing::trace!(
                layer,
                pos,
                chunk = c,
                span = s,
                us = waited.elapsed().as_micros() as u64,
                "MISS"
            );
            for (i, data) in chunks.iter().enumerate() {
                if pos >= end {
                    break;
                }
                if i > 0 {
                    self.recorder.note(layer, c + i as u32);
                }
                let start = plan.chunk_range(s, c + i as u32).start;
                copy(buf, &mut pos, start, data);
            }
        }
        let n = (end - offset) as usize;
        Ok(n)
    }

    /// Makes chunks `first..=last` of span `s` available; returns them in
    /// order (or just `first` if another reader produced it meanwhile).
    fn fill(
        &self,
        plan: &LayerPlan,
        s: usize,
        first: u32,
        last: u32,
    ) -> Result<Vec<Arc<[u8]>>, CacheError> {
        let _flight = self.lock_span_as_reader(plan, s);
        if let Some(data) = self.mem.get(key(plan.number, first)) {
            self.metrics.count(Counter::SharedFills, 1);
            return Ok(vec![data]);
        }
        if let Some(data) = self.load_from_disk(plan, first) {
            self.metrics.count(Counter::SharedFills, 1);
            return Ok(vec![data]);
        }
        self.fill_locked(plan, s, first, last, 0)
    }

    /// Takes span `s`'s single-flight lock for a reader. A reader that had to
    /// wait while a prefetch thread held it waited for that holder's GETs:
    /// they count as critical-path GETs, once (the count is taken).
    fn lock_span_as_reader<'p>(&self, plan: &'p LayerPlan, s: usize) -> MutexGuard<'p, u32> {
        let m = &plan.locks[plan.lock_for(s)];
        let (mut flight, waited) = match m.try_lock() {
            Ok(g) => (g, false),
            Err(TryLockError::Poisoned(e)) => (e.into_inner(), false),
            Err(TryLockError::WouldBlock) => (lock(m), true),
        };
        let prefetch_gets = std::mem::take(&mut *flight);
        if waited && prefetch_gets > 0 {
            self.metrics
                .count(Counter::CriticalPathGets, u64::from(prefetch_gets));
        }
        flight
    }

    /// [`Self::fill`] with the span's single-flight lock held by the caller;
    /// a compressed layer's decoder reads ahead up to blob offset `ahead` in
    /// pieces of at most [`PREFETCH_PIECE`] (0: only what the chunks need).
    fn fill_locked(
        &self,
        plan: &LayerPlan,
        s: usize,
        first: u32,
        last: u32,
        ahead: u64,
    ) -> Result<Vec<Arc<[u8]>>, CacheError> {
        match plan.kind {
            LayerKind::Tar => self.fill_plain(plan, s, first, last),
            LayerKind::Gzip | LayerKind::ZstdFrames | LayerKind::ZstdWhole => {
                self.fill_decoded(plan, s, first, last, ahead)
            }
        }
    }

    /// Uncompressed layer: one ranged read of whole chunks, then verify.
    fn fill_plain(
        &self,
        plan: &LayerPlan,
        s: usize,
        first: u32,
        last: u32,
    ) -> Result<Vec<Arc<[u8]>>, CacheError> {
        let from = plan.chunk_range(s, first).start;
        let to = plan.chunk_range(s, last).end;
        let mut buf = vec![0u8; (to - from) as usize];
        self.fetch(plan, from, &mut buf)?;
        let mut out = Vec::with_capacity((last - first + 1) as usize);
        for c in first..=last {
            let r = plan.chunk_range(s, c);
            let data = &buf[(r.start - from) as usize..(r.end - from) as usize];
            out.push(self.admit(plan, c, data)?);
        }
        Ok(out)
    }

    /// Compressed layer: continue a parked decoder or start one at the span's
    /// checkpoint, fetch only what the target chunks need, inflate, verify
    /// and cache every chunk produced on the way, park the decoder.
    fn fill_decoded(
        &self,
        plan: &LayerPlan,
        s: usize,
        first: u32,
        last: u32,
        ahead: u64,
    ) -> Result<Vec<Arc<[u8]>>, CacheError> {
        let target = plan.chunk_range(s, first).start;
        let whole = plan.kind == LayerKind::ZstdWhole;
        let parked = if whole {
            None
        } else {
            lock(&self.parked).take(plan.number, s)
        };
        let (mut st, sequential) = match parked {
            Some(mut p) if p.dec.output_position() <= target => {
                self.metrics.count(Counter::DecoderResumes, 1);
                // A stream continues exactly where the last fill stopped;
                // skipping ahead (the next file in the directory) is not one.
                p.streak = if p.dec.output_position() == target {
                    p.streak + 1
                } else {
                    1
                };
                (p, true)
            }
            _ => {
                self.metrics.count(Counter::DecoderStarts, 1);
                (self.start_decoder(plan, s)?, false)
            }
        };
        // Single-frame zstd: decode the whole layer once, caching every chunk.
        let chunk_count = plan.spans.last().map_or(0, |sp| {
            sp.first_chunk + (sp.end - sp.start).div_ceil(plan.chunk_size.max(1)) as u32
        });
        let stop = if whole { chunk_count - 1 } else { last };
        let want_end = if whole {
            plan.compressed_size
        } else {
            let hint = self.layer_chunk(plan, stop)?.in_end;
            let mut want = hint
                .saturating_add(self.config.fetch_slack)
                .saturating_add(self.config.fetch_ahead);
            if sequential {
                want = want.max(
                    st.dec
                        .input_position()
                        .saturating_add(self.readahead(st.streak)),
                );
            }
            want.min(plan.compressed_size)
        };

        let mut out = Vec::with_capacity((last - first + 1) as usize);
        let mut refills = 0u32;
        loop {
            let pos = st.dec.output_position();
            if pos >= plan.size {
                break;
            }
            let (cs, ck) = plan.chunk_at(pos);
            let r = plan.chunk_range(cs, ck);
            if r.start != pos {
                return Err(self.decode_err(
                    plan,
                    s,
                    format!("decoder at {pos} is not on a chunk boundary"),
                ));
            }
            let mut buf = vec![0u8; (r.end - r.start) as usize];
            self.inflate_chunk(plan, s, &mut st, &mut buf, (want_end, ahead), &mut refills)?;
            let data = self.admit(plan, ck, &buf)?;
            if (first..=last).contains(&ck) {
                out.push(data);
            }
            if ck >= stop {
                break;
            }
        }
        if out.len() != (last - first + 1) as usize {
            return Err(self.decode_err(plan, s, format!("stream ended before chunk {last}")));
        }
        let pos = st.dec.output_position();
        if !whole && pos < plan.size {
            st.input.drain(..st.consumed);
            st.consumed = 0;
            lock(&self.parked).put(plan.number, plan.span_of(pos), st);
        }
        Ok(out)
    }

    /// Compressed bytes to read ahead for a decoder continued exactly where
    /// it stopped `streak` fills in a row: nothing for short runs (page
    /// faults of a mapped library come in runs of a few chunks), then
    /// `sequential_fetch`, doubling per fill up to `sequential_max` (a
    /// stream: a whole-file or whole-tree read).
    fn readahead(&self, streak: u32) -> u64 {
        if streak < STREAM_AFTER {
            return 0;
        }
        let ramp = self
            .config
            .sequential_fetch
            .saturating_mul(1 << (streak - STREAM_AFTER).min(20));
        ramp.min(self.config.sequential_max)
    }

    /// A decoder positioned at the checkpoint starting span `s` (span 0 for
    /// single-frame zstd), with no input yet.
    fn start_decoder(&self, plan: &LayerPlan, s: usize) -> Result<Parked, CacheError> {
        let s = if plan.kind == LayerKind::ZstdWhole {
            0
        } else {
            s
        };
        let index_err = |what: String| {
            move |source| CacheError::Index {
                layer: plan.number,
                what,
                source,
            }
        };
        let view = self
            .index
            .layer(plan.number)
            .map_err(index_err("layer record".into()))?;
        let cp = view
            .checkpoint(s as u32)
            .map_err(index_err(format!("checkpoint {s}")))?;
        let sp = plan.spans[s];
        if cp.out_offset != sp.start || cp.first_chunk != sp.first_chunk {
            return Err(CacheError::CheckpointMismatch {
                layer: plan.number,
                digest: plan.digest,
                span: s as u32,
                out_offset: cp.out_offset,
                first_chunk: cp.first_chunk,
                want_offset: sp.start,
                want_chunk: sp.first_chunk,
            });
        }
        let dec = Decoder::new(plan.kind, &cp).map_err(|m| self.decode_err(plan, s, m))?;
        Ok(Parked {
            dec,
            input: Vec::new(),
            consumed: 0,
            streak: 0,
        })
    }

    /// Inflates exactly `buf.len()` bytes, fetching more input when the
    /// decoder starves.
    fn inflate_chunk(
        &self,
        plan: &LayerPlan,
        s: usize,
        st: &mut Parked,
        buf: &mut [u8],
        want_end: (u64, u64),
        refills: &mut u32,
    ) -> Result<(), CacheError> {
        let mut filled = 0;
        while filled < buf.len() {
            // An empty input tells a gzip decoder the blob has ended: only
            // pass one when it really has.
            if st.consumed == st.input.len() && st.have_end() < plan.compressed_size {
                self.refill(plan, s, st, want_end, *refills)?;
                *refills += 1;
                continue;
            }
            let (c, p) = self.inflate_step(plan, s, st, &mut buf[filled..])?;
            filled += p;
            if c == 0 && p == 0 {
                self.refill(plan, s, st, want_end, *refills)?;
                *refills += 1;
            }
        }
        Ok(())
    }

    /// One decoder call (the unit to time for inflate latency).
    fn inflate_step(
        &self,
        plan: &LayerPlan,
        s: usize,
        st: &mut Parked,
        out: &mut [u8],
    ) -> Result<(usize, usize), CacheError> {
        let t = Instant::now();
        let r = st.dec.decode(&st.input[st.consumed..], out);
        let took = t.elapsed();
        self.metrics
            .record_inflate(took, r.as_ref().map_or(0, |&(_, p)| p as u64));
        if r.is_err() {
            self.metrics.count_error(ErrorKind::Inflate);
        }
        let (c, p) = r.map_err(|m| self.decode_err(plan, s, m))?;
        st.consumed += c;
        Ok((c, p))
    }

    /// Appends the next piece of compressed input: up to `want_end.0` on the
    /// first starvation of a fill, then growing pieces (never tiny reads);
    /// and up to `want_end.1` (read-ahead), at most [`PREFETCH_PIECE`] at once.
    fn refill(
        &self,
        plan: &LayerPlan,
        s: usize,
        st: &mut Parked,
        want_end: (u64, u64),
        refills: u32,
    ) -> Result<(), CacheError> {
        let have = st.have_end();
        let want_end = want_end.0.max(want_end.1.min(have + PREFETCH_PIECE));
        if have >= plan.compressed_size {
            return Err(self.decode_err(
                plan,
                s,
                format!("compressed stream ends at {have} before the needed bytes were produced"),
            ));
        }
        let min_more = if refills == 0 && want_end > have {
            0
        } else {
            (self.config.min_refetch.max(4096) << refills.min(6)).min(MAX_REFETCH)
        };
        let end = want_end
            .max(have + min_more)
            .min(plan.compressed_size)
            .min(have + MAX_FETCH);
        st.input.drain(..st.consumed);
        st.consumed = 0;
        let old = st.input.len();
        st.input.resize(old + (end - have) as usize, 0);
        self.fetch(plan, have, &mut st.input[old..])
    }

    /// One ranged read of the layer blob (the unit to time for fetch latency).
    fn fetch(&self, plan: &LayerPlan, offset: u64, buf: &mut [u8]) -> Result<(), CacheError> {
        let _permit = self.in_flight.acquire();
        let t = Instant::now();
        let r = self.source.read_exact_at(&plan.digest, offset, buf);
        let took = t.elapsed();
        tracing::trace!(
            layer = plan.number,
            offset,
            len = buf.len(),
            us = took.as_micros() as u64,
            prefetch = in_prefetch_thread(),
            "FETCH"
        );
        let prefetch = in_prefetch_thread();
        count_get();
        let m = &self.metrics;
        // A fetch on a reader's thread is a wait; a prefetch thread's is one
        // only for a reader that queues behind it (lock_span_as_reader).
        if !prefetch {
            m.record_blocked(took);
            m.count(Counter::CriticalPathGets, 1);
        }
        match &r {
            Ok(()) => {
                m.record_range_get(took, buf.len() as u64);
                if prefetch {
                    m.add_prefetched(buf.len() as u64);
                }
            }
            Err(e) => {
                m.record_range_get(took, 0);
                m.count_error(ErrorKind::Fetch);
                if e.remote_kind() == Some(RemoteKind::Timeout) {
                    m.count_error(ErrorKind::Timeout);
                }
            }
        }
        r.map_err(|source| CacheError::Source {
            layer: plan.number,
            digest: plan.digest,
            source,
        })
    }

    /// Verifies chunk `chunk` against the index and stores it.
    fn admit(&self, plan: &LayerPlan, chunk: u32, data: &[u8]) -> Result<Arc<[u8]>, CacheError> {
        let want = self.layer_chunk(plan, chunk)?.digest;
        if Digest::of(data).as_bytes() != &want {
            self.metrics.count_error(ErrorKind::DigestMismatch);
            tracing::error!(
                layer = plan.number,
                digest = %plan.digest,
                chunk,
                "chunk content digest mismatch; refusing to serve it"
            );
            return Err(CacheError::DigestMismatch {
                layer: plan.number,
                chunk,
            });
        }
        let data: Arc<[u8]> = Arc::from(data);
        // Stored on disk, the chunk lives in the page cache (reclaimable);
        // only what the store could not take stays in anonymous memory.
        let stored = self
            .disk
            .as_ref()
            .is_some_and(|disk| disk.put(&Digest::from_bytes(want), &data));
        if !stored {
            self.keep(plan, chunk, data.clone());
        }
        Ok(data)
    }

    /// Whether the disk tier holds chunk `chunk` (`len` bytes).
    fn on_disk(&self, plan: &LayerPlan, chunk: u32, len: u64) -> bool {
        let Some(disk) = &self.disk else {
            return false;
        };
        self.layer_chunk(plan, chunk).is_ok_and(|c| {
            disk.contains_hinted(
                &Digest::from_bytes(c.digest),
                len as usize,
                plan.disk_slots.get(chunk as usize),
            )
        })
    }

    /// Whether chunk `chunk` (`len` bytes) is in memory or on local disk.
    fn is_local(&self, plan: &LayerPlan, chunk: u32, len: u64) -> bool {
        let hinted = |d: &DiskCache| {
            plan.disk_slots
                .get(chunk as usize)
                .is_some_and(|h| d.contains_by_hint(h))
        };
        self.disk.as_deref().is_some_and(hinted)
            || self.mem.contains(key(plan.number, chunk))
            || self.on_disk(plan, chunk, len)
    }

    /// [`Self::read_from_disk`] from the slot the chunk's hint names (see
    /// [`DiskCache::read_by_hint`]); `None` when the hint does not hold or
    /// the bytes failed their check.
    fn read_by_hint(
        &self,
        plan: &LayerPlan,
        chunk: u32,
        r: std::ops::Range<u64>,
        from: u64,
        dst: &mut [u8],
    ) -> Option<usize> {
        let disk = self.disk.as_ref()?;
        let hint = plan.disk_slots.get(chunk as usize)?;
        if hint.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return None;
        }
        let want = Digest::from_bytes(self.layer_chunk(plan, chunk).ok()?.digest);
        let len = (r.end - r.start) as usize;
        let from = from as usize;
        let n = dst.len().min(len.checked_sub(from)?);
        if n == 0 || disk.read_by_hint(&want, len, from, &mut dst[..n], hint) != Some(true) {
            return None;
        }
        self.metrics.add_disk_hit();
        Some(n)
    }

    /// Chunk `chunk` whole from the disk tier (verified page by page).
    fn load_from_disk(&self, plan: &LayerPlan, chunk: u32) -> Option<Arc<[u8]>> {
        let disk = self.disk.as_ref()?;
        let want = self.layer_chunk(plan, chunk).ok()?.digest;
        let r = plan.chunk_range_of(chunk)?;
        let len = (r.end - r.start) as usize;
        let mut data = vec![0u8; len];
        let hint = plan.disk_slots.get(chunk as usize);
        if !disk.read_hinted(&Digest::from_bytes(want), len, 0, &mut data, hint) {
            return None;
        }
        self.metrics.add_disk_hit();
        Some(Arc::from(data))
    }

    /// Hints the disk tier that the chunks of `[offset, end)` not in memory
    /// are about to be read (their I/O overlaps instead of one page fault
    /// after another when the page cache does not hold them).
    fn disk_will_need(&self, plan: &LayerPlan, offset: u64, end: u64) {
        let Some(disk) = &self.disk else { return };
        let mut pos = offset;
        while pos < end {
            let (s, c) = plan.chunk_at(pos);
            let r = plan.chunk_range(s, c);
            if !self.mem.contains(key(plan.number, c)) {
                if let Ok(chunk) = self.layer_chunk(plan, c) {
                    disk.will_need(
                        &Digest::from_bytes(chunk.digest),
                        (r.end - r.start) as usize,
                        plan.disk_slots.get(c as usize),
                    );
                }
            }
            pos = r.end;
        }
    }

    /// Copies chunk `chunk`'s bytes (layer range `r`) from `from` on into
    /// `dst` (as many as fit) straight from the disk tier's mapping; the
    /// count, or `None` on a miss.
    fn read_from_disk(
        &self,
        plan: &LayerPlan,
        chunk: u32,
        r: std::ops::Range<u64>,
        from: u64,
        dst: &mut [u8],
    ) -> Option<usize> {
        let disk = self.disk.as_ref()?;
        let want = self.layer_chunk(plan, chunk).ok()?.digest;
        let len = (r.end - r.start) as usize;
        let from = from as usize;
        let n = dst.len().min(len.checked_sub(from)?);
        let hint = plan.disk_slots.get(chunk as usize);
        if n == 0 || !disk.read_hinted(&Digest::from_bytes(want), len, from, &mut dst[..n], hint) {
            return None;
        }
        self.metrics.add_disk_hit();
        Some(n)
    }

    /// Puts a verified chunk in memory, counting evictions.
    fn keep(&self, plan: &LayerPlan, chunk: u32, data: Arc<[u8]>) {
        let evicted = self.mem.insert(key(plan.number, chunk), data);
        self.metrics.count(Counter::CacheEvictions, evicted);
        self.metrics.set_cache_bytes(self.mem.bytes());
    }

    fn layer_chunk(
        &self,
        plan: &LayerPlan,
        chunk: u32,
    ) -> Result<crate::format::Chunk, CacheError> {
        self.index
            .layer(plan.number)
            .ok()
            .and_then(|l| l.chunk(chunk))
            .ok_or_else(|| CacheError::NoSuchChunk {
                layer: plan.number,
                chunk,
            })
    }

    fn decode_err(&self, plan: &LayerPlan, s: usize, e: impl Into<DecodeError>) -> CacheError {
        let (layer, digest, span) = (plan.number, plan.digest, s as u32);
        match e.into() {
            DecodeError::ZstdWindowTooLarge => CacheError::ZstdWindowTooLarge {
                layer,
                digest,
                span,
            },
            DecodeError::Failed(message) => CacheError::Decode {
                layer,
                digest,
                span,
                message,
            },
        }
    }
}

impl ContentReader for ContentCache {
    fn read(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        let mut missed = false;
        let t = Instant::now();
        let r = self.read_impl(layer, offset, buf, &mut missed);
        self.metrics.record_cache(!missed, t.elapsed());
        if let Ok(n) = r {
            self.metrics.add_served(n as u64);
        }
        r
    }

    fn prefetch(&self, layer: u32, offset: u64, len: u64, urgency: Urgency) {
        self.queue_prefetch(layer, offset, len, urgency);
    }

    fn would_block(&self, layer: u32, offset: u64, len: u64) -> bool {
        // An unusable layer fails at once: nothing to wait for.
        let Ok(plan) = self.plan(layer) else {
            return false;
        };
        let end = plan.size.min(offset.saturating_add(len));
        let mut pos = offset;
        while pos < end {
            let (s, c) = plan.chunk_at(pos);
            let r = plan.chunk_range(s, c);
            if !self.is_local(plan, c, r.end - r.start) {
                return true;
            }
            pos = r.end;
        }
        false
    }

    fn replaying(&self) -> bool {
        ContentCache::replaying(self)
    }
}
