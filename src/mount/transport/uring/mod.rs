//! FUSE over io_uring (kernel `fs/fuse/dev_uring.c`,
//! Documentation/filesystems/fuse-io-uring.rst): one queue per possible CPU
//! (the kernel puts a request on the queue of the CPU its task runs on and
//! uses io_uring only once every queue has an entry), one thread per queue,
//! pinned to that CPU, with its own SQE128 ring.
//!
//! Each entry is registered once (`FUSE_IO_URING_CMD_REGISTER` with its
//! header and payload buffers, [`entries`]); the completion of that command
//! is the entry's first request. The thread serves it in place and answers
//! with `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, whose completion is the next
//! request: one `io_uring_enter` per batch of requests, no read/write pair
//! per request.
//!
//! A READ that would wait on the network keeps its entry while the hand-off
//! pool works; the pool's answer comes back over a channel and an eventfd
//! the ring polls, and the queue thread writes it into the entry and
//! commits, so only this thread ever submits to its ring. A queue hands off
//! at most `depth - RESERVE` reads at once; beyond that, reads are served
//! inline (the kernel would otherwise queue new requests behind the held
//! entries anyway).

mod entries;
mod sys;

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::dispatch::{opcode, Dispatch};
use super::handoff::{Answer, ReadReply};
use super::Shared;
use entries::{Entries, Request};
use sys::{EventFd, Iovecs, Ring, Submitter};

/// Ring entries per queue. An entry's buffers are mapped, not allocated:
/// the kernel hands out the most recently returned entry first, so only
/// as many entries as requests in flight are ever touched (each 1 MiB of
/// payload at most, for a 1 MiB READ); the rest cost address space only.
/// Many entries let many reads wait on the network at once.
pub(super) const DEFAULT_DEPTH: u16 = 64;

/// Entries a queue keeps for inline requests: it hands off a READ only
/// while more than this many are not held by waiting reads.
const RESERVE: u16 = 4;

/// `user_data` of the eventfd poll (entries use their index).
const WAKE: u64 = u64::MAX;

/// How long a stopping queue waits for the kernel to give back its
/// entries before it leaves their memory mapped for good.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// The possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3`): the
/// kernel makes one queue per possible CPU and wants an entry in each.
fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let mut n = 0;
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let bad = || io::Error::other(format!("cannot parse possible CPUs {s:?}"));
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (
            lo.parse().map_err(|_| bad())?,
            hi.parse().map_err(|_| bad())?,
        );
        n += hi.checked_sub(lo).ok_or_else(bad)? + 1;
    }
    Ok(n.max(1))
}

/// The queues of one mount.
#[derive(Debug)]
pub(super) struct Rings {
    queues: Vec<QueueHandle>,
}

/// The first error of `n` queue reports on `rx` (10 s each at most).
fn all_ok(rx: &Receiver<Result<(), String>>, n: usize, what: &str) -> Result<(), String> {
    let mut result = Ok(());
    for _ in 0..n {
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| Err(format!("a queue did not {what}")));
        result = result.and(r);
    }
    result
}

/// Tells a prepared queue to register; it answers on the sender.
type Go = Sender<Result<(), String>>;

#[derive(Debug)]
struct QueueHandle {
    thread: JoinHandle<()>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    go: Sender<Go>,
}

impl Rings {
    /// Starts a thread per queue, each with its ring and entry buffers but
    /// nothing registered yet: called before INIT is answered, so that a
    /// failure here (no io_uring, no memory) leaves the connection on
    /// `/dev/fuse`. Once INIT negotiated io_uring the kernel holds every
    /// request back until each queue has an entry, and only a failed
    /// registration (not a missing one) makes it fall back.
    pub(super) fn prepare(shared: &Shared) -> Result<Rings, String> {
        let n = possible_cpus().map_err(|e| e.to_string())?;
        let mut rings = Rings { queues: Vec::new() };
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(n);
        for qid in 0..n {
            let started = EventFd::new().and_then(|wake| {
                let (wake, stop) = (Arc::new(wake), Arc::new(AtomicBool::new(false)));
                let (go_tx, go_rx) = crossbeam_channel::bounded(1);
                let q = QueueSetup {
                    qid: qid as u16,
                    depth: shared.uring_depth,
                    dispatch: shared.dispatch.clone(),
                    fuse: shared.fuse.clone(),
                    wake: wake.clone(),
                    stop: stop.clone(),
                };
                let ready = ready_tx.clone();
                let thread = std::thread::Builder::new()
                    .name(format!("clip-uring-{qid}"))
                    .spawn(move || q.run(&ready, &go_rx))?;
                rings.queues.push(QueueHandle {
                    thread,
                    wake,
                    stop,
                    go: go_tx,
                });
                Ok(())
            });
            if let Err(e) = started {
                rings.stop();
                return Err(format!("queue {qid}: {e}"));
            }
        }
        match all_ok(&ready_rx, rings.queues.len(), "start") {
            Ok(()) => Ok(rings),
            Err(e) => {
                rings.stop();
                Err(e)
            }
        }
    }

