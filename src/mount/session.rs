//! The FUSE session: mount, the transports serving it
//! ([`super::transport`]), read-ahead, unmount.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::transport::FuseSession;

use super::transport::{self, Engine, TransportKind, TransportOptions};
use super::MountError;
use crate::fuse::ClipFs;
use crate::metrics::Metrics;

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
    /// FUSE transport (`/dev/fuse` or io_uring) and the READ hand-off.
    pub transport: TransportOptions,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            threads: 2,
            allow_other: true,
            read_ahead_kb: Some(4096),
            metrics: None,
            transport: TransportOptions::default(),
        }
    }
}

/// A live FUSE mount. Dropping it unmounts.
pub struct MountHandle {
    session: Option<FuseSession>,
    engine: Option<Engine>,
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
    // Before mount(2): it sends INIT, which offers io_uring only if the
    // module parameter is on by then.
    let offer_uring = transport::prepare(&opts.transport)?;
    let mut se = FuseSession::new(mountpoint, "clip", "clip", true)
        .map_err(|e| MountError::Session(e.to_string()))?;
    se.set_allow_other(opts.allow_other);
    se.mount()
        .map_err(|e| MountError::Session(format!("mount {}: {e}", mountpoint.display())))?;
    let engine = Engine::start(
        &se,
        fs,
        opts.threads,
        offer_uring,
        &opts.transport,
        opts.metrics.clone(),
    );
    // From here on, dropping the handle unmounts and stops the workers.
    let mut handle = MountHandle {
        session: Some(se),
        engine: None,
        mountpoint: mountpoint.to_path_buf(),
    };
    handle.engine = Some(engine?);
    if let Some(e) = &handle.engine {
        e.settle(opts.transport.transport)?;
    }
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
            .field("engine", &self.engine)
            .field("mounted", &self.session.is_some())
            .finish()
    }
}

impl MountHandle {
    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The FUSE transport serving the mount.
    pub fn transport(&self) -> Option<TransportKind> {
        self.engine.as_ref().and_then(Engine::kind)
    }

    /// Blocks until the filesystem is unmounted from outside (`umount`,
    /// or [`super::unmount`] from another thread) and the workers exit.
    pub fn wait(mut self) {
        if let Some(mut e) = self.engine.take() {
            e.join();
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
        if let Some(mut e) = self.engine.take() {
            e.join();
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
