//! Serialises an [`IndexData`] into the `.clip` layout described in
//! docs/format.md: sections first, then the section table, header last.

use std::collections::VecDeque;
use std::io::Write;
use std::path::Path;

use zerocopy::little_endian::U32;
use zerocopy::IntoBytes;

use super::raw::{
    self, kind, CheckpointRec, ChunkRec, DirentRec, FileHintRec, HintRangeRec, InodeRec, LayerRec,
    SectionEntry, SparseFileRec, SparseSegmentRec, XattrRec,
};
use super::{FormatError, IndexData, NodeKind, Tree};

/// Sections smaller than this are stored uncompressed (zstd would not pay).
const COMPRESS_MIN: usize = 4096;
/// zstd level for metadata sections: fast to write, small enough.
const ZSTD_LEVEL: i32 = 9;

/// Options for [`write_index`].
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// zstd-compress metadata sections (sets an incompatible feature bit).
    pub compress: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions { compress: true }
    }
}

/// Appends bytes and returns `(offset, len)` as u32 for string references.
#[derive(Default)]
struct Strings {
    bytes: Vec<u8>,
}

impl Strings {
    fn add(&mut self, s: &[u8]) -> Result<(u32, u32), FormatError> {
        let off =
            u32::try_from(self.bytes.len()).map_err(|_| FormatError::TooLarge("string table"))?;
        let len = u32::try_from(s.len()).map_err(|_| FormatError::TooLarge("string"))?;
        self.bytes.extend_from_slice(s);
        Ok((off, len))
    }
}

fn to_u32(v: usize, what: &'static str) -> Result<u32, FormatError> {
    u32::try_from(v).map_err(|_| FormatError::TooLarge(what))
}

/// Link counts as the kernel expects: names for non-directories, 2 + subdirectories for directories.
fn link_counts(tree: &Tree) -> Vec<u32> {
    let mut nlink = vec![0u32; tree.nodes.len()];
    for (i, node) in tree.nodes.iter().enumerate() {
        if node.kind == NodeKind::Dir {
            nlink[i] = nlink[i].saturating_add(2);
        }
        for &child in node.children.values() {
            let Some(c) = tree.nodes.get(child as usize) else {
                continue;
            };
            if c.kind == NodeKind::Dir {
                nlink[i] = nlink[i].saturating_add(1);
            } else {
                nlink[child as usize] = nlink[child as usize].saturating_add(1);
            }
        }
    }
    nlink
}

