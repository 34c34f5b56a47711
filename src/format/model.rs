//! In-memory twins of the index records: what `index` builds and
//! [`crate::format::write_index`] serialises. The reader never materialises
//! these; it serves checked views straight from the file bytes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Resume points and chunk records are what the gzip indexer produces; the
/// index stores them as they are (zstd layers reuse the checkpoint record
/// with an empty window).
pub use crate::gzip::{Checkpoint, Chunk};

/// Where the image came from and what it is; stored as JSON in the META section.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageMeta {
    /// Registry reference as given (`host/repo:tag` or `@digest`), if indexed from a registry.
    pub reference: Option<String>,
    /// Canonical registry reference pinned by digest (`host/repo@sha256:…`), if known.
    pub pinned_reference: Option<String>,
    /// OCI layout directory and tag, if indexed from a layout.
    pub layout: Option<String>,
    /// Digest of the image manifest.
    pub manifest_digest: Option<Digest>,
    /// The manifest, verbatim.
    pub manifest: String,
    /// The image config, verbatim.
    pub config: String,
    /// `os/arch[/variant]` of the chosen manifest.
    pub platform: String,
    /// Total compressed size of all layers.
    pub compressed_size: u64,
    /// Target uncompressed span between checkpoints, in bytes.
    pub span: u64,
    /// `clipctl` version that wrote the file.
    pub writer: String,
}

/// How a layer's bytes are stored in its blob, and so how ranges are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum LayerKind {
    /// gzip (one or more members): served by inflating from checkpoints.
    Gzip = 1,
    /// Uncompressed tar: uncompressed offset == blob offset.
    Tar = 2,
    /// zstd with several frames: each checkpoint is a frame start (no window).
    ZstdFrames = 3,
    /// Single-frame zstd: the whole layer is fetched and decoded once.
    ZstdWhole = 4,
}

impl LayerKind {
    /// Parses the on-disk byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => LayerKind::Gzip,
            2 => LayerKind::Tar,
            3 => LayerKind::ZstdFrames,
            4 => LayerKind::ZstdWhole,
            _ => return None,
        })
    }
}

/// One layer of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob (compressed bytes).
    pub digest: Digest,
    /// The uncompressed tar's digest (config `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// How ranges are served.
    pub kind: LayerKind,
    /// Blob size.
    pub compressed_size: u64,
    /// Uncompressed tar size.
    pub uncompressed_size: u64,
    /// Chunk size used to cut spans into verification chunks.
    pub chunk_size: u32,
    /// Resume points, ascending by `out_offset`; the first is at 0.
    pub checkpoints: Vec<Checkpoint>,
    /// Chunk digests, in uncompressed order.
    pub chunks: Vec<Chunk>,
}

/// What kind of file an inode is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NodeKind {
    /// Regular file.
    File = 1,
    /// Directory.
    Dir = 2,
    /// Symbolic link.
    Symlink = 3,
    /// Character device.
    CharDev = 4,
    /// Block device.
    BlockDev = 5,
    /// Named pipe.
    Fifo = 6,
    /// Unix socket.
    Socket = 7,
}

impl NodeKind {
    /// Parses the on-disk byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => NodeKind::File,
            2 => NodeKind::Dir,
            3 => NodeKind::Symlink,
            4 => NodeKind::CharDev,
            5 => NodeKind::BlockDev,
            6 => NodeKind::Fifo,
            7 => NodeKind::Socket,
            _ => return None,
        })
    }

    /// The `S_IFMT` bits for this kind.
    pub fn type_bits(self) -> u32 {
        match self {
            NodeKind::File => 0o100000,
            NodeKind::Dir => 0o040000,
            NodeKind::Symlink => 0o120000,
            NodeKind::CharDev => 0o020000,
            NodeKind::BlockDev => 0o060000,
            NodeKind::Fifo => 0o010000,
            NodeKind::Socket => 0o140000,
        }
    }
}

/// Where a regular file's bytes live: a contiguous run of one layer's
/// uncompressed tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRef {
    /// Layer index in [`Layer`] order (0 = bottom).
    pub layer: u32,
    /// Offset of the first byte in the layer's uncompressed stream.
    pub offset: u64,
}

/// One data run of a sparse file: `len` bytes at `file_offset` of the file
/// are at `layer_offset` of its data layer's uncompressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseSegment {
    /// Offset of the run in the file.
    pub file_offset: u64,
    /// Length of the run (> 0).
    pub len: u64,
    /// Offset of the run's first byte in the layer's uncompressed stream.
    pub layer_offset: u64,
}

/// One inode of the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Kind.
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (`& 0o7777`).
    pub perm: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// File size (regular files), target length (symlinks), 0 otherwise.
    pub size: u64,
    /// Device major number (devices).
    pub rdev_major: u32,
    /// Device minor number (devices).
    pub rdev_minor: u32,
    /// Link target (symlinks).
    pub link_target: Vec<u8>,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// File contents (regular files with size > 0; for a sparse file, its
    /// first data run, `None` if it is all hole).
    pub data: Option<DataRef>,
    /// A sparse file's data runs in `data.layer`, sorted and disjoint; the
    /// rest of the file reads as zeros. `None` for a plain file (`size`
    /// contiguous bytes at `data`).
    pub sparse: Option<Vec<SparseSegment>>,
    /// Directory entries: name → node index (directories only).
    pub children: BTreeMap<Vec<u8>, u32>,
}

impl Node {
    /// A node of `kind` with everything else zero/empty.
    pub fn new(kind: NodeKind) -> Self {
        Node {
            kind,
            perm: if kind == NodeKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
            size: 0,
            rdev_major: 0,
            rdev_minor: 0,
            link_target: Vec::new(),
            xattrs: Vec::new(),
            data: None,
            sparse: None,
            children: BTreeMap::new(),
        }
    }
}

/// The merged file tree. `nodes[0]` is the root directory; inode number =
/// node index + 1. Hard links are several directory entries naming one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tree {
    /// All nodes; index 0 is the root.
    pub nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: vec![Node::new(NodeKind::Dir)],
        }
    }
}

/// Everything one `.clip` index file holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IndexData {
    /// Image description.
    pub meta: ImageMeta,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
    /// The merged tree.
    pub tree: Tree,
    /// A startup access profile to embed (PROFILE section).
    pub profile: Option<super::AccessProfile>,
    /// Read hints, sorted by inode (HINTS sections).
    pub hints: Vec<FileHint>,
}

/// Read hints of one file: what a loader opens after it and touches in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileHint {
    /// The file's inode number.
    pub ino: u64,
    /// Inode numbers of the files opened after it, in the order a loader
    /// opens them.
    pub dependencies: Vec<u64>,
    /// `(offset, len)` ranges of the file a loader reads or maps, sorted.
    pub hot_ranges: Vec<(u64, u64)>,
}
