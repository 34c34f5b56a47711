//! One layer: stream the blob once, hashing the compressed bytes, inflating
//! (zran for gzip, frame by frame for zstd), hashing the tar, cutting it into verification chunks and
//! collecting the tar entries.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::atomic::Ordering;

use crate::digest::{Digest, Hasher, HashingReader};
use crate::format::{Checkpoint, Chunk, Layer, LayerKind};
use crate::gzip::{IndexerConfig, ZranReader};
use crate::oci::LayerDesc;
use crate::source::BlobSource;
use crate::tar::{self, Entry, EntryKind, TarError};

use super::hints::{ElfFacts, ElfTap};
use super::limits::{BlobGuard, Budget};
use super::zstd::FrameIndexer;
use super::{IndexError, IndexOptions, Progress};

/// A layer's index records and its tar entries (merged later, in order).
#[derive(Debug)]
pub struct IndexedLayer {
    /// Records for the index file.
    pub layer: Layer,
    /// Tar entries in stream order.
    pub entries: Vec<Entry>,
    /// What its ELF files tell a loader, by the stream offset of their data.
    pub elf: HashMap<u64, ElfFacts>,
}

/// Reads the tar entries of `r` into `entries`, noting the ELF files'
/// facts on the way.
fn read_tar<R: Read>(
    r: R,
    collect: &mut dyn FnMut(Entry) -> Result<(), TarError>,
) -> Result<HashMap<u64, ElfFacts>, TarError> {
    let (tap, handle) = ElfTap::new(r);
    tar::read_entries(tap, |e: Entry| {
        // A sparse file's stored bytes are not its file bytes: no ELF look.
        if e.kind == EntryKind::File && e.sparse.is_none() {
            handle.expect(e.data_offset, e.size);
        }
        collect(e)
    })?;
    Ok(handle.into_found())
}

/// How a layer media type is served, or `None` if unsupported.
pub fn layer_kind(media_type: &str) -> Option<LayerKind> {
    Some(match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => LayerKind::Gzip,
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => LayerKind::Tar,
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => LayerKind::ZstdWhole,
        _ => return None,
    })
}

/// Counts compressed bytes into the shared progress counter.
struct Counting<'a, R> {
    inner: R,
    progress: &'a Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Cuts an uncompressed stream into `chunk_size` pieces and hashes each.
/// Used for uncompressed layers (one span from offset 0).
struct Chunker<R> {
    inner: R,
    chunk_size: u64,
    hasher: Hasher,
    in_chunk: u64,
    chunks: Vec<Chunk>,
    /// Fetch hint for every chunk (the blob offset needed to decode it).
    in_end: fn(u64) -> u64,
    out: u64,
}

impl<R: Read> Chunker<R> {
    fn new(inner: R, chunk_size: u32, in_end: fn(u64) -> u64) -> Self {
        Chunker {
            inner,
            chunk_size: u64::from(chunk_size.max(1)),
            hasher: Hasher::new(),
            in_chunk: 0,
            chunks: Vec::new(),
            in_end,
            out: 0,
        }
    }

    fn finish(mut self) -> Vec<Chunk> {
        if self.in_chunk > 0 {
            let h = std::mem::take(&mut self.hasher);
            self.chunks.push(Chunk {
                digest: *h.finish().as_bytes(),
                in_end: (self.in_end)(self.out),
            });
        }
        self.chunks
    }
}

impl<R: Read> Read for Chunker<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min((self.chunk_size - self.in_chunk) as usize);
            self.hasher.update(&rest[..take]);
            self.in_chunk += take as u64;
            self.out += take as u64;
            rest = &rest[take..];
            if self.in_chunk == self.chunk_size {
                let h = std::mem::take(&mut self.hasher);
                self.chunks.push(Chunk {
                    digest: *h.finish().as_bytes(),
                    in_end: (self.in_end)(self.out),
                });
                self.in_chunk = 0;
            }
        }
        Ok(n)
    }
}

/// What decoding a layer's stream yields besides its entries.
struct Decoded {
    checkpoints: Vec<Checkpoint>,
    chunks: Vec<Chunk>,
    tar_digest: Digest,
    tar_size: u64,
    elf: HashMap<u64, ElfFacts>,
}

