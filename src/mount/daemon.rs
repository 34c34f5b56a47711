//! The per-image daemon: owns one FUSE mount shared by every container of
//! the image, answers the control socket, exits when unmounted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::control::{self, Handler};
use super::session::{serve_with, ServeOptions};
use super::spec::DaemonSpec;
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
}

/// Runs the daemon in this process until the mount goes away: writes
/// `daemon.pid`, opens the index, builds the reader, mounts at
/// `<image_dir>/mnt`, serves `control.sock`, and on exit removes the pid
/// file and the socket.
pub fn run_daemon(config: DaemonConfig) -> Result<(), MountError> {
    let dir = &config.image_dir;
    super::layout::create_private(dir)?;
    let pid_path = dir.join(PID_FILE);
    std::fs::write(&pid_path, super::process::pid_file_line())
        .map_err(MountError::io("write", &pid_path))?;
    let sock = dir.join(SOCK_FILE);
    let cleanup = || {
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pid_path);
        let _ = std::fs::remove_file(dir.join(TRANSPORT_FILE));
    };
    let res = serve_until_unmounted(&config, &sock);
    cleanup();
    if let Err(e) = &res {
        tracing::error!(error = %with_causes(e), "daemon failed");
    }
    res
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

fn serve_until_unmounted(config: &DaemonConfig, sock: &Path) -> Result<(), MountError> {
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
    fs.warm_start();
    let mnt = config.image_dir.join("mnt");
    std::fs::create_dir_all(&mnt).map_err(MountError::io("create", &mnt))?;
    let opts = ServeOptions {
        metrics: Some(config.metrics.clone()),
        ..config.serve.clone()
    };
    let handle = serve_with(&mnt, fs, &opts)?;
    if let Some(t) = handle.transport() {
        let path = config.image_dir.join(TRANSPORT_FILE);
        if let Err(e) = std::fs::write(&path, t.name()) {
            tracing::warn!(path = %path.display(), error = %e, "cannot record the FUSE transport");
        }
    }
    let handler = Arc::new(DaemonHandler {
        mnt: mnt.clone(),
        metrics: config.metrics.clone(),
        labels,
        containers_file: config.image_dir.join(CONTAINERS_FILE),
        started: Instant::now(),
    });
    control::listen(sock, handler)?;
    tracing::info!(mnt = %mnt.display(), pid = std::process::id(), "clip daemon ready");
    handle.wait();
    tracing::info!(mnt = %mnt.display(), "unmounted; daemon exiting");
    Ok(())
}
