//! Mounting: the FUSE session and its worker threads ([`serve`]), the
//! per-container overlay rootfs ([`mount_overlay`]), the long-lived detached
//! per-image daemon ([`run_daemon`], [`start_daemon`]) and the container
//! bookkeeping the CLI drives ([`attach_container`], [`detach_container`],
//! [`list`]), and holds on an image's daemon for callers that mount their
//! own overlays over it ([`hold_image`], [`release_image`]: the containerd
//! snapshotter).
//!
//! Layout under the run dir (default `/run/clip`); every dir is root's and
//! 0700 (`layout.rs`: no other host user reaches a rootfs or an image's
//! FUSE mount; the overlay itself is mounted without `nosuid`, which runc's
//! bind mount would carry into the container and break its setuid tools):
//!
//! ```text
//! images/                              0700
//! images/<manifest-hex>/               0700
//! images/<manifest-hex>/mnt            shared read-only FUSE mount of the image
//!                                      (nosuid,nodev,default_permissions,allow_other)
//! images/<manifest-hex>/daemon.json    what the daemon serves (DaemonSpec, 0600)
//! images/<manifest-hex>/daemon.pid     the daemon's pid and start time
//! images/<manifest-hex>/daemon.log     its stdout/stderr
//! images/<manifest-hex>/containers     cids using the image, one per line
//! images/<manifest-hex>/control.sock   line protocol: ping | stats | shutdown | takeover (0600)
//! images/<manifest-hex>.lock           flock serialising attach/detach per image
//! <cid>/                               0700
//! <cid>/rootfs                         the container's overlay
//! <cid>/container.json                 its record: state (attaching, attached,
//!                                      detaching, draining), owner, overlay
//! .claim-<pid>-<cid>/                  a record being put in place
//! ```
//!
//! and under the node dir (default `/var/lib/clip`, 0700):
//! `containers/<cid>/{upper,work}` (0700).
//!
//! The lifecycle rules (when a daemon is reused, dead or left alone; what
//! `umount` does with a rootfs still in use; how a killed clipctl's
//! leftovers are repaired) are in `lifecycle.rs`; the pid checks in
//! `process.rs`; who still uses a detached overlay in `users.rs`.
//!
//! A daemon is restarted (or upgraded) in place by a successor process that
//! takes its `/dev/fuse` connection over (`takeover.rs`, docs/takeover.md).
//!
//! The FUSE transports (`/dev/fuse` and io_uring) and the READ hand-off
//! that keeps them off the network are in `transport/`.
//!
//! Unsafe lives in `sys.rs` (mount, umount, geteuid, pidfd, poll,
//! renameat2), `spawn.rs`
//! (`setsid` in `pre_exec`) and `transport/uring/sys.rs` (io_uring
//! commands, eventfd, CPU pinning).

mod container;
mod control;
mod daemon;
mod layout;
mod lifecycle;
mod mountinfo;
mod process;
mod session;
mod spawn;
mod spec;
mod sys;
mod takeover;
mod transport;
mod users;

use std::io;
use std::path::PathBuf;

pub use container::{
    attach_container, detach_container, hold_image, list, release_image, ContainerInfo,
    DetachOutcome, HeldImage, MountRequest,
};
pub use control::{control_request, ControlReply};
pub use daemon::{
    run_daemon, ContentFactory, DaemonConfig, DaemonExit, FsCounters, StartMode, StatsReply,
};
pub use lifecycle::repair;
pub use mountinfo::{is_mounted, mount_fstype, mount_identity, MountIdentity};
pub use session::{serve, serve_with, MountHandle, ServeOptions};
pub use spawn::{start_daemon, Launcher, GLIBC_TUNABLES};
pub use spec::{DaemonSpec, StackPart, DAEMON_SPEC_VERSION, SPEC_FILE};
pub use sys::{mount_overlay, unmount};
pub use takeover::{restart_daemon, Restarted};
pub use transport::{
    uring_param, FuseTransport, TransportKind, TransportOptions, DEFAULT_READ_TIMEOUT,
    ENABLE_URING_PARAM,
};

/// Default base of the run-time state.
pub const DEFAULT_RUN_DIR: &str = "/run/clip";
/// Default base of the per-container writable layers.
pub const DEFAULT_NODE_DIR: &str = "/var/lib/clip";

