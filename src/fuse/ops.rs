//! `impl FileSystem for ClipFs`: the read-only operations, and EROFS for
//! every mutating one the kernel may send.

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{CreateIn, FsOptions, OpenOptions, SetattrValid};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, GetxattrReply, ListxattrReply, ZeroCopyReader,
    ZeroCopyWriter,
};

use super::attr::{dirent_type, entry_of, negative_entry, stat_of, statfs_of};
use super::{ClipFs, FsError};
use crate::format::NodeKind;
use crate::metrics::Counter;

type Res<T> = io::Result<T>;

fn erofs<T>() -> Res<T> {
    Err(FsError::ReadOnly.into())
}

impl ClipFs {
    fn want(&self) -> FsOptions {
        let mut want = FsOptions::ASYNC_READ
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::READDIRPLUS_AUTO
            | FsOptions::CACHE_SYMLINKS;
        if self.cfg.no_open {
            want |= FsOptions::ZERO_MESSAGE_OPEN | FsOptions::ZERO_MESSAGE_OPENDIR;
        }
        want
    }
}

impl FileSystem for ClipFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> Res<FsOptions> {
        let got = capable & self.want();
        self.no_open.store(
            got.contains(FsOptions::ZERO_MESSAGE_OPEN),
            Ordering::Relaxed,
        );
        self.no_opendir.store(
            got.contains(FsOptions::ZERO_MESSAGE_OPENDIR),
            Ordering::Relaxed,
        );
        tracing::debug!(?got, "FUSE INIT negotiated");
        Ok(got)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> Res<Entry> {
        self.metrics.count(Counter::FuseLookups, 1);
        let name = name.to_bytes();
        let ino = match name {
            b"." => Some(parent),
            b".." => Some(self.parent_of(parent)),
            _ => self.index.lookup(parent, name).map_err(FsError::from)?,
        };
        match ino {
            Some(ino) => {
                let node = self.index.inode(ino).map_err(FsError::from)?;
                if node.kind() == Some(NodeKind::File) {
                    self.looked_up(parent, name, ino);
                }
                Ok(entry_of(&node, self.cfg.ttl))
            }
            // Immutable image: let the kernel cache the miss.
            None => Ok(negative_entry(self.cfg.ttl)),
        }
    }

