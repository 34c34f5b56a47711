//! The read-only filesystem over a `.clip` index, served with fuse-backend-rs.
//!
//! State lives here; `impl FileSystem` alone is in [`ops`] (STYLE 16), the
//! records → `stat64`/`Entry` mapping in [`attr`], and the one unsafe room
//! (the content reader writing straight into the kernel reply buffer) in
//! `zerocopy.rs`. Inode numbers are the index's (stable, `1..=inode_count`,
//! root = 1), so `forget` is a no-op and every TTL is long: the image is
//! immutable. File bytes come only from the [`ContentReader`].
//!
//! FUSE types never leave `fuse/` and `mount/`.

mod attr;
mod ops;
mod zerocopy;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CacheError, ContentReader};
use crate::format::{FormatError, Index, NodeKind, Piece, ROOT_INO};
use crate::metrics::{Counter, ErrorKind, Metrics};

pub use attr::{dirent_type, stat_of};

/// Default [`FsConfig::prefetch_min`].
pub const DEFAULT_PREFETCH_MIN: u64 = 256 << 10;

/// Knobs of the filesystem (not of the mount).
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Attribute and entry cache lifetime handed to the kernel.
    pub ttl: Duration,
    /// Ask for FUSE_NO_OPEN/NO_OPENDIR: after the first open the kernel sends
    /// no more OPEN/RELEASE (and keeps the page cache across opens).
    pub no_open: bool,
    /// The first READ of a regular file at least this big hints the content
    /// reader to prefetch the whole file ([`ContentReader::prefetch`]);
    /// `None` never hints. Small files are read whole by one or two READs
    /// anyway (default 256 KiB).
    pub prefetch_min: Option<u64>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            // The image never changes under a mount: a day is "forever" for
            // the kernel caches and still fits every timeout field.
            ttl: Duration::from_secs(86_400),
            no_open: true,
            prefetch_min: Some(DEFAULT_PREFETCH_MIN),
        }
    }
}

/// Why a filesystem request failed. [`FsError::errno`] is the only place
/// that decides an errno.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// No such name, inode or attribute owner.
    #[error("no such entry")]
    NotFound,
    /// A directory operation on a non-directory.
    #[error("inode {0} is not a directory")]
    NotADirectory(u64),
    /// A file operation on a directory.
    #[error("inode {0} is a directory")]
    IsADirectory(u64),
    /// readlink on a non-symlink, or a bad argument.
    #[error("invalid argument")]
    Invalid,
    /// The extended attribute does not exist.
    #[error("no such extended attribute")]
    NoXattr,
    /// The image has no extended attributes at all. Answered with ENOSYS,
    /// which the kernel remembers for the mount (`no_getxattr`,
    /// `no_listxattr`) and then fails xattr calls with EOPNOTSUPP itself:
    /// `ls -l` and overlayfs stop paying a round trip per file.
    #[error("the image has no extended attributes")]
    NoXattrs,
    /// The caller's buffer is too small (xattrs).
    #[error("buffer too small: need {0} bytes")]
    Range(usize),
    /// A mutating operation on the read-only image.
    #[error("read-only filesystem")]
    ReadOnly,
    /// OPEN/OPENDIR after FUSE_NO_OPEN/NO_OPENDIR was negotiated: answered
    /// with ENOSYS, which then means "success, and send no more OPEN or
    /// RELEASE" (the page cache is kept across opens).
    #[error("open is not needed (no-open negotiated)")]
    OpenNotNeeded,
    /// A read without an offset: layer contents are read only positionally.
    #[error("layer contents are read only at an offset")]
    NotPositional,
    /// `SEEK_DATA`/`SEEK_HOLE` found nothing at or after the offset.
    #[error("no data or hole at or after offset {0}")]
    NoSuchOffset(u64),
    /// The index is corrupt or inconsistent.
    #[error("index: {0}")]
    Index(#[from] FormatError),
    /// The content reader failed; never serve wrong bytes.
    #[error("ino {ino}: layer {layer} at {offset}: {source}")]
    Content {
        /// Inode being read.
        ino: u64,
        /// Layer.
        layer: u32,
        /// Offset in the layer's uncompressed stream.
        offset: u64,
        /// The error.
        source: CacheError,
    },
    /// The layer ended before the file did.
    #[error("ino {ino}: layer {layer} ends before offset {offset}")]
    ShortLayer {
        /// Inode being read.
        ino: u64,
        /// Layer.
        layer: u32,
        /// Offset in the layer's uncompressed stream.
        offset: u64,
    },
    /// The reply buffer rejected the data.
    #[error("reply: {0}")]
    Reply(io::Error),
}

