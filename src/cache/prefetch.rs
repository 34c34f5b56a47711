//! Background prefetch: a bounded two-level queue of range jobs and the
//! threads that serve them. The jobs themselves run the cache's ordinary
//! single-flight fill span by span (see `ContentCache::run_prefetch`), so a
//! reader that needs a span being prefetched waits on the span lock and then
//! finds the chunks in memory.
//!
//! [`Urgency::Now`] jobs (the rest of a file a reader just started on) are
//! served before every [`Urgency::Later`] job (speculation: a program's
//! libraries, a directory's other small files), newest first: what was hinted
//! last is what a process is about to read. When the queue is full the
//! oldest speculative job is dropped, never a newer one.
//!
//! The threads hold only a `Weak` reference to the cache and an `Arc` of the
//! queue; dropping the [`Prefetcher`] (with the cache) closes the queue and
//! every thread exits.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};

use super::Urgency;
use crate::sync::{lock, wait};

/// Fill the chunks holding `[start, end)` of layer `layer`'s uncompressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The jobs waiting for a thread.
#[derive(Debug, Default)]
struct Queue {
    now: VecDeque<Job>,
    later: VecDeque<Job>,
    cap: usize,
    closed: bool,
}

impl Queue {
    fn len(&self) -> usize {
        self.now.len() + self.later.len()
    }

    /// The next job: urgent ones first, in the order they came (a reader
    /// walks a file forward); then the newest speculation.
    fn pop(&mut self) -> Option<Job> {
        self.now.pop_front().or_else(|| self.later.pop_back())
    }
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
}

/// The queue (once started) and a count of live threads.
#[derive(Debug, Default)]
pub(super) struct Prefetcher {
    shared: OnceLock<Arc<Shared>>,
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
    /// `owner` is alive, with at most `cap` jobs waiting. Only the first
    /// call does anything.
    pub fn start<T: Send + Sync + 'static>(
        &self,
        threads: usize,
        cap: usize,
        owner: Weak<T>,
        run: fn(&T, Job),
    ) {
        if threads == 0 || self.shared.get().is_some() {
            return;
        }
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                cap: cap.max(1),
                ..Queue::default()
            }),
            ready: Condvar::new(),
        });
        if self.shared.set(shared.clone()).is_err() {
            return;
        }
        for i in 0..threads {
            let (shared, owner) = (shared.clone(), owner.clone());
            self.live.fetch_add(1, Ordering::SeqCst);
            let alive = Alive(self.live.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("clip-prefetch-{i}"))
                .spawn(move || {
                    let _alive = alive;
                    PREFETCH_THREAD.with(|p| p.set(true));
                    while let Some(job) = next_job(&shared) {
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
        self.shared.get().is_some()
    }

    /// Queues `jobs` (in the order they should run); returns how many were
    /// queued (none when prefetch is off; a full queue drops the oldest
    /// speculative jobs first, then refuses new speculative ones).
    pub fn send(&self, urgency: Urgency, jobs: impl IntoIterator<Item = Job>) -> usize {
        let Some(shared) = self.shared.get() else {
            return 0;
        };
        let mut q = lock(&shared.queue);
        let mut queued = 0;
        for job in jobs {
            if q.len() >= q.cap {
                // Make room by dropping the oldest speculation, but never a
                // job of this batch: then the rest of the batch is dropped.
                let own = if urgency == Urgency::Later { queued } else { 0 };
                if q.later.len() <= own {
                    break;
                }
                q.later.pop_front();
            }
            match urgency {
                Urgency::Now => q.now.push_back(job),
                // Reversed below so that `pop_back` serves the batch in order.
                Urgency::Later => q.later.push_back(job),
            }
            queued += 1;
        }
        if urgency == Urgency::Later && queued > 1 {
            // This batch runs in the order given, before older speculation.
            let n = q.later.len();
            q.later.make_contiguous()[n - queued..].reverse();
        }
        drop(q);
        shared.ready.notify_all();
        queued
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

impl Drop for Prefetcher {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.get() {
            lock(&shared.queue).closed = true;
            shared.ready.notify_all();
        }
    }
}

/// Blocks until there is a job, or returns `None` once the queue is closed.
fn next_job(shared: &Shared) -> Option<Job> {
    let mut q = lock(&shared.queue);
    loop {
        if q.closed {
            return None;
        }
        if let Some(job) = q.pop() {
            return Some(job);
        }
        q = wait(&shared.ready, q);
    }
}

#[cfg(test)]
mod tests {
    use super::{Job, Queue};

    fn job(start: u64) -> Job {
        Job {
            layer: 0,
            start,
            end: start + 1,
        }
    }

    #[test]
    fn urgent_jobs_first_in_order_then_newest_speculation() {
        let mut q = Queue {
            cap: 16,
            ..Queue::default()
        };
        q.later.push_back(job(10));
        q.later.push_back(job(20));
        q.now.push_back(job(1));
        q.now.push_back(job(2));
        let order: Vec<u64> = std::iter::from_fn(|| q.pop()).map(|j| j.start).collect();
        assert_eq!(order, [1, 2, 20, 10]);
    }
}
