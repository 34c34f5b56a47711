//! One stored object — a local file or an S3 object — read by byte range
//! ([`ObjectRead`]) or written front-last ([`ObjectWrite`]), and
//! [`SlicedSource`], which serves blobs that are byte ranges of one object
//! through the [`BlobSource`] seam (an archive's data section is such a blob).
//!
//! Implementors: [`FileObject`] and [`FileWriter`] here, `s3::S3Object` and
//! `s3::S3Writer` over the network. Consumers: `archive` (create, extract,
//! open) and, through [`SlicedSource`], `cache`. Nothing here knows HTTP.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::digest::Digest;
use crate::source::{BlobSource, SourceError};

/// Random read access to one object of known length.
pub trait ObjectRead: Send + Sync + fmt::Debug {
    /// Length of the object in bytes.
    fn len(&self) -> u64;

    /// Whether the object is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `buf.len()` bytes at `offset`; fewer only at the end.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError>;

    /// Where the object is, for messages (`/path/f.clip`, `s3://b/k`).
    fn location(&self) -> String;

    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SourceError> {
        let mut done = 0;
        while done < buf.len() {
            let n = self.read_at(offset + done as u64, &mut buf[done..])?;
            if n == 0 {
                return Err(SourceError::Io {
                    context: self.location(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "ended at {} while reading {} bytes at {offset}",
                            offset + done as u64,
                            buf.len()
                        ),
                    ),
                });
            }
            done += n;
        }
        Ok(())
    }
}

/// An object written in one pass whose first `front_len` bytes (a header
/// and metadata known only at the end) are supplied last, by
/// [`ObjectWrite::finish`]. Nothing is visible under the final name before
/// `finish` succeeds; dropping or aborting the writer leaves nothing behind.
pub trait ObjectWrite: Send {
    /// Appends `data` after the front (and after earlier appends).
    fn write(&mut self, data: &[u8]) -> Result<(), SourceError>;

    /// Writes `front` (exactly the `front_len` given at creation) at offset
    /// 0 and publishes the object; returns its total length.
    fn finish(self: Box<Self>, front: &[u8]) -> Result<u64, SourceError>;

    /// Discards everything written (best effort).
    fn abort(self: Box<Self>);
}

fn io_err(context: String) -> impl FnOnce(io::Error) -> SourceError {
    move |source| SourceError::Io { context, source }
}

