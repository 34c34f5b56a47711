//! The recording side: [`Metrics`] (sharded histograms and counters) and the
//! RAII [`OpTimer`].
//!
//! Hot-path cost: one uncontended `Mutex` lock plus one hdrhistogram record
//! for a timing, one relaxed `fetch_add` on a shard-local cache line for a
//! counter. Each thread sticks to one shard (assigned round-robin on first
//! use), so with up to `shards` recording threads no two threads share a lock
//! or a counter cache line.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::snapshot::{Counters, HistSnapshot, Labels, Snapshot, Timings, SCHEMA_VERSION};
use super::{ErrorKind, Op};

/// Smallest distinguishable latency in ns (values below share one bucket).
/// 16 ns keeps sub-microsecond resolution for cached getattr/lookup while the
/// first hdr bucket already spans 0..32 µs at 3 significant digits.
pub(super) const LOWEST_NS: u64 = 16;
/// Latencies above one hour are clamped: bounds histogram memory (auto-resize).
pub(super) const HIGHEST_NS: u64 = 3_600_000_000_000;
/// Significant digits kept by every histogram.
pub(super) const SIGFIG: u8 = 3;
/// Upper bound on shards: more recording threads than this share shards.
const MAX_SHARDS: usize = 16;

/// Timing histograms after the per-op ones, in [`Timing`] order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timing {
    RangeGet,
    Inflate,
    CacheHit,
    CacheMiss,
    Blocked,
}
const N_TIMINGS: usize = 5;
const N_HISTS: usize = Op::ALL.len() + N_TIMINGS;

impl Timing {
    fn slot(self) -> usize {
        Op::ALL.len() + self as usize
    }
}

/// The plain counters (see [`Counters`] for what each counts). Most have a
/// named recording method; the rest are counted with [`Metrics::count`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// [`Counters::bytes_served`].
    BytesServed,
    /// [`Counters::bytes_fetched`].
    BytesFetched,
    /// [`Counters::fetch_count`].
    FetchCount,
    /// [`Counters::inflate_bytes`].
    InflateBytes,
    /// [`Counters::cache_hits`].
    CacheHits,
    /// [`Counters::cache_misses`].
    CacheMisses,
    /// [`Counters::cache_evictions`].
    CacheEvictions,
    /// [`Counters::retries`].
    Retries,
    /// [`Counters::network_blocked_ns_total`].
    NetworkBlockedNs,
    /// [`Counters::prefetch_bytes`].
    PrefetchBytes,
    /// [`Counters::disk_hits`].
    DiskHits,
    /// [`Counters::chunk_hits`].
    ChunkHits,
    /// [`Counters::chunk_misses`].
    ChunkMisses,
    /// [`Counters::shared_fills`].
    SharedFills,
    /// [`Counters::decoder_starts`].
    DecoderStarts,
    /// [`Counters::decoder_resumes`].
    DecoderResumes,
    /// [`Counters::prefetch_jobs`].
    PrefetchJobs,
    /// [`Counters::prefetch_errors`].
    PrefetchErrors,
    /// [`Counters::fuse_reads`].
    FuseReads,
    /// [`Counters::fuse_read_bytes`].
    FuseReadBytes,
    /// [`Counters::fuse_read_errors`].
    FuseReadErrors,
    /// [`Counters::fuse_lookups`].
    FuseLookups,
    /// [`Counters::disk_damaged`].
    DiskDamaged,
    /// [`Counters::disk_writes`].
    DiskWrites,
    /// [`Counters::disk_write_drops`].
    DiskWriteDrops,
    /// [`Counters::disk_evictions`].
    DiskEvictions,
    /// [`Counters::disk_errors`].
    DiskErrors,
    /// [`Counters::critical_path_gets`].
    CriticalPathGets,
}
const N_CTRS: usize = Counter::CriticalPathGets as usize + 1;

/// An empty auto-resizing nanosecond histogram with the crate's precision.
pub(super) fn new_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(LOWEST_NS, LOWEST_NS * 2, SIGFIG)
        .expect("static histogram bounds are valid");
    h.auto(true);
    h
}

/// Records `ns` into `slot`. `saturating_record` would clamp to the current
/// (auto-resizing) bound instead of growing, so use `record`, which grows.
#[inline]
fn put(slot: &mut Slot, ns: u64) {
    let h = slot.hist.get_or_insert_with(new_histogram);
    if h.record(ns).is_err() {
        h.saturating_record(ns);
    }
    slot.sum_ns = slot.sum_ns.saturating_add(ns);
}

