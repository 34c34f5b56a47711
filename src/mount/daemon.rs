//! The per-image daemon: owns one FUSE mount shared by every container of
//! the image, answers the control socket, exits when unmounted.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::container::crash_point;
use super::control::{self, Handler};
use super::session::{serve_with, MountHandle, ServeOptions};
use super::spec::DaemonSpec;
use super::takeover::{self, HandOver};
use super::MountError;
use crate::cache::ContentReader;
use crate::format::Index;
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::{Labels, Metrics, Snapshot};

/// Builds the content reader for an opened index (`node` wires the blob
/// source and the cache in here); its error is reported as
/// [`MountError::Content`].
pub type ContentFactory = Box<
    dyn Fn(&Arc<Index>) -> Result<Arc<dyn ContentReader>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// Everything [`run_daemon`] needs.
pub struct DaemonConfig {
    /// The `.clip` index to serve.
    pub clip_path: PathBuf,
    /// `<run_dir>/images/<key>`: holds mnt, daemon.pid, control.sock.
    pub image_dir: PathBuf,
    /// Builds the content reader.
    pub content: ContentFactory,
    /// FUSE workers and read-ahead (`metrics` is set to [`Self::metrics`]).
    pub serve: ServeOptions,
    /// Filesystem knobs.
    pub fs: FsConfig,
    /// Where the FUSE requests, the filesystem and (when the factory
    /// shares it) the content reader record; the `stats` reply reads it.
    pub metrics: Arc<Metrics>,
    /// Mount anew, or take the mount over from the running daemon.
    pub start: StartMode,
}

/// How a daemon gets its FUSE mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMode {
    /// Mounts `<image_dir>/mnt`.
    #[default]
    Mount,
    /// Takes the live mount over from the image's running daemon (a
    /// restart; see `takeover.rs`). Fails, leaving that daemon serving, if
    /// it cannot.
    Takeover,
}

/// Why [`run_daemon`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonExit {
    /// The mount went away.
    Unmounted,
    /// A successor serves the mount now; this process must exit without
    /// touching it.
    HandedOver,
}

impl DaemonConfig {
    /// A daemon for `spec`'s paths with default serving options, reading
    /// content from `content`.
    pub fn new<S>(spec: &DaemonSpec<S>, content: ContentFactory) -> Self {
        DaemonConfig {
            clip_path: spec.clip_path.clone(),
            image_dir: spec.image_dir.clone(),
            content,
            serve: ServeOptions::default(),
            fs: FsConfig::default(),
            metrics: Arc::new(Metrics::new()),
            start: StartMode::Mount,
        }
    }
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("clip_path", &self.clip_path)
            .field("image_dir", &self.image_dir)
            .field("serve", &self.serve)
            .field("fs", &self.fs)
            .field("start", &self.start)
            .finish_non_exhaustive()
    }
}

/// File names inside an image dir.
pub(super) const PID_FILE: &str = "daemon.pid";
pub(super) const LOG_FILE: &str = "daemon.log";
pub(super) const SOCK_FILE: &str = "control.sock";
pub(super) const CONTAINERS_FILE: &str = "containers";
/// The FUSE transport the daemon serves with (`dev`, `uring`), for `ps`.
pub(super) const TRANSPORT_FILE: &str = "fuse-transport";

/// The control socket's `stats` reply (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatsReply {
    /// The daemon's pid.
    pub pid: u32,
    /// Seconds since the daemon mounted.
    pub uptime_s: f64,
    /// The image's FUSE mount.
    pub mountpoint: PathBuf,
    /// The filesystem's request counters (also in `metrics.counters`).
    pub fs: FsCounters,
    /// Everything the daemon recorded, labelled with the image and its
    /// containers.
    pub metrics: Snapshot,
}

/// The `fs` part of a [`StatsReply`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FsCounters {
    /// READ requests served.
    pub reads: u64,
    /// Bytes returned by READ.
    pub read_bytes: u64,
    /// READs that failed.
    pub read_errors: u64,
    /// LOOKUP requests.
    pub lookups: u64,
}

struct DaemonHandler {
    /// Takeover requests go to the thread that owns the mount.
    takeovers: Mutex<mpsc::Sender<UnixStream>>,
    mnt: PathBuf,
    metrics: Arc<Metrics>,
    /// Image and digest; the containers are read at each request.
    labels: Labels,
    containers_file: PathBuf,
    started: Instant,
}

