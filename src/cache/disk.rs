//! The on-disk tier of the chunk cache: verified chunks stored under their
//! sha256 in one directory per node (`<node-dir>/chunks/ab/abcd…`), shared
//! by every image daemon on the node and kept across daemon restarts, so a
//! container that comes back to a node does not go back to the registry.
//!
//! Reads are synchronous (one file per chunk, read on the FUSE thread that
//! missed in memory) and every chunk read back is verified against its
//! digest, so a damaged file is a miss (and is deleted), never wrong bytes.
//! Plain `std::fs`, not io_uring: for one 256 KiB read that a thread waits
//! on, io_uring measured 0.9–1.4× the time of open + read_exact + close,
//! warm (the page-cache copy dominates) and cold (the disk does); see
//! BENCHMARKS.md, "Disk tier I/O".
//! Writes go to one background thread over a queue bounded in bytes (a
//! full queue drops the write: the cache is best effort) as a uniquely
//! named temp file + rename. When the directory grows past its budget the
//! writer deletes the least recently used files (by mtime, which a disk hit
//! refreshes) down to 90 %; it recounts the directory every tenth of the
//! budget written, so several daemons sharing it stay near the budget.

use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_channel::Sender;

use crate::digest::Digest;
use crate::metrics::{Counter, Metrics};

/// Bytes of chunks waiting for the writer; more are dropped.
const WRITE_QUEUE_BYTES: u64 = 64 << 20;

/// Temp files older than this are left over from a killed writer.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// The node's chunk directory.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    tx: Sender<(Digest, Arc<[u8]>)>,
    /// Bytes queued for the writer.
    queued: Arc<AtomicU64>,
    /// Damaged files, writes, dropped writes and evictions are counted here
    /// (hits are counted by the cache that asked).
    metrics: Arc<Metrics>,
}

impl DiskCache {
    /// Opens (creating) the chunk directory `dir`, holding at most about
    /// `budget` bytes, and starts its writer thread, counting into
    /// `metrics`. The thread ends when the cache is dropped.
    pub fn open(dir: &Path, budget: u64, metrics: Arc<Metrics>) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let (tx, rx) = crossbeam_channel::unbounded::<(Digest, Arc<[u8]>)>();
        let queued = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            dir: dir.to_path_buf(),
            budget,
            used: None,
            since_scan: 0,
            metrics: metrics.clone(),
        };
        let q = queued.clone();
        std::thread::Builder::new()
            .name("clip-disk-cache".into())
            .spawn(move || {
                let mut w = writer;
                while let Ok((digest, data)) = rx.recv() {
                    w.write(&digest, &data);
                    q.fetch_sub(data.len() as u64, Relaxed);
                }
            })?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            tx,
            queued,
            metrics,
        })
    }

    /// Chunk `digest` (`len` bytes) if a file holds exactly those bytes.
    /// A file of another length or content is deleted (so the next fill
    /// writes it again) and is a miss.
    pub fn get(&self, digest: &Digest, len: usize) -> Option<Vec<u8>> {
        let path = path_of(&self.dir, digest);
        let mut f = std::fs::File::open(&path).ok()?;
        let mut buf = vec![0u8; len];
        let whole = f.metadata().ok()?.len() == len as u64 && f.read_exact(&mut buf).is_ok();
        if !whole || Digest::of(&buf) != *digest {
            self.metrics.count(Counter::DiskDamaged, 1);
            tracing::warn!(path = %path.display(), "damaged chunk in the disk cache; deleted");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        // Refresh the LRU clock; a failure only ages the file.
        let _ = f.set_modified(SystemTime::now());
        Some(buf)
    }

    /// Whether a file of `len` bytes is stored for chunk `digest` (one
    /// `stat`; its content is verified only when [`DiskCache::get`] reads it).
    pub fn contains(&self, digest: &Digest, len: usize) -> bool {
        std::fs::metadata(path_of(&self.dir, digest)).is_ok_and(|m| m.len() == len as u64)
    }

    /// Queues chunk `digest` (already verified) for writing; dropped when
    /// the queue holds too many bytes.
    pub fn put(&self, digest: Digest, data: Arc<[u8]>) {
        let len = data.len() as u64;
        if self.queued.fetch_add(len, Relaxed) + len > WRITE_QUEUE_BYTES
            || self.tx.send((digest, data)).is_err()
        {
            self.queued.fetch_sub(len, Relaxed);
            self.metrics.count(Counter::DiskWriteDrops, 1);
        }
    }
}

/// `dir/ab/abcdef…` (256 subdirectories keep directories small).
fn path_of(dir: &Path, digest: &Digest) -> PathBuf {
    let hex = digest.hex();
    dir.join(&hex[..2]).join(hex)
}

/// The writer thread's state.
struct Writer {
    dir: PathBuf,
    budget: u64,
    /// Bytes in the directory; learnt by a scan on the first write.
    used: Option<u64>,
    /// Bytes written since the last scan.
    since_scan: u64,
    metrics: Arc<Metrics>,
}

impl Writer {
    fn write(&mut self, digest: &Digest, data: &[u8]) {
        let path = path_of(&self.dir, digest);
        if path.exists() {
            return;
        }
        match write_atomic(&path, data) {
            Ok(()) => {
                self.metrics.count(Counter::DiskWrites, 1);
                self.since_scan += data.len() as u64;
                // Recount now and then: other daemons write here too.
                let used = match self.used {
                    Some(u) if self.since_scan < self.budget / 10 => u + data.len() as u64,
                    _ => {
                        self.since_scan = 0;
                        scan(&self.dir).iter().map(|f| f.1).sum()
                    }
                };
                self.used = Some(used);
                if used > self.budget {
                    self.used = Some(self.evict());
                }
            }
            Err(e) => {
                self.metrics.count(Counter::DiskWriteDrops, 1);
                tracing::debug!(path = %path.display(), error = %e, "disk cache write failed");
            }
        }
    }

    /// Deletes the oldest files until at most 90 % of the budget is used;
    /// returns the bytes left. Rescans, so other daemons' files count.
    fn evict(&self) -> u64 {
        let mut files = scan(&self.dir);
        let mut used: u64 = files.iter().map(|f| f.1).sum();
        files.sort_by_key(|f| f.2);
        let target = self.budget / 10 * 9;
        for (path, len, _) in files {
            if used <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                used = used.saturating_sub(len);
                self.metrics.count(Counter::DiskEvictions, 1);
            }
        }
        used
    }
}

/// A uniquely named temp file (O_EXCL) in the chunk's directory, then
/// rename: a reader never sees a partial chunk under its final name, and
/// concurrent writers (threads or daemons) never share a temp file.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(parent)?;
    tmp.write_all(data)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Every chunk file: (path, length, mtime). Temp files are skipped, and
/// deleted when a killed writer left them long ago.
fn scan(dir: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    let Ok(subdirs) = std::fs::read_dir(dir) else {
        return out;
    };
    for sub in subdirs.flatten() {
        let Ok(files) = std::fs::read_dir(sub.path()) else {
            continue;
        };
        for f in files.flatten() {
            if f.file_name().as_encoded_bytes().starts_with(b".") {
                let stale = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > STALE_TEMP));
                if stale {
                    let _ = std::fs::remove_file(f.path());
                }
                continue;
            }
            if let Ok(md) = f.metadata() {
                if md.is_file() {
                    let mtime = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((f.path(), md.len(), mtime));
                }
            }
        }
    }
    out
}