/// One histogram plus its exact sum (hdr only keeps an approximate mean).
#[derive(Debug, Default)]
struct Slot {
    /// Allocated on first record: an unused (op, shard) pair costs nothing.
    hist: Option<Histogram<u64>>,
    sum_ns: u64,
}

#[derive(Debug)]
struct Locked {
    slots: [Slot; N_HISTS],
    /// `(status, count)`; a handful of distinct statuses, linear scan.
    http_status: Vec<(u16, u64)>,
}

/// One shard, on its own cache lines.
#[derive(Debug)]
#[repr(align(128))]
struct Shard {
    locked: Mutex<Locked>,
    counters: [AtomicU64; N_CTRS],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    op_errors: [AtomicU64; Op::ALL.len()],
}

impl Shard {
    fn new() -> Self {
        Shard {
            locked: Mutex::new(Locked {
                slots: std::array::from_fn(|_| Slot::default()),
                http_status: Vec::new(),
            }),
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            op_errors: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        crate::sync::lock(&self.locked)
    }
}

/// Round-robin thread → shard assignment. This is thread bookkeeping, not
/// metrics state: every [`Metrics`] keeps its own shards.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static THREAD_NO: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// The metrics registry of one mount daemon (one image). Create one with
/// [`Metrics::new`], wrap it in an `Arc` and hand clones to the cache, the
/// fetcher and the FUSE hook. Every method takes `&self` and is cheap enough
/// for the read path.
#[derive(Debug)]
pub struct Metrics {
    shards: Box<[Shard]>,
    cache_bytes: AtomicU64,
    started: Instant,
    /// The FUSE transport serving the mount (`dev`, `uring`), once known.
    fuse_transport: std::sync::OnceLock<&'static str>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with one shard per available CPU (at most 16).
    pub fn new() -> Self {
        let n = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self::with_shards(n)
    }

    /// A registry with `n` shards (clamped to 1..=16).
    pub fn with_shards(n: usize) -> Self {
        let n = n.clamp(1, MAX_SHARDS);
        Metrics {
            shards: (0..n).map(|_| Shard::new()).collect(),
            cache_bytes: AtomicU64::new(0),
            started: Instant::now(),
            fuse_transport: std::sync::OnceLock::new(),
        }
    }

    /// Names the FUSE transport serving the mount (`dev` or `uring`); it
    /// shows in every snapshot. Set once; later calls are ignored.
    pub fn set_fuse_transport(&self, name: &'static str) {
        let _ = self.fuse_transport.set(name);
    }

    #[inline]
    fn shard(&self) -> &Shard {
        let i = THREAD_NO.with(|n| *n) % self.shards.len();
        &self.shards[i]
    }

    /// Adds `n` to counter `c` (one relaxed add on this thread's shard).
    #[inline]
    pub fn count(&self, c: Counter, n: u64) {
        self.shard().counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    fn record_slot(&self, shard: &Shard, slot: usize, d: Duration) {
        let ns = (d.as_nanos().min(u128::from(HIGHEST_NS))) as u64;
        put(&mut shard.lock().slots[slot], ns);
    }

    /// Starts timing one FUSE operation; the latency is recorded when the
    /// returned guard drops.
    #[inline]
    pub fn fuse_timer(&self, op: Op) -> OpTimer<'_> {
        OpTimer {
            metrics: self,
            op,
            start: Instant::now(),
            error: false,
        }
    }

