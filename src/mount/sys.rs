//! The unsafe room of `mount`: thin wrappers over mount(2), umount2(2),
//! geteuid(2) and kill(2). Each returns `io::Result` and owns its CStrings.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Sends `sig` to `pid`.
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