/// Why a mount operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The container id is already attached.
    #[error("container id {0:?} is already in use")]
    CidInUse(String),
    /// No container with this id is attached.
    #[error("unknown container id {0:?}")]
    UnknownCid(String),
    /// The container id does not match `[A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}`.
    #[error("invalid container id {0:?}: must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}} and not be \"images\"")]
    InvalidCid(String),
    /// A caller-given image key is not hex digits.
    #[error("invalid image key {0:?}: want hex digits")]
    InvalidImageKey(String),
    /// Something is already mounted there, or it cannot be unmounted.
    #[error("mount point {} is busy", .0.display())]
    MountBusy(PathBuf),
    /// Another clipctl is attaching or detaching this container.
    #[error("container {cid:?} is being attached or detached by clipctl pid {pid}")]
    CidBusy {
        /// Container id.
        cid: String,
        /// The other clipctl.
        pid: u32,
    },
    /// The image's daemon is alive with a live mount and containers, but
    /// did not answer: it is left alone (killing it would break them).
    #[error("the image daemon (pid {pid}, {}) is alive but not answering; it serves running containers, so it was left alone: try again, or stop those containers", image_dir.display())]
    DaemonUnresponsive {
        /// The daemon.
        pid: u32,
        /// Its image dir.
        image_dir: PathBuf,
    },
    /// A run or node dir that is not safe to use.
    #[error("{}: {why}; it must be a directory owned by root (clipctl keeps it 0700)", path.display())]
    UnsafeDir {
        /// The dir.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The daemon did not become ready.
    #[error("clip daemon failed to start: {reason}\n--- tail of {} ---\n{log_tail}", log.display())]
    DaemonFailed {
        /// What was observed.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        log_tail: String,
    },
    /// `/dev/fuse` is missing or unusable.
    #[error("/dev/fuse is not available ({0}); load the fuse module or pass --device /dev/fuse")]
    FuseDeviceMissing(io::Error),
    /// The operation needs root.
    #[error("this operation needs root (mount(2) and /dev/fuse)")]
    NotRoot,
    /// The FUSE session failed.
    #[error("FUSE session: {0}")]
    Session(String),
    /// The index could not be opened.
    #[error("index {}: {source}", path.display())]
    Index {
        /// The `.clip` file.
        path: PathBuf,
        /// The error.
        source: crate::format::FormatError,
    },
    /// The filesystem could not be built.
    #[error("filesystem: {0}")]
    Fs(#[source] Box<crate::fuse::FsError>),
    /// The content reader could not be built (the factory's own error).
    #[error("{0}")]
    Content(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A daemon spec file is not valid JSON of the expected shape.
    #[error("daemon spec {}: {source}", path.display())]
    BadSpec {
        /// The spec file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A daemon spec file of another version.
    #[error("daemon spec {}: version {found}, this clipctl reads version {supported}", path.display())]
    SpecVersion {
        /// The spec file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A record could not be written as JSON.
    #[error("writing {}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// The control socket misbehaved.
    #[error("control socket {}: {message}", path.display())]
    Control {
        /// The socket.
        path: PathBuf,
        /// What happened.
        message: String,
    },
    /// No mounted image matches what `daemon restart` was given.
    #[error("no mounted image {0:?} (give the IMAGE column of `clipctl ps`, a longer prefix of the key, or the image dir)")]
    UnknownImage(String),
    /// A daemon restart (takeover) failed; the previous daemon still
    /// serves unless the message says otherwise.
    #[error("restart of the daemon of {}: {message}", image_dir.display())]
    Takeover {
        /// The image dir.
        image_dir: PathBuf,
        /// What happened.
        message: String,
    },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

impl MountError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> MountError {
        let path = path.into();
        move |source| MountError::Io { op, path, source }
    }
}

/// Checks a container id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`, not "images".
pub fn validate_cid(cid: &str) -> Result<(), MountError> {
    let b = cid.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
        && cid != "images";
    if ok {
        Ok(())
    } else {
        Err(MountError::InvalidCid(cid.to_string()))
    }
}

/// Fails with [`MountError::NotRoot`] unless running as root, and with
/// [`MountError::FuseDeviceMissing`] unless `/dev/fuse` opens.
pub fn check_privileges() -> Result<(), MountError> {
    if sys::geteuid() != 0 {
        return Err(MountError::NotRoot);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(MountError::FuseDeviceMissing)?;
    Ok(())
}

#[cfg(test)]
mod tests;
