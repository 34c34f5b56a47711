//! Input from an indexed image: the merged tree of its index, and the file
//! bytes copied out of the layers' uncompressed streams. Files are ordered
//! by (layer, offset), so every layer blob is streamed once, front to back;
//! each stream is read to its end and checked against the blob's digest, so
//! the archive holds exactly the bytes the image's manifest names.

use std::io::{self, BufReader, Read};
use std::sync::Arc;

use flate2::read::MultiGzDecoder;

use super::create::{DataItem, Feed, Input};
use super::ArchiveError;
use crate::digest::{Digest, HashingReader};
use crate::format::{IndexData, LayerKind, NodeKind};
use crate::source::BlobSource;
use crate::zstd_limits::WINDOW_LOG_MAX;

/// Builds the input for an image whose index is `data` and whose blobs
/// `source` serves. A sparse file's holes become zeros in the data stream
/// (the archive stores it as a plain file).
pub(crate) fn image_input(
    mut data: IndexData,
    source: Arc<dyn BlobSource>,
) -> Result<Input, ArchiveError> {
    // (layer, offset) of each file's first stored byte; an all-hole sparse
    // file reads no layer and sorts first.
    let mut located = Vec::new();
    for (i, n) in data.tree.nodes.iter().enumerate() {
        if n.kind != NodeKind::File || n.size == 0 {
            continue;
        }
        let first = match (n.data, &n.sparse) {
            (Some(d), _) => (d.layer, d.offset),
            (None, Some(_)) => (0, 0),
            (None, None) => return Err(ArchiveError::Corrupt("a file without data".into())),
        };
        located.push((first, i as u32));
    }
    located.sort_unstable();
    let mut pieces = Vec::new();
    for &(_, i) in &located {
        let n = &data.tree.nodes[i as usize];
        match (&n.sparse, n.data) {
            (Some(segments), d) => {
                let layer = d.map_or(0, |d| d.layer);
                let mut at = 0;
                for seg in segments {
                    if seg.file_offset < at || seg.file_offset + seg.len > n.size {
                        return Err(ArchiveError::Corrupt("overlapping sparse runs".into()));
                    }
                    pieces.push(Piece::Zeros(seg.file_offset - at));
                    pieces.push(Piece::Data {
                        layer,
                        offset: seg.layer_offset,
                        len: seg.len,
                    });
                    at = seg.file_offset + seg.len;
                }
                pieces.push(Piece::Zeros(n.size - at));
            }
            (None, Some(d)) => pieces.push(Piece::Data {
                layer: d.layer,
                offset: d.offset,
                len: n.size,
            }),
            (None, None) => unreachable!("files without data were refused above"),
        }
    }
    pieces.retain(|p| p.len() > 0);
    for &(_, i) in &located {
        data.tree.nodes[i as usize].sparse = None;
    }
    let layers = data.layers.iter().map(|l| (l.digest, l.kind)).collect();
    let items = located
        .iter()
        .map(|&(_, node)| DataItem {
            node,
            size: data.tree.nodes[node as usize].size,
        })
        .collect();
    Ok(Input {
        tree: data.tree,
        items,
        meta: data.meta,
        feed: Box::new(LayerFeed {
            source,
            layers,
            pieces,
            next: 0,
            left: 0,
            zeros: false,
            stream: None,
        }),
    })
}

/// A run of the data stream: bytes of a layer's uncompressed stream, or a
/// sparse file's hole.
#[derive(Debug, Clone, Copy)]
enum Piece {
    Data { layer: u32, offset: u64, len: u64 },
    Zeros(u64),
}

impl Piece {
    fn len(&self) -> u64 {
        match *self {
            Piece::Data { len, .. } | Piece::Zeros(len) => len,
        }
    }
}

/// A layer blob being decoded, with the digest of its stored bytes.
struct LayerStream {
    layer: u32,
    digest: Digest,
    /// Uncompressed offset of the next byte.
    pos: u64,
    reader: Decoded,
}

type Hashed = HashingReader<Box<dyn Read + Send>>;

enum Decoded {
    Gzip(Box<MultiGzDecoder<Hashed>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<Hashed>>),
    Plain(Hashed),
}

impl Read for Decoded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoded::Gzip(r) => r.read(buf),
            Decoded::Zstd(r) => r.read(buf),
            Decoded::Plain(r) => r.read(buf),
        }
    }
}

impl LayerStream {
    fn err(&self, e: impl std::fmt::Display) -> ArchiveError {
        ArchiveError::Layer {
            digest: self.digest,
            message: e.to_string(),
        }
    }

