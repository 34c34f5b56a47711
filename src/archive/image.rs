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

/// Builds the input for an image whose index is `data` and whose blobs
/// `source` serves.
pub(crate) fn image_input(
    data: IndexData,
    source: Arc<dyn BlobSource>,
) -> Result<Input, ArchiveError> {
    let mut located = Vec::new();
    for (i, n) in data.tree.nodes.iter().enumerate() {
        if let (NodeKind::File, Some(d)) = (n.kind, n.data) {
            if n.size > 0 {
                located.push((d.layer, d.offset, i as u32, n.size));
            }
        }
    }
    located.sort_unstable();
    let layers = data.layers.iter().map(|l| (l.digest, l.kind)).collect();
    let items = located
        .iter()
        .map(|&(_, _, node, size)| DataItem { node, size })
        .collect();
    let places = located.iter().map(|&(l, off, _, _)| (l, off)).collect();
    Ok(Input {
        tree: data.tree,
        items,
        meta: data.meta,
        feed: Box::new(LayerFeed {
            source,
            layers,
            places,
            sizes: located.iter().map(|l| l.3).collect(),
            next: 0,
            left: 0,
            stream: None,
        }),
    })
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
    /// (layer, offset) of every item.
    places: Vec<(u32, u64)>,
    sizes: Vec<u64>,
    /// Next item to start.
    next: usize,
    /// Bytes of the current item still to copy.
    left: u64,
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
                Decoded::Zstd(zstd::stream::read::Decoder::new(raw).map_err(|e| layer_err(&e))?)
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

    /// Positions the stream at the start of item `i`.
    fn start_item(&mut self, i: usize) -> Result<(), ArchiveError> {
        let (layer, offset) = self.places[i];
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
        self.left = self.sizes[i];
        Ok(())
    }
}

impl Feed for LayerFeed {
    fn fill(&mut self, mut buf: &mut [u8]) -> Result<(), ArchiveError> {
        while !buf.is_empty() {
            if self.left == 0 {
                if self.next >= self.places.len() {
                    return Err(ArchiveError::Corrupt(
                        "data stream longer than the image's files".into(),
                    ));
                }
                self.start_item(self.next)?;
                self.next += 1;
            }
            let Some(s) = self.stream.as_mut() else {
                return Err(ArchiveError::Corrupt("no layer stream".into()));
            };
            let n = self.left.min(buf.len() as u64) as usize;
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
        if self.left == 0 && self.next == self.places.len() {
            if let Some(s) = self.stream.take() {
                s.finish()?;
            }
        }
        Ok(())
    }
}
