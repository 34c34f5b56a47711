//! Confined file-system operations for extraction. Every parent directory is
//! opened from the target's root with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, and every name handed to an `*at` call is one
//! checked path component, so no symlink or `..` in an archive — nor one
//! planted in the target while we work — can make us touch anything outside
//! the target directory. Nothing is ever followed: files are created with
//! `O_EXCL | O_NOFOLLOW`, metadata is set with `AT_SYMLINK_NOFOLLOW`.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid,
};

use super::ArchiveError;
use crate::format::{InodeView, NodeKind};

/// The directory being extracted into.
#[derive(Debug)]
pub(super) struct Target {
    root: OwnedFd,
    path: PathBuf,
}

fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// A directory of the target, opened for `*at` calls.
#[derive(Debug)]
pub(super) struct DirFd {
    rel: Vec<u8>,
    fd: Option<OwnedFd>,
}

impl Target {
    /// Opens `path` (an existing directory) as the root of an extraction.
    pub fn open(path: &Path) -> Result<Self, ArchiveError> {
        let root = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ArchiveError::Output {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Target {
            root,
            path: path.to_path_buf(),
        })
    }

    /// An error about `rel` (a path inside the target).
    pub fn err(&self, rel: &[u8], source: impl Into<io::Error>) -> ArchiveError {
        ArchiveError::Output {
            path: self.path.join(os(rel)),
            source: source.into(),
        }
    }

    /// The directory `rel` ("" is the root), reusing `cache` when it holds it.
    pub fn dir<'a>(
        &'a self,
        rel: &[u8],
        cache: &'a mut DirFd,
    ) -> Result<BorrowedFd<'a>, ArchiveError> {
        if rel.is_empty() {
            return Ok(self.root.as_fd());
        }
        if cache.rel != rel || cache.fd.is_none() {
            let how =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            let fd = rfs::openat2(
                &self.root,
                os(rel),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                how,
            )
            .map_err(|e| self.err(rel, e))?;
            cache.rel = rel.to_vec();
            cache.fd = Some(fd);
        }
        match &cache.fd {
            Some(fd) => Ok(fd.as_fd()),
            None => Err(self.err(rel, io::Error::other("directory not open"))),
        }
    }
}

impl DirFd {
    /// An empty cache.
    pub fn new() -> Self {
        DirFd {
            rel: Vec::new(),
            fd: None,
        }
    }
}

/// Creates the non-regular node `node` as `name` in `dir`. Directories are
/// created owner-only (their mode is set once their content is in place).
pub(super) fn create_special(
    dir: BorrowedFd<'_>,
    name: &[u8],
    node: &InodeView<'_>,
) -> io::Result<()> {
    let (major, minor) = node.rdev();
    let dev = rfs::makedev(major, minor);
    let mode = Mode::from_raw_mode(0o600);
    match node.kind() {
        Some(NodeKind::Dir) => rfs::mkdirat(dir, os(name), Mode::from_raw_mode(0o700))?,
        Some(NodeKind::Symlink) => {
            let target = node.link_target().map_err(io::Error::other)?;
            rfs::symlinkat(os(target), dir, os(name))?
        }
        Some(NodeKind::CharDev) => {
            rfs::mknodat(dir, os(name), FileType::CharacterDevice, mode, dev)?
        }
        Some(NodeKind::BlockDev) => rfs::mknodat(dir, os(name), FileType::BlockDevice, mode, dev)?,
        Some(NodeKind::Fifo) => rfs::mknodat(dir, os(name), FileType::Fifo, mode, 0)?,
        Some(NodeKind::Socket) => rfs::mknodat(dir, os(name), FileType::Socket, mode, 0)?,
        Some(NodeKind::File) => drop(create_file(dir, name, 0)?),
        None => return Err(io::Error::other("invalid file type")),
    }
    Ok(())
}

