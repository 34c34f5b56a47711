//! Writing an archive: the input's file bytes become one data stream, cut
//! into independent zstd frames of `frame_size` bytes that are compressed on
//! every core, then written in order behind a front (header + embedded
//! index) whose size is fixed before the first frame is compressed.
//!
//! Threads: one producer reads the input into pooled frame buffers (files
//! are streamed, never loaded whole), `threads` workers compress a frame
//! each (flushing a zstd block at every chunk end, so a chunk's `in_end` is
//! exact) and hash its chunks, and the calling thread reorders the results
//! and appends them to the [`ObjectWrite`]. Memory is bounded by the buffer
//! pool: about `2 × threads + 2` frames.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crossbeam_channel::{bounded, Receiver, Sender};
use zerocopy::IntoBytes;
use zstd::zstd_safe::{self, CCtx, CParameter, InBuffer, OutBuffer, ResetDirective};

use super::raw::{self, Header};
use super::{ArchiveError, DATA_MEDIA_TYPE};
use crate::digest::{Digest, Hasher};
use crate::format::{
    write_index, Checkpoint, Chunk, DataRef, ImageMeta, IndexData, Layer, LayerKind, Tree,
    WriteOptions,
};
use crate::object::ObjectWrite;
use crate::source::SourceError;

/// One regular file whose bytes go into the data stream, in stream order.
#[derive(Debug, Clone, Copy)]
pub struct DataItem {
    /// Node index in the tree.
    pub node: u32,
    /// Bytes.
    pub size: u64,
}

/// The input's data stream: the bytes of every [`DataItem`], in order.
pub(crate) trait Feed: Send {
    /// Fills `buf` with the next bytes of the stream.
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), ArchiveError>;
}

/// What to archive: a tree, the files whose bytes it stores, and those bytes.
pub struct Input {
    pub(crate) tree: Tree,
    pub(crate) items: Vec<DataItem>,
    pub(crate) meta: ImageMeta,
    pub(crate) feed: Box<dyn Feed>,
}

impl fmt::Debug for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Input")
            .field("inodes", &self.tree.nodes.len())
            .field("files", &self.items.len())
            .finish_non_exhaustive()
    }
}

impl Input {
    /// Number of inodes in the tree.
    pub fn inode_count(&self) -> u64 {
        self.tree.nodes.len() as u64
    }

    /// Bytes of file data to store.
    pub fn data_bytes(&self) -> u64 {
        self.items.iter().map(|i| i.size).sum()
    }
}

/// Settings of [`create`].
#[derive(Debug, Clone)]
pub struct CreateOptions {
    /// zstd level (1–22).
    pub level: i32,
    /// Uncompressed bytes per zstd frame (a random read decodes at most one).
    pub frame_size: u32,
    /// Verification chunk size.
    pub chunk_size: u32,
    /// Compression threads.
    pub threads: usize,
}

/// Default zstd level. Measured on the python test rootfs in 1 MiB frames
/// (BENCHMARKS.md): level 3 gives 1.06× the size of `mksquashfs -comp zstd`
/// (level 15) at many times its speed; level 6 0.99× at a third of level 3's.
pub const DEFAULT_LEVEL: i32 = 3;
/// Default frame size: the same 1 MiB as the index's default span.
pub const DEFAULT_FRAME: u32 = 1 << 20;
/// Default verification chunk: the index's default, the cache's unit.
pub const DEFAULT_CHUNK: u32 = 256 << 10;