impl FsError {
    /// The errno the kernel sees for this error (the only such mapping).
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory(_) => libc::ENOTDIR,
            FsError::IsADirectory(_) => libc::EISDIR,
            FsError::Invalid => libc::EINVAL,
            FsError::NoXattr => libc::ENODATA,
            FsError::NoXattrs => libc::ENOSYS,
            FsError::Range(_) => libc::ERANGE,
            FsError::ReadOnly => libc::EROFS,
            FsError::OpenNotNeeded => libc::ENOSYS,
            FsError::NotPositional => libc::ESPIPE,
            FsError::NoSuchOffset(_) => libc::ENXIO,
            FsError::Index(FormatError::NoSuchInode(_)) => libc::ENOENT,
            FsError::Index(FormatError::NotADirectory(_)) => libc::ENOTDIR,
            FsError::Index(_) => libc::EIO,
            FsError::Content { .. } | FsError::ShortLayer { .. } => libc::EIO,
            FsError::Reply(e) => e.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

impl From<FsError> for io::Error {
    fn from(e: FsError) -> io::Error {
        io::Error::from_raw_os_error(e.errno())
    }
}

/// Receives (cookie, name, ino, kind) per directory entry; `false` = reply full.
type DirEmit<'a> = dyn FnMut(u64, &[u8], u64, Option<NodeKind>) -> Result<bool, FsError> + 'a;

/// The filesystem: an index, a content reader and a parent map for "..".
#[derive(Debug)]
pub struct ClipFs {
    index: Arc<Index>,
    content: Arc<dyn ContentReader>,
    cfg: FsConfig,
    /// `parents[ino]` = parent directory of directory `ino` (0 for non-dirs).
    parents: Vec<u32>,
    /// Whether the kernel agreed to no-open / no-opendir.
    no_open: AtomicBool,
    no_opendir: AtomicBool,
    /// Bit `ino` set once `ino`'s prefetch hint was given.
    prefetched: Vec<AtomicU64>,
    /// No inode has an xattr ([`FsError::NoXattrs`]).
    no_xattrs: bool,
    /// READ and LOOKUP counters (a private registry unless
    /// [`ClipFs::with_metrics`] shares the mount's).
    metrics: Arc<Metrics>,
}

impl ClipFs {
    /// Builds the filesystem; walks the directories once to learn every
    /// directory's parent (the index stores only downward edges).
    pub fn new(
        index: Arc<Index>,
        content: Arc<dyn ContentReader>,
        cfg: FsConfig,
    ) -> Result<Self, FsError> {
        let n = index.inode_count();
        let mut parents = vec![0u32; n as usize + 1];
        if n >= ROOT_INO {
            parents[ROOT_INO as usize] = ROOT_INO as u32;
        }
        for ino in 1..=n {
            if index.inode(ino)?.kind() != Some(NodeKind::Dir) {
                continue;
            }
            for e in index.read_dir(ino, 0)? {
                let e = e?;
                if e.kind == Some(NodeKind::Dir) && e.ino != ROOT_INO {
                    if let Some(p) = parents.get_mut(e.ino as usize) {
                        *p = ino as u32;
                    }
                }
            }
        }
        let no_xattrs = index.xattr_count() == 0;
        Ok(ClipFs {
            index,
            content,
            cfg,
            parents,
            no_open: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            prefetched: (0..(n / 64 + 1)).map(|_| AtomicU64::new(0)).collect(),
            no_xattrs,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Counts into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The index being served.
    pub fn index(&self) -> &Arc<Index> {
        &self.index
    }

    /// Where the filesystem counts its reads and lookups.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Marks `ino` as hinted; `true` only the first time.
    fn first_hint(&self, ino: u64) -> bool {
        let Some(word) = self.prefetched.get((ino / 64) as usize) else {
            return false;
        };
        let bit = 1u64 << (ino % 64);
        word.fetch_or(bit, Ordering::Relaxed) & bit == 0
    }

    fn parent_of(&self, dir: u64) -> u64 {
        match self.parents.get(dir as usize) {
            Some(&p) if p != 0 => p as u64,
            _ => ROOT_INO,
        }
    }

    /// Walks directory `dir` from readdir cookie `offset`: position 0 is ".",
    /// 1 is "..", then the index entries in name order; each entry's cookie is
    /// its position + 1. `emit` returns `false` when the reply is full.
    fn walk_dir(&self, dir: u64, offset: u64, emit: &mut DirEmit<'_>) -> Result<(), FsError> {
        let node = self.index.inode(dir)?;
        if node.kind() != Some(NodeKind::Dir) {
            return Err(FsError::NotADirectory(dir));
        }
        let mut pos = offset;
        if pos == 0 {
            if !emit(1, b".", dir, Some(NodeKind::Dir))? {
                return Ok(());
            }
            pos = 1;
        }
        if pos == 1 {
            if !emit(2, b"..", self.parent_of(dir), Some(NodeKind::Dir))? {
                return Ok(());
            }
            pos = 2;
        }
        let start = usize::try_from(pos - 2).map_err(|_| FsError::Invalid)?;
        for e in self.index.read_dir(dir, start)? {
            let e = e?;
            // `e.next` is the index position after this entry; +2 for "." and "..".
            if !emit(e.next as u64 + 2, e.name, e.ino, e.kind)? {
                break;
            }
        }
        Ok(())
    }

    /// `lseek` with `SEEK_DATA` or `SEEK_HOLE` (the kernel answers the other
    /// whences itself): the next data or hole offset of regular file `ino`.
    fn seek(&self, ino: u64, offset: u64, whence: u32) -> Result<u64, FsError> {
        let node = self.index.inode(ino)?;
        match node.kind() {
            Some(NodeKind::File) => {}
            Some(NodeKind::Dir) => return Err(FsError::IsADirectory(ino)),
            _ => return Err(FsError::Invalid),
        }
        let found = match whence as i32 {
            libc::SEEK_DATA => node.seek_data(offset)?,
            libc::SEEK_HOLE => node.seek_hole(offset)?,
            _ => return Err(FsError::Invalid),
        };
        found.ok_or(FsError::NoSuchOffset(offset))
    }

    /// Reads file bytes `[offset, offset+size)` of `ino` (clamped to the file
    /// size) into `w`; returns the count.
    fn read_file(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        w: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyWriter,
    ) -> Result<usize, FsError> {
        let node = self.index.inode(ino)?;
        match node.kind() {
            Some(NodeKind::File) => {}
            Some(NodeKind::Dir) => return Err(FsError::IsADirectory(ino)),
            _ => return Err(FsError::Invalid),
        }
        let file_size = node.size();
        if offset >= file_size || size == 0 {
            return Ok(0);
        }
        let len = (file_size - offset).min(size as u64) as usize;
        // A file that is all hole has no data layer: every piece is a hole.
        let (layer, data_offset) = node.data().unwrap_or((0, 0));
        let pieces = node.pieces(offset, len as u64)?;
        if node.data().is_some()
            && self.cfg.prefetch_min.is_some_and(|min| file_size >= min)
            && self.first_hint(ino)
        {
            // The rest of the file is probably wanted too (a program loading
            // a library, an interpreter reading a module): start fetching it
            // in the background so later page faults find it cached. (A
            // sparse file's runs are stored back to back from its first.)
            self.content
                .prefetch(layer, data_offset, node.allocated_size());
        }
        let mut res = Ok(());
        for piece in pieces {
            res = match piece {
                Piece::Data { layer_offset, len } => {
                    zerocopy::copy_direct(&*self.content, ino, layer, layer_offset, len as usize, w)
                }
                // Holes never touch the cache or the network.
                Piece::Hole { len } => zerocopy::write_zeros(w, len as usize),
            };
            if res.is_err() {
                break;
            }
        }
        match res {
            Ok(()) => {
                self.metrics.count(Counter::FuseReads, 1);
                self.metrics.count(Counter::FuseReadBytes, len as u64);
                Ok(len)
            }
            Err(e) => {
                self.metrics.count(Counter::FuseReadErrors, 1);
                if e.errno() == libc::EIO {
                    self.metrics.count_error(ErrorKind::FuseEio);
                }
                tracing::error!(ino, layer, offset, len, error = %e, "read failed; returning EIO");
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests;
