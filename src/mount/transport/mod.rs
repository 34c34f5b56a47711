//! How the kernel's FUSE requests reach [`ClipFs`] and how the answers go
//! back. Two transports, one dispatch:
//!
//! - `/dev/fuse` ([`dev`]): worker threads read requests from the device
//!   and write replies to it (fuse-backend-rs's `FuseChannel`). It always
//!   runs: the kernel sends INIT, INTERRUPT and FORGET there even when the
//!   rest goes over io_uring, and it is the fallback.
//! - FUSE over io_uring ([`uring`], Linux 6.14+ with the fuse module
//!   parameter `enable_uring`): when INIT negotiates `FUSE_OVER_IO_URING`,
//!   one thread per CPU queue registers ring entries (a header and a payload
//!   buffer each) with `FUSE_IO_URING_CMD_REGISTER`, serves each request
//!   straight from the entry's buffers and answers with
//!   `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`, which also waits for the next one:
//!   no read/write syscall pair per request.
//!
//! Both hand every request to [`dispatch::Dispatch`], which calls
//! fuse-backend-rs's `Server::handle_message` on the one [`ClipFs`], except a
//! READ that would wait on the network: that one goes to [`handoff`]'s pool
//! and is answered when its bytes are verified or its deadline passes, so a
//! queue never waits on the network and keeps answering lookups, getattrs
//! and cache hits. FUSE_INTERRUPT cancels such a waiting read.
//!
//! fuse-backend-rs 0.14 does not know `FUSE_OVER_IO_URING` (it drops unknown
//! INIT flags), so the INIT reply is intercepted: the server writes it into a
//! buffer, the flag is added, and the reply is written to `/dev/fuse` here
//! ([`dev`]). The unsafe code of the io_uring transport lives in
//! `uring/sys.rs`.

mod dev;
mod dispatch;
mod handoff;
mod uring;

use std::fmt;
use std::fs::File;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use std::io::Write;

use fuse_backend_rs::abi::fuse_abi::OutHeader;
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;
use vm_memory::ByteValued;

use super::MountError;
use crate::fuse::ClipFs;
use crate::metrics::{FuseMetricsHook, Metrics};

use dispatch::Dispatch;
use handoff::Handoff;

/// The fuse module parameter that lets a server use io_uring.
pub const ENABLE_URING_PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Default per-READ deadline (`--read-timeout`): a READ still waiting for
/// its bytes after this long is answered with EIO. One registry stall
/// timeout (30 s, after which the source retries): long enough for a
/// chunk through a slow registry, short enough that a program sees an
/// error, not a hang (docs/faults.md measures it).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Engine::start`]'s caller waits for INIT to settle the
/// transport.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which FUSE transport a mount asks for (`--fuse-transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FuseTransport {
    /// io_uring when the kernel offers it (as root, switching the fuse
    /// module parameter on if it is off), else `/dev/fuse`.
    #[default]
    Auto,
    /// io_uring or fail the mount.
    Uring,
    /// `/dev/fuse` read/write only.
    Dev,
}

impl FromStr for FuseTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(FuseTransport::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(FuseTransport::Uring),
            "dev" => Ok(FuseTransport::Dev),
            other => Err(format!(
                "unknown FUSE transport {other:?} (expected auto, uring or dev)"
            )),
        }
    }
}

impl fmt::Display for FuseTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FuseTransport::Auto => "auto",
            FuseTransport::Uring => "uring",
            FuseTransport::Dev => "dev",
        })
    }
}

/// The transport a mount ended up using.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// `/dev/fuse` read/write.
    Dev,
    /// FUSE over io_uring.
    Uring,
}

impl TransportKind {
    /// Stable name: `dev` or `uring` (ps, metrics, logs).
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Dev => "dev",
            TransportKind::Uring => "uring",
        }
    }
}