    /// After INIT negotiated io_uring: every queue registers its entries.
    /// A failure is reported (the kernel then serves the connection over
    /// `/dev/fuse`); the queues that did register stay until the connection
    /// ends, as the kernel keeps their entries.
    pub(super) fn register(&self) -> Result<(), String> {
        let (done_tx, done_rx) = crossbeam_channel::bounded(self.queues.len());
        for q in &self.queues {
            if q.go.send(done_tx.clone()).is_err() {
                return Err("a queue thread ended".into());
            }
        }
        all_ok(&done_rx, self.queues.len(), "register")
    }

    /// Queues running.
    pub(super) fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Stops the queue threads and joins them.
    pub(super) fn stop(self) {
        for q in &self.queues {
            q.stop.store(true, Ordering::Relaxed);
            q.wake.notify();
        }
        for q in self.queues {
            drop(q.go);
            let _ = q.thread.join();
        }
    }
}

/// What a queue thread starts from.
struct QueueSetup {
    qid: u16,
    depth: u16,
    dispatch: Arc<Dispatch>,
    fuse: Arc<File>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
}

impl QueueSetup {
    /// Builds the queue, reports on `ready`, waits for the order to
    /// register (or for the queue to be dropped), registers, reports, serves.
    fn run(self, ready: &Sender<Result<(), String>>, go: &Receiver<Go>) {
        if let Err(e) = sys::pin_to_cpu(self.qid.into()) {
            tracing::debug!(qid = self.qid, error = %e, "cannot pin the queue thread");
        }
        let mut q = match Queue::new(self) {
            Ok(q) => q,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let Ok(done) = go.recv() else {
            return; // never registered: nothing of it is in the kernel
        };
        let registered = q.register();
        let _ = done.send(registered);
        if q.has_entries() {
            q.serve();
        }
        q.finish();
    }
}

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Waiting in the kernel for a request (a command is in flight).
    Kernel,
    /// Holding a request this thread serves now.
    Serving,
    /// Holding a READ the hand-off pool works on.
    HandedOff,
}

/// A handed-off READ's reply, back on the queue thread.
struct Completed {
    entry: u16,
    commit_id: u64,
    unique: u64,
    reply: ReadReply,
}

/// Sends a handed-off READ's reply to its queue thread.
struct UringAnswer {
    entry: u16,
    commit_id: u64,
    tx: Sender<Completed>,
    wake: Arc<EventFd>,
}

impl Answer for UringAnswer {
    fn send(&self, unique: u64, reply: ReadReply) {
        let c = Completed {
            entry: self.entry,
            commit_id: self.commit_id,
            unique,
            reply,
        };
        // Fails only once the queue thread is gone (the mount ended).
        if self.tx.send(c).is_ok() {
            self.wake.notify();
        }
    }
}

/// One queue: its ring, its entries, and who holds which entry.
struct Queue {
    // Declared (so dropped) before `entries`: the ring's commands point at
    // the entries' memory.
    ring: Ring,
    entries: Entries,
    iovecs: Vec<Iovecs>,
    slots: Vec<Slot>,
    in_kernel: usize,
    handed_off: u16,
    /// The kernel tore the entries down (connection ended).
    gone: bool,
    /// Completions that arrived while registering, for [`Queue::serve`]:
    /// once every queue has an entry the kernel dispatches requests, so an
    /// entry's REGISTER can complete with its first request before the
    /// last registration of this queue was even submitted.
    early: Vec<(u64, i32)>,
    done_tx: Sender<Completed>,
    done_rx: Receiver<Completed>,
    fd: RawFd,
    qid: u16,
    dispatch: Arc<Dispatch>,
    wake: Arc<EventFd>,
    stop: Arc<AtomicBool>,
    /// Keeps `fd` open.
    _fuse: Arc<File>,
    last_full_warning: Option<Instant>,
}