impl Default for CreateOptions {
    fn default() -> Self {
        CreateOptions {
            level: DEFAULT_LEVEL,
            frame_size: DEFAULT_FRAME,
            chunk_size: DEFAULT_CHUNK,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Counters for a progress display.
#[derive(Debug, Default)]
pub struct CreateProgress {
    /// Uncompressed bytes read from the input.
    pub bytes_in: AtomicU64,
    /// Compressed bytes written.
    pub bytes_out: AtomicU64,
}

/// What [`create`] wrote.
#[derive(Debug, Clone)]
pub struct CreateSummary {
    /// Total archive length.
    pub archive_len: u64,
    /// Uncompressed file bytes stored.
    pub data_bytes: u64,
    /// Length of the (compressed) data section.
    pub stored_bytes: u64,
    /// Number of zstd frames.
    pub frames: u64,
    /// Number of inodes.
    pub inodes: u64,
    /// Length of the header + embedded index + padding before the data.
    pub front_len: u64,
}

/// Room left in the front beyond the bound computed from the placeholder
/// index: covers alignment padding and the META JSON growing by a digit.
const FRONT_SLACK: u64 = 1024;

/// Frame and chunk geometry of the data stream.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    len: u64,
    frame: u64,
    chunk: u64,
}

impl Geometry {
    fn frames(&self) -> u64 {
        self.len.div_ceil(self.frame)
    }
    fn frame_len(&self, no: u64) -> usize {
        (self.len - no * self.frame).min(self.frame) as usize
    }
    fn chunk_count(&self) -> u64 {
        let full = self.len / self.frame;
        let tail = self.len % self.frame;
        full * self.frame.div_ceil(self.chunk) + tail.div_ceil(self.chunk)
    }
}

fn check_options(opts: &CreateOptions) -> Result<(), ArchiveError> {
    let bad = |m: &'static str| Err(ArchiveError::Options(m));
    if !(1..=zstd_safe::max_c_level()).contains(&opts.level) {
        return bad("zstd level must be between 1 and 22");
    }
    if !(4 << 10..=16 << 20).contains(&opts.chunk_size) {
        return bad("chunk size must be between 4K and 16M");
    }
    if opts.frame_size < opts.chunk_size || opts.frame_size > 64 << 20 {
        return bad("frame size must be at least the chunk size and at most 64M");
    }
    Ok(())
}

/// Writes `input` as an archive into the object `open_sink` opens, given the
/// length of the front it must reserve. On failure the sink is aborted: no
/// partial archive is left behind.
pub fn create(
    mut input: Input,
    opts: &CreateOptions,
    progress: &CreateProgress,
    open_sink: impl FnOnce(u64) -> Result<Box<dyn ObjectWrite>, SourceError>,
) -> Result<CreateSummary, ArchiveError> {
    check_options(opts)?;
    // Data offsets in stream order; any other data reference is dropped.
    for n in &mut input.tree.nodes {
        n.data = None;
    }
    let mut len = 0u64;
    for item in &input.items {
        let node = input
            .tree
            .nodes
            .get_mut(item.node as usize)
            .ok_or(ArchiveError::Corrupt("data item names no inode".into()))?;
        if node.data.is_some() {
            return Err(ArchiveError::Corrupt("inode listed twice for data".into()));
        }
        node.data = Some(DataRef {
            layer: 0,
            offset: len,
        });
        len += item.size;
    }
    let geo = Geometry {
        len,
        frame: u64::from(opts.frame_size),
        chunk: u64::from(opts.chunk_size),
    };

    // The front's size, from a placeholder index with as many records.
    let mut meta = input.meta.clone();
    meta.compressed_size = u64::MAX;
    meta.span = geo.frame;
    meta.writer = format!("clipctl {}", env!("CARGO_PKG_VERSION"));
    let placeholder = Layer {
        digest: Digest::from_bytes([0; 32]),
        diff_id: Digest::from_bytes([0; 32]),
        media_type: DATA_MEDIA_TYPE.to_string(),
        kind: LayerKind::ZstdFrames,
        compressed_size: u64::MAX,
        uncompressed_size: len,
        chunk_size: opts.chunk_size,
        checkpoints: vec![Checkpoint::default(); geo.frames().max(1) as usize],
        chunks: vec![Chunk::default(); geo.chunk_count() as usize],
    };
    let record_bytes = |n: usize| zstd_safe::compress_bound(n * 40) as u64;
    let mut data = IndexData {
        meta,
        layers: vec![placeholder],
        tree: std::mem::take(&mut input.tree),
        profile: None,
        hints: Vec::new(),
    };
    let bound = write_index(&data, WriteOptions::default())?.len() as u64
        + record_bytes(data.layers[0].checkpoints.len())
        + record_bytes(data.layers[0].chunks.len());
    let front_len = (raw::HEADER_SIZE as u64 + bound + FRONT_SLACK).next_multiple_of(8);

    let mut sink = open_sink(front_len)?;
    let packed = match pack(input.feed.as_mut(), geo, opts, progress, sink.as_mut()) {
        Ok(p) => p,
        Err(e) => {
            sink.abort();
            return Err(e);
        }
    };
    let layer = &mut data.layers[0];
    layer.digest = packed.digest;
    layer.diff_id = packed.chunk_root;
    layer.compressed_size = packed.stored;
    layer.checkpoints = packed.checkpoints;
    layer.chunks = packed.chunks;
    data.meta.compressed_size = packed.stored;
    let finish = || -> Result<Vec<u8>, ArchiveError> {
        let index = write_index(&data, WriteOptions::default())?;
        let index_end = raw::HEADER_SIZE as u64 + index.len() as u64;
        if index_end > front_len {
            return Err(ArchiveError::Corrupt(format!(
                "internal: index of {} bytes does not fit the {front_len} reserved",
                index.len()
            )));
        }
        let mut header = Header {
            magic: raw::MAGIC,
            major: raw::MAJOR.into(),
            minor: raw::MINOR.into(),
            incompat: 0.into(),
            compat: 0.into(),
            header_crc: 0.into(),
            index_offset: (raw::HEADER_SIZE as u64).into(),
            index_len: (index.len() as u64).into(),
            data_offset: front_len.into(),
            data_len: packed.stored.into(),
            file_size: (front_len + packed.stored).into(),
        };
        header.header_crc = crc32fast::hash(header.as_bytes()).into();
        let mut front = vec![0u8; front_len as usize];
        front[..raw::HEADER_SIZE].copy_from_slice(header.as_bytes());
        front[raw::HEADER_SIZE..index_end as usize].copy_from_slice(&index);
        Ok(front)
    };
    let front = match finish() {
        Ok(f) => f,
        Err(e) => {
            sink.abort();
            return Err(e);
        }
    };
    let archive_len = sink.finish(&front)?;
    Ok(CreateSummary {
        archive_len,
        data_bytes: len,
        stored_bytes: packed.stored,
        frames: geo.frames(),
        inodes: data.tree.nodes.len() as u64,
        front_len,
    })
}

/// The data section as written.
struct Packed {
    checkpoints: Vec<Checkpoint>,
    chunks: Vec<Chunk>,
    /// sha256 of the stored (compressed) bytes: the data blob's digest.
    digest: Digest,
    /// sha256 of the chunk digests in order: names the uncompressed stream.
    chunk_root: Digest,
    stored: u64,
}

/// A frame on its way through the pipeline.
struct Frame {
    no: u64,
    raw: Vec<u8>,
    packed: Vec<u8>,
    /// End of each chunk in `packed` (after its zstd flush).
    ends: Vec<u32>,
    digests: Vec<[u8; 32]>,
}

/// First error of any thread; the others stop when it is set.
#[derive(Default)]
struct Failure {
    stop: AtomicBool,
    first: Mutex<Option<ArchiveError>>,
}

impl Failure {
    fn set(&self, e: ArchiveError) {
        self.stop.store(true, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
    fn take(&self) -> Option<ArchiveError> {
        self.first.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

fn pack(
    feed: &mut dyn Feed,
    geo: Geometry,
    opts: &CreateOptions,
    progress: &CreateProgress,
    sink: &mut dyn ObjectWrite,
) -> Result<Packed, ArchiveError> {
    let threads = opts.threads.max(1);
    let buffers = 2 * threads + 2;
    let (pool_tx, pool_rx) = bounded::<Frame>(buffers);
    for _ in 0..buffers {
        let empty = Frame {
            no: 0,
            raw: Vec::new(),
            packed: Vec::new(),
            ends: Vec::new(),
            digests: Vec::new(),
        };
        let _ = pool_tx.send(empty);
    }
    let (raw_tx, raw_rx) = bounded::<Frame>(buffers);
    let (done_tx, done_rx) = bounded::<Frame>(buffers);
    let failure = Failure::default();
    let result = std::thread::scope(|s| {
        let failure = &failure;
        s.spawn(move || {
            for no in 0..geo.frames() {
                let Ok(mut f) = pool_rx.recv() else { return };
                if failure.stopped() {
                    return;
                }
                f.no = no;
                f.raw.clear();
                f.raw.resize(geo.frame_len(no), 0);
                if let Err(e) = feed.fill(&mut f.raw) {
                    failure.set(e);
                    return;
                }
                progress
                    .bytes_in
                    .fetch_add(f.raw.len() as u64, Ordering::Relaxed);
                if raw_tx.send(f).is_err() {
                    return;
                }
            }
        });
        for _ in 0..threads {
            let (rx, tx) = (raw_rx.clone(), done_tx.clone());
            s.spawn(move || compress_frames(rx, tx, opts, failure));
        }
        drop((raw_rx, done_tx));
        write_frames(done_rx, pool_tx, geo, sink, progress)
    });
    // A thread's error explains why the writer saw the stream end early.
    result.map_err(|e| failure.take().unwrap_or(e))
}

fn compress_frames(rx: Receiver<Frame>, tx: Sender<Frame>, opts: &CreateOptions, fail: &Failure) {
    let mut zc = match FrameCompressor::new(opts.level) {
        Ok(z) => z,
        Err(e) => return fail.set(e),
    };
    let chunk = opts.chunk_size as usize;
    while let Ok(mut f) = rx.recv() {
        if fail.stopped() {
            return;
        }
        if let Err(e) = zc.compress(&f.raw, chunk, &mut f.packed, &mut f.ends) {
            return fail.set(e);
        }
        f.digests.clear();
        f.digests
            .extend(f.raw.chunks(chunk).map(|c| *Digest::of(c).as_bytes()));
        if tx.send(f).is_err() {
            return;
        }
    }
}

/// Reorders compressed frames and appends them to `sink`.
fn write_frames(
    rx: Receiver<Frame>,
    pool: Sender<Frame>,
    geo: Geometry,
    sink: &mut dyn ObjectWrite,
    progress: &CreateProgress,
) -> Result<Packed, ArchiveError> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut pos = 0u64;
    let mut digest = Hasher::new();
    let mut root = Hasher::new();
    let mut checkpoints = Vec::with_capacity(geo.frames() as usize);
    let mut chunks = Vec::with_capacity(geo.chunk_count() as usize);
    while next < geo.frames() {
        let Ok(f) = rx.recv() else {
            return Err(ArchiveError::Corrupt(
                "internal: compression stopped".into(),
            ));
        };
        pending.insert(f.no, f);
        while let Some(f) = pending.remove(&next) {
            sink.write(&f.packed)?;
            digest.update(&f.packed);
            checkpoints.push(Checkpoint {
                in_offset: pos,
                out_offset: next * geo.frame,
                first_chunk: chunks.len() as u32,
                ..Default::default()
            });
            for (end, d) in f.ends.iter().zip(&f.digests) {
                root.update(d);
                chunks.push(Chunk {
                    digest: *d,
                    in_end: pos + u64::from(*end),
                });
            }
            pos += f.packed.len() as u64;
            progress
                .bytes_out
                .fetch_add(f.packed.len() as u64, Ordering::Relaxed);
            next += 1;
            // The pool has room for every frame: this never blocks.
            let _ = pool.try_send(f);
        }
    }
    if checkpoints.is_empty() {
        checkpoints.push(Checkpoint::default());
    }
    Ok(Packed {
        checkpoints,
        chunks,
        digest: digest.finish(),
        chunk_root: root.finish(),
        stored: pos,
    })
}

/// A zstd context that compresses one frame at a time, ending a block at
/// every chunk boundary.
struct FrameCompressor {
    cctx: CCtx<'static>,
}

fn zstd_err(what: &str, code: usize) -> ArchiveError {
    ArchiveError::Compress(format!("{what}: {}", zstd_safe::get_error_name(code)))
}

impl FrameCompressor {
    fn new(level: i32) -> Result<Self, ArchiveError> {
        let mut cctx = CCtx::try_create().ok_or(ArchiveError::Compress("zstd context".into()))?;
        for p in [
            CParameter::CompressionLevel(level),
            CParameter::ContentSizeFlag(true),
            CParameter::ChecksumFlag(false),
        ] {
            cctx.set_parameter(p)
                .map_err(|c| zstd_err("zstd parameter", c))?;
        }
        Ok(FrameCompressor { cctx })
    }

    /// Compresses `raw` into one frame in `out`; `ends` gets the end offset
    /// (in `out`) of every `chunk`-sized piece.
    fn compress(
        &mut self,
        raw: &[u8],
        chunk: usize,
        out: &mut Vec<u8>,
        ends: &mut Vec<u32>,
    ) -> Result<(), ArchiveError> {
        out.clear();
        ends.clear();
        let cctx = &mut self.cctx;
        cctx.reset(ResetDirective::SessionOnly)
            .map_err(|c| zstd_err("zstd reset", c))?;
        cctx.set_pledged_src_size(Some(raw.len() as u64))
            .map_err(|c| zstd_err("zstd size", c))?;
        let pieces = raw.chunks(chunk).count();
        for (i, piece) in raw.chunks(chunk).enumerate() {
            let end_op = if i + 1 == pieces {
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_end
            } else {
                zstd_safe::zstd_sys::ZSTD_EndDirective::ZSTD_e_flush
            };
            let mut input = InBuffer::around(piece);
            loop {
                out.reserve(zstd_safe::compress_bound(piece.len() - input.pos()) + 64);
                let pos = out.len();
                let mut output = OutBuffer::around_pos(out, pos);
                let left = cctx
                    .compress_stream2(&mut output, &mut input, end_op)
                    .map_err(|c| zstd_err("zstd", c))?;
                if left == 0 && input.pos() == piece.len() {
                    break;
                }
            }
            let end = u32::try_from(out.len())
                .map_err(|_| ArchiveError::Compress("frame larger than 4 GiB".into()))?;
            ends.push(end);
        }
        Ok(())
    }
}
