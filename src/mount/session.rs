//! The FUSE session: mount, the transports serving it
//! ([`super::transport`]), read-ahead, unmount.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuse_backend_rs::transport::FuseSession;

use super::mountinfo::{mount_identity, MountIdentity};
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
    /// The connection was taken over from another process: the session was
    /// made for a plain directory (not the mount point, whose stat would
    /// wait on this very connection before it is served), so its own
    /// unmount must never run. Such a handle never unmounts at all (the
    /// daemon's `shutdown` does, from outside); dropped while mounted (an
    /// error before its daemon was ready) it stops its workers and leaves
    /// the mount to whoever serves it.
    adopted: bool,
    /// The mount this handle made (None: adopted): its connection is
    /// aborted at shutdown while it is still mounted, see
    /// [`MountHandle::shutdown`].
    mounted: Option<MountIdentity>,
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
        adopted: false,
        mounted: mount_identity(mountpoint),
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

/// Serves `fs` on the FUSE connection `fuse` of the mount at `mountpoint`,
/// which another process mounted, initialised and handed over (a daemon
/// takeover): the kernel's `init_request` is replayed, not answered again
/// (see `Engine::adopt`). `session_dir` is any existing plain directory (the
/// session needs one; the image dir), never the FUSE mount point.
pub(super) fn adopt(
    mountpoint: &Path,
    session_dir: &Path,
    fuse: OwnedFd,
    fs: ClipFs,
    opts: &ServeOptions,
    init_request: &[u8],
) -> Result<MountHandle, MountError> {
    let mut se = FuseSession::new(session_dir, "clip", "clip", true)
        .map_err(|e| MountError::Session(e.to_string()))?;
    se.set_fuse_file(File::from(fuse));
    let engine = Engine::adopt(
        &se,
        fs,
        opts.threads,
        &opts.transport,
        opts.metrics.clone(),
        init_request,
    );
    match engine {
        Ok(engine) => Ok(MountHandle {
            session: Some(se),
            engine: Some(engine),
            mountpoint: mountpoint.to_path_buf(),
            adopted: true,
            mounted: None,
        }),
        Err(e) => {
            // Never unmount what the previous daemon still serves.
            let _ = se.wake();
            std::mem::forget(se);
            Err(e)
        }
    }
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
        self.release_session();
    }

    /// Whether the `/dev/fuse` workers have all ended (the mount went
    /// away); [`MountHandle::wait`] then returns at once.
    pub(super) fn workers_finished(&self) -> bool {
        self.engine.as_ref().is_none_or(Engine::workers_finished)
    }

    /// Stops taking requests from the kernel, mount untouched (see
    /// `Engine::pause`); then returns the connection's fd and the kernel's
    /// INIT request, for a successor.
    pub(super) fn pause(&mut self) -> Result<(BorrowedFd<'_>, Vec<u8>), MountError> {
        let (Some(se), Some(engine)) = (self.session.as_ref(), self.engine.as_mut()) else {
            return Err(MountError::Session("the mount is not served".into()));
        };
        engine.pause(se)?;
        let init = engine
            .init_request()
            .ok_or_else(|| MountError::Session("no INIT recorded".into()))?;
        let fd = se
            .get_fuse_file()
            .ok_or_else(|| MountError::Session("no /dev/fuse file".into()))?;
        Ok((fd.as_fd(), init))
    }

    /// Serves again after [`MountHandle::pause`]; with `resend`, the new
    /// workers also get back what a failed successor read and did not
    /// answer (see `Engine::resend_unanswered`).
    pub(super) fn resume(&mut self, resend: bool) -> Result<(), MountError> {
        let (Some(se), Some(engine)) = (self.session.as_ref(), self.engine.as_mut()) else {
            return Err(MountError::Session("the mount is not served".into()));
        };
        engine.resume(se)?;
        if resend {
            if let Err(e) = engine.resend_unanswered() {
                tracing::warn!(error = %e, "FUSE_NOTIFY_RESEND refused; requests the successor took may hang");
            }
        }
        Ok(())
    }

    /// Ends this process's part without unmounting (a successor took the
    /// connection over, or the previous daemon serves it again): nothing is
    /// unmounted or aborted, the `/dev/fuse` fd stays open until the
    /// process exits. Call after [`MountHandle::pause`].
    pub(super) fn leave_mounted(mut self) {
        if let Some(se) = self.session.take() {
            // Its Drop would unmount; the successor serves the mount now.
            std::mem::forget(se);
        }
        self.engine.take();
    }

    /// Closes the session. An adopted one (see the field) is woken and
    /// forgotten instead: its own unmount would name the session dir.
    fn release_session(&mut self) {
        let Some(mut se) = self.session.take() else {
            return;
        };
        if self.adopted {
            let _ = se.wake();
            std::mem::forget(se);
            return;
        }
        if let Err(e) = se.umount() {
            tracing::warn!(error = %e, mountpoint = %self.mountpoint.display(), "FUSE unmount");
        }
        let _ = se.wake();
    }

    /// Unmounts (lazily, `MNT_DETACH`) and joins the workers.
    pub fn unmount(mut self) -> Result<(), MountError> {
        self.shutdown();
        Ok(())
    }

    /// Stops serving: unmounts, aborts the connection if this handle's
    /// mount was still there, joins the workers. A lazily detached mount
    /// lives on while a file on it is open (also one a forked child
    /// inherited for a moment), and with no worker left a request on it
    /// (the FLUSH of that child's exec) would wait forever. The mount root
    /// is held open across the unmount so the connection number cannot pass
    /// to a new mount before the abort.
    fn shutdown(&mut self) {
        let pin = self
            .mounted
            .take()
            .filter(|id| self.session.is_some() && still_mounted(&self.mountpoint, id))
            .and_then(|id| {
                let root = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_PATH)
                    .open(&self.mountpoint)
                    .ok()?;
                Some((root, id))
            });
        self.release_session();
        if let Some((root, id)) = pin {
            if let Err(e) = super::sys::abort_fuse_connection(&id.dev) {
                tracing::debug!(error = %e, dev = %id.dev, "cannot abort the FUSE connection");
            }
            drop(root);
        }
        if let Some(mut e) = self.engine.take() {
            e.join();
        }
    }
}

/// Whether the mount `id` (by its mount id) is still the one at `path`.
fn still_mounted(path: &Path, id: &MountIdentity) -> bool {
    mount_identity(path).is_some_and(|m| m.mount_id == id.mount_id)
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}
