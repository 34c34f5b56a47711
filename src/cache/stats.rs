//! Cache counters: cheap relaxed atomics, read as a [`CacheStatsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters of a [`super::ContentCache`].
        #[derive(Debug, Default)]
        pub struct CacheStats {
            $($(#[$doc])* pub $name: AtomicU64,)*
        }

        /// A point-in-time copy of [`CacheStats`].
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct CacheStatsSnapshot {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl CacheStats {
            /// Copies the counters.
            pub fn snapshot(&self) -> CacheStatsSnapshot {
                CacheStatsSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }
    };
}

stats! {
    /// Chunk lookups served from memory.
    hits,
    /// Chunk lookups that went to the miss path.
    misses,
    /// Misses that found the chunk cached after waiting for another reader's fill.
    shared_fills,
    /// Compressed bytes fetched from the source.
    bytes_fetched,
    /// `read_at` calls made on the source.
    fetch_count,
    /// Nanoseconds spent in source fetches.
    fetch_time_ns,
    /// Uncompressed bytes produced by decoders.
    bytes_inflated,
    /// Nanoseconds spent inside decoders.
    inflate_time_ns,
    /// Chunks evicted from memory.
    evictions,
    /// Bytes copied out to callers.
    bytes_served,
    /// Fills that continued a parked decoder.
    decoder_resumes,
    /// Fills that started a decoder at a checkpoint.
    decoder_starts,
    /// Chunks that failed verification.
    digest_mismatches,
    /// Span jobs queued by prefetch hints.
    prefetch_jobs,
    /// Compressed bytes fetched by prefetch threads (also in `bytes_fetched`).
    prefetch_bytes,
    /// Prefetch jobs that failed (logged at debug; readers retry themselves).
    prefetch_errors,
    /// Chunks missing in memory that the disk tier supplied (verified).
    disk_hits,
}

impl CacheStats {
    pub(crate) fn add(counter: &AtomicU64, v: u64) {
        counter.fetch_add(v, Relaxed);
    }
}
