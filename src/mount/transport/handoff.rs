//! READs that would wait on the network, answered off the queue threads.
//!
//! A transport thread that receives such a READ registers it here with an
//! [`Answer`] (where its reply goes: a write to `/dev/fuse`, or a commit of
//! its io_uring entry) and goes back to its queue. A pool thread runs the
//! blocking read ([`ClipFs::read_to_vec`]: the cache's fill machinery, which
//! verifies every chunk) and answers with the bytes. Whichever comes first
//! answers, exactly once: the bytes, the deadline (EIO, counted as a
//! `timeout` error), or a FUSE_INTERRUPT for the request (EINTR). A read
//! that lost the race still completes in the background and leaves its
//! chunks in the cache.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::lock;
use crate::fuse::ClipFs;
use crate::metrics::{ErrorKind, Metrics, Op};

/// Pool threads running blocked reads. Each waits on a fill (network, then
/// inflate); the cache bounds fetches in flight itself (16 by default), so
/// more threads would only wait on its semaphore.
const POOL_THREADS: usize = 16;

/// The reply to a handed-off READ.
#[derive(Debug)]
pub(super) enum ReadReply {
    /// The bytes read (possibly fewer than asked at the end of the file).
    Data(Vec<u8>),
    /// An errno.
    Error(i32),
}

/// Where a handed-off READ's reply goes.
pub(super) trait Answer: Send + Sync {
    /// Sends the reply to request `unique`; called exactly once.
    fn send(&self, unique: u64, reply: ReadReply);
}

/// A READ as the kernel asked for it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadRequest {
    pub(super) unique: u64,
    pub(super) ino: u64,
    pub(super) offset: u64,
    pub(super) size: u32,
}

struct Pending {
    req: ReadRequest,
    started: Instant,
    answer: Box<dyn Answer>,
    answered: AtomicBool,
}

#[derive(Default)]
struct Table {
    /// Unanswered reads by request id (FUSE_INTERRUPT names them so).
    waiting: HashMap<u64, Arc<Pending>>,
    /// Their deadlines, earliest first.
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
}

struct Inner {
    fs: Arc<ClipFs>,
    timeout: Duration,
    metrics: Option<Arc<Metrics>>,
    table: Mutex<Table>,
    /// Wakes the deadline thread (new earliest deadline, or closing).
    cv: Condvar,
    closed: AtomicBool,
}

/// The hand-off pool and its deadline thread.
pub(super) struct Handoff {
    inner: Arc<Inner>,
    jobs: Sender<Arc<Pending>>,
}