/// Creates regular file `name` in `dir` (it must not exist), `len` bytes long.
pub(super) fn create_file(dir: BorrowedFd<'_>, name: &[u8], len: u64) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        os(name),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let file = File::from(fd);
    if len > 0 {
        file.set_len(len)?;
    }
    Ok(file)
}

/// Opens the regular file `name` in `dir` that this extraction created.
pub(super) fn open_file(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<File> {
    let fd = rfs::openat(
        dir,
        os(name),
        OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Writes all of `data` at `offset`.
pub(super) fn write_at(file: &File, data: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(data, offset)
}

/// Hard-links `from_name` in `from_dir` as `name` in `dir`.
pub(super) fn link(
    from_dir: BorrowedFd<'_>,
    from_name: &[u8],
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> io::Result<()> {
    rfs::linkat(from_dir, os(from_name), dir, os(name), AtFlags::empty())?;
    Ok(())
}

/// Applies owner, mode, xattrs and mtime of `node` to `name` in `dir`, in
/// that order: chown clears setuid bits and file capabilities, so the mode
/// and the xattrs (`security.capability`) come after it, and the mtime last.
pub(super) fn apply_meta(
    dir: BorrowedFd<'_>,
    name: &[u8],
    node: &InodeView<'_>,
    same_owner: bool,
) -> io::Result<()> {
    let symlink = node.kind() == Some(NodeKind::Symlink);
    if same_owner {
        rfs::chownat(
            dir,
            os(name),
            raw_uid(node.uid()),
            raw_gid(node.gid()),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if !symlink {
        rfs::chmodat(
            dir,
            os(name),
            Mode::from_raw_mode(node.mode() & 0o7777),
            AtFlags::empty(),
        )?;
    }
    let xattrs = node.xattrs().map_err(io::Error::other)?;
    if !xattrs.is_empty() {
        // lsetxattr through our confined parent fd: never follows `name`.
        let mut path = format!("/proc/self/fd/{}/", fd_number(dir)).into_bytes();
        path.extend_from_slice(name);
        for (k, v) in xattrs {
            rfs::lsetxattr(os(&path), os(k), v, rfs::XattrFlags::empty())?;
        }
    }
    rfs::utimensat(dir, os(name), &times(node), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Applies owner, mode, xattrs and mtime of `node` (same order as
/// [`apply_meta`]) to an open file: the regular files a worker just wrote,
/// and the target directory itself.
pub(super) fn apply_meta_fd(file: &File, node: &InodeView<'_>, same_owner: bool) -> io::Result<()> {
    if same_owner {
        rfs::fchown(file, raw_uid(node.uid()), raw_gid(node.gid()))?;
    }
    rfs::fchmod(file, Mode::from_raw_mode(node.mode() & 0o7777))?;
    for (k, v) in node.xattrs().map_err(io::Error::other)? {
        rfs::fsetxattr(file, os(k), v, rfs::XattrFlags::empty())?;
    }
    rfs::futimens(file, &times(node))?;
    Ok(())
}

/// Applies the root directory's metadata to the target itself.
pub(super) fn apply_root_meta(
    path: &Path,
    node: &InodeView<'_>,
    same_owner: bool,
) -> io::Result<()> {
    apply_meta_fd(&File::open(path)?, node, same_owner)
}

fn fd_number(fd: BorrowedFd<'_>) -> i32 {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

/// `u32::MAX` is `-1`, "leave unchanged", for chown.
fn raw_uid(uid: u32) -> Option<Uid> {
    (uid != u32::MAX).then(|| Uid::from_raw(uid))
}

fn raw_gid(gid: u32) -> Option<Gid> {
    (gid != u32::MAX).then(|| Gid::from_raw(gid))
}

fn times(node: &InodeView<'_>) -> Timestamps {
    let (secs, nsec) = node.mtime();
    Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: rfs::UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: secs,
            tv_nsec: i64::from(nsec.min(999_999_999)),
        },
    }
}