/// A local file, read with `pread`.
#[derive(Debug)]
pub struct FileObject {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileObject {
    /// Opens `path` for reading.
    pub fn open(path: &Path) -> Result<Self, SourceError> {
        let file = File::open(path).map_err(io_err(path.display().to_string()))?;
        let md = file
            .metadata()
            .map_err(io_err(path.display().to_string()))?;
        if !md.is_file() {
            return Err(SourceError::Io {
                context: path.display().to_string(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        Ok(FileObject {
            file,
            path: path.to_path_buf(),
            len: md.len(),
        })
    }
}

impl ObjectRead for FileObject {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        loop {
            match self.file.read_at(buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r.map_err(io_err(self.path.display().to_string())),
            }
        }
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// Writes a local file atomically: a temporary file in the target
/// directory, the front written last, fsynced, then renamed.
#[derive(Debug)]
pub struct FileWriter {
    tmp: tempfile::NamedTempFile,
    path: PathBuf,
    front_len: u64,
    len: u64,
}

impl FileWriter {
    /// Starts writing `path`, reserving `front_len` bytes at its start.
    pub fn create(path: &Path, front_len: u64) -> Result<Self, SourceError> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(".clip-archive-")
            .tempfile_in(dir)
            .map_err(io_err(path.display().to_string()))?;
        tmp.as_file_mut()
            .seek(SeekFrom::Start(front_len))
            .map_err(io_err(path.display().to_string()))?;
        Ok(FileWriter {
            tmp,
            path: path.to_path_buf(),
            front_len,
            len: front_len,
        })
    }
}

impl ObjectWrite for FileWriter {
    fn write(&mut self, data: &[u8]) -> Result<(), SourceError> {
        self.tmp
            .as_file_mut()
            .write_all(data)
            .map_err(io_err(self.path.display().to_string()))?;
        self.len += data.len() as u64;
        Ok(())
    }

    fn finish(self: Box<Self>, front: &[u8]) -> Result<u64, SourceError> {
        let ctx = self.path.display().to_string();
        if front.len() as u64 != self.front_len {
            return Err(SourceError::Io {
                context: ctx,
                source: io::Error::new(io::ErrorKind::InvalidInput, "front length changed"),
            });
        }
        let file = self.tmp.as_file();
        file.write_all_at(front, 0).map_err(io_err(ctx.clone()))?;
        file.sync_all().map_err(io_err(ctx.clone()))?;
        self.tmp
            .persist(&self.path)
            .map_err(|e| io_err(ctx)(e.error))?;
        Ok(self.len)
    }

    fn abort(self: Box<Self>) {
        // Dropping the NamedTempFile removes it.
    }
}

/// Serves blobs that are byte ranges of one object: `digest → [start, end)`.
/// An archive registers its data section here, so the cache reads it like
/// any layer blob.
#[derive(Debug, Clone)]
pub struct SlicedSource {
    object: Arc<dyn ObjectRead>,
    blobs: HashMap<Digest, Range<u64>>,
}

impl SlicedSource {
    /// A source over `object` serving no blob yet.
    pub fn new(object: Arc<dyn ObjectRead>) -> Self {
        SlicedSource {
            object,
            blobs: HashMap::new(),
        }
    }

    /// Serves blob `digest` as bytes `range` of the object.
    pub fn with_blob(mut self, digest: Digest, range: Range<u64>) -> Self {
        self.blobs.insert(digest, range);
        self
    }

    fn range(&self, digest: &Digest) -> Result<&Range<u64>, SourceError> {
        self.blobs
            .get(digest)
            .ok_or(SourceError::NotFound { digest: *digest })
    }
}

impl BlobSource for SlicedSource {
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let r = self.range(digest)?;
        let len = r.end - r.start;
        if offset > len {
            return Err(SourceError::OutOfRange {
                digest: *digest,
                offset,
                len,
            });
        }
        let n = buf
            .len()
            .min(usize::try_from(len - offset).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        self.object.read_at(r.start + offset, &mut buf[..n])
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        let r = self.range(digest)?.clone();
        Ok(Box::new(ObjectReader {
            object: self.object.clone(),
            pos: r.start,
            end: r.end,
        }))
    }
}

/// Streams `[pos, end)` of an object in reads of at most [`STREAM_READ`].
struct ObjectReader {
    object: Arc<dyn ObjectRead>,
    pos: u64,
    end: u64,
}

/// Largest single read of a streamed object (one request for a remote one).
const STREAM_READ: usize = 8 << 20;

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(STREAM_READ)
            .min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .object
            .read_at(self.pos, &mut buf[..want])
            .map_err(io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_writer_front_last_and_sliced_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let mut w: Box<dyn ObjectWrite> = Box::new(FileWriter::create(&path, 4).unwrap());
        w.write(b"hello").unwrap();
        w.write(b" world").unwrap();
        assert!(!path.exists(), "nothing visible before finish");
        assert_eq!(w.finish(b"HEAD").unwrap(), 15);
        assert_eq!(std::fs::read(&path).unwrap(), b"HEADhello world");

        let obj: Arc<dyn ObjectRead> = Arc::new(FileObject::open(&path).unwrap());
        let d = Digest::of(b"hello world");
        let src = SlicedSource::new(obj).with_blob(d, 4..15);
        let mut buf = [0u8; 32];
        assert_eq!(src.read_at(&d, 6, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"world");
        let mut all = Vec::new();
        src.open(&d).unwrap().read_to_end(&mut all).unwrap();
        assert_eq!(all, b"hello world");
        assert!(src.read_at(&d, 12, &mut buf).is_err());
        assert!(src.read_at(&Digest::of(b"x"), 0, &mut buf).is_err());
    }

    #[test]
    fn aborted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("obj");
        let mut w: Box<dyn ObjectWrite> = Box::new(FileWriter::create(&path, 8).unwrap());
        w.write(b"data").unwrap();
        w.abort();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