    /// Reads to `offset`, discarding.
    fn skip_to(&mut self, offset: u64) -> Result<(), ArchiveError> {
        let n = io::copy(
            &mut (&mut self.reader).take(offset - self.pos),
            &mut io::sink(),
        )
        .map_err(|e| self.err(e))?;
        self.pos += n;
        if self.pos != offset {
            return Err(self.err("layer ended before a file's data"));
        }
        Ok(())
    }

    /// Reads the rest of the blob and checks its digest.
    fn finish(mut self) -> Result<(), ArchiveError> {
        io::copy(&mut self.reader, &mut io::sink()).map_err(|e| self.err(e))?;
        let mut raw = match self.reader {
            Decoded::Gzip(r) => r.into_inner(),
            Decoded::Zstd(r) => r.finish().into_inner(),
            Decoded::Plain(r) => r,
        };
        // Trailing bytes the decoder did not need still count.
        io::copy(&mut raw, &mut io::sink()).map_err(|e| ArchiveError::Layer {
            digest: self.digest,
            message: e.to_string(),
        })?;
        let (actual, _) = raw.finish();
        if actual != self.digest {
            return Err(ArchiveError::Layer {
                digest: self.digest,
                message: format!("content digest mismatch (the blob hashes to {actual})"),
            });
        }
        Ok(())
    }
}

/// The file bytes of an image, in (layer, offset) order.
struct LayerFeed {
    source: Arc<dyn BlobSource>,
    layers: Vec<(Digest, LayerKind)>,
    pieces: Vec<Piece>,
    /// Next piece to start.
    next: usize,
    /// Bytes of the current piece still to copy.
    left: u64,
    /// Whether the current piece is a hole.
    zeros: bool,
    stream: Option<LayerStream>,
}

impl LayerFeed {
    fn open(&self, layer: u32) -> Result<LayerStream, ArchiveError> {
        let &(digest, kind) = self
            .layers
            .get(layer as usize)
            .ok_or(ArchiveError::Corrupt("file data in a missing layer".into()))?;
        let layer_err = |e: &dyn std::fmt::Display| ArchiveError::Layer {
            digest,
            message: e.to_string(),
        };
        let raw = HashingReader::new(self.source.open(&digest).map_err(|e| layer_err(&e))?);
        let reader = match kind {
            LayerKind::Gzip => Decoded::Gzip(Box::new(MultiGzDecoder::new(raw))),
            LayerKind::ZstdFrames | LayerKind::ZstdWhole => {
                let mut d = zstd::stream::read::Decoder::new(raw).map_err(|e| layer_err(&e))?;
                d.window_log_max(WINDOW_LOG_MAX)
                    .map_err(|e| layer_err(&e))?;
                Decoded::Zstd(d)
            }
            LayerKind::Tar => Decoded::Plain(raw),
        };
        Ok(LayerStream {
            layer,
            digest,
            pos: 0,
            reader,
        })
    }

    /// Starts piece `i`: positions the layer stream at its first byte.
    fn start_piece(&mut self, i: usize) -> Result<(), ArchiveError> {
        self.left = self.pieces[i].len();
        let Piece::Data { layer, offset, .. } = self.pieces[i] else {
            self.zeros = true;
            return Ok(());
        };
        self.zeros = false;
        let reusable = matches!(&self.stream, Some(s) if s.layer == layer && s.pos <= offset);
        if !reusable {
            if let Some(done) = self.stream.take() {
                done.finish()?;
            }
            self.stream = Some(self.open(layer)?);
        }
        if let Some(s) = self.stream.as_mut() {
            s.skip_to(offset)?;
        }
        Ok(())
    }
}

impl Feed for LayerFeed {
    fn fill(&mut self, mut buf: &mut [u8]) -> Result<(), ArchiveError> {
        while !buf.is_empty() {
            if self.left == 0 {
                if self.next >= self.pieces.len() {
                    return Err(ArchiveError::Corrupt(
                        "data stream longer than the image's files".into(),
                    ));
                }
                self.start_piece(self.next)?;
                self.next += 1;
            }
            let n = self.left.min(buf.len() as u64) as usize;
            if self.zeros {
                buf[..n].fill(0);
                self.left -= n as u64;
                buf = &mut buf[n..];
                continue;
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(ArchiveError::Corrupt("no layer stream".into()));
            };
            let got = match s.reader.read(&mut buf[..n]) {
                Ok(0) => return Err(s.err("layer ended inside a file's data")),
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(s.err(e)),
            };
            s.pos += got as u64;
            self.left -= got as u64;
            buf = &mut buf[got..];
        }
        // The last byte of the last file: check the final layer's digest.
        if self.left == 0 && self.next == self.pieces.len() {
            if let Some(s) = self.stream.take() {
                s.finish()?;
            }
        }
        Ok(())
    }
}