    // Inode numbers are the index's and never go away: nothing to count.
    fn forget(&self, _ctx: &Context, _inode: u64, _count: u64) {}
    fn batch_forget(&self, _ctx: &Context, _requests: Vec<(u64, u64)>) {}

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _h: Option<u64>,
    ) -> Res<(libc::stat64, Duration)> {
        let node = self.index.inode(inode).map_err(FsError::from)?;
        Ok((stat_of(&node), self.cfg.ttl))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> Res<Vec<u8>> {
        let node = self.index.inode(inode).map_err(FsError::from)?;
        if node.kind() != Some(NodeKind::Symlink) {
            return Err(FsError::Invalid.into());
        }
        Ok(node.link_target().map_err(FsError::from)?.to_vec())
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> Res<(Option<u64>, OpenOptions, Option<u32>)> {
        let acc = flags as i32 & libc::O_ACCMODE;
        if acc != libc::O_RDONLY || flags as i32 & libc::O_TRUNC != 0 {
            return erofs();
        }
        let node = self.index.inode(inode).map_err(FsError::from)?;
        if node.kind() == Some(NodeKind::Dir) {
            return Err(FsError::IsADirectory(inode).into());
        }
        if self.no_open.load(Ordering::Relaxed) {
            return Err(FsError::OpenNotNeeded.into());
        }
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> Res<()> {
        Ok(())
    }

    fn flush(&self, _ctx: &Context, _inode: u64, _handle: u64, _lock_owner: u64) -> Res<()> {
        Ok(())
    }

    fn fsync(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> Res<()> {
        Ok(())
    }

    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> Res<usize> {
        Ok(self.read_file(inode, offset, size, w)?)
    }

    fn lseek(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        offset: u64,
        whence: u32,
    ) -> Res<u64> {
        Ok(self.seek(inode, offset, whence)?)
    }

    fn opendir(&self, _ctx: &Context, inode: u64, _flags: u32) -> Res<(Option<u64>, OpenOptions)> {
        let node = self.index.inode(inode).map_err(FsError::from)?;
        if node.kind() != Some(NodeKind::Dir) {
            return Err(FsError::NotADirectory(inode).into());
        }
        if self.no_opendir.load(Ordering::Relaxed) {
            return Err(FsError::OpenNotNeeded.into());
        }
        Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64) -> Res<()> {
        Ok(())
    }

    fn fsyncdir(&self, _ctx: &Context, _inode: u64, _datasync: bool, _handle: u64) -> Res<()> {
        Ok(())
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> Res<usize>,
    ) -> Res<()> {
        Ok(
            self.walk_dir(inode, offset, &mut |cookie, name, ino, kind| {
                let n = add_entry(DirEntry {
                    ino,
                    offset: cookie,
                    type_: dirent_type(kind),
                    name,
                })
                .map_err(FsError::Reply)?;
                Ok(n != 0)
            })?,
        )
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> Res<usize>,
    ) -> Res<()> {
        // Each Entry here bumps the kernel's lookup count (not for "." and
        // "..", which the kernel skips); our forget is a no-op, so counts
        // cannot leak anything.
        Ok(
            self.walk_dir(inode, offset, &mut |cookie, name, ino, kind| {
                let node = self.index.inode(ino)?;
                if kind == Some(NodeKind::File) {
                    self.looked_up(inode, name, ino);
                }
                let n = add_entry(
                    DirEntry {
                        ino,
                        offset: cookie,
                        type_: dirent_type(kind),
                        name,
                    },
                    entry_of(&node, self.cfg.ttl),
                )
                .map_err(FsError::Reply)?;
                Ok(n != 0)
            })?,
        )
    }

    fn getxattr(&self, _ctx: &Context, inode: u64, name: &CStr, size: u32) -> Res<GetxattrReply> {
        if self.no_xattrs {
            return Err(FsError::NoXattrs.into());
        }
        let node = self.index.inode(inode).map_err(FsError::from)?;
        let xattrs = node.xattrs().map_err(FsError::from)?;
        let name = name.to_bytes();
        let Some((_, value)) = xattrs.iter().find(|(n, _)| *n == name) else {
            return Err(FsError::NoXattr.into());
        };
        if size == 0 {
            Ok(GetxattrReply::Count(value.len() as u32))
        } else if (size as usize) < value.len() {
            Err(FsError::Range(value.len()).into())
        } else {
            Ok(GetxattrReply::Value(value.to_vec()))
        }
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> Res<ListxattrReply> {
        if self.no_xattrs {
            return Err(FsError::NoXattrs.into());
        }
        let node = self.index.inode(inode).map_err(FsError::from)?;
        let mut names = Vec::new();
        for (n, _) in node.xattrs().map_err(FsError::from)? {
            names.extend_from_slice(n);
            names.push(0);
        }
        if size == 0 {
            Ok(ListxattrReply::Count(names.len() as u32))
        } else if (size as usize) < names.len() {
            Err(FsError::Range(names.len()).into())
        } else {
            Ok(ListxattrReply::Names(names))
        }
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> Res<libc::statvfs64> {
        Ok(statfs_of(&self.index))
    }

    fn access(&self, _ctx: &Context, inode: u64, mask: u32) -> Res<()> {
        self.index.inode(inode).map_err(FsError::from)?;
        if mask as i32 & libc::W_OK != 0 {
            return erofs();
        }
        // Permission bits are enforced by the kernel (default_permissions).
        Ok(())
    }

    // ---- everything that would change the image ----

    fn setattr(
        &self,
        _: &Context,
        _: u64,
        _: libc::stat64,
        _: Option<u64>,
        _: SetattrValid,
    ) -> Res<(libc::stat64, Duration)> {
        erofs()
    }
    fn symlink(&self, _: &Context, _: &CStr, _: u64, _: &CStr) -> Res<Entry> {
        erofs()
    }
    fn mknod(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32, _: u32) -> Res<Entry> {
        erofs()
    }
    fn mkdir(&self, _: &Context, _: u64, _: &CStr, _: u32, _: u32) -> Res<Entry> {
        erofs()
    }
    fn unlink(&self, _: &Context, _: u64, _: &CStr) -> Res<()> {
        erofs()
    }
    fn rmdir(&self, _: &Context, _: u64, _: &CStr) -> Res<()> {
        erofs()
    }
    fn rename(&self, _: &Context, _: u64, _: &CStr, _: u64, _: &CStr, _: u32) -> Res<()> {
        erofs()
    }
    fn link(&self, _: &Context, _: u64, _: u64, _: &CStr) -> Res<Entry> {
        erofs()
    }
    fn create(
        &self,
        _: &Context,
        _: u64,
        _: &CStr,
        _: CreateIn,
    ) -> Res<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        erofs()
    }
    fn write(
        &self,
        _: &Context,
        _: u64,
        _: u64,
        _: &mut dyn ZeroCopyReader,
        _: u32,
        _: u64,
        _: Option<u64>,
        _: bool,
        _: u32,
        _: u32,
    ) -> Res<usize> {
        erofs()
    }
    fn fallocate(&self, _: &Context, _: u64, _: u64, _: u32, _: u64, _: u64) -> Res<()> {
        erofs()
    }
    fn setxattr(&self, _: &Context, _: u64, _: &CStr, _: &[u8], _: u32) -> Res<()> {
        erofs()
    }
    fn removexattr(&self, _: &Context, _: u64, _: &CStr) -> Res<()> {
        erofs()
    }
}
