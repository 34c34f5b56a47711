//! Background prefetch: a bounded queue of range jobs and the threads that
//! serve them. The jobs themselves run the cache's ordinary single-flight fill
//! span by span (see `ContentCache::run_prefetch`), so a reader that needs a
//! span being prefetched waits on the span lock and then finds the chunks in
//! memory.
//!
//! The threads hold only a `Weak` reference to the cache and the receiving
//! end of the queue; the cache holds the sending end. Dropping the last
//! strong reference closes the queue and every thread exits.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use crossbeam_channel::{Sender, TrySendError};

/// Fill the chunks holding `[start, end)` of layer `layer`'s uncompressed stream.
#[derive(Debug, Clone, Copy)]
pub(super) struct Job {
    pub layer: u32,
    pub start: u64,
    pub end: u64,
}

thread_local! {
    static PREFETCH_THREAD: Cell<bool> = const { Cell::new(false) };
    static GETS: Cell<u64> = const { Cell::new(0) };
}

/// Counts one GET made by the calling thread.
pub(super) fn count_get() {
    GETS.with(|g| g.set(g.get() + 1));
}

/// GETs the calling thread has made so far.
pub(super) fn gets_on_this_thread() -> u64 {
    GETS.with(Cell::get)
}

/// Whether the calling thread is a prefetch thread (its fetches are nobody's
/// wait and are counted as prefetch bytes).
pub(super) fn in_prefetch_thread() -> bool {
    PREFETCH_THREAD.with(Cell::get)
}

/// The queue's sending end (once started) and a count of live threads.
#[derive(Debug, Default)]
pub(super) struct Prefetcher {
    tx: OnceLock<Sender<Job>>,
    live: Arc<AtomicUsize>,
}

/// Decrements the live-thread count when a thread ends (even by panic).
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Prefetcher {
    /// Starts `threads` threads running `run(&owner, job)` for each job while
    /// `owner` is alive. Only the first call does anything.
    pub fn start<T: Send + Sync + 'static>(
        &self,
        threads: usize,
        queue: usize,
        owner: Weak<T>,
        run: fn(&T, Job),
    ) {
        if threads == 0 || self.tx.get().is_some() {
            return;
        }
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        if self.tx.set(tx).is_err() {
            return;
        }
        for i in 0..threads {
            let (rx, owner) = (rx.clone(), owner.clone());
            self.live.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(self.live.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("clip-prefetch-{i}"))
                .spawn(move || {
                    let _alive = alive;
                    PREFETCH_THREAD.with(|p| p.set(true));
                    // Ends when the cache (the only sender) is dropped.
                    while let Ok(job) = rx.recv() {
                        let Some(owner) = owner.upgrade() else { break };
                        run(&owner, job);
                    }
                });
            if let Err(e) = spawned {
                // The closure (and its `Alive`) was dropped: count is right.
                tracing::warn!(error = %e, "cannot start a prefetch thread");
                break;
            }
        }
    }

    /// Whether prefetch threads were started.
    pub fn started(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Queues `job`; `false` when prefetch is off or the queue is full.
    pub fn try_send(&self, job: Job) -> bool {
        match self.tx.get().map(|tx| tx.try_send(job)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Starts `threads` threads that run `run(&owner, job)` over `jobs`,
    /// taking them in order, and end when the list is done or `owner` is
    /// gone. Independent of [`Prefetcher::start`]; counted in the same
    /// live-thread count.
    pub fn run_list<T: Send + Sync + 'static>(
        &self,
        threads: usize,
        jobs: Vec<Job>,
        owner: Weak<T>,
        run: fn(&T, Job),
    ) {
        let jobs = Arc::new(jobs);
        let next = Arc::new(AtomicUsize::new(0));
        for i in 0..threads.min(jobs.len()) {
            let (jobs, next, owner) = (jobs.clone(), next.clone(), owner.clone());
            self.live.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(self.live.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("clip-replay-{i}"))
                .spawn(move || {
                    let _alive = alive;
                    PREFETCH_THREAD.with(|p| p.set(true));
                    while let Some(&job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) {
                        let Some(owner) = owner.upgrade() else { break };
                        run(&owner, job);
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a profile replay thread");
                break;
            }
        }
    }

    /// Live prefetch threads (shared counter, readable after the cache is gone).
    pub fn live(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }
}