/// Knobs of the transports.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Which transport to use.
    pub transport: FuseTransport,
    /// As root, [`FuseTransport::Auto`] and [`FuseTransport::Uring`] may
    /// switch [`ENABLE_URING_PARAM`] on (it is off by default; only servers
    /// that ask for io_uring in INIT are affected). `false` leaves it as it
    /// is (then `auto` falls back to `/dev/fuse` when it is off).
    pub may_enable_uring: bool,
    /// Per-READ deadline of a READ waiting on the network.
    pub read_timeout: Duration,
    /// Ring entries per io_uring queue (one queue per possible CPU).
    pub uring_depth: u16,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            transport: FuseTransport::Auto,
            may_enable_uring: true,
            read_timeout: DEFAULT_READ_TIMEOUT,
            uring_depth: uring::DEFAULT_DEPTH,
        }
    }
}

/// Whether `ENABLE_URING_PARAM` reads `Y`; `None` if the kernel has no
/// FUSE over io_uring.
pub fn uring_param() -> Option<bool> {
    std::fs::read_to_string(ENABLE_URING_PARAM)
        .ok()
        .map(|v| v.trim() == "Y" || v.trim() == "1")
}

/// Decides, before mounting, whether INIT may offer io_uring: checks the
/// module parameter and switches it on when allowed.
pub(super) fn prepare(opts: &TransportOptions) -> Result<bool, MountError> {
    if opts.transport == FuseTransport::Dev {
        return Ok(false);
    }
    let explicit = opts.transport == FuseTransport::Uring;
    match uring_param() {
        Some(true) => Ok(true),
        None if explicit => Err(MountError::Session(format!(
            "--fuse-transport uring: this kernel has no FUSE over io_uring \
             ({ENABLE_URING_PARAM} is missing; it needs Linux 6.14+ with CONFIG_FUSE_IO_URING)"
        ))),
        None => {
            tracing::info!("the kernel has no FUSE over io_uring; FUSE transport: /dev/fuse");
            Ok(false)
        }
        Some(false) if opts.may_enable_uring => match std::fs::write(ENABLE_URING_PARAM, "Y") {
            Ok(()) => {
                tracing::info!(
                    param = ENABLE_URING_PARAM,
                    "switched FUSE over io_uring on (the module parameter was N)"
                );
                Ok(true)
            }
            Err(e) if explicit => Err(MountError::Io {
                op: "enable FUSE over io_uring in",
                path: ENABLE_URING_PARAM.into(),
                source: e,
            }),
            Err(e) => {
                tracing::info!(error = %e, "cannot switch FUSE over io_uring on; FUSE transport: /dev/fuse");
                Ok(false)
            }
        },
        Some(false) if explicit => Err(MountError::Session(format!(
            "--fuse-transport uring: FUSE over io_uring is off ({ENABLE_URING_PARAM} is N)"
        ))),
        Some(false) => {
            tracing::info!(
                param = ENABLE_URING_PARAM,
                "FUSE over io_uring is off; FUSE transport: /dev/fuse"
            );
            Ok(false)
        }
    }
}

/// What INIT decided, shared by the threads that learn it and those that
/// wait for it.
#[derive(Debug, Default)]
struct Settled {
    kind: Mutex<Option<TransportKind>>,
    cv: Condvar,
}

impl Settled {
    fn set(&self, kind: TransportKind) {
        let mut k = lock(&self.kind);
        if k.is_none() {
            *k = Some(kind);
            self.cv.notify_all();
        }
    }

    fn get(&self) -> Option<TransportKind> {
        *lock(&self.kind)
    }

    fn wait(&self, timeout: Duration) -> Option<TransportKind> {
        let k = lock(&self.kind);
        let (k, _) = self
            .cv
            .wait_timeout_while(k, timeout, |k| k.is_none())
            .unwrap_or_else(|e| e.into_inner());
        *k
    }
}

/// State the transport threads share.
struct Shared {
    dispatch: Arc<Dispatch>,
    /// The session's `/dev/fuse` (a dup): replies of handed-off reads, the
    /// rings' commands.
    fuse: Arc<File>,
    /// INIT may offer io_uring.
    offer_uring: bool,
    uring_depth: u16,
    settled: Settled,
    /// The io_uring queues, once INIT started them.
    rings: Mutex<Option<uring::Rings>>,
    metrics: Option<Arc<Metrics>>,
    /// The kernel's INIT request, byte for byte (a takeover hands it to
    /// the successor, which replays it).
    init_request: Mutex<Option<Vec<u8>>>,
}