/// Serialises `data` into bytes.
pub fn write_index(data: &IndexData, opts: WriteOptions) -> Result<Vec<u8>, FormatError> {
    let tree = &data.tree;
    if tree.nodes.first().map(|n| n.kind) != Some(NodeKind::Dir) {
        return Err(FormatError::Invalid("tree has no root directory"));
    }
    let mut strings = Strings::default();

    // Layers, checkpoints, chunks, windows.
    let mut layers = Vec::with_capacity(data.layers.len());
    let mut checkpoints = Vec::new();
    let mut chunks = Vec::new();
    let mut windows = Vec::new();
    for layer in &data.layers {
        let (mt_off, mt_len) = strings.add(layer.media_type.as_bytes())?;
        layers.push(LayerRec {
            digest: *layer.digest.as_bytes(),
            diff_id: *layer.diff_id.as_bytes(),
            kind: layer.kind as u8,
            pad: [0; 3],
            chunk_size: layer.chunk_size.into(),
            compressed_size: layer.compressed_size.into(),
            uncompressed_size: layer.uncompressed_size.into(),
            first_checkpoint: to_u32(checkpoints.len(), "checkpoint count")?.into(),
            checkpoint_count: to_u32(layer.checkpoints.len(), "checkpoint count")?.into(),
            first_chunk: to_u32(chunks.len(), "chunk count")?.into(),
            chunk_count: to_u32(layer.chunks.len(), "chunk count")?.into(),
            media_type_off: mt_off.into(),
            media_type_len: mt_len.into(),
        });
        for cp in &layer.checkpoints {
            checkpoints.push(CheckpointRec {
                in_offset: cp.in_offset.into(),
                out_offset: cp.out_offset.into(),
                window_off: (windows.len() as u64).into(),
                window_stored_len: to_u32(cp.window.len(), "window")?.into(),
                window_len: cp.window_len.into(),
                first_chunk: cp.first_chunk.into(),
                bits: cp.bits,
                pad: [0; 3],
            });
            windows.extend_from_slice(&cp.window);
        }
        for ch in &layer.chunks {
            chunks.push(ChunkRec {
                digest: ch.digest,
                in_end: ch.in_end.into(),
            });
        }
    }

    // Dirents: directories get contiguous runs in breadth-first order.
    let nlink = link_counts(tree);
    let mut inodes = Vec::with_capacity(tree.nodes.len());
    let mut dir_range = vec![(0u32, 0u32); tree.nodes.len()];
    let mut dirents = Vec::new();
    let mut queue = VecDeque::from([0usize]);
    let mut seen = vec![false; tree.nodes.len()];
    seen[0] = true;
    while let Some(i) = queue.pop_front() {
        let node = &tree.nodes[i];
        let first = to_u32(dirents.len(), "dirent count")?;
        for (name, &child) in &node.children {
            let c = tree
                .nodes
                .get(child as usize)
                .ok_or(FormatError::Invalid("directory entry names a missing node"))?;
            if name.is_empty() || name.len() > u16::MAX as usize {
                return Err(FormatError::Invalid(
                    "directory entry name is empty or too long",
                ));
            }
            let (off, len) = strings.add(name)?;
            dirents.push(DirentRec {
                name_off: off.into(),
                name_len: (len as u16).into(),
                kind: c.kind as u8,
                pad: 0,
                ino: to_u32(child as usize + 1, "inode count")?.into(),
            });
            if c.kind == NodeKind::Dir && !seen[child as usize] {
                seen[child as usize] = true;
                queue.push_back(child as usize);
            }
        }
        dir_range[i] = (first, to_u32(node.children.len(), "dirent count")?);
    }

    let mut xattrs = Vec::new();
    let mut sparse_files = Vec::new();
    let mut sparse_segments = Vec::new();
    for (i, node) in tree.nodes.iter().enumerate() {
        if let Some(segments) = &node.sparse {
            if node.kind != NodeKind::File || (!segments.is_empty() && node.data.is_none()) {
                return Err(FormatError::Invalid(
                    "sparse map on a non-file or without a data layer",
                ));
            }
            sparse_files.push(SparseFileRec {
                ino: to_u32(i + 1, "inode count")?.into(),
                first_segment: to_u32(sparse_segments.len(), "sparse segment count")?.into(),
                segment_count: to_u32(segments.len(), "sparse segment count")?.into(),
                reserved: 0.into(),
            });
            sparse_segments.extend(segments.iter().map(|s| SparseSegmentRec {
                file_offset: s.file_offset.into(),
                len: s.len.into(),
                layer_offset: s.layer_offset.into(),
            }));
        }
        let (t_off, t_len) = strings.add(&node.link_target)?;
        let xattr_first = to_u32(xattrs.len(), "xattr count")?;
        for (name, value) in &node.xattrs {
            let (n_off, n_len) = strings.add(name)?;
            let (v_off, v_len) = strings.add(value)?;
            xattrs.push(XattrRec {
                name_off: n_off.into(),
                name_len: n_len.into(),
                value_off: v_off.into(),
                value_len: v_len.into(),
            });
        }
        let (data_layer, data_offset) = match node.data {
            Some(d) => (d.layer, d.offset),
            None => (u32::MAX, 0),
        };
        inodes.push(InodeRec {
            mode: (node.kind.type_bits() | (node.perm & 0o7777)).into(),
            uid: node.uid.into(),
            gid: node.gid.into(),
            nlink: nlink[i].max(1).into(),
            mtime_nsec: node.mtime_nsec.into(),
            data_layer: data_layer.into(),
            mtime: node.mtime.into(),
            size: node.size.into(),
            data_offset: data_offset.into(),
            rdev_major: node.rdev_major.into(),
            rdev_minor: node.rdev_minor.into(),
            target_off: t_off.into(),
            target_len: t_len.into(),
            dirent_first: dir_range[i].0.into(),
            dirent_count: dir_range[i].1.into(),
            xattr_first: xattr_first.into(),
            xattr_count: to_u32(node.xattrs.len(), "xattr count")?.into(),
        });
    }

    let meta = serde_json::to_vec(&data.meta)
        .map_err(|_| FormatError::Invalid("metadata not serialisable"))?;
    let profile = match &data.profile {
        Some(p) => {
            serde_json::to_vec(p).map_err(|_| FormatError::Invalid("profile not serialisable"))?
        }
        None => Vec::new(),
    };
    let (file_hints, hint_deps, hint_ranges) = hint_records(data, tree.nodes.len())?;
    let mut sections: Vec<(u32, &[u8])> = vec![
        (kind::META, &meta),
        (kind::LAYERS, layers.as_bytes()),
        (kind::CHECKPOINTS, checkpoints.as_bytes()),
        (kind::CHUNKS, chunks.as_bytes()),
        (kind::WINDOWS, &windows),
        (kind::INODES, inodes.as_bytes()),
        (kind::DIRENTS, dirents.as_bytes()),
        (kind::STRINGS, &strings.bytes),
        (kind::XATTRS, xattrs.as_bytes()),
        (kind::PROFILE, &profile),
        (kind::FILE_HINTS, file_hints.as_bytes()),
        (kind::HINT_DEPS, hint_deps.as_bytes()),
        (kind::HINT_RANGES, hint_ranges.as_bytes()),
    ];
    let mut incompat = 0;
    // Only images with sparse files need (and set) the sparse feature, so
    // every other index stays readable by 2.1 readers.
    if !sparse_files.is_empty() {
        sections.push((kind::SPARSE_FILES, sparse_files.as_bytes()));
        sections.push((kind::SPARSE_SEGMENTS, sparse_segments.as_bytes()));
        incompat |= raw::INCOMPAT_SPARSE;
    }
    assemble(&sections, incompat, opts)
}

