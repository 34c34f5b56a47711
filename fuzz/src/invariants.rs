//! The checks behind every fuzz target, shared with the library's replay test
//! (`src/fuzz_regressions.rs` includes this file with `#[path]`, so CI replays
//! `fuzz/regressions/*/*` through exactly these invariants without cargo-fuzz).
//!
//! Each public function takes one raw fuzz input and panics when an invariant
//! breaks. The file only names the library as `clip::…` (brought in by the
//! `use super::clip` below) and otherwise uses crates the library itself
//! depends on (`crc32fast`, `flate2`, `sha2`).

use super::clip;

use std::io::{Cursor, Read, Write};

use clip::format::{
    write_index, AccessProfile, Checkpoint, Chunk, DataRef, FileHint, ImageMeta, Index, IndexData,
    InodeView, Layer, LayerKind, Node, NodeKind, Piece, ProfileRange, SparseSegment, Tree,
    WriteOptions, PROFILE_VERSION, ROOT_INO,
};
use clip::gzip::{read_range, IndexerConfig, SpanDecoder, ZranReader};
use clip::tar::{read_entries, Entry, EntryKind};
use clip::Digest;
use sha2::Digest as _;

/// A little byte cursor for structure-aware generators: reads past the end
/// yield zeros, so every input maps to some structure.
pub(crate) struct Bytes<'a>(pub(crate) &'a [u8]);

impl Bytes<'_> {
    pub(crate) fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    pub(crate) fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    pub(crate) fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    /// Up to `max` bytes (length from one input byte).
    pub(crate) fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.u8() as usize % (max + 1)).min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }
    /// A non-empty name over a small alphabet (no `/`, no NUL), so that
    /// paths made of these names survive normalisation unchanged.
    fn name(&mut self, max: usize) -> Vec<u8> {
        const ALPHA: &[u8] = b"abcdefgh.-_XYZ019 \xc3\xa9";
        let n = 1 + self.u8() as usize % max;
        let v: Vec<u8> = (0..n)
            .map(|_| ALPHA[self.u8() as usize % ALPHA.len()])
            .collect();
        if v == b"." || v == b".." {
            b"dot".to_vec()
        } else {
            v
        }
    }
}

// ---------------------------------------------------------------------------
// format_open
// ---------------------------------------------------------------------------

/// `format_open`: hostile bytes as given, the same bytes with every checksum
/// (and magic, version, size) repaired so mutations reach the structural
/// checks, and a write → read round trip of an index generated from them.
pub fn format_open(data: &[u8]) {
    check_index_bytes(data);
    if let Some(fixed) = repair_index(data) {
        check_index_bytes(&fixed);
    }
    index_round_trip(data);
}

