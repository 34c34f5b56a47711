//! Index records → kernel attribute structs (`stat64`, `Entry`, `statvfs64`).

use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::Attr;
use fuse_backend_rs::api::filesystem::Entry;

use crate::format::{Index, InodeView, NodeKind};

/// Preferred I/O size reported in `st_blksize` and `f_bsize`.
pub const BLOCK_SIZE: u32 = 4096;
/// Longest name the index accepts from a tar (Linux `NAME_MAX`).
pub const NAME_MAX: u64 = 255;

/// The `stat64` of an inode: mode, ids, nlink, size, 512-byte block count
/// (of the data only, for a sparse file),
/// rdev (`makedev`; its low 32 bits are the kernel's `new_encode_dev` form
/// that FUSE carries), and mtime (ctime and atime equal to it) with
/// nanoseconds.
pub fn stat_of(node: &InodeView<'_>) -> libc::stat64 {
    let (sec, nsec) = node.mtime();
    let (major, minor) = node.rdev();
    let rdev = match node.kind() {
        Some(NodeKind::CharDev | NodeKind::BlockDev) => libc::makedev(major, minor),
        _ => 0,
    };
    let attr = Attr {
        ino: node.ino(),
        size: node.size(),
        blocks: node.allocated_size().div_ceil(512),
        // Pre-1970 times round-trip: the kernel reads these bits as s64.
        atime: sec as u64,
        mtime: sec as u64,
        ctime: sec as u64,
        atimensec: nsec,
        mtimensec: nsec,
        ctimensec: nsec,
        mode: node.mode(),
        nlink: node.nlink(),
        uid: node.uid(),
        gid: node.gid(),
        rdev: rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    };
    attr.into()
}

/// A positive lookup reply for `node` with both TTLs set to `ttl`.
pub fn entry_of(node: &InodeView<'_>, ttl: Duration) -> Entry {
    Entry {
        inode: node.ino(),
        generation: 0,
        attr: stat_of(node),
        attr_flags: 0,
        attr_timeout: ttl,
        entry_timeout: ttl,
    }
}

/// A negative lookup reply (inode 0) the kernel may cache for `ttl`.
pub fn negative_entry(ttl: Duration) -> Entry {
    Entry {
        inode: 0,
        generation: 0,
        attr: Attr::default().into(),
        attr_flags: 0,
        attr_timeout: ttl,
        entry_timeout: ttl,
    }
}

/// `DT_*` type of a directory entry.
pub fn dirent_type(kind: Option<NodeKind>) -> u32 {
    (match kind {
        Some(NodeKind::File) => libc::DT_REG,
        Some(NodeKind::Dir) => libc::DT_DIR,
        Some(NodeKind::Symlink) => libc::DT_LNK,
        Some(NodeKind::CharDev) => libc::DT_CHR,
        Some(NodeKind::BlockDev) => libc::DT_BLK,
        Some(NodeKind::Fifo) => libc::DT_FIFO,
        Some(NodeKind::Socket) => libc::DT_SOCK,
        None => libc::DT_UNKNOWN,
    }) as u32
}

/// `statfs` of the image: total = the layers' uncompressed bytes in 4 KiB
/// blocks, nothing free, `f_files` = inode count, names up to 255 bytes.
pub fn statfs_of(index: &Index) -> libc::statvfs64 {
    let bytes: u64 = (0..index.layer_count())
        .filter_map(|i| index.layer(i).ok())
        .map(|l| l.uncompressed_size())
        .sum();
    let mut st = super::zerocopy::zeroed_statvfs();
    st.f_bsize = BLOCK_SIZE as _;
    st.f_frsize = BLOCK_SIZE as _;
    st.f_blocks = bytes.div_ceil(BLOCK_SIZE as u64);
    st.f_bfree = 0;
    st.f_bavail = 0;
    st.f_files = index.inode_count();
    st.f_ffree = 0;
    st.f_favail = 0;
    st.f_namemax = NAME_MAX;
    st
}