/// The records of the three HINTS sections.
type HintRecords = (Vec<FileHintRec>, Vec<U32>, Vec<HintRangeRec>);

/// The HINTS sections' records: one per hinted file, in inode order.
fn hint_records(data: &IndexData, inodes: usize) -> Result<HintRecords, FormatError> {
    let (mut files, mut deps, mut ranges) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = 0;
    for h in &data.hints {
        if h.ino <= last || h.ino > inodes as u64 {
            return Err(FormatError::Invalid(
                "file hints not sorted by inode or out of range",
            ));
        }
        last = h.ino;
        files.push(FileHintRec {
            ino: to_u32(h.ino as usize, "inode count")?.into(),
            first_dep: to_u32(deps.len(), "hint count")?.into(),
            dep_count: to_u32(h.dependencies.len(), "hint count")?.into(),
            first_range: to_u32(ranges.len(), "hint count")?.into(),
            range_count: to_u32(h.hot_ranges.len(), "hint count")?.into(),
            reserved: 0.into(),
        });
        for &d in &h.dependencies {
            if d == 0 || d > inodes as u64 {
                return Err(FormatError::Invalid("file hint names no inode"));
            }
            deps.push(U32::new(d as u32));
        }
        ranges.extend(h.hot_ranges.iter().map(|&(offset, len)| HintRangeRec {
            offset: offset.into(),
            len: len.into(),
        }));
    }
    Ok((files, deps, ranges))
}

/// Lays out `sections`, the table and the header with the `incompat` bits
/// (plus the zstd bit if a section gets compressed).
fn assemble(
    sections: &[(u32, &[u8])],
    mut incompat: u32,
    opts: WriteOptions,
) -> Result<Vec<u8>, FormatError> {
    let mut out = vec![0u8; raw::HEADER_SIZE];
    let mut table = Vec::with_capacity(sections.len());
    for &(kind, bytes) in sections {
        // Windows are already deflated: compressing them again wastes time.
        let compress = opts.compress && bytes.len() >= COMPRESS_MIN && kind != raw::kind::WINDOWS;
        let z = compress
            .then(|| zstd::bulk::compress(bytes, ZSTD_LEVEL))
            .transpose()
            .map_err(|_| FormatError::Invalid("zstd failed"))?;
        // A section compressing past the ratio readers accept is stored as is.
        let (stored, flags) = match z {
            Some(z) if super::bomb::ratio_ok(z.len() as u64, bytes.len() as u64) => {
                incompat |= raw::INCOMPAT_ZSTD_SECTIONS;
                (z, raw::SECTION_ZSTD)
            }
            _ => (bytes.to_vec(), 0),
        };
        // 8-byte alignment keeps uncompressed record arrays aligned in memory.
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        table.push(SectionEntry {
            kind: kind.into(),
            flags: flags.into(),
            offset: (out.len() as u64).into(),
            stored_len: (stored.len() as u64).into(),
            raw_len: (bytes.len() as u64).into(),
            crc: crc32fast::hash(&stored).into(),
            reserved: 0.into(),
        });
        out.extend_from_slice(&stored);
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let table_off = out.len() as u64;
    out.extend_from_slice(table.as_bytes());
    let mut header = raw::Header {
        magic: raw::MAGIC,
        major: raw::MAJOR.into(),
        minor: raw::MINOR.into(),
        incompat: incompat.into(),
        compat: 0.into(),
        section_count: to_u32(table.len(), "section count")?.into(),
        section_table: table_off.into(),
        file_size: (out.len() as u64).into(),
        header_crc: 0.into(),
        table_crc: crc32fast::hash(table.as_bytes()).into(),
        reserved: [0; 16],
    };
    header.header_crc = crc32fast::hash(header.as_bytes()).into();
    out[..raw::HEADER_SIZE].copy_from_slice(header.as_bytes());
    Ok(out)
}

/// Writes `data` to `path` atomically: a temporary file in the same directory,
/// fsynced, then renamed. A failure leaves no partial file behind.
pub fn write_index_file(
    data: &IndexData,
    path: &Path,
    opts: WriteOptions,
) -> Result<u64, FormatError> {
    let bytes = write_index(data, opts)?;
    let io_err = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".clip-index-")
        .tempfile_in(dir)
        .map_err(io_err)?;
    tmp.write_all(&bytes).map_err(io_err)?;
    tmp.as_file().sync_all().map_err(io_err)?;
    tmp.persist(path).map_err(|e| io_err(e.error))?;
    Ok(bytes.len() as u64)
}