pub(super) fn index_layer(
    desc: &LayerDesc,
    diff_id: Digest,
    source: &dyn BlobSource,
    opts: &IndexOptions,
    budget: &Budget,
    progress: &Progress,
) -> Result<IndexedLayer, IndexError> {
    let digest = desc.digest;
    let kind = layer_kind(&desc.media_type).ok_or_else(|| IndexError::UnsupportedMediaType {
        digest,
        media_type: desc.media_type.clone(),
    })?;
    let stream = source
        .open(&digest)
        .map_err(|source| IndexError::Source { digest, source })?;
    let mut compressed = HashingReader::new(Counting {
        inner: BlobGuard::new(stream, desc.size),
        progress,
    });
    let mut entries = Vec::new();
    // An entry over a limit stops the tar reader; the named error is kept here.
    let mut over_limit = None;
    let mut collect = |e: Entry| match budget.admit(&e, &opts.limits, digest) {
        Ok(()) => {
            entries.push(e);
            Ok(())
        }
        Err(err) => {
            over_limit = Some(err);
            Err(TarError::Callback("index limit reached".into()))
        }
    };
    let decoded = decode(kind, &mut compressed, opts, digest, &mut collect);
    // A source that sent more (or fewer) bytes than the manifest says is
    // named as such, whatever the decoders made of it.
    if let Some(e) = compressed.get_mut().inner.length_error(digest) {
        return Err(e);
    }
    if let Some(e) = over_limit {
        return Err(e);
    }
    let Decoded {
        checkpoints,
        mut chunks,
        tar_digest,
        tar_size,
        elf,
    } = decoded?;
    // Hash any bytes the decoders did not need (gzip trailer padding).
    let drained = io::copy(&mut compressed, &mut io::sink());
    if let Some(e) = compressed.get_mut().inner.length_error(digest) {
        return Err(e);
    }
    drained.map_err(|e| IndexError::Source {
        digest,
        source: crate::source::SourceError::Io {
            context: "reading layer".into(),
            source: e,
        },
    })?;
    let (blob_digest, blob_size) = compressed.finish();
    if blob_digest != digest {
        return Err(IndexError::DigestMismatch {
            digest,
            actual: blob_digest,
        });
    }
    if blob_size != desc.size {
        return Err(IndexError::SizeMismatch {
            digest,
            expected: desc.size,
            actual: blob_size,
        });
    }
    if tar_digest != diff_id {
        return Err(IndexError::DiffIdMismatch {
            digest,
            expected: diff_id,
            actual: tar_digest,
        });
    }
    let kind = match kind {
        // Several frame-start checkpoints: each span decodes on its own.
        LayerKind::ZstdFrames | LayerKind::ZstdWhole if checkpoints.len() > 1 => {
            LayerKind::ZstdFrames
        }
        LayerKind::ZstdFrames | LayerKind::ZstdWhole => {
            // One frame (or frames too small to split): the whole blob is
            // fetched and decoded on first access.
            chunks.iter_mut().for_each(|c| c.in_end = blob_size);
            LayerKind::ZstdWhole
        }
        k => k,
    };
    Ok(IndexedLayer {
        layer: Layer {
            digest,
            diff_id,
            media_type: desc.media_type.clone(),
            kind,
            compressed_size: blob_size,
            uncompressed_size: tar_size,
            chunk_size: opts.chunk_size,
            checkpoints,
            chunks,
        },
        entries,
        elf,
    })
}

/// Streams the layer through its decoder and the tar reader, calling
/// `collect` per entry; the checkpoints, chunks and tar digest it yields.
fn decode<R: Read>(
    kind: LayerKind,
    compressed: &mut HashingReader<R>,
    opts: &IndexOptions,
    digest: Digest,
    collect: &mut dyn FnMut(Entry) -> Result<(), TarError>,
) -> Result<Decoded, IndexError> {
    let tar_err = |source: TarError| IndexError::Tar { digest, source };
    Ok(match kind {
        LayerKind::Gzip => {
            let cfg = IndexerConfig {
                span: opts.span,
                chunk_size: opts.chunk_size,
            };
            let mut zran = ZranReader::new(&mut *compressed, cfg);
            let mut tar_in = HashingReader::new(&mut zran);
            let elf = read_tar(&mut tar_in, collect).map_err(tar_err)?;
            let (tar_digest, tar_size) = tar_in.finish();
            let zran = zran
                .finish()
                .map_err(|source| IndexError::Gzip { digest, source })?;
            Decoded {
                checkpoints: zran.checkpoints,
                chunks: zran.chunks,
                tar_digest,
                tar_size,
                elf,
            }
        }
        LayerKind::Tar => {
            let mut chunker = Chunker::new(&mut *compressed, opts.chunk_size, |out| out);
            let elf = read_tar(&mut chunker, collect).map_err(tar_err)?;
            let chunks = chunker.finish();
            let (tar_digest, tar_size) = compressed.peek();
            Decoded {
                checkpoints: vec![Checkpoint::default()],
                chunks,
                tar_digest,
                tar_size,
                elf,
            }
        }
        LayerKind::ZstdFrames | LayerKind::ZstdWhole => {
            let zerr = |source| IndexError::Zstd { digest, source };
            let mut frames =
                FrameIndexer::new(&mut *compressed, opts.span, opts.chunk_size).map_err(zerr)?;
            let mut tar_in = HashingReader::new(&mut frames);
            let read = read_tar(&mut tar_in, collect);
            let (tar_digest, tar_size) = tar_in.finish();
            if frames.window_too_large() {
                return Err(IndexError::ZstdWindowTooLarge { digest });
            }
            let elf = match read {
                Ok(elf) => elf,
                // A broken frame surfaces through the tar reader: name it as zstd's.
                Err(e) => return Err(frames.take_error().map_or_else(|| tar_err(e), zerr)),
            };
            let z = frames.finish().map_err(zerr)?;
            Decoded {
                checkpoints: z.checkpoints,
                chunks: z.chunks,
                tar_digest,
                tar_size,
                elf,
            }
        }
    })
}