impl Queue {
    fn new(s: QueueSetup) -> Result<Self, String> {
        let entries = Entries::new(s.depth)?;
        let ring = Ring::builder()
            .build(u32::from(s.depth) + 1)
            .map_err(|e| format!("io_uring_setup: {e}"))?;
        let iovecs = (0..s.depth)
            .map(|e| Iovecs::new(entries.buffers(e)))
            .collect();
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        Ok(Queue {
            ring,
            slots: vec![Slot::Serving; usize::from(s.depth)],
            entries,
            iovecs,
            in_kernel: 0,
            handed_off: 0,
            gone: false,
            early: Vec::new(),
            done_tx,
            done_rx,
            fd: s.fuse.as_raw_fd(),
            qid: s.qid,
            dispatch: s.dispatch,
            wake: s.wake,
            stop: s.stop,
            _fuse: s.fuse,
            last_full_warning: None,
        })
    }

    /// Registers every entry and arms the wake poll; an immediate error
    /// (e.g. EOPNOTSUPP: io_uring is off for the connection) fails.
    fn register(&mut self) -> Result<(), String> {
        let mut sub = Submitter {
            ring: &mut self.ring,
        };
        for e in 0..self.entries.depth() {
            sub.register(
                self.fd,
                self.qid,
                &self.iovecs[usize::from(e)],
                u64::from(e),
            )
            .map_err(|e| e.to_string())?;
            self.slots[usize::from(e)] = Slot::Kernel;
            self.in_kernel += 1;
        }
        sub.poll(self.wake.fd(), WAKE).map_err(|e| e.to_string())?;
        self.ring
            .submit()
            .map_err(|e| format!("io_uring_enter: {e}"))?;
        // A failed REGISTER is reported here; every other completion (a
        // request delivered to an entry, the wake poll) must be served:
        // dropping one would leave a request, or a READ's answer, waiting
        // forever.
        let mut failed = None;
        for c in self.ring.completion() {
            let (user_data, res) = (c.user_data(), c.result());
            if user_data != WAKE && res < 0 {
                let e = user_data as u16;
                self.in_kernel -= 1;
                self.slots[usize::from(e)] = Slot::Serving;
                failed.get_or_insert(res);
            } else {
                self.early.push((user_data, res));
            }
        }
        match failed {
            None => Ok(()),
            Some(res) => Err(format!(
                "queue {}: FUSE_IO_URING_CMD_REGISTER: {}",
                self.qid,
                io::Error::from_raw_os_error(-res)
            )),
        }
    }

    /// Whether the kernel holds any entry of this queue (after a partly
    /// failed registration, those entries still get requests).
    fn has_entries(&self) -> bool {
        self.in_kernel > 0
    }

