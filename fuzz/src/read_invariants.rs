//! The checks behind the `fuse_read` fuzz target, shared with the library's
//! replay test like `invariants.rs` (included with `#[path]` by
//! `src/fuzz_regressions.rs`): a hostile index served through the content
//! cache and the FUSE operations, over real layers held in memory.
//!
//! A fixed three-layer image (gzip in two members, plain tar, zstd in
//! several frames; files, directories, symlinks, a hard link, a whiteout)
//! is built once and indexed by the real indexer. A fuzz input is an
//! operation script followed by an index: the index is opened as given and
//! with every CRC repaired ([`repair_index`]), so mutations reach the
//! semantics; [`ClipFs`] is built over it and the in-memory layers, then
//! the tree is walked (readdirplus, lookup, getattr, readlink, whole-file
//! reads) and the script runs arbitrary operations on arbitrary inodes.
//! Nothing may panic, and every byte a successful READ returns must be the
//! true byte of the verified chunk the index lists at that offset (or a
//! zero in a hole): a hostile index may make reads fail, never serve bytes
//! that no chunk digest vouches for. (It may relabel where a verified chunk
//! lies, by shifting a checkpoint's uncompressed offset, as it may move a
//! file's data offset: the index's tree is trusted, docs/format.md 3.4.)

use super::clip;
use super::invariants::repair_index;
use super::invariants::Bytes;

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

use clip::cache::{CacheConfig, ContentCache};
use clip::format::{write_index, ImageMeta, Index, NodeKind, Piece, WriteOptions};
use clip::fuse::{ClipFs, FsConfig};
use clip::index::{build, IndexOptions, Progress};
use clip::oci::{LayerDesc, ResolvedImage};
use clip::source::MemSource;
use clip::Digest;
use fuse_backend_rs::abi::fuse_abi::FsOptions;
use fuse_backend_rs::api::filesystem::{Context, FileSystem, ZeroCopyWriter};
use fuse_backend_rs::file_buf::FileVolatileSlice;
use fuse_backend_rs::file_traits::FileReadWriteVolatile;

/// The in-memory image every input is served over.
pub struct Fixture {
    source: Arc<MemSource>,
    /// Chunk sha256 → the chunk's true bytes, cut as the real index cuts
    /// every layer: what a verified chunk can hold.
    chunks: HashMap<[u8; 32], Vec<u8>>,
    /// The real indexer's output for the image (seeds are made from it).
    pub index_data: clip::format::IndexData,
}

/// Mixed text and random bytes, deterministic in `seed`.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if (out.len() / 4096) % 3 == 2 {
            out.push(x as u8);
        } else {
            out.push(b"etaoin shrdlu\n/usr/lib"[(x % 22) as usize]);
        }
    }
    out
}