impl Shared {
    /// Records the transport in use (state, metrics, log).
    fn settle(&self, kind: TransportKind, why: &str) {
        if let Some(m) = &self.metrics {
            m.set_fuse_transport(kind.name());
        }
        tracing::info!(transport = kind.name(), "FUSE transport: {why}");
        self.settled.set(kind);
    }
}

/// The running transports of one mount: `/dev/fuse` workers and, once INIT
/// negotiated it, the io_uring queues.
pub(super) struct Engine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// `/dev/fuse` workers to run.
    threads: usize,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("workers", &self.workers.len())
            .field("transport", &self.shared.settled.get())
            .finish()
    }
}

impl Engine {
    /// Serves `fs` on the mounted session `se` with `threads` `/dev/fuse`
    /// workers (INIT offers io_uring if `offer_uring`, see [`prepare`]).
    /// Started workers run until the session is woken or unmounted, also
    /// if this fails.
    pub(super) fn start(
        se: &FuseSession,
        fs: ClipFs,
        threads: usize,
        offer_uring: bool,
        opts: &TransportOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, MountError> {
        let shared = Self::shared(se, fs, offer_uring, opts, metrics)?;
        Self::serve(se, shared, threads)
    }

    /// Serves `fs` on a connection another process initialised and handed
    /// over (`se` holds its `/dev/fuse` fd, see `super::takeover`): the
    /// kernel's INIT request, as that process received it, is replayed into
    /// this engine's fuse-backend-rs `Server` and [`ClipFs`] so that both
    /// negotiate what the kernel already agreed to (protocol minor,
    /// no-open, max_write); the replayed reply goes to a buffer, never to
    /// `/dev/fuse`. Then the workers start. `/dev/fuse` only: the io_uring
    /// registration of a connection is not taken over.
    pub(super) fn adopt(
        se: &FuseSession,
        fs: ClipFs,
        threads: usize,
        opts: &TransportOptions,
        metrics: Option<Arc<Metrics>>,
        init_request: &[u8],
    ) -> Result<Self, MountError> {
        let shared = Self::shared(se, fs, false, opts, metrics)?;
        dev::replay_init(&shared, init_request)
            .map_err(|e| MountError::Session(format!("replaying the taken-over INIT: {e}")))?;
        *lock(&shared.init_request) = Some(init_request.to_vec());
        shared.settle(
            TransportKind::Dev,
            "/dev/fuse (taken over from the previous daemon)",
        );
        Self::serve(se, shared, threads)
    }

    /// An engine over `shared` with `threads` `/dev/fuse` workers started.
    fn serve(se: &FuseSession, shared: Arc<Shared>, threads: usize) -> Result<Self, MountError> {
        let mut engine = Engine {
            shared,
            workers: Vec::new(),
            threads: threads.max(1),
        };
        engine.spawn_workers(se)?;
        Ok(engine)
    }

    fn shared(
        se: &FuseSession,
        fs: ClipFs,
        offer_uring: bool,
        opts: &TransportOptions,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Arc<Shared>, MountError> {
        let fuse = se
            .get_fuse_file()
            .ok_or_else(|| MountError::Session("no /dev/fuse file".into()))?
            .try_clone()
            .map_err(|e| MountError::Session(format!("dup /dev/fuse: {e}")))?;
        let fs = Arc::new(fs);
        let handoff = Handoff::start(fs.clone(), opts.read_timeout, metrics.clone())
            .map_err(|e| MountError::Session(format!("read hand-off pool: {e}")))?;
        let dispatch = Arc::new(Dispatch {
            server: Server::new(fs.clone()),
            fs,
            hook: metrics.clone().map(FuseMetricsHook::new),
            handoff,
        });
        Ok(Arc::new(Shared {
            dispatch,
            fuse: Arc::new(fuse),
            offer_uring,
            uring_depth: opts.uring_depth,
            settled: Settled::default(),
            rings: Mutex::new(None),
            metrics,
            init_request: Mutex::new(None),
        }))
    }

    /// Starts the `/dev/fuse` workers, each on its own channel (a dup of
    /// the session's fd with its own waker).
    fn spawn_workers(&mut self, se: &FuseSession) -> Result<(), MountError> {
        for i in 0..self.threads {
            let ch = se
                .new_channel()
                .map_err(|e| MountError::Session(format!("channel: {e}")))?;
            let w = dev::spawn_worker(i, ch, self.shared.clone())
                .map_err(|e| MountError::Session(format!("spawn worker: {e}")))?;
            self.workers.push(w);
        }
        Ok(())
    }

    /// Stops taking requests from the kernel without unmounting, for a
    /// takeover: the workers are woken and joined (each finishes the
    /// request it holds), then every READ handed to the pool is answered
    /// (the pool keeps running; its deadline bounds the wait). Requests the
    /// kernel sends meanwhile queue in `/dev/fuse`. Refused for a mount
    /// served over io_uring (its ring registration belongs to this process
    /// and is not handed over; see docs/takeover.md).
    pub(super) fn pause(&mut self, se: &FuseSession) -> Result<(), MountError> {
        if self.kind() == Some(TransportKind::Uring) {
            return Err(MountError::Session(
                "this mount is served over FUSE io_uring, whose ring registration cannot be \
                 handed to another process; restart needs a mount with --fuse-transport dev"
                    .into(),
            ));
        }
        if lock(&self.shared.init_request).is_none() {
            return Err(MountError::Session(
                "the kernel's INIT was not recorded; cannot hand the connection over".into(),
            ));
        }
        se.wake()
            .map_err(|e| MountError::Session(format!("waking the FUSE workers: {e}")))?;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let handoff = &self.shared.dispatch.handoff;
        let left = handoff.drain(handoff.timeout() + Duration::from_secs(5));
        if left > 0 {
            tracing::warn!(left, "READs still unanswered after their deadline");
        }
        Ok(())
    }

    /// Serves again after [`Engine::pause`] (the takeover failed).
    pub(super) fn resume(&mut self, se: &FuseSession) -> Result<(), MountError> {
        self.spawn_workers(se)
    }

    /// Asks the kernel to queue again every request some process read from
    /// this connection and did not answer (`FUSE_NOTIFY_RESEND`, Linux
    /// 6.9+): after a successor died holding requests, they come back to
    /// this daemon's workers instead of waiting forever. This daemon holds
    /// none then (it answered all before handing over).
    pub(super) fn resend_unanswered(&self) -> std::io::Result<()> {
        /// `FUSE_NOTIFY_RESEND` in `enum fuse_notify_code`.
        const NOTIFY_RESEND: i32 = 7;
        let out = OutHeader {
            len: std::mem::size_of::<OutHeader>() as u32,
            error: NOTIFY_RESEND,
            unique: 0,
        };
        (&*self.shared.fuse).write_all(out.as_slice())
    }

    /// Whether every `/dev/fuse` worker has ended (the mount went away).
    pub(super) fn workers_finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// The kernel's INIT request as received (what a successor replays).
    pub(super) fn init_request(&self) -> Option<Vec<u8>> {
        lock(&self.shared.init_request).clone()
    }

    /// Waits until INIT settled the transport. Fails if none within
    /// [`SETTLE_TIMEOUT`], or if `wanted` is [`FuseTransport::Uring`] and
    /// io_uring did not start.
    pub(super) fn settle(&self, wanted: FuseTransport) -> Result<TransportKind, MountError> {
        match self.shared.settled.wait(SETTLE_TIMEOUT) {
            Some(TransportKind::Dev) if wanted == FuseTransport::Uring => Err(MountError::Session(
                "--fuse-transport uring: FUSE over io_uring did not start (see the log)".into(),
            )),
            Some(kind) => Ok(kind),
            None => Err(MountError::Session(
                "the kernel sent no FUSE INIT within 10 s".into(),
            )),
        }
    }

    /// The transport in use (`None` before INIT).
    pub(super) fn kind(&self) -> Option<TransportKind> {
        self.shared.settled.get()
    }

    /// Waits for the `/dev/fuse` workers to end (the mount went away or
    /// [`FuseSession::wake`] was called), then stops the io_uring queues.
    pub(super) fn join(&mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(rings) = lock(&self.shared.rings).take() {
            rings.stop();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Workers not joined (an error while starting) end when the session
        // is woken; the hand-off's deadline thread ends here.
        self.shared.dispatch.handoff.close();
    }
}

#[cfg(test)]
mod tests;
