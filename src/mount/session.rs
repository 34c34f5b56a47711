//! The FUSE session: mount, worker threads, read-ahead, unmount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::FuseSession;

use super::MountError;
use crate::fuse::ClipFs;
use crate::metrics::{FuseMetricsHook, Metrics};
use fuse_backend_rs::api::server::MetricsHook;

/// How to serve a [`ClipFs`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Worker threads reading `/dev/fuse` (2 is the sweet spot on 2 vCPUs;
    /// more gave nothing in the measurements).
    pub threads: usize,
    /// Let other uids use the mount (default on). Measured here
    /// (`privileged_allow_other_is_needed`): without it uid 65534 gets
    /// EACCES reading the FUSE mount directly, while reads through an
    /// overlay on top still work (overlayfs accesses its lower layer with
    /// the mounter's credentials). It is on so that `--mount-point` use,
    /// tools inspecting `images/<hex>/mnt`, and any path that reaches the
    /// lower without overlay's credential switch keep working; permission
    /// bits are still enforced by the kernel (`default_permissions`).
    pub allow_other: bool,
    /// Read-ahead of the mount's bdi in KiB (`None` keeps the kernel's
    /// 128). FUSE can only lower `max_readahead` in INIT, so larger values
    /// are set through `/sys/class/bdi/<maj:min>/read_ahead_kb` after
    /// mounting; 1024+ makes the kernel send 1 MiB READs.
    pub read_ahead_kb: Option<u32>,
    /// Per-opcode latency recording (None: no hook on the request path).
    pub metrics: Option<Arc<Metrics>>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            threads: 2,
            allow_other: true,
            read_ahead_kb: Some(4096),
            metrics: None,
        }
    }
}

/// A live FUSE mount. Dropping it unmounts.
pub struct MountHandle {
    session: Option<FuseSession>,
    workers: Vec<JoinHandle<()>>,
    mountpoint: PathBuf,
}

/// Mounts `fs` at `mountpoint` (fsname and subtype "clip", read-only,
/// `allow_other`, read-ahead 4 MiB) and serves it with `threads` workers.
pub fn serve(mountpoint: &Path, fs: ClipFs, threads: usize) -> Result<MountHandle, MountError> {
    serve_with(
        mountpoint,
        fs,
        &ServeOptions {
            threads,
            ..ServeOptions::default()
        },
    )
}

/// [`serve`] with every option.
pub fn serve_with(
    mountpoint: &Path,
    fs: ClipFs,
    opts: &ServeOptions,
) -> Result<MountHandle, MountError> {
    super::check_privileges()?;
    if super::is_mounted(mountpoint) {
        return Err(MountError::MountBusy(mountpoint.to_path_buf()));
    }
    let mut se = FuseSession::new(mountpoint, "clip", "clip", true)
        .map_err(|e| MountError::Session(e.to_string()))?;
    se.set_allow_other(opts.allow_other);
    se.mount()
        .map_err(|e| MountError::Session(format!("mount {}: {e}", mountpoint.display())))?;
    let server = Arc::new(Server::new(fs));
    let mut handle = MountHandle {
        session: None,
        workers: Vec::new(),
        mountpoint: mountpoint.to_path_buf(),
    };
    for i in 0..opts.threads.max(1) {
        let mut ch = match se.new_channel() {
            Ok(ch) => ch,
            Err(e) => {
                handle.session = Some(se);
                handle.shutdown();
                return Err(MountError::Session(format!("channel: {e}")));
            }
        };
        let server = server.clone();
        let hook = opts.metrics.clone().map(FuseMetricsHook::new);
        let w = std::thread::Builder::new()
            .name(format!("clip-fuse-{i}"))
            .spawn(move || loop {
                match ch.get_request() {
                    Ok(Some((reader, writer))) => {
                        if let Err(e) = server.handle_message(
                            reader,
                            writer.into(),
                            None,
                            hook.as_ref().map(|h| h as &dyn MetricsHook),
                        ) {
                            // Malformed request or a reply the kernel refused
                            // (e.g. the request was interrupted): keep serving.
                            tracing::debug!(error = %e, "FUSE message");
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "FUSE channel closed");
                        break;
                    }
                }
            })
            .map_err(|e| MountError::Session(format!("spawn worker: {e}")))?;
        handle.workers.push(w);
    }
    handle.session = Some(se);
    if let Some(kb) = opts.read_ahead_kb {
        if let Err(e) = set_read_ahead(mountpoint, kb) {
            tracing::warn!(error = %e, "could not raise read_ahead_kb; READs stay at 128 KiB");
        }
    }
    Ok(handle)
}

/// Writes `kb` to the bdi `read_ahead_kb` of the filesystem at `mountpoint`.
fn set_read_ahead(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    std::fs::write(path, kb.to_string())
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .field("workers", &self.workers.len())
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Blocks until the filesystem is unmounted from outside (`umount`,
    /// or [`super::unmount`] from another thread) and the workers exit.
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // Already unmounted by the kernel; just release the device fd.
        if let Some(mut se) = self.session.take() {
            let _ = se.umount();
        }
    }

    /// Unmounts (lazily, `MNT_DETACH`) and joins the workers.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.shutdown();
        Ok(())
    }

    fn shutdown(&mut self) {
        if let Some(mut se) = self.session.take() {
            if let Err(e) = se.umount() {
                tracing::warn!(error = %e, mountpoint = %self.mountpoint.display(), "FUSE unmount");
            }
            let _ = se.wake();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
