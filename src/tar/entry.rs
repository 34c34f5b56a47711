//! The entry record handed to callers of [`super::read_entries`].

use super::SparseSegment;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Regular file (type `0`, NUL, `7` contiguous, or `S` GNU sparse).
    File,
    /// Directory (type `5`, GNU dumpdir `D`, or a v7 regular entry whose
    /// name ends in `/`).
    Dir,
    /// Symbolic link (type `2`).
    Symlink,
    /// Hard link to an earlier entry (type `1`).
    Hardlink,
    /// Character device (type `3`).
    CharDev,
    /// Block device (type `4`).
    BlockDev,
    /// Named pipe (type `6`).
    Fifo,
}

/// One member of a tar stream, with extension headers (PAX, GNU long
/// name/link) already folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Normalised path: no leading `/` or `./`, no trailing `/`, no empty or
    /// `.` components, never a `..` component. `""` is the root directory.
    pub path: Vec<u8>,
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub perm: u32,
    /// Owner (PAX `uid` overrides the header).
    pub uid: u32,
    /// Group (PAX `gid` overrides the header).
    pub gid: u32,
    /// Modification time, seconds since the epoch (PAX `mtime` overrides).
    pub mtime: i64,
    /// Nanoseconds of the modification time (from a fractional PAX `mtime`).
    pub mtime_nsec: u32,
    /// Data size for regular files (a sparse file's real size, holes
    /// included); 0 for every other kind.
    pub size: u64,
    /// Offset of the first data byte in the uncompressed tar stream (just
    /// past the entry's header block, also for entries without data; for a
    /// sparse file, past its map).
    pub data_offset: u64,
    /// A GNU sparse file's data runs, sorted by file offset and stored one
    /// after the other from `data_offset`; the rest of the file is holes.
    /// `None` for a plain file (`size` bytes at `data_offset`); empty for a
    /// file that is all hole.
    pub sparse: Option<Vec<SparseSegment>>,
    /// Symlink target verbatim; hard link target normalised like `path`;
    /// empty otherwise.
    pub link_target: Vec<u8>,
    /// Device major number (devices only).
    pub rdev_major: u32,
    /// Device minor number (devices only).
    pub rdev_minor: u32,
    /// Extended attributes from PAX `SCHILY.xattr.*`, sorted by name, one
    /// value per name (the last record wins).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}