    /// Records one FUSE operation that took `d` (used by [`super::FuseMetricsHook`]).
    #[inline]
    pub fn record_fuse_op(&self, op: Op, d: Duration, error: bool) {
        let shard = self.shard();
        self.record_slot(shard, op as usize, d);
        if error {
            shard.op_errors[op as usize].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One ranged read of a layer blob finished (retries included): its
    /// latency and the bytes received (0 if it failed). Counts a fetch and
    /// adds to `bytes_fetched`; HTTP statuses come from the registry client
    /// ([`Metrics::count_http_status`]).
    pub fn record_range_get(&self, latency: Duration, bytes: u64) {
        let shard = self.shard();
        let ns = (latency.as_nanos().min(u128::from(HIGHEST_NS))) as u64;
        put(&mut shard.lock().slots[Timing::RangeGet.slot()], ns);
        shard.counters[Counter::FetchCount as usize].fetch_add(1, Ordering::Relaxed);
        shard.counters[Counter::BytesFetched as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// Tallies one HTTP response from the registry by status (`0`: no
    /// response arrived: connect error, timeout, reset).
    pub fn count_http_status(&self, status: u16) {
        let mut g = self.shard().lock();
        match g.http_status.iter_mut().find(|(st, _)| *st == status) {
            Some((_, n)) => *n += 1,
            None => g.http_status.push((status, 1)),
        }
    }

    /// One inflate (decompression) run took `d` and produced `bytes` of output.
    pub fn record_inflate(&self, d: Duration, bytes: u64) {
        let shard = self.shard();
        self.record_slot(shard, Timing::Inflate.slot(), d);
        shard.counters[Counter::InflateBytes as usize].fetch_add(bytes, Ordering::Relaxed);
    }

    /// A cache lookup was served (`hit`) or had to be filled (`!hit`) in `d`.
    pub fn record_cache(&self, hit: bool, d: Duration) {
        let shard = self.shard();
        let (slot, ctr) = if hit {
            (Timing::CacheHit, Counter::CacheHits)
        } else {
            (Timing::CacheMiss, Counter::CacheMisses)
        };
        self.record_slot(shard, slot.slot(), d);
        shard.counters[ctr as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A reader waited `d` for a network fetch (its own or one in flight).
    pub fn record_blocked(&self, d: Duration) {
        let shard = self.shard();
        self.record_slot(shard, Timing::Blocked.slot(), d);
        let ns = (d.as_nanos().min(u128::from(u64::MAX))) as u64;
        shard.counters[Counter::NetworkBlockedNs as usize].fetch_add(ns, Ordering::Relaxed);
    }

    /// `n` of the fetched bytes were fetched ahead of readers (prefetch
    /// hints, startup profile replay); they are also in `bytes_fetched`.
    pub fn add_prefetched(&self, n: u64) {
        self.count(Counter::PrefetchBytes, n);
    }

    /// A chunk came from the node's disk cache instead of the network.
    pub fn add_disk_hit(&self) {
        self.count(Counter::DiskHits, 1);
    }

    /// `n` bytes were returned to a reader (FUSE read replies).
    #[inline]
    pub fn add_served(&self, n: u64) {
        self.count(Counter::BytesServed, n);
    }

    /// Counts one error of `kind`.
    pub fn count_error(&self, kind: ErrorKind) {
        self.shard().errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one retried fetch attempt.
    pub fn count_retry(&self) {
        self.count(Counter::Retries, 1);
    }

    /// Counts one evicted cache entry.
    pub fn count_eviction(&self) {
        self.count(Counter::CacheEvictions, 1);
    }

    /// Sets the cache size gauge (bytes currently held).
    pub fn set_cache_bytes(&self, n: u64) {
        self.cache_bytes.store(n, Ordering::Relaxed);
    }

    /// The counters summed over the shards (no histogram is read: cheap
    /// enough for tests and benches to call per read).
    pub fn counters(&self) -> Counters {
        let mut ctr = [0u64; N_CTRS];
        for shard in self.shards.iter() {
            sum_into(&mut ctr, &shard.counters);
        }
        self.counters_of(&ctr)
    }

    /// How many errors of `kind` were counted.
    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.shards
            .iter()
            .map(|s| s.errors[kind as usize].load(Ordering::Relaxed))
            .fold(0, u64::saturating_add)
    }

    fn counters_of(&self, ctr: &[u64; N_CTRS]) -> Counters {
        let c = |k: Counter| ctr[k as usize];
        let memory = process_memory();
        Counters {
            bytes_served: c(Counter::BytesServed),
            bytes_fetched: c(Counter::BytesFetched),
            fetch_count: c(Counter::FetchCount),
            inflate_bytes: c(Counter::InflateBytes),
            cache_hits: c(Counter::CacheHits),
            cache_misses: c(Counter::CacheMisses),
            cache_evictions: c(Counter::CacheEvictions),
            cache_bytes: self.cache_bytes.load(Ordering::Relaxed),
            rss_bytes: memory.0,
            rss_anon_bytes: memory.1,
            retries: c(Counter::Retries),
            network_blocked_ns_total: c(Counter::NetworkBlockedNs),
            prefetch_bytes: c(Counter::PrefetchBytes),
            disk_hits: c(Counter::DiskHits),
            chunk_hits: c(Counter::ChunkHits),
            chunk_misses: c(Counter::ChunkMisses),
            shared_fills: c(Counter::SharedFills),
            decoder_starts: c(Counter::DecoderStarts),
            decoder_resumes: c(Counter::DecoderResumes),
            prefetch_jobs: c(Counter::PrefetchJobs),
            prefetch_errors: c(Counter::PrefetchErrors),
            fuse_reads: c(Counter::FuseReads),
            fuse_read_bytes: c(Counter::FuseReadBytes),
            fuse_read_errors: c(Counter::FuseReadErrors),
            fuse_lookups: c(Counter::FuseLookups),
            disk_damaged: c(Counter::DiskDamaged),
            disk_writes: c(Counter::DiskWrites),
            disk_write_drops: c(Counter::DiskWriteDrops),
            disk_evictions: c(Counter::DiskEvictions),
            disk_errors: c(Counter::DiskErrors),
            critical_path_gets: c(Counter::CriticalPathGets),
        }
    }

    /// A consistent-enough copy of everything recorded so far (each shard is
    /// locked once, briefly), with `labels` attached.
    pub fn snapshot(&self, labels: Labels) -> Snapshot {
        let mut hists: Vec<(Histogram<u64>, u64)> =
            (0..N_HISTS).map(|_| (new_histogram(), 0)).collect();
        let mut status: std::collections::BTreeMap<String, u64> = Default::default();
        let mut ctr = [0u64; N_CTRS];
        let mut errs = [0u64; ErrorKind::ALL.len()];
        let mut op_errs = [0u64; Op::ALL.len()];
        for shard in self.shards.iter() {
            {
                let g = shard.lock();
                for (dst, src) in hists.iter_mut().zip(g.slots.iter()) {
                    if let Some(h) = &src.hist {
                        // Same bounds and auto-resize: addition cannot fail.
                        let _ = dst.0.add(h);
                    }
                    dst.1 = dst.1.saturating_add(src.sum_ns);
                }
                for (st, n) in &g.http_status {
                    *status.entry(st.to_string()).or_default() += n;
                }
            }
            sum_into(&mut ctr, &shard.counters);
            sum_into(&mut errs, &shard.errors);
            sum_into(&mut op_errs, &shard.op_errors);
        }
        let hs = |slot: usize| HistSnapshot::from_histogram(&hists[slot].0, hists[slot].1);
        let counters = self.counters_of(&ctr);
        let mut snap = Snapshot {
            schema_version: SCHEMA_VERSION,
            labels,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            fuse_transport: self.fuse_transport.get().map_or("", |t| t).to_string(),
            read_amplification: None,
            counters,
            errors: ErrorKind::ALL
                .iter()
                .map(|k| (k.name().to_string(), errs[*k as usize]))
                .collect(),
            http_status: status,
            fuse_ops: Op::ALL
                .iter()
                .map(|op| (op.name().to_string(), hs(*op as usize)))
                .collect(),
            fuse_op_errors: Op::ALL
                .iter()
                .map(|op| (op.name().to_string(), op_errs[*op as usize]))
                .collect(),
            timings: Timings {
                range_get: hs(Timing::RangeGet.slot()),
                inflate: hs(Timing::Inflate.slot()),
                cache_hit: hs(Timing::CacheHit.slot()),
                cache_miss: hs(Timing::CacheMiss.slot()),
                blocked_on_network: hs(Timing::Blocked.slot()),
            },
        };
        snap.read_amplification = snap.counters.read_amplification();
        snap
    }
}

/// Adds the shard counters `src` into `dst`.
fn sum_into(dst: &mut [u64], src: &[AtomicU64]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = d.saturating_add(s.load(Ordering::Relaxed));
    }
}

/// Times one FUSE operation; records into its [`Metrics`] on drop (also on
/// early return or `?`). Call [`OpTimer::mark_error`] before dropping when
/// the operation replies with an error.
#[derive(Debug)]
#[must_use = "the timer records when dropped; binding it to `_` drops it at once"]
pub struct OpTimer<'a> {
    metrics: &'a Metrics,
    op: Op,
    start: Instant,
    error: bool,
}

impl OpTimer<'_> {
    /// Counts this operation in `fuse_op_errors` as well.
    pub fn mark_error(&mut self) {
        self.error = true;
    }

    /// Time elapsed so far.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for OpTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .record_fuse_op(self.op, self.start.elapsed(), self.error);
    }
}

/// This process's `(VmRSS, RssAnon)` in bytes, from /proc/self/status
/// (zeros where it cannot be read).
fn process_memory() -> (u64, u64) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("RssAnon:"))
}