impl Handoff {
    /// Starts the pool threads and the deadline thread.
    pub(super) fn start(
        fs: Arc<ClipFs>,
        timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            fs,
            timeout,
            metrics,
            table: Mutex::new(Table::default()),
            cv: Condvar::new(),
            closed: AtomicBool::new(false),
        });
        let (jobs, rx) = crossbeam_channel::unbounded::<Arc<Pending>>();
        for i in 0..POOL_THREADS {
            let (rx, weak) = (rx.clone(), Arc::downgrade(&inner));
            std::thread::Builder::new()
                .name(format!("clip-read-{i}"))
                .spawn(move || run_pool(&rx, &weak))?;
        }
        let timer = inner.clone();
        std::thread::Builder::new()
            .name("clip-read-deadline".into())
            .spawn(move || run_deadlines(&timer))?;
        Ok(Handoff { inner, jobs })
    }

    /// Takes over READ `req`: it is answered through `answer`.
    pub(super) fn submit(&self, req: ReadRequest, answer: Box<dyn Answer>) {
        let p = Arc::new(Pending {
            req,
            started: Instant::now(),
            answer,
            answered: AtomicBool::new(false),
        });
        {
            let mut t = lock(&self.inner.table);
            if t.deadlines.len() > 2 * t.waiting.len() + 1024 {
                // Most are of reads answered long ago: keep the heap small.
                let live: BinaryHeap<_> = t
                    .waiting
                    .values()
                    .map(|w| Reverse((w.started + self.inner.timeout, w.req.unique)))
                    .collect();
                t.deadlines = live;
            }
            let deadline = p.started + self.inner.timeout;
            let earliest = t
                .deadlines
                .peek()
                .is_none_or(|Reverse((d, _))| deadline < *d);
            t.deadlines.push(Reverse((deadline, req.unique)));
            t.waiting.insert(req.unique, p.clone());
            if earliest {
                self.inner.cv.notify_one();
            }
        }
        if let Err(e) = self.jobs.send(p) {
            // Closed: the mount is going away.
            self.inner.finish(&e.0, ReadReply::Error(libc::EIO));
        }
    }

    /// FUSE_INTERRUPT for request `unique`: a waiting read is answered with
    /// EINTR now. `false` if no such read waits (already answered, or never
    /// handed off).
    pub(super) fn interrupt(&self, unique: u64) -> bool {
        let p = lock(&self.inner.table).waiting.get(&unique).cloned();
        match p {
            Some(p) => {
                tracing::debug!(unique, ino = p.req.ino, "READ interrupted");
                self.inner.finish(&p, ReadReply::Error(libc::EINTR));
                true
            }
            None => false,
        }
    }

    /// Stops the deadline thread; the pool threads end when their queue is
    /// dropped (with the last [`Handoff`]).
    pub(super) fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        let _t = lock(&self.inner.table);
        self.inner.cv.notify_all();
    }

    /// Reads waiting for an answer.
    pub(super) fn waiting(&self) -> usize {
        lock(&self.inner.table).waiting.len()
    }

    /// Waits (polling every 5 ms, up to `timeout`) until no read waits for
    /// an answer; returns how many still do. A takeover calls it after the
    /// queues stopped taking requests: every READ already taken is
    /// answered before `/dev/fuse` changes hands. It converges: each read
    /// is answered by its bytes or, at the latest, its deadline.
    pub(super) fn drain(&self, timeout: Duration) -> usize {
        let until = Instant::now() + timeout;
        loop {
            let n = self.waiting();
            if n == 0 || Instant::now() >= until {
                return n;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The per-READ deadline.
    pub(super) fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

impl Inner {
    /// Answers `p` unless it already was.
    fn finish(&self, p: &Pending, reply: ReadReply) {
        if p.answered.swap(true, Ordering::AcqRel) {
            return;
        }
        lock(&self.table).waiting.remove(&p.req.unique);
        if let Some(m) = &self.metrics {
            let failed = matches!(reply, ReadReply::Error(_));
            m.record_fuse_op(Op::Read, p.started.elapsed(), failed);
        }
        p.answer.send(p.req.unique, reply);
    }
}

fn run_pool(rx: &Receiver<Arc<Pending>>, inner: &Weak<Inner>) {
    while let Ok(p) = rx.recv() {
        if p.answered.load(Ordering::Acquire) {
            continue; // timed out or interrupted while queued
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let r = &p.req;
        let reply = match inner.fs.read_to_vec(r.ino, r.offset, r.size) {
            Ok(data) => ReadReply::Data(data),
            Err(e) => ReadReply::Error(e.errno()),
        };
        inner.finish(&p, reply);
    }
}

fn run_deadlines(inner: &Inner) {
    let mut t = lock(&inner.table);
    while !inner.closed.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(&Reverse((deadline, unique))) = t.deadlines.peek() {
            if deadline > now {
                break;
            }
            t.deadlines.pop();
            if let Some(p) = t.waiting.get(&unique) {
                expired.push(p.clone());
            }
        }
        if !expired.is_empty() {
            drop(t);
            for p in expired {
                tracing::warn!(
                    ino = p.req.ino,
                    offset = p.req.offset,
                    size = p.req.size,
                    timeout = ?inner.timeout,
                    "READ still waiting for its bytes at its deadline; answering EIO"
                );
                if let Some(m) = &inner.metrics {
                    m.count_error(ErrorKind::Timeout);
                }
                inner.finish(&p, ReadReply::Error(libc::EIO));
            }
            t = lock(&inner.table);
            continue;
        }
        let wait = t
            .deadlines
            .peek()
            .map_or(Duration::from_secs(3600), |Reverse((d, _))| {
                d.saturating_duration_since(now)
            });
        t = inner
            .cv
            .wait_timeout(t, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

impl std::fmt::Debug for Handoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}