/// A ustar/GNU archive of `entries`: (path, kind, data or link target).
fn tar_of(entries: &[(&str, u8, Vec<u8>)]) -> Vec<u8> {
    let mut b = ::tar::Builder::new(Vec::new());
    for (path, kind, data) in entries {
        let mut h = ::tar::Header::new_gnu();
        h.set_mode(if *kind == b'5' { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_entry_type(::tar::EntryType::new(*kind));
        match kind {
            b'1' | b'2' => {
                h.set_size(0);
                b.append_link(&mut h, path, std::str::from_utf8(data).unwrap())
                    .unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip_members(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::new(6));
        e.write_all(p).unwrap();
        e.finish().unwrap();
    }
    out
}

fn zstd_frames(parts: &[&[u8]]) -> Vec<u8> {
    parts
        .iter()
        .flat_map(|p| zstd::encode_all(*p, 3).unwrap())
        .collect()
}

/// The fixed image, built and indexed on first use.
pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let lower = tar_of(&[
        ("etc", b'5', vec![]),
        (
            "etc/passwd",
            b'0',
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        ("etc/hosts", b'0', b"127.0.0.1 localhost\n".to_vec()),
        ("etc/hosts-again", b'1', b"etc/hosts".to_vec()),
        ("usr/bin/tool", b'0', content(150_000, 1)),
        ("usr/bin/sh", b'2', b"tool".to_vec()),
        ("usr/lib/libt.so", b'0', content(70_000, 2)),
        ("bin", b'2', b"usr/bin".to_vec()),
        ("loop", b'2', b"loop".to_vec()),
        ("empty", b'0', vec![]),
    ]);
    let middle = tar_of(&[
        ("etc/.wh.hosts", b'0', vec![]),
        ("etc/motd", b'0', content(5_000, 3)),
        ("var/log/big", b'0', content(200_000, 4)),
    ]);
    let upper = tar_of(&[
        ("opt/data", b'0', content(180_000, 5)),
        ("opt/small", b'0', b"small\n".to_vec()),
        ("usr/lib/libt.so", b'0', content(9_000, 6)),
    ]);
    let (cut1, cut2) = (lower.len() / 3, upper.len() / 2);
    let blobs = [
        (
            gzip_members(&[&lower[..cut1], &lower[cut1..]]),
            &lower,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            middle.clone(),
            &middle,
            "application/vnd.oci.image.layer.v1.tar",
        ),
        (
            zstd_frames(&[&upper[..cut2 / 2], &upper[cut2 / 2..cut2], &upper[cut2..]]),
            &upper,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    ];
    let mut source = MemSource::new();
    let mut truth = HashMap::new();
    let (mut layers, mut diff_ids) = (Vec::new(), Vec::new());
    for (blob, tar, media_type) in blobs {
        let size = blob.len() as u64;
        let digest = source.insert(blob);
        truth.insert(digest, tar.clone());
        layers.push(LayerDesc {
            digest,
            size,
            media_type: media_type.into(),
        });
        diff_ids.push(Digest::of(tar));
    }
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/usr/bin/sh"],"Cmd":["-c","x"],"WorkingDir":"/opt"}}"#;
    let image = ResolvedImage {
        manifest_digest: Digest::of(b"manifest"),
        manifest_raw: b"{}".to_vec(),
        config_raw: config.to_vec(),
        platform: "linux/amd64".into(),
        layers,
        diff_ids,
    };
    let opts = IndexOptions {
        span: 32 << 10,
        chunk_size: 8 << 10,
        threads: 1,
        ..Default::default()
    };
    let meta = ImageMeta {
        config: String::from_utf8(config.to_vec()).unwrap(),
        ..ImageMeta::default()
    };
    let index_data =
        build(&image, &source, meta, &opts, &Progress::default()).expect("index the fixture");
    let chunks = true_chunks(&index_data, &truth);
    Fixture {
        source: Arc::new(source),
        chunks,
        index_data,
    }
}

/// Every chunk of the real index, by digest, with its true bytes.
fn true_chunks(
    index_data: &clip::format::IndexData,
    truth: &HashMap<Digest, Vec<u8>>,
) -> HashMap<[u8; 32], Vec<u8>> {
    let bytes = write_index(index_data, WriteOptions { compress: false }).unwrap();
    let idx = Index::from_bytes(bytes).expect("the fixture's index opens");
    let mut out = HashMap::new();
    for l in 0..idx.layer_count() {
        let layer = idx.layer(l).unwrap();
        let tar = &truth[&layer.digest()];
        let geometry = ChunkGeometry::of(&layer).expect("the real index's geometry");
        for (no, range) in geometry.chunks.iter().enumerate() {
            let data = &tar[range.start as usize..range.end as usize];
            let chunk = layer
                .chunk(no as u32)
                .expect("the real index lists the chunk");
            assert_eq!(
                chunk.digest,
                *Digest::of(data).as_bytes(),
                "fixture chunk digest"
            );
            out.insert(chunk.digest, data.to_vec());
        }
    }
    out
}

/// Where a layer's chunks lie by the index's checkpoints, as the content
/// cache computes it (`cache/plan.rs`): spans from one checkpoint's
/// uncompressed offset to the next, each cut into `chunk_size` pieces from
/// its start. `None` where the cache refuses the layer.
struct ChunkGeometry {
    chunks: Vec<std::ops::Range<u64>>,
}

impl ChunkGeometry {
    fn of(layer: &clip::format::LayerView<'_>) -> Option<Self> {
        let size = layer.uncompressed_size();
        let chunk_size = u64::from(layer.chunk_size());
        let n = layer.checkpoint_count();
        let spans: Vec<_> = if n == 0 {
            std::iter::once(0..size).collect()
        } else {
            (0..n).map(|i| layer.span_range(i)).collect::<Option<_>>()?
        };
        if spans.first()?.start != 0 || (chunk_size == 0 && size > 0) {
            return None;
        }
        let mut chunks = Vec::new();
        for span in spans {
            let mut at = span.start;
            while at < span.end {
                let end = (at + chunk_size).min(span.end);
                chunks.push(at..end);
                at = end;
            }
        }
        (chunks.len() == layer.chunk_count() as usize).then_some(ChunkGeometry { chunks })
    }
}

/// A fuzz input for the fixture's index (`compress`: zstd sections) and
/// operation script `script`.
pub fn seed_input(compress: bool, script: &[u8]) -> Vec<u8> {
    let index = write_index(&fixture().index_data, WriteOptions { compress }).unwrap();
    let mut v = (script.len() as u16).to_le_bytes().to_vec();
    v.extend_from_slice(script);
    v.extend_from_slice(&index);
    v
}

/// Longest operation script read from an input.
const MAX_SCRIPT: usize = 2048;
/// Directory entries the walk visits at most.
const WALK_ENTRIES: usize = 2048;
/// File bytes the walk reads at most (the script's reads come on top).
const WALK_BYTES: u64 = 1 << 20;
/// The largest READ the kernel sends (`max_pages` × 4 KiB, 1 MiB here).
const MAX_READ: u32 = 1 << 20;

/// `fuse_read`: the input's index (as given, then with its CRCs repaired)
/// served through the cache and the FUSE operations.
pub fn fuse_read(data: &[u8]) {
    let (script, index) = split_input(data);
    serve(script, index);
    if let Some(fixed) = repair_index(index) {
        serve(script, &fixed);
    }
}

/// `[script length: u16 LE][script][index]`, the length clamped.
fn split_input(data: &[u8]) -> (&[u8], &[u8]) {
    if data.len() < 2 {
        return (&[], data);
    }
    let n = (u16::from_le_bytes([data[0], data[1]]) as usize)
        .min(MAX_SCRIPT)
        .min(data.len() - 2);
    data[2..].split_at(n)
}

fn serve(script: &[u8], index: &[u8]) {
    let Ok(idx) = Index::from_bytes(index.to_vec()) else {
        return;
    };
    let idx = Arc::new(idx);
    let fx = fixture();
    let config = CacheConfig {
        memory_bytes: 4 << 20,
        ..CacheConfig::default()
    };
    let cache = Arc::new(ContentCache::new(idx.clone(), fx.source.clone(), config));
    let Ok(fs) = ClipFs::new(idx.clone(), cache, FsConfig::default()) else {
        return;
    };
    let mut s = Session {
        fs: &fs,
        idx: &idx,
        fx,
        ctx: Context::default(),
        known: vec![1],
    };
    let _ = fs.init(FsOptions::all());
    fs.warm_start();
    s.walk();
    s.run_script(script);
}

struct Session<'a> {
    fs: &'a ClipFs,
    idx: &'a Index,
    fx: &'a Fixture,
    ctx: Context,
    /// Inodes seen in replies: what the script's operations mostly name.
    known: Vec<u64>,
}

impl Session<'_> {
    /// Breadth-first over the tree the index describes, as `ls -lR` and
    /// `cat` of every file would: bounded in entries and bytes, cycles cut.
    fn walk(&mut self) {
        let mut queue = VecDeque::from([1u64]);
        let mut seen = HashSet::from([1u64]);
        let mut entries = 0;
        let mut bytes = WALK_BYTES;
        while let Some(dir) = queue.pop_front() {
            let mut found = Vec::new();
            let _ = self
                .fs
                .readdirplus(&self.ctx, dir, 0, 1 << 16, 0, &mut |d, e| {
                    assert_eq!(d.ino, e.inode, "readdirplus entry and attributes disagree");
                    found.push((d.name.to_vec(), d.ino, d.type_));
                    Ok(if found.len() + entries >= WALK_ENTRIES {
                        0
                    } else {
                        d.name.len() + 64
                    })
                });
            entries += found.len();
            for (name, ino, type_) in found {
                if name == b"." || name == b".." {
                    continue;
                }
                self.lookup(dir, &name);
                let Ok((st, _)) = self.fs.getattr(&self.ctx, ino, None) else {
                    continue;
                };
                assert_eq!(st.st_ino, ino, "getattr of another inode");
                if !seen.insert(ino) {
                    continue;
                }
                self.known.push(ino);
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR if type_ == libc::DT_DIR as u32 => queue.push_back(ino),
                    libc::S_IFLNK => {
                        let _ = self.fs.readlink(&self.ctx, ino);
                    }
                    libc::S_IFREG => {
                        let mut off = 0u64;
                        while off < st.st_size as u64 && bytes > 0 {
                            let size = (128 << 10).min(bytes) as u32;
                            match self.read(ino, off, size) {
                                Some(0) | None => break,
                                Some(n) => {
                                    off += n as u64;
                                    bytes -= n as u64;
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            if entries >= WALK_ENTRIES {
                break;
            }
        }
    }

    fn lookup(&mut self, parent: u64, name: &[u8]) {
        let Ok(name) = CString::new(name) else { return };
        if let Ok(e) = self.fs.lookup(&self.ctx, parent, &name) {
            if e.inode != 0 {
                let (st, _) = self
                    .fs
                    .getattr(&self.ctx, e.inode, None)
                    .expect("a looked-up inode has attributes");
                assert_eq!(st.st_mode, e.attr.st_mode, "lookup and getattr disagree");
            }
        }
    }

    /// One READ through the FUSE operation; checks every byte it returns.
    fn read(&self, ino: u64, offset: u64, size: u32) -> Option<usize> {
        let mut w = ReplyBuf {
            data: Vec::new(),
            cap: size as usize,
        };
        let n = self
            .fs
            .read(&self.ctx, ino, 0, &mut w, size, offset, None, 0)
            .ok()?;
        assert_eq!(n, w.data.len(), "READ count differs from the bytes written");
        self.check_bytes(ino, offset, size, &w.data);
        Some(n)
    }

    /// `got` must be exactly the file's bytes at `offset`: its data pieces
    /// the true bytes of the layer the index names, its holes zeros.
    fn check_bytes(&self, ino: u64, offset: u64, size: u32, got: &[u8]) {
        let node = self.idx.inode(ino).expect("a read inode exists");
        assert_eq!(node.kind(), Some(NodeKind::File), "READ of a non-file");
        let want = node.size().saturating_sub(offset).min(size.into());
        assert_eq!(got.len() as u64, want, "READ short or long");
        if got.is_empty() {
            return;
        }
        let layer_no = node.data().map_or(0, |(l, _)| l);
        let layer = self.idx.layer(layer_no).ok();
        let geometry = layer.as_ref().and_then(ChunkGeometry::of);
        let mut at = 0usize;
        for piece in node.pieces(offset, want).expect("pieces of a served read") {
            match piece {
                Piece::Data { layer_offset, len } => {
                    // Each byte must be the true byte, at that position, of
                    // the chunk the index lists there: a verified chunk. (A
                    // hostile index may still move a verified chunk: a shifted
                    // checkpoint offset relabels its span, which is no more
                    // than moving a file's data offset; see docs/format.md.)
                    let (layer, geometry) = (layer.as_ref(), geometry.as_ref());
                    let (layer, geometry) = layer
                        .zip(geometry)
                        .expect("bytes served from a layer the cache refuses");
                    let end = layer_offset + len;
                    let mut pos = layer_offset;
                    while pos < end {
                        let no = geometry.chunks.partition_point(|r| r.end <= pos);
                        let range = geometry
                            .chunks
                            .get(no)
                            .filter(|r| r.start <= pos)
                            .expect("bytes served past the layer's chunks");
                        let digest = layer.chunk(no as u32).expect("a listed chunk").digest;
                        let chunk = self
                            .fx
                            .chunks
                            .get(&digest)
                            .expect("bytes served from a chunk no true chunk matches");
                        assert_eq!(
                            chunk.len() as u64,
                            range.end - range.start,
                            "a chunk served at another length than its true one"
                        );
                        let take = (range.end.min(end) - pos) as usize;
                        let from = (pos - range.start) as usize;
                        assert!(
                            got[at..at + take] == chunk[from..from + take],
                            "ino {ino}: bytes at {offset} are not the layer's"
                        );
                        at += take;
                        pos += take as u64;
                    }
                }
                Piece::Hole { len } => {
                    let hole = &got[at..at + len as usize];
                    assert!(hole.iter().all(|&b| b == 0), "a hole read as data");
                    at += len as usize;
                }
            }
        }
        assert_eq!(at, got.len(), "pieces do not cover the read");
    }

    /// Operations from the script bytes, each an opcode and its arguments.
    fn run_script(&mut self, script: &[u8]) {
        let mut b = Bytes(script);
        while !b.0.is_empty() {
            let op = b.u8();
            let ino = self.pick_ino(&mut b);
            match op % 12 {
                0 => {
                    let name = b.bytes(24);
                    self.lookup(ino, &name);
                }
                1 => {
                    let _ = self.fs.getattr(&self.ctx, ino, None);
                }
                2 => {
                    let _ = self.fs.readlink(&self.ctx, ino);
                }
                3 | 4 => {
                    let (offset, limit) = (b.u64() % 4096, 1 + b.u8() as usize);
                    let mut n = 0;
                    let plus = op % 12 == 4;
                    let mut take = |name: &[u8]| {
                        n += 1;
                        Ok::<_, io::Error>(if n > limit { 0 } else { name.len() + 24 })
                    };
                    let _ = if plus {
                        self.fs
                            .readdirplus(&self.ctx, ino, 0, 4096, offset, &mut |d, _| take(d.name))
                    } else {
                        self.fs
                            .readdir(&self.ctx, ino, 0, 4096, offset, &mut |d| take(d.name))
                    };
                }
                5..=7 => {
                    let offset = match b.u8() % 4 {
                        0 => u64::from(b.u32()),
                        1 => b.u64(),
                        _ => u64::from(b.u8()) << 12,
                    };
                    let size = (b.u32() % MAX_READ) + 1;
                    self.read(ino, offset, size);
                }
                8 => {
                    let whence =
                        [libc::SEEK_DATA, libc::SEEK_HOLE, libc::SEEK_END][b.u8() as usize % 3];
                    let _ = self.fs.lseek(&self.ctx, ino, 0, b.u64(), whence as u32);
                }
                9 => {
                    let name = CString::new(b.bytes(16)).unwrap_or_default();
                    let _ = self.fs.getxattr(&self.ctx, ino, &name, b.u32() % 512);
                    let _ = self.fs.listxattr(&self.ctx, ino, b.u32() % 512);
                }
                10 => {
                    let _ = self.fs.open(&self.ctx, ino, libc::O_RDONLY as u32, 0);
                    let _ = self.fs.opendir(&self.ctx, ino, 0);
                    let _ = self.fs.access(&self.ctx, ino, b.u32() & 7);
                }
                _ => {
                    let _ = self.fs.statfs(&self.ctx, ino);
                }
            }
        }
    }

    /// Mostly an inode seen in a reply; sometimes any number at all.
    fn pick_ino(&self, b: &mut Bytes<'_>) -> u64 {
        match b.u8() {
            0xff => b.u64(),
            0xfe => self.idx.inode_count() + u64::from(b.u8()),
            k => self.known[k as usize % self.known.len()],
        }
    }
}

/// The kernel's reply buffer for one READ: holds at most `cap` bytes, the
/// size asked for; a filesystem writing more is a bug.
struct ReplyBuf {
    data: Vec<u8>,
    cap: usize,
}

impl Write for ReplyBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        assert!(
            self.data.len() + buf.len() <= self.cap,
            "READ wrote more than asked"
        );
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ZeroCopyWriter for ReplyBuf {
    fn write_from(
        &mut self,
        f: &mut dyn FileReadWriteVolatile,
        count: usize,
        off: u64,
    ) -> io::Result<usize> {
        assert!(
            self.data.len() + count <= self.cap,
            "READ wrote more than asked"
        );
        let mut buf = vec![0u8; count];
        let slice = vm_memory::VolatileSlice::from(&mut buf[..]);
        let n = f.read_at_volatile(FileVolatileSlice::from_volatile_slice(&slice), off)?;
        assert!(n <= count, "a reader filled more than its slice");
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }
    fn available_bytes(&self) -> usize {
        self.cap - self.data.len()
    }
}