impl DaemonHandler {
    fn reply(&self) -> StatsReply {
        let labels = Labels {
            cids: super::container::read_cids(&self.containers_file),
            ..self.labels.clone()
        };
        let metrics = self.metrics.snapshot(labels);
        let c = &metrics.counters;
        StatsReply {
            pid: std::process::id(),
            uptime_s: self.started.elapsed().as_secs_f64(),
            mountpoint: self.mnt.clone(),
            fs: FsCounters {
                reads: c.fuse_reads,
                read_bytes: c.fuse_read_bytes,
                read_errors: c.fuse_read_errors,
                lookups: c.fuse_lookups,
            },
            metrics,
        }
    }
}

impl Handler for DaemonHandler {
    fn stats(&self) -> String {
        // A plain struct of numbers, strings and maps: serializing cannot fail.
        serde_json::to_string(&self.reply()).unwrap_or_default()
    }

    fn shutdown(&self) {
        tracing::info!(mnt = %self.mnt.display(), "shutdown requested");
        // The workers see the unmount and exit; run_daemon then cleans up.
        if let Err(e) = super::sys::umount2(&self.mnt, libc::MNT_DETACH) {
            tracing::warn!(error = %e, "unmount on shutdown");
        }
    }

    fn takeover(&self, conn: UnixStream) {
        let sent = self
            .takeovers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(conn);
        if let Err(mpsc::SendError(mut conn)) = sent {
            let _ = conn.write_all(b"error the daemon is exiting\n");
        }
    }
}

/// Runs the daemon in this process until the mount goes away: writes
/// `daemon.pid`, opens the index, builds the reader, mounts at
/// `<image_dir>/mnt` (or, with [`StartMode::Takeover`], takes the mount over
/// from the running daemon), serves `control.sock`, and on exit removes the
/// pid file and the socket. A daemon that handed its mount to a successor
/// leaves all of them to it.
pub fn run_daemon(config: DaemonConfig) -> Result<DaemonExit, MountError> {
    let dir = &config.image_dir;
    super::layout::create_private(dir)?;
    let pid_path = dir.join(PID_FILE);
    if config.start == StartMode::Mount {
        super::process::write_pid_file(dir).map_err(MountError::io("write", &pid_path))?;
    }
    let sock = dir.join(SOCK_FILE);
    let cleanup = || {
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pid_path);
        let _ = std::fs::remove_file(dir.join(TRANSPORT_FILE));
    };
    let res = serve_until_unmounted(&config, &sock);
    match &res {
        Ok(Served::Unmounted) => cleanup(),
        Ok(Served::HandedOver) => {}
        // A successor that failed leaves the files to the daemon it did
        // not replace (which writes them back as it resumes).
        Err(_) if config.start == StartMode::Takeover => {}
        Err(_) => cleanup(),
    }
    if let Err(e) = &res {
        tracing::error!(error = %with_causes(e), "daemon failed");
    }
    res.map(|s| match s {
        Served::Unmounted => DaemonExit::Unmounted,
        Served::HandedOver => DaemonExit::HandedOver,
    })
}

enum Served {
    Unmounted,
    HandedOver,
}

/// `e` and its causes, each once (the log line is all a failed start shows).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn serve_until_unmounted(config: &DaemonConfig, sock: &Path) -> Result<Served, MountError> {
    let index = Arc::new(
        Index::open(&config.clip_path).map_err(|source| MountError::Index {
            path: config.clip_path.clone(),
            source,
        })?,
    );
    let meta = index.meta();
    let labels = Labels {
        image: meta
            .reference
            .clone()
            .or_else(|| meta.layout.clone())
            .unwrap_or_default(),
        digest: meta
            .manifest_digest
            .map(|d| d.to_string())
            .unwrap_or_default(),
        cids: Vec::new(),
    };
    let content = (config.content)(&index).map_err(MountError::Content)?;
    let fs = ClipFs::new(index, content, config.fs.clone())
        .map_err(|e| MountError::Fs(Box::new(e)))?
        .with_metrics(config.metrics.clone());
    let mnt = config.image_dir.join("mnt");
    let opts = ServeOptions {
        metrics: Some(config.metrics.clone()),
        ..config.serve.clone()
    };
    let (takeovers, requests) = mpsc::channel();
    let handler = Arc::new(DaemonHandler {
        takeovers: Mutex::new(takeovers),
        mnt: mnt.clone(),
        metrics: config.metrics.clone(),
        labels,
        containers_file: config.image_dir.join(CONTAINERS_FILE),
        started: Instant::now(),
    });
    let mut handle = match config.start {
        StartMode::Mount => {
            fs.warm_start();
            std::fs::create_dir_all(&mnt).map_err(MountError::io("create", &mnt))?;
            let handle = serve_with(&mnt, fs, &opts)?;
            record_transport(config, &handle);
            control::listen(sock, handler.clone())?;
            handle
        }
        StartMode::Takeover => {
            // No start warming: the containers of a running mount are past
            // their start.
            let handle = take_over(config, sock, fs, &opts, handler.clone())?;
            record_transport(config, &handle);
            handle
        }
    };
    tracing::info!(mnt = %mnt.display(), pid = std::process::id(), "clip daemon ready");
    loop {
        match requests.recv_timeout(MOUNT_POLL) {
            Ok(conn) => match takeover::hand_over(&mut handle, conn) {
                HandOver::Done => {
                    handle.leave_mounted();
                    return Ok(Served::HandedOver);
                }
                HandOver::Refused(why) => {
                    tracing::warn!(reason = %why, "takeover refused");
                }
                HandOver::Resumed(why) => {
                    tracing::info!(reason = %why, "serving again after a failed takeover");
                    // The successor may have replaced them before it failed.
                    if let Err(e) = super::process::write_pid_file(&config.image_dir) {
                        tracing::error!(error = %e, "cannot write the pid file back");
                    }
                    record_transport(config, &handle);
                    if let Err(e) = control::listen_replacing(sock, handler.clone()) {
                        tracing::error!(error = %e, "cannot bind the control socket again");
                    }
                }
            },
            Err(mpsc::RecvTimeoutError::Timeout) if handle.workers_finished() => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The handler holds the sender for the daemon's whole life.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(MOUNT_POLL),
        }
    }
    handle.wait();
    tracing::info!(mnt = %mnt.display(), "unmounted; daemon exiting");
    Ok(Served::Unmounted)
}

