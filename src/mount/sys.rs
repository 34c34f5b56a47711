//! The unsafe room of `mount`: thin wrappers over mount(2), umount2(2),
//! the fusectl abort file, geteuid(2), pidfd_open(2), pidfd_send_signal(2), poll(2) and
//! renameat2(2). Each returns `io::Result` and owns its CStrings and fds.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::MountError;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Escapes a path for an overlay option value (`,` `:` `\` are special).
fn escape_opt(p: &Path) -> String {
    let s = p.to_string_lossy();
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Mounts an overlay at `target` with the read-only `lower` (the FUSE mount)
/// and a writable `upper`/`work` pair on the same filesystem.
///
/// Options: `index=off` (the default on Debian kernels, but stated so a
/// distro default of `index=on` cannot make the mount depend on lower file
/// handles, which our FUSE lower does not export), `redirect_dir=off` and
/// `metacopy=off` (no trusted.* xattr tricks that would need to follow
/// into the lower), `xino=off` (the FUSE lower's inode numbers are small
/// and stable; xino is only needed to make st_ino unique across layers on
/// the same fs and would warn over FUSE). The testbed proved a plain overlay
/// over squashfuse works; these keep it that simple.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), MountError> {
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},index=off,redirect_dir=off,metacopy=off,xino=off",
        escape_opt(lower),
        escape_opt(upper),
        escape_opt(work)
    );
    let err = MountError::io("mount overlay at", target);
    let src = CString::new("overlay").expect("static");
    let tgt = cpath(target).map_err(MountError::io("mount overlay at", target))?;
    let data = CString::new(opts).map_err(|_| MountError::Io {
        op: "mount overlay at",
        path: target.to_path_buf(),
        source: io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: all pointers are NUL-terminated CStrings that outlive the call;
    // `data` is a NUL-terminated option string as overlayfs expects.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) {
            return Err(MountError::MountBusy(target.to_path_buf()));
        }
        return Err(err(e));
    }
    Ok(())
}

/// Unmounts `path`; `lazy` detaches it now and lets the kernel finish when
/// it is no longer busy (`MNT_DETACH`, also the way out of an ENOTCONN
/// mount left by a killed FUSE daemon).
pub fn unmount(path: &Path, lazy: bool) -> Result<(), MountError> {
    umount2(path, if lazy { libc::MNT_DETACH } else { 0 }).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            MountError::MountBusy(path.to_path_buf())
        } else {
            MountError::Io {
                op: "unmount",
                path: path.to_path_buf(),
                source: e,
            }
        }
    })
}

/// Where the kernel lists FUSE connections (the `fusectl` filesystem).
const FUSECTL: &str = "/sys/fs/fuse/connections";

/// Aborts the FUSE connection of device `dev` (`major:minor` from
/// mountinfo; a FUSE superblock's minor is its connection number): every
/// request waiting on it fails with `ECONNABORTED` at once. For a mount
/// whose daemon is gone: the kernel aborts the connection when the last
/// `/dev/fuse` file closes, but a file kept open elsewhere (an io_uring
/// teardown still in progress, a descriptor inherited across a fork) leaves
/// readers waiting with no one to answer. Mounts `fusectl` when needed.
pub(super) fn abort_fuse_connection(dev: &str) -> io::Result<()> {
    let minor = dev
        .split_once(':')
        .and_then(|(_, m)| m.parse::<u32>().ok())
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let abort = Path::new(FUSECTL).join(minor.to_string()).join("abort");
    if !abort.exists() && !Path::new(FUSECTL).join(minor.to_string()).exists() {
        let src = CString::new("fusectl").expect("static");
        let tgt = CString::new(FUSECTL).expect("static");
        // SAFETY: all pointers are valid NUL-terminated strings for the call;
        // data is null (fusectl takes no options). EBUSY: already mounted.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                tgt.as_ptr(),
                src.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EBUSY) {
            return Err(io::Error::last_os_error());
        }
    }
    std::fs::write(abort, b"1")
}

pub(super) fn umount2(path: &Path, flags: i32) -> io::Result<()> {
    let p = cpath(path)?;
    // SAFETY: `p` is a valid NUL-terminated path for the duration of the call.
    if unsafe { libc::umount2(p.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// A pidfd for `pid` (`pidfd_open(2)`): it keeps naming that process
/// even after its pid is reused.
pub(super) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: pidfd_open takes a pid and flags (0) and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `sig` (0: only checks the process exists) to the process of `pidfd`.
pub(super) fn pidfd_send_signal(pidfd: &OwnedFd, sig: i32) -> io::Result<()> {
    // SAFETY: a valid pidfd we own, a signal number, no siginfo, flags 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether `fd` becomes readable within `timeout` (a pidfd is readable
/// once its process has exited).
pub(super) fn poll_readable(fd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    loop {
        // SAFETY: one pollfd on the stack, valid for the call.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0 && p.revents & libc::POLLIN != 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Renames `from` to `to` unless `to` exists (`RENAME_NOREPLACE`: the
/// check and the rename are one step, so two callers cannot both win).
pub(super) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let (f, t) = (cpath(from)?, cpath(to)?);
    // SAFETY: both paths are NUL-terminated CStrings alive for the call;
    // AT_FDCWD resolves them like rename(2).
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sends `sig` to `pid` (tests: outside them, signals go through a
/// checked pidfd, [`pidfd_send_signal`]).
#[cfg(test)]
pub(super) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    if pid <= 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: plain syscall with integer arguments; pid > 0 so it never
    // targets a process group.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