    /// Serves requests until the connection ends or the queue is stopped.
    fn serve(&mut self) {
        let mut cqes = std::mem::take(&mut self.early);
        cqes.reserve(usize::from(self.entries.depth()) + 1);
        loop {
            if cqes.is_empty() {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::error!(qid = self.qid, error = %e, "io_uring_enter");
                        return;
                    }
                }
                cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            }
            for &(user_data, res) in &cqes {
                if user_data == WAKE {
                    self.wake.drain();
                    self.take_answers();
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = (Submitter {
                        ring: &mut self.ring,
                    })
                    .poll(self.wake.fd(), WAKE)
                    {
                        tracing::error!(qid = self.qid, error = %e, "re-arming the wake poll");
                    }
                    continue;
                }
                let e = user_data as u16;
                self.in_kernel -= 1;
                self.slots[usize::from(e)] = Slot::Serving;
                if res < 0 {
                    self.entry_failed(e, res);
                } else {
                    self.serve_entry(e);
                }
            }
            cqes.clear();
            if self.gone && self.in_kernel == 0 {
                return;
            }
        }
    }

    /// A command of entry `e` failed: the connection ended (ENOTCONN,
    /// ECANCELED: nothing to do), or something else (logged; the entry is
    /// registered again so the queue keeps its depth).
    fn entry_failed(&mut self, e: u16, res: i32) {
        match -res {
            libc::ENOTCONN | libc::ECANCELED | libc::ENODEV => self.gone = true,
            errno => {
                tracing::warn!(qid = self.qid, entry = e, error = %io::Error::from_raw_os_error(errno), "FUSE ring command failed");
                if !self.gone {
                    let mut sub = Submitter {
                        ring: &mut self.ring,
                    };
                    if sub
                        .register(
                            self.fd,
                            self.qid,
                            &self.iovecs[usize::from(e)],
                            u64::from(e),
                        )
                        .is_ok()
                    {
                        self.slots[usize::from(e)] = Slot::Kernel;
                        self.in_kernel += 1;
                    }
                }
            }
        }
    }

    /// Serves the request the kernel delivered into entry `e`.
    fn serve_entry(&mut self, e: u16) {
        let req = match self.entries.request(e) {
            Ok(r) => r,
            Err(msg) => {
                // Only if the entry's memory were gone: without its commit id
                // the request cannot be answered.
                tracing::error!(qid = self.qid, entry = e, "unreadable ring entry: {msg}");
                return;
            }
        };
        if let Some(why) = &req.malformed {
            tracing::error!(qid = self.qid, entry = e, "{why}; answering EIO");
            if let Err(msg) = self
                .entries
                .write_reply(e, req.header.unique, libc::EIO, &[])
            {
                tracing::error!(qid = self.qid, entry = e, "ring entry reply: {msg}");
            }
            return self.commit(e, req.commit_id);
        }
        if req.header.opcode == opcode::READ && self.hand_off(e, &req) {
            return;
        }
        match self.entries.reader_writer(e, &req) {
            Ok((r, w)) => self.dispatch.serve(r, w),
            Err(msg) => tracing::error!(qid = self.qid, entry = e, "ring entry: {msg}"),
        }
        if let Err(msg) = self.entries.seal_reply(e, &req) {
            tracing::error!(qid = self.qid, entry = e, "ring entry reply: {msg}");
        }
        self.commit(e, req.commit_id);
    }

    /// Hands READ `req` in entry `e` to the pool if it would wait on the
    /// network and the queue has entries to spare.
    fn hand_off(&mut self, e: u16, req: &Request) -> bool {
        let Some(read) = self.entries.read_in(e, req) else {
            return false;
        };
        let Some(rr) = self.dispatch.route_read(&req.header, &read) else {
            return false;
        };
        if self.handed_off + RESERVE >= self.entries.depth() {
            let now = Instant::now();
            if self
                .last_full_warning
                .is_none_or(|t| now - t > Duration::from_secs(10))
            {
                self.last_full_warning = Some(now);
                tracing::warn!(
                    qid = self.qid,
                    waiting = self.handed_off,
                    "every spare ring entry holds a READ waiting on the network; serving READs inline"
                );
            }
            return false;
        }
        self.handed_off += 1;
        self.slots[usize::from(e)] = Slot::HandedOff;
        let answer = UringAnswer {
            entry: e,
            commit_id: req.commit_id,
            tx: self.done_tx.clone(),
            wake: self.wake.clone(),
        };
        self.dispatch.handoff.submit(rr, Box::new(answer));
        true
    }

    /// Writes the hand-off pool's answers into their entries and commits.
    fn take_answers(&mut self) {
        while let Ok(c) = self.done_rx.try_recv() {
            let e = c.entry;
            if self.slots.get(usize::from(e)) != Some(&Slot::HandedOff) {
                continue;
            }
            self.handed_off -= 1;
            self.slots[usize::from(e)] = Slot::Serving;
            let r = match &c.reply {
                ReadReply::Data(d) => self.entries.write_reply(e, c.unique, 0, d),
                ReadReply::Error(errno) => self.entries.write_reply(e, c.unique, *errno, &[]),
            };
            if let Err(msg) = r {
                tracing::error!(qid = self.qid, entry = e, "ring entry reply: {msg}");
            }
            self.commit(e, c.commit_id);
        }
    }

    /// Queues the COMMIT_AND_FETCH of entry `e` (submitted with the next
    /// wait).
    fn commit(&mut self, e: u16, commit_id: u64) {
        let mut sub = Submitter {
            ring: &mut self.ring,
        };
        match sub.commit(self.fd, self.qid, commit_id, u64::from(e)) {
            Ok(()) => {
                self.slots[usize::from(e)] = Slot::Kernel;
                self.in_kernel += 1;
            }
            Err(err) => tracing::error!(qid = self.qid, entry = e, error = %err, "commit"),
        }
    }
}

impl Queue {
    /// Ends the queue. Its ring and memory are dropped (the ring first) once
    /// the kernel holds none of its entries; if the connection lives on (a
    /// lazy unmount of a busy mount), the kernel may still write requests
    /// into them, so after a short grace they stay mapped for the life of
    /// the process.
    fn finish(mut self) {
        let until = Instant::now() + STOP_GRACE;
        while self.in_kernel > 0 && !self.gone && Instant::now() < until {
            let ts = io_uring::types::Timespec::new().nsec(50_000_000);
            let args = io_uring::types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let results: Vec<i32> = self
                .ring
                .completion()
                .filter(|c| c.user_data() != WAKE)
                .map(|c| c.result())
                .collect();
            for res in results {
                self.in_kernel -= 1;
                if res < 0 {
                    self.gone = true;
                }
            }
        }
        if self.in_kernel > 0 && !self.gone {
            tracing::warn!(
                qid = self.qid,
                entries = self.in_kernel,
                "FUSE ring entries still registered; leaving their buffers mapped"
            );
            std::mem::forget(self);
        }
    }
}