/// How often the daemon's main thread looks whether its workers ended
/// (between takeover requests, which wake it at once).
const MOUNT_POLL: Duration = Duration::from_millis(50);

fn record_transport(config: &DaemonConfig, handle: &MountHandle) {
    if let Some(t) = handle.transport() {
        let path = config.image_dir.join(TRANSPORT_FILE);
        if let Err(e) = std::fs::write(&path, t.name()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the FUSE transport");
        }
    }
}

/// The successor's side of a takeover (see `takeover.rs`): the index and
/// the content reader are already open; asks the running daemon for the
/// connection, publishes this process (pid file, control socket), serves
/// the connection, and says `ready`. Any error before `ready` leaves the
/// previous daemon serving.
fn take_over(
    config: &DaemonConfig,
    sock: &Path,
    fs: ClipFs,
    opts: &ServeOptions,
    handler: Arc<DaemonHandler>,
) -> Result<MountHandle, MountError> {
    let fail = |message: String| MountError::Takeover {
        image_dir: config.image_dir.clone(),
        message,
    };
    let started = Instant::now();
    crash_point("takeover-before-connect");
    // The previous daemon first answers every READ it holds: up to its
    // read deadline.
    let wait = opts.transport.read_timeout + Duration::from_secs(30);
    let (mut conn, state, fuse) = takeover::request_connection(sock, wait).map_err(fail)?;
    tracing::info!(
        from_pid = state.pid,
        paused_after_ms = started.elapsed().as_millis() as u64,
        "received the FUSE connection"
    );
    crash_point("takeover-after-fd");
    let pid_path = config.image_dir.join(PID_FILE);
    super::process::write_pid_file(&config.image_dir)
        .map_err(MountError::io("write", &pid_path))?;
    control::listen_replacing(sock, handler)?;
    crash_point("takeover-before-serve");
    let mnt = config.image_dir.join("mnt");
    let handle =
        super::session::adopt(&mnt, &config.image_dir, fuse, fs, opts, &state.init_request)?;
    if std::env::var_os("CLIP_TEST_CRASH_AT").is_some_and(|v| v == "takeover-before-ready") {
        // Serving, not yet ready: long enough for a test to get a request
        // read by this process before it dies (FUSE_NOTIFY_RESEND's case).
        std::thread::sleep(Duration::from_secs(2));
    }
    crash_point("takeover-before-ready");
    if let Err(e) = conn.write_all(b"ready\n") {
        // The previous daemon gave up waiting and serves again: stop
        // (answering what this one took), unmount nothing.
        let mut handle = handle;
        if let Err(p) = handle.pause() {
            tracing::warn!(error = %p, "stopping after a failed takeover");
        }
        handle.leave_mounted();
        return Err(fail(format!("telling the previous daemon: {e}")));
    }
    tracing::info!(
        from_pid = state.pid,
        took_ms = started.elapsed().as_millis() as u64,
        "took the mount over"
    );
    Ok(handle)
}
