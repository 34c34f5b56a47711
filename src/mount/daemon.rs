//! The per-image daemon: owns one FUSE mount shared by every container of
//! the image, answers the control socket, exits when unmounted.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::control::{self, Handler};
use super::session::{serve_with, ServeOptions};
use super::MountError;
use crate::cache::ContentReader;
use crate::format::Index;
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::{Labels, Metrics, Snapshot};

/// Builds the content reader for an opened index (the CLI wires the
/// registry source and the cache in here); its error is reported as
/// [`MountError::Content`].
pub type ContentFactory = Box<
    dyn Fn(&Arc<Index>) -> Result<Arc<dyn ContentReader>, Box<dyn std::error::Error + Send + Sync>>
        + Send
        + Sync,
>;

/// What the daemon process is told on its command line
/// (`clipctl __daemon <DaemonArgs::to_args()>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonArgs {
    /// The `.clip` index to serve.
    pub clip_path: PathBuf,
    /// `<run_dir>/images/<hex>`: holds mnt, daemon.pid, control.sock.
    pub image_dir: PathBuf,
    /// FUSE worker threads.
    pub threads: usize,
    /// bdi read-ahead in KiB (0 = leave the kernel default).
    pub read_ahead_kb: u32,
}

impl DaemonArgs {
    /// The arguments that [`DaemonArgs::parse`] reads back.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            "--clip".into(),
            self.clip_path.clone().into(),
            "--image-dir".into(),
            self.image_dir.clone().into(),
            "--threads".into(),
            self.threads.to_string().into(),
            "--read-ahead-kb".into(),
            self.read_ahead_kb.to_string().into(),
        ]
    }

    /// Parses what [`DaemonArgs::to_args`] wrote.
    pub fn parse<I: IntoIterator<Item = OsString>>(args: I) -> Result<Self, MountError> {
        let bad = |m: String| MountError::Content(format!("daemon arguments: {m}").into());
        let (mut clip, mut dir, mut threads, mut ra) = (None, None, 2usize, 4096u32);
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            let val = it
                .next()
                .ok_or_else(|| bad(format!("{flag:?} needs a value")))?;
            let num = |v: &OsString| {
                v.to_str()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| bad(format!("{v:?} is not a number")))
            };
            match flag.to_str() {
                Some("--clip") => clip = Some(PathBuf::from(val)),
                Some("--image-dir") => dir = Some(PathBuf::from(val)),
                Some("--threads") => threads = num(&val)? as usize,
                Some("--read-ahead-kb") => ra = num(&val)? as u32,
                _ => return Err(bad(format!("unknown flag {flag:?}"))),
            }
        }
        Ok(DaemonArgs {
            clip_path: clip.ok_or_else(|| bad("--clip missing".into()))?,
            image_dir: dir.ok_or_else(|| bad("--image-dir missing".into()))?,
            threads,
            read_ahead_kb: ra,
        })
    }

    pub(super) fn mnt(&self) -> PathBuf {
        self.image_dir.join("mnt")
    }
}

/// Everything [`run_daemon`] needs.
pub struct DaemonConfig {
    /// From the command line.
    pub args: DaemonArgs,
    /// Builds the content reader.
    pub content: ContentFactory,
    /// Filesystem knobs.
    pub fs: FsConfig,
    /// Where the FUSE requests, the filesystem and (when the factory
    /// shares it) the content reader record; the `stats` reply reads it.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for DaemonConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DaemonConfig")
            .field("args", &self.args)
            .field("fs", &self.fs)
            .finish_non_exhaustive()
    }
}

/// File names inside an image dir.
pub(super) const PID_FILE: &str = "daemon.pid";
pub(super) const LOG_FILE: &str = "daemon.log";
pub(super) const SOCK_FILE: &str = "control.sock";
pub(super) const CONTAINERS_FILE: &str = "containers";

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
    let args = &config.args;
    let dir = &args.image_dir;
    std::fs::create_dir_all(dir).map_err(MountError::io("create", dir))?;
    let pid_path = dir.join(PID_FILE);
    std::fs::write(&pid_path, format!("{}\n", std::process::id()))
        .map_err(MountError::io("write", &pid_path))?;
    let sock = dir.join(SOCK_FILE);
    let cleanup = || {
        let _ = std::fs::remove_file(&sock);
        let _ = std::fs::remove_file(&pid_path);
    };
    let res = serve_until_unmounted(&config, &sock);
    cleanup();
    if let Err(e) = &res {
        tracing::error!(error = %e, "daemon failed");
    }
    res
}

fn serve_until_unmounted(config: &DaemonConfig, sock: &Path) -> Result<(), MountError> {
    let args = &config.args;
    let index = Arc::new(
        Index::open(&args.clip_path).map_err(|source| MountError::Index {
            path: args.clip_path.clone(),
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
    let mnt = args.mnt();
    std::fs::create_dir_all(&mnt).map_err(MountError::io("create", &mnt))?;
    let opts = ServeOptions {
        threads: args.threads,
        allow_other: true,
        read_ahead_kb: (args.read_ahead_kb > 0).then_some(args.read_ahead_kb),
        metrics: Some(config.metrics.clone()),
    };
    let handle = serve_with(&mnt, fs, &opts)?;
    let handler = Arc::new(DaemonHandler {
        mnt: mnt.clone(),
        metrics: config.metrics.clone(),
        labels,
        containers_file: args.image_dir.join(CONTAINERS_FILE),
        started: Instant::now(),
    });
    control::listen(sock, handler)?;
    tracing::info!(mnt = %mnt.display(), pid = std::process::id(), "clip daemon ready");
    handle.wait();
    tracing::info!(mnt = %mnt.display(), "unmounted; daemon exiting");
    Ok(())
}