/// Rewrites the header so it passes the magic/version/size/CRC gates and
/// recomputes the CRC of every in-bounds section and of the section table.
/// Offsets are the on-disk layout of docs/format.md §2–3.
pub fn repair_index(data: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 64;
    const ENTRY: usize = 40;
    if data.len() < HEADER {
        return None;
    }
    let mut v = data.to_vec();
    let len = v.len() as u64;
    let rd32 = |v: &[u8], o: usize| u32::from_le_bytes(v[o..o + 4].try_into().unwrap());
    let rd64 = |v: &[u8], o: usize| u64::from_le_bytes(v[o..o + 8].try_into().unwrap());
    v[0..8].copy_from_slice(b"CLIPIDX\0");
    v[8..10].copy_from_slice(&2u16.to_le_bytes());
    // Keep the feature bits this reader knows (zstd sections, sparse files).
    let incompat = rd32(&v, 12) & 3;
    v[12..16].copy_from_slice(&incompat.to_le_bytes());
    v[32..40].copy_from_slice(&len.to_le_bytes());
    let count = rd32(&v, 20) as u64;
    let table = rd64(&v, 24);
    let table_end = count
        .checked_mul(ENTRY as u64)
        .and_then(|n| n.checked_add(table))
        .filter(|&end| end <= len);
    if let Some(end) = table_end {
        let (table, end) = (table as usize, end as usize);
        for e in (table..end).step_by(ENTRY) {
            let off = rd64(&v, e + 8);
            let stored = rd64(&v, e + 16);
            let Some(sec_end) = off.checked_add(stored).filter(|&x| x <= len) else {
                continue;
            };
            let crc = crc32fast::hash(&v[off as usize..sec_end as usize]);
            // A section may overlap the table; its CRC then depends on itself.
            v[e + 32..e + 36].copy_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32fast::hash(&v[table..end]);
        v[44..48].copy_from_slice(&crc.to_le_bytes());
    }
    v[40..44].fill(0);
    let crc = crc32fast::hash(&v[..HEADER]);
    v[40..44].copy_from_slice(&crc.to_le_bytes());
    Some(v)
}

/// Whatever the bytes, opening never panics; on an accepted file every
/// accessor returns a value or an error, and the few things `Index::open`
/// promises to have checked (a root directory, whole record arrays) hold.
fn check_index_bytes(data: &[u8]) {
    let Ok(idx) = Index::from_bytes(data.to_vec()) else {
        return;
    };
    let n = idx.inode_count();
    assert!(n >= 1, "accepted index without inodes");
    let root = idx.inode(ROOT_INO).expect("root inode");
    assert_eq!(root.kind(), Some(NodeKind::Dir), "root is not a directory");
    assert!(idx.inode(0).is_err());
    assert!(idx.inode(n + 1).is_err());
    for ino in 1..=n.min(4096) {
        let node = idx.inode(ino).expect("inode in 1..=inode_count");
        assert_eq!(node.ino(), ino);
        let _ = (
            node.mode(),
            node.size(),
            node.mtime(),
            node.rdev(),
            node.data(),
        );
        let _ = node.link_target();
        let _ = node.xattrs();
        if node.kind() == Some(NodeKind::File) {
            check_file_pieces(&idx, &node);
        }
        if node.kind() != Some(NodeKind::Dir) {
            assert!(idx.read_dir(ino, 0).is_err());
            assert!(idx.lookup(ino, b"x").is_err());
            continue;
        }
        let Ok(entries) = idx.read_dir(ino, 0) else {
            continue;
        };
        for (pos, e) in entries.take(256).enumerate() {
            let Ok(e) = e else { continue };
            assert_eq!(e.next, pos + 1, "readdir cookie");
            // The target may be out of range in a hostile file; it must
            // then be an error, not a panic.
            let _ = idx.inode(e.ino);
            let _ = idx.lookup(ino, e.name);
            // Resuming at a cookie yields the entry after it.
            if let Some(Ok(again)) = idx.read_dir(ino, pos).ok().and_then(|mut d| d.next()) {
                assert_eq!(again.name, e.name);
                assert_eq!(again.ino, e.ino);
            }
        }
        let _ = idx.read_dir(ino, usize::MAX).map(|d| d.count());
    }
    let _ = idx.resolve(b"/usr/bin/python3");
    let _ = idx.resolve(b"./etc/../etc/");
    if let Some(p) = idx.profile() {
        assert_eq!(p.version, PROFILE_VERSION);
        let _ = (p.bytes(), p.overlap_bytes(p));
    }
    let layers = idx.layer_count();
    assert!(idx.layer(layers).is_err());
    for l in 0..layers.min(16) {
        let Ok(layer) = idx.layer(l) else { continue };
        let _ = (
            layer.digest(),
            layer.diff_id(),
            layer.kind(),
            layer.media_type(),
        );
        let _ = (layer.window_bytes(), layer.chunk(0), layer.chunk(u32::MAX));
        let cps = layer.checkpoint_count();
        for c in 0..cps.min(64) {
            if let Some(r) = layer.span_range(c) {
                assert!(r.start <= r.end);
            }
            // A hostile window must be refused by the decoder, not crash it.
            if let Ok(cp) = layer.checkpoint(c) {
                if let Ok(mut dec) = SpanDecoder::new(&cp) {
                    let mut out = [0u8; 64];
                    let _ = dec.decode(&[0x03, 0x00], &mut out);
                }
            }
        }
        match layer.checkpoint_for(u64::MAX) {
            Some(i) => assert!(i < cps),
            None => assert_eq!(cps, 0),
        }
        assert!(layer.span_range(cps).is_none());
    }
}

/// A file's pieces (data runs and holes) tile any range of it exactly, data
/// pieces lie inside the data layer, and `SEEK_DATA`/`SEEK_HOLE` agree with
/// them. On an accepted index none of this may fail for a sparse file.
fn check_file_pieces(idx: &Index, node: &InodeView<'_>) {
    let size = node.size();
    let layer_size = node
        .data()
        .and_then(|(l, _)| idx.layer(l).ok())
        .map_or(0, |l| l.uncompressed_size());
    let sparse = node.is_sparse();
    assert!(node.allocated_size() <= size || !sparse);
    for (offset, len) in [
        (0, size),
        (size / 3, size / 2 + 1),
        (size, 10),
        (u64::MAX, 1),
    ] {
        let Ok(pieces) = node.pieces(offset, len) else {
            assert!(!sparse, "pieces of an accepted sparse file failed");
            continue;
        };
        let want = offset.saturating_add(len).min(size).saturating_sub(offset);
        let mut total = 0u64;
        for p in pieces {
            match p {
                Piece::Data { layer_offset, len } => {
                    assert!(len > 0);
                    if sparse {
                        assert!(
                            layer_offset + len <= layer_size,
                            "data piece past its layer"
                        );
                    }
                    total += len;
                }
                Piece::Hole { len } => {
                    assert!(sparse && len > 0, "a hole in a plain file");
                    total += len;
                }
            }
        }
        assert_eq!(total, want, "pieces do not tile the range");
    }
    if sparse {
        let mut pos = 0u64;
        for _ in 0..64 {
            let Some(d) = node.seek_data(pos).expect("seek_data") else {
                break;
            };
            assert!(d >= pos && d < size);
            let h = node
                .seek_hole(d)
                .expect("seek_hole")
                .expect("a hole after data");
            assert!(h > d && h <= size);
            pos = h;
        }
    }
}

/// Builds a small but varied [`IndexData`] from fuzz bytes.
fn gen_index_data(b: &mut Bytes<'_>) -> IndexData {
    let mut layers = Vec::new();
    for li in 0..b.u8() % 4 {
        let kind = LayerKind::from_u8(1 + b.u8() % 4).unwrap();
        let mut out = 0u64;
        let mut checkpoints = Vec::new();
        for _ in 0..b.u8() % 4 {
            let raw = b.bytes(64);
            checkpoints.push(Checkpoint {
                in_offset: b.u32().into(),
                bits: b.u8() % 8,
                out_offset: out,
                window_len: raw.len() as u32,
                window: clip::gzip::compress_window(&raw),
                first_chunk: b.u8().into(),
            });
            out += u64::from(b.u32() % 100_000) + 1;
        }
        let chunks = (0..b.u8() % 4)
            .map(|i| Chunk {
                digest: [i ^ b.u8(); 32],
                in_end: b.u64(),
            })
            .collect();
        layers.push(Layer {
            digest: Digest::from_bytes([li; 32]),
            diff_id: Digest::from_bytes([0x80 | li; 32]),
            media_type: String::from_utf8_lossy(&b.name(40)).into_owned(),
            kind,
            compressed_size: b.u64(),
            uncompressed_size: out + u64::from(b.u8()),
            chunk_size: b.u32() | 1,
            checkpoints,
            chunks,
        });
    }
    let mut tree = Tree::default();
    let mut dirs = vec![0usize];
    // Up to 80 nodes: > 4 KiB of inode records, so `compress` zstd-packs them.
    for _ in 0..b.u8() % 81 {
        let kind = NodeKind::from_u8(1 + b.u8() % 7).unwrap();
        let mut node = Node::new(kind);
        node.perm = b.u32() & 0o7777;
        node.uid = b.u32();
        node.gid = b.u8().into();
        node.mtime = b.u64() as i64;
        node.mtime_nsec = b.u32() % 1_000_000_000;
        match kind {
            NodeKind::File => {
                node.size = b.u64() >> (b.u8() % 64);
                if node.size > 0 && !layers.is_empty() {
                    let layer = u32::from(b.u8()) % layers.len() as u32;
                    node.data = Some(DataRef {
                        layer,
                        offset: b.u64(),
                    });
                    if b.u8().is_multiple_of(4) {
                        gen_sparse(b, &mut node, layers[layer as usize].uncompressed_size);
                    }
                }
            }
            NodeKind::Symlink => {
                node.link_target = b.bytes(200);
                node.size = node.link_target.len() as u64;
            }
            NodeKind::CharDev | NodeKind::BlockDev => {
                node.rdev_major = b.u32();
                node.rdev_minor = b.u32();
            }
            _ => {}
        }
        for _ in 0..b.u8() % 3 {
            let name = [b"user.".as_slice(), &b.name(8)].concat();
            node.xattrs.push((name, b.bytes(32)));
        }
        node.xattrs.sort();
        node.xattrs.dedup_by(|a, b| a.0 == b.0);
        let idx = tree.nodes.len() as u32;
        // Names are unique per node ('#' is outside the alphabet), so no entry is replaced and
        // every node stays reachable from the root.
        let parent = dirs[b.u8() as usize % dirs.len()];
        let name = [b.name(12), format!("#{idx}").into_bytes()].concat();
        tree.nodes[parent].children.insert(name, idx);
        // Hard link: a second name for a non-directory.
        if kind != NodeKind::Dir && b.u8().is_multiple_of(8) {
            let other = dirs[b.u8() as usize % dirs.len()];
            let name = [b.name(12), format!("#{idx}.lnk").into_bytes()].concat();
            tree.nodes[other].children.insert(name, idx);
        }
        if kind == NodeKind::Dir {
            dirs.push(idx as usize);
        }
        tree.nodes.push(node);
    }
    IndexData {
        meta: ImageMeta {
            platform: String::from_utf8_lossy(&b.bytes(16)).into_owned(),
            manifest: "{}".into(),
            config: "{}".into(),
            span: b.u64(),
            compressed_size: b.u64(),
            ..ImageMeta::default()
        },
        profile: (b.u8() & 1 == 1).then(|| AccessProfile {
            version: PROFILE_VERSION,
            manifest: (b.u8() & 1 == 1).then(|| Digest::of(&b.bytes(8))),
            window_secs: b.u64(),
            ranges: (0..b.u8() % 8)
                .map(|_| ProfileRange {
                    layer: layers
                        .get(b.u8() as usize % layers.len().max(1))
                        .map_or_else(|| Digest::of(b"none"), |l| l.digest),
                    offset: b.u64(),
                    len: b.u64(),
                })
                .collect(),
        }),
        hints: {
            // Hints for a few inodes, strictly increasing, naming valid inodes.
            let inodes = tree.nodes.len() as u64;
            let mut ino = 0u64;
            let mut hints = Vec::new();
            for _ in 0..b.u8() % 4 {
                ino += 1 + u64::from(b.u8() % 3);
                if ino > inodes {
                    break;
                }
                hints.push(FileHint {
                    ino,
                    dependencies: (0..b.u8() % 4)
                        .map(|_| 1 + u64::from(b.u8()) % inodes)
                        .collect(),
                    hot_ranges: (0..b.u8() % 3).map(|_| (b.u64(), b.u64())).collect(),
                });
            }
            hints
        },
        layers,
        tree,
    }
}

/// Turns `node` into a sparse file: up to 8 runs inside its size and inside
/// a layer of `layer_size` bytes (none: all hole).
fn gen_sparse(b: &mut Bytes<'_>, node: &mut Node, layer_size: u64) {
    let mut segments = Vec::new();
    let mut pos = 0u64;
    for _ in 0..b.u8() % 9 {
        let file_offset = pos.saturating_add(u64::from(b.u32()) >> (b.u8() % 32));
        let len = 1 + u64::from(b.u32() % 70_000);
        let Some(end) = file_offset.checked_add(len).filter(|&e| e <= node.size) else {
            break;
        };
        if layer_size < len {
            break;
        }
        segments.push(SparseSegment {
            file_offset,
            len,
            layer_offset: b.u64() % (layer_size - len + 1),
        });
        pos = end;
    }
    node.data = segments.first().and(node.data).map(|d| DataRef {
        offset: segments[0].layer_offset,
        ..d
    });
    node.sparse = Some(segments);
}

/// Reads a file's bytes as the read path would, through its pieces, with
/// `layer(offset, len)` standing in for the layer's bytes.
fn read_pieces(node: &InodeView<'_>, offset: u64, len: u64) -> Vec<(bool, u64, u64)> {
    node.pieces(offset, len)
        .expect("pieces")
        .map(|p| match p {
            Piece::Data { layer_offset, len } => (true, layer_offset, len),
            Piece::Hole { len } => (false, 0, len),
        })
        .collect()
}

/// Every [`IndexData`] the writer accepts reads back identically, and every
/// directory entry of the written file resolves to a valid inode.
fn index_round_trip(data: &[u8]) {
    let mut b = Bytes(data);
    let compress = b.u8() & 1 == 1;
    let d = gen_index_data(&mut b);
    let bytes = write_index(&d, WriteOptions { compress }).expect("write_index on a valid tree");
    let idx = Index::from_bytes(bytes.clone()).expect("reading back a freshly written index");
    assert_eq!(idx.profile(), d.profile.as_ref());
    assert_eq!(idx.hinted_files(), d.hints.len());
    for h in &d.hints {
        let got = idx.file_hints(h.ino).expect("hints").expect("hinted file");
        assert_eq!(got.dependencies().collect::<Vec<_>>(), h.dependencies);
        assert_eq!(got.hot_ranges().collect::<Vec<_>>(), h.hot_ranges);
    }
    assert_eq!(idx.file_size(), bytes.len() as u64);
    assert_eq!(idx.meta(), &d.meta);
    assert_eq!(idx.layer_count() as usize, d.layers.len());
    for (i, want) in d.layers.iter().enumerate() {
        let l = idx.layer(i as u32).expect("layer");
        assert_eq!(l.digest(), want.digest);
        assert_eq!(l.diff_id(), want.diff_id);
        assert_eq!(l.kind(), want.kind);
        assert_eq!(l.media_type().unwrap(), want.media_type);
        assert_eq!(l.compressed_size(), want.compressed_size);
        assert_eq!(l.uncompressed_size(), want.uncompressed_size);
        assert_eq!(l.chunk_size(), want.chunk_size);
        assert_eq!(l.checkpoint_count() as usize, want.checkpoints.len());
        for (c, cp) in want.checkpoints.iter().enumerate() {
            assert_eq!(&l.checkpoint(c as u32).unwrap(), cp);
            let r = l.span_range(c as u32).expect("span range");
            assert_eq!(r.start, cp.out_offset);
            assert_eq!(l.checkpoint_for(cp.out_offset), Some(c as u32));
        }
        assert_eq!(l.chunk_count() as usize, want.chunks.len());
        for (c, ch) in want.chunks.iter().enumerate() {
            assert_eq!(l.chunk(c as u32).as_ref(), Some(ch));
        }
    }
    let nodes = &d.tree.nodes;
    assert_eq!(idx.inode_count() as usize, nodes.len());
    for (i, want) in nodes.iter().enumerate() {
        let ino = i as u64 + 1;
        let got = idx.inode(ino).expect("inode");
        assert_eq!(got.kind(), Some(want.kind));
        assert_eq!(got.mode(), want.kind.type_bits() | want.perm);
        assert_eq!((got.uid(), got.gid()), (want.uid, want.gid));
        assert_eq!(got.mtime(), (want.mtime, want.mtime_nsec));
        assert_eq!(got.size(), want.size);
        assert_eq!(got.rdev(), (want.rdev_major, want.rdev_minor));
        assert_eq!(got.data(), want.data.map(|r| (r.layer, r.offset)));
        assert_eq!(got.is_sparse(), want.sparse.is_some());
        if let Some(segs) = &want.sparse {
            // Byte by byte (in pieces) the file is its runs and zeros between.
            let mut expect = Vec::new();
            let mut pos = 0;
            for s in segs {
                if s.file_offset > pos {
                    expect.push((false, 0, s.file_offset - pos));
                }
                expect.push((true, s.layer_offset, s.len));
                pos = s.file_offset + s.len;
            }
            if want.size > pos {
                expect.push((false, 0, want.size - pos));
            }
            assert_eq!(read_pieces(&got, 0, want.size), expect);
            let allocated: u64 = segs.iter().map(|s| s.len).sum();
            assert_eq!(got.allocated_size(), allocated);
        }
        assert_eq!(got.link_target().unwrap(), &want.link_target[..]);
        let xattrs: Vec<(Vec<u8>, Vec<u8>)> = got
            .xattrs()
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(xattrs, want.xattrs);
        if want.kind != NodeKind::Dir {
            continue;
        }
        let subdirs = want
            .children
            .values()
            .filter(|&&c| nodes[c as usize].kind == NodeKind::Dir)
            .count();
        assert_eq!(got.nlink() as usize, 2 + subdirs);
        assert_eq!(got.entry_count() as usize, want.children.len());
        let listed: Vec<_> = idx
            .read_dir(ino, 0)
            .unwrap()
            .map(|e| e.expect("dirent"))
            .collect();
        assert_eq!(listed.len(), want.children.len());
        for (e, (name, &child)) in listed.iter().zip(&want.children) {
            assert_eq!(e.name, &name[..]);
            assert_eq!(e.ino, u64::from(child) + 1);
            assert_eq!(e.kind, Some(nodes[child as usize].kind));
            // The entry resolves to a valid inode of the advertised kind.
            assert_eq!(idx.inode(e.ino).expect("dirent target").kind(), e.kind);
            assert_eq!(idx.lookup(ino, e.name).unwrap(), Some(e.ino));
        }
        assert_eq!(idx.lookup(ino, b"\xff-absent").unwrap(), None);
    }
    // Opening the round-tripped bytes passes the hostile-input checks too.
    check_index_bytes(&bytes);
}

// ---------------------------------------------------------------------------
// tar_entries
// ---------------------------------------------------------------------------

/// `tar_entries`: the bytes as given, the same bytes with every block's
/// header checksum repaired (so mutations get past the checksum), and a
/// write → read round trip of an archive generated from them.
pub fn tar_entries(data: &[u8]) {
    check_tar(data);
    let fixed = repair_tar(data);
    if fixed != data {
        check_tar(&fixed);
    }
    tar_round_trip(data);
}

/// Stores a valid checksum in every non-zero 512-byte block (data blocks get
/// one too: harmless for a fuzz input).
pub fn repair_tar(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    for block in v.chunks_exact_mut(512) {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        set_tar_checksum(block);
    }
    v
}

fn set_tar_checksum(block: &mut [u8]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Reads `data` and checks every delivered entry; for an accepted stream,
/// also that it was drained to EOF and that data ranges lie inside it.
fn check_tar(data: &[u8]) {
    let len = data.len() as u64;
    let mut entries: Vec<Entry> = Vec::new();
    let res = read_entries(Cursor::new(data), |e| {
        entries.push(e);
        Ok(())
    });
    let mut prev = 0u64;
    for e in &entries {
        let p = &e.path;
        assert!(!p.starts_with(b"/") && !p.ends_with(b"/"), "{p:?}");
        assert!(!p.contains(&0), "NUL in {p:?}");
        if !p.is_empty() {
            assert!(
                p.split(|&b| b == b'/')
                    .all(|c| !c.is_empty() && c != b"." && c != b".."),
                "unnormalised path {p:?}"
            );
        } else {
            assert_eq!(e.kind, EntryKind::Dir, "empty path for a non-directory");
        }
        assert!(e.data_offset >= 512 && e.data_offset.is_multiple_of(512));
        assert!(e.data_offset > prev, "entries out of stream order");
        prev = e.data_offset;
        if e.kind != EntryKind::File {
            assert_eq!(e.size, 0);
        }
        match e.kind {
            EntryKind::Hardlink => assert!(!e.link_target.is_empty()),
            EntryKind::Symlink => assert!(!e.link_target.contains(&0)),
            _ => assert!(e.link_target.is_empty()),
        }
        if !matches!(e.kind, EntryKind::CharDev | EntryKind::BlockDev) {
            assert_eq!((e.rdev_major, e.rdev_minor), (0, 0));
        }
        assert!(e.perm <= 0o7777);
        assert!(e.mtime_nsec < 1_000_000_000);
        assert!(
            e.xattrs.windows(2).all(|w| w[0].0 < w[1].0),
            "xattrs unsorted"
        );
        // A sparse file's runs: non-empty, sorted, disjoint, inside its size,
        // stored back to back from its data offset.
        if let Some(segs) = &e.sparse {
            assert_eq!(e.kind, EntryKind::File, "sparse non-file");
            let (mut end, mut at) = (0u64, e.data_offset);
            for s in segs {
                assert!(s.len > 0 && s.offset >= end, "sparse runs out of order");
                end = s.offset.checked_add(s.len).expect("sparse run overflows");
                assert!(end <= e.size, "sparse run beyond the size");
                assert_eq!(s.data_offset, at, "sparse runs not back to back");
                at += s.len;
            }
        }
    }
    if let Ok(total) = res {
        assert_eq!(total, len, "accepted stream not drained to EOF");
        for e in &entries {
            let stored = match &e.sparse {
                None => e.size,
                Some(segs) => segs.iter().map(|s| s.len).sum(),
            };
            let end = e
                .data_offset
                .checked_add(stored)
                .expect("data range overflows");
            assert!(
                end <= len,
                "data range {}+{stored} beyond {len}",
                e.data_offset,
            );
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    field[..w].copy_from_slice(format!("{v:0w$o}").as_bytes());
    field[w] = 0;
}

pub fn tar_header(name: &[u8], typeflag: u8, size: u64, mode: u32, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], mode.into());
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    set_tar_checksum(&mut h);
    h
}

pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

pub fn pad_to_block(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// Writes a ustar/PAX archive generated from the bytes and checks that
/// `read_entries` returns exactly what was written, data included.
fn tar_round_trip(data: &[u8]) {
    let mut b = Bytes(data);
    let mut tar = Vec::new();
    let mut want: Vec<(Entry, Vec<u8>)> = Vec::new();
    for i in 0..b.u8() % 8 {
        let depth = 1 + b.u8() % 4;
        let mut path = Vec::new();
        for _ in 0..depth {
            if !path.is_empty() {
                path.push(b'/');
            }
            // Long components push some paths past 100 bytes (PAX path).
            let max = if b.u8().is_multiple_of(4) { 60 } else { 10 };
            path.extend_from_slice(&b.name(max));
        }
        path.extend_from_slice(format!("-{i}").as_bytes());
        let (kind, flag) = match b.u8() % 6 {
            0 => (EntryKind::File, b'0'),
            5 => (EntryKind::File, b'S'), // sparse, in one of the four dialects
            1 => (EntryKind::Dir, b'5'),
            2 => (EntryKind::Symlink, b'2'),
            3 => (EntryKind::Fifo, b'6'),
            _ => match want.iter().find(|(e, _)| e.kind == EntryKind::File) {
                Some(_) => (EntryKind::Hardlink, b'1'),
                None => (EntryKind::File, b'0'),
            },
        };
        let content = if flag == b'0' {
            b.bytes(255).repeat(1 + b.u8() as usize % 5)
        } else {
            Vec::new()
        };
        let link = match kind {
            EntryKind::Symlink => b.bytes(120).into_iter().filter(|&c| c != 0).collect(),
            EntryKind::Hardlink => want
                .iter()
                .find(|(e, _)| e.kind == EntryKind::File)
                .unwrap()
                .0
                .path
                .clone(),
            _ => Vec::new(),
        };
        let perm = b.u32() & 0o7777;
        let (mtime, nsec) = ((b.u32() >> 1) as i64, b.u32() % 1_000_000_000);
        let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = (0..b.u8() % 3)
            .map(|_| ([b"user.".as_slice(), &b.name(8)].concat(), b.bytes(20)))
            .collect();
        xattrs.sort();
        xattrs.dedup_by(|a, b| a.0 == b.0);
        // PAX for what ustar cannot hold; ustar fields carry the rest.
        let mut pax = Vec::new();
        if path.len() > 100 {
            pax_record(&mut pax, b"path", &path);
        }
        if link.len() > 100 {
            pax_record(&mut pax, b"linkpath", &link);
        }
        pax_record(&mut pax, b"mtime", format!("{mtime}.{nsec:09}").as_bytes());
        for (k, v) in &xattrs {
            pax_record(&mut pax, &[b"SCHILY.xattr.".as_slice(), k].concat(), v);
        }
        let mut e = Entry {
            path,
            kind,
            perm,
            uid: 0,
            gid: 0,
            mtime,
            mtime_nsec: nsec,
            size: content.len() as u64,
            data_offset: 0,
            link_target: link,
            rdev_major: 0,
            rdev_minor: 0,
            xattrs,
            sparse: None,
        };
        if flag == b'S' {
            want.push(write_sparse(&mut b, &mut tar, pax, e));
            continue;
        }
        tar.extend_from_slice(&tar_header(
            b"PaxHeaders/x",
            b'x',
            pax.len() as u64,
            0o644,
            b"",
        ));
        tar.extend_from_slice(&pax);
        pad_to_block(&mut tar);
        tar.extend_from_slice(&tar_header(
            &e.path,
            flag,
            content.len() as u64,
            perm,
            &e.link_target,
        ));
        e.data_offset = tar.len() as u64;
        tar.extend_from_slice(&content);
        pad_to_block(&mut tar);
        want.push((e, content));
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut got = Vec::new();
    let total = read_entries(Cursor::new(&tar), |e| {
        got.push(e);
        Ok(())
    })
    .expect("reading a well-formed archive");
    assert_eq!(total, tar.len() as u64);
    assert_eq!(got.len(), want.len());
    for (g, (w, content)) in got.iter().zip(&want) {
        assert_eq!(g, w);
        // `content` is a plain file's bytes, or a sparse file's runs.
        let s = g.data_offset as usize;
        assert_eq!(&tar[s..s + content.len()], &content[..]);
    }
    check_tar(&tar);
}

/// Appends sparse file `e` (its PAX `records` so far, runs generated from
/// the bytes) in one of GNU tar's four dialects: old GNU `S` (with
/// extension blocks past 4 runs), PAX 0.0, 0.1 or 1.0. Returns the entry
/// `read_entries` must yield and the runs' bytes.
fn write_sparse(
    b: &mut Bytes<'_>,
    tar: &mut Vec<u8>,
    mut records: Vec<u8>,
    mut e: Entry,
) -> (Entry, Vec<u8>) {
    let mut pairs = Vec::new();
    let mut pos = 0u64;
    for _ in 0..b.u8() % 30 {
        let offset = pos + u64::from(b.u8()) * 100;
        let len = 1 + u64::from(b.u8() % 200);
        pairs.push((offset, len));
        pos = offset + len;
    }
    let size = pos + u64::from(b.u8()) * 10;
    let runs: Vec<u8> = (0..pairs.iter().map(|p| p.1).sum::<u64>())
        .map(|i| i as u8 ^ 0x5a)
        .collect();
    // Old GNU headers cannot hold a long name: PAX 0.1 then.
    let dialect = match b.u8() % 4 {
        0 if e.path.len() > 100 => 2,
        d => d,
    };
    let num = |v: u64| v.to_string().into_bytes();
    let mut map_1_0 = Vec::new();
    match dialect {
        0 => {}
        1 => {
            pax_record(&mut records, b"GNU.sparse.size", &num(size));
            pax_record(
                &mut records,
                b"GNU.sparse.numblocks",
                &num(pairs.len() as u64),
            );
            for &(o, l) in &pairs {
                pax_record(&mut records, b"GNU.sparse.offset", &num(o));
                pax_record(&mut records, b"GNU.sparse.numbytes", &num(l));
            }
        }
        2 => {
            let map: Vec<String> = pairs.iter().map(|(o, l)| format!("{o},{l}")).collect();
            pax_record(&mut records, b"GNU.sparse.size", &num(size));
            pax_record(
                &mut records,
                b"GNU.sparse.numblocks",
                &num(pairs.len() as u64),
            );
            pax_record(&mut records, b"GNU.sparse.map", map.join(",").as_bytes());
            pax_record(&mut records, b"GNU.sparse.name", &e.path);
        }
        _ => {
            pax_record(&mut records, b"GNU.sparse.major", b"1");
            pax_record(&mut records, b"GNU.sparse.minor", b"0");
            pax_record(&mut records, b"GNU.sparse.realsize", &num(size));
            pax_record(&mut records, b"GNU.sparse.name", &e.path);
            map_1_0 = format!("{}\n", pairs.len()).into_bytes();
            for (o, l) in &pairs {
                map_1_0.extend_from_slice(format!("{o}\n{l}\n").as_bytes());
            }
            pad_to_block(&mut map_1_0);
        }
    }
    tar.extend_from_slice(&tar_header(
        b"PaxHeaders/x",
        b'x',
        records.len() as u64,
        0o644,
        b"",
    ));
    tar.extend_from_slice(&records);
    pad_to_block(tar);
    let stored = (map_1_0.len() + runs.len()) as u64;
    if dialect == 0 {
        let mut h = tar_header(&e.path, b'S', stored, e.perm, b"");
        h[257..265].copy_from_slice(b"ustar  \0");
        let put = |blk: &mut [u8], at: usize, ps: &[(u64, u64)]| {
            for (i, &(o, l)) in ps.iter().enumerate() {
                octal(&mut blk[at + 24 * i..at + 24 * i + 12], o);
                octal(&mut blk[at + 24 * i + 12..at + 24 * i + 24], l);
            }
        };
        put(&mut h, 386, &pairs[..pairs.len().min(4)]);
        h[482] = u8::from(pairs.len() > 4);
        octal(&mut h[483..495], size);
        set_tar_checksum(&mut h);
        tar.extend_from_slice(&h);
        let rest: Vec<_> = pairs.iter().skip(4).copied().collect();
        let blocks: Vec<_> = rest.chunks(21).collect();
        for (i, ps) in blocks.iter().enumerate() {
            let mut ext = [0u8; 512];
            put(&mut ext, 0, ps);
            ext[504] = u8::from(i + 1 < blocks.len());
            tar.extend_from_slice(&ext);
        }
    } else {
        let name = if dialect == 1 {
            e.path.clone()
        } else {
            b"GNUSparseFile.0/x".to_vec()
        };
        tar.extend_from_slice(&tar_header(&name, b'0', stored, e.perm, b""));
        tar.extend_from_slice(&map_1_0);
    }
    let data_offset = tar.len() as u64;
    tar.extend_from_slice(&runs);
    pad_to_block(tar);
    let mut at = data_offset;
    e.size = size;
    e.data_offset = data_offset;
    e.sparse = Some(
        pairs
            .iter()
            .map(|&(offset, len)| {
                let s = clip::tar::SparseSegment {
                    offset,
                    len,
                    data_offset: at,
                };
                at += len;
                s
            })
            .collect(),
    );
    (e, runs)
}

// ---------------------------------------------------------------------------
// gzip_index
// ---------------------------------------------------------------------------

/// `gzip_index` (differential). An input starting with the gzip magic is
/// taken as a blob; any other input is `[mode, payload…]` and the payload is
/// gzipped here (1–4 members, level 0/1/6/9, optional zero padding), so the
/// fuzzer explores both hostile and valid streams.
pub fn gzip_index(data: &[u8]) {
    let (blob, payload, cfg) = match data {
        [0x1f, 0x8b, ..] | [] => (
            data.to_vec(),
            None,
            IndexerConfig {
                span: 1024,
                chunk_size: 512,
            },
        ),
        [mode, payload @ ..] => {
            let members = 1 + (mode & 3) as usize;
            let level = [0, 1, 6, 9][((mode >> 2) & 3) as usize];
            let mut blob = Vec::new();
            let per = payload.len().div_ceil(members).max(1);
            for piece in payload.chunks(per) {
                let mut enc =
                    flate2::write::GzEncoder::new(&mut blob, flate2::Compression::new(level));
                enc.write_all(piece).unwrap();
                enc.finish().unwrap();
            }
            if payload.is_empty() {
                let enc = flate2::write::GzEncoder::new(&mut blob, flate2::Compression::new(level));
                enc.finish().unwrap();
            }
            if mode & 0x10 != 0 {
                blob.extend_from_slice(&[0u8; 7]);
            }
            let span = [64, 1024, 4096, 1 << 20][((mode >> 5) & 3) as usize];
            let chunk_size = [100, 512][(mode >> 7) as usize];
            (
                blob,
                Some(payload.to_vec()),
                IndexerConfig { span, chunk_size },
            )
        }
    };
    check_gzip(&blob, payload.as_deref(), cfg);
}

fn check_gzip(blob: &[u8], payload: Option<&[u8]>, cfg: IndexerConfig) {
    let mut out = Vec::new();
    let mut zr = ZranReader::new(blob, cfg);
    let read = zr.read_to_end(&mut out);
    let index = read
        .map_err(|e| e.to_string())
        .and_then(|_| zr.finish().map_err(|e| e.to_string()));
    let mut expected = Vec::new();
    let flate = flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut expected);
    if let Some(payload) = payload {
        let index = index
            .as_ref()
            .expect("ZranReader failed on a stream gzipped by flate2");
        assert!(
            out == payload,
            "ZranReader output differs from the gzipped payload"
        );
        let _ = index;
    }
    let Ok(index) = index else { return };
    if flate.is_ok() {
        assert!(out == expected, "ZranReader and MultiGzDecoder disagree");
    }
    assert_eq!(index.uncompressed_size, out.len() as u64);
    assert_eq!(index.compressed_size, blob.len() as u64);
    let cps = &index.checkpoints;
    if !out.is_empty() {
        assert_eq!(
            cps.first().map(|c| c.out_offset),
            Some(0),
            "no checkpoint at 0"
        );
    }
    for w in cps.windows(2) {
        assert!(
            w[0].out_offset < w[1].out_offset,
            "checkpoints not ascending"
        );
        assert!(w[0].in_offset <= w[1].in_offset);
    }
    // Chunk digests: each span cut into chunk_size pieces from its start.
    let mut chunk = 0usize;
    for (i, cp) in cps.iter().enumerate() {
        assert!(cp.bits <= 7 && cp.window_len as usize <= clip::gzip::WINDOW_SIZE);
        assert!(cp.in_offset <= blob.len() as u64);
        assert_eq!(
            cp.first_chunk as usize, chunk,
            "first_chunk of checkpoint {i}"
        );
        let end = cps.get(i + 1).map_or(out.len(), |n| n.out_offset as usize);
        for piece in out[cp.out_offset as usize..end].chunks(cfg.chunk_size as usize) {
            let c = index.chunks.get(chunk).expect("missing chunk digest");
            assert_eq!(
                c.digest,
                <[u8; 32]>::from(sha2::Sha256::digest(piece)),
                "chunk {chunk}"
            );
            assert!(c.in_end <= blob.len() as u64);
            chunk += 1;
        }
    }
    assert_eq!(chunk, index.chunks.len(), "extra chunk digests");
    // Random access from every checkpoint (and mid-span) matches the stream.
    let total = out.len() as u64;
    let mut buf = vec![0u8; 700];
    for cp in cps.iter().take(64) {
        for start in [cp.out_offset, cp.out_offset + 333] {
            if start >= total {
                continue;
            }
            let n = read_range(blob, &index, start, &mut buf).expect("read_range on a good index");
            assert_eq!(
                n as u64,
                (total - start).min(buf.len() as u64),
                "short read_range"
            );
            let s = start as usize;
            assert!(buf[..n] == out[s..s + n], "read_range at {start} differs");
        }
    }
}
