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
mod warm;
mod zerocopy;

use std::io;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::{CacheError, ContentReader};
use crate::format::{FormatError, Index, NodeKind, Piece, Pieces, ROOT_INO};
use crate::metrics::{Counter, ErrorKind, Metrics};

pub use attr::{dirent_type, stat_of};
pub use warm::WarmConfig;

/// Knobs of the filesystem (not of the mount).
#[derive(Debug, Clone)]
pub struct FsConfig {
    /// Attribute and entry cache lifetime handed to the kernel.
    pub ttl: Duration,
    /// Ask for FUSE_NO_OPEN/NO_OPENDIR: after the first open the kernel sends
    /// no more OPEN/RELEASE (and keeps the page cache across opens).
    pub no_open: bool,
    /// First-start warming: what a file's first READ hints the content
    /// reader to fetch ahead ([`ContentReader::prefetch`]); `None` never
    /// hints (a mount replaying a startup profile knows better).
    pub warm: Option<WarmConfig>,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            // The image never changes under a mount: a day is "forever" for
            // the kernel caches and still fits every timeout field.
            ttl: Duration::from_secs(86_400),
            no_open: true,
            warm: Some(WarmConfig::default()),
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
    /// First-start warming state (None: off).
    warmer: Option<warm::Warmer>,
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
        let warmer = cfg.warm.clone().map(|w| warm::Warmer::new(w, n));
        Ok(ClipFs {
            index,
            content,
            cfg,
            warmer,
            parents,
            no_open: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
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

    /// Lets the warming rules see a READ of regular file `ino`.
    fn warm_on_read(&self, ino: u64) {
        if let Some(w) = &self.warmer {
            w.on_read(&self.index, &*self.content, ino);
        }
    }

    /// Notes that regular file `ino` was found in directory `parent` under
    /// `name` (directory warming needs to know where a read file lives).
    fn looked_up(&self, parent: u64, name: &[u8], ino: u64) {
        if let Some(w) = &self.warmer {
            w.looked_up(parent, name, ino);
        }
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

    /// Where READ `(ino, offset, size)` finds its bytes; `None` for an
    /// empty read (at or past the end, or `size` 0). No side effects.
    fn locate(&self, ino: u64, offset: u64, size: u32) -> Result<Option<Located<'_>>, FsError> {
        let node = self.index.inode(ino)?;
        match node.kind() {
            Some(NodeKind::File) => {}
            Some(NodeKind::Dir) => return Err(FsError::IsADirectory(ino)),
            _ => return Err(FsError::Invalid),
        }
        let file_size = node.size();
        if offset >= file_size || size == 0 {
            return Ok(None);
        }
        let len = (file_size - offset).min(size as u64) as usize;
        // A sparse file that is all hole has no data layer: every piece is a hole.
        let layer = node.data().map_or(0, |(layer, _)| layer);
        Ok(Some(Located {
            ino,
            layer,
            offset,
            len,
            pieces: node.pieces(offset, len as u64)?,
        }))
    }

    /// Whether READ `(ino, offset, size)` could wait on the network now
    /// ([`ContentReader::would_block`]); a read that fails fast does not.
    pub(crate) fn read_would_block(&self, ino: u64, offset: u64, size: u32) -> bool {
        match self.locate(ino, offset, size) {
            Ok(Some(l)) => l.pieces.clone().any(|p| match p {
                Piece::Data { layer_offset, len } => {
                    self.content.would_block(l.layer, layer_offset, len)
                }
                Piece::Hole { .. } => false,
            }),
            _ => false,
        }
    }

    /// Reads file bytes `[offset, offset+size)` of `ino` (clamped to the file
    /// size) into `w`, the kernel's reply buffer; returns the count.
    fn read_file(
        &self,
        ino: u64,
        offset: u64,
        size: u32,
        w: &mut dyn fuse_backend_rs::api::filesystem::ZeroCopyWriter,
    ) -> Result<usize, FsError> {
        let Some(l) = self.locate(ino, offset, size)? else {
            return Ok(0);
        };
        self.warm_on_read(ino);
        tracing::trace!(ino, layer = l.layer, offset, len = l.len, "READ");
        let mut res = Ok(());
        for piece in l.pieces.clone() {
            res = match piece {
                Piece::Data { layer_offset, len } => zerocopy::copy_direct(
                    &*self.content,
                    ino,
                    l.layer,
                    layer_offset,
                    len as usize,
                    w,
                ),
                // Holes never touch the cache or the network.
                Piece::Hole { len } => zerocopy::write_zeros(w, len as usize),
            };
            if res.is_err() {
                break;
            }
        }
        self.count_read(&l, res)
    }

    /// [`Self::read_file`] into a buffer of its own, for a READ answered
    /// later than it was received (the FUSE transports' hand-off pool).
    pub(crate) fn read_to_vec(&self, ino: u64, offset: u64, size: u32) -> Result<Vec<u8>, FsError> {
        let Some(l) = self.locate(ino, offset, size)? else {
            return Ok(Vec::new());
        };
        self.warm_on_read(ino);
        tracing::trace!(ino, layer = l.layer, offset, len = l.len, "READ");
        let mut buf = vec![0u8; l.len];
        let mut at = 0;
        let mut res = Ok(());
        for piece in l.pieces.clone() {
            match piece {
                Piece::Data { layer_offset, len } => {
                    let end = at + len as usize;
                    res = self.fill_from_layer(ino, l.layer, layer_offset, &mut buf[at..end]);
                    at = end;
                }
                // Already zero.
                Piece::Hole { len } => at += len as usize,
            }
            if res.is_err() {
                break;
            }
        }
        self.count_read(&l, res).map(|_| buf)
    }

    /// Fills `buf` from `layer`'s uncompressed bytes at `start`.
    fn fill_from_layer(
        &self,
        ino: u64,
        layer: u32,
        start: u64,
        buf: &mut [u8],
    ) -> Result<(), FsError> {
        let mut done = 0;
        while done < buf.len() {
            let offset = start + done as u64;
            match self.content.read(layer, offset, &mut buf[done..]) {
                Ok(0) => return Err(FsError::ShortLayer { ino, layer, offset }),
                Ok(n) => done += n,
                Err(source) => {
                    return Err(FsError::Content {
                        ino,
                        layer,
                        offset,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Counts a READ's outcome; logs a failure (answered with EIO).
    fn count_read(&self, l: &Located<'_>, res: Result<(), FsError>) -> Result<usize, FsError> {
        match res {
            Ok(()) => {
                self.metrics.count(Counter::FuseReads, 1);
                self.metrics.count(Counter::FuseReadBytes, l.len as u64);
                Ok(l.len)
            }
            Err(e) => {
                self.metrics.count(Counter::FuseReadErrors, 1);
                if e.errno() == libc::EIO {
                    self.metrics.count_error(ErrorKind::FuseEio);
                }
                tracing::error!(ino = l.ino, layer = l.layer, offset = l.offset, len = l.len, error = %e, "read failed; returning EIO");
                Err(e)
            }
        }
    }
}

/// The file bytes behind one READ: `len` bytes from `offset`, as data
/// runs of `layer` and holes.
#[derive(Debug, Clone)]
struct Located<'a> {
    ino: u64,
    layer: u32,
    offset: u64,
    len: usize,
    pieces: Pieces<'a>,
}

#[cfg(test)]
mod tests;
