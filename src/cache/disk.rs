//! The on-disk tier of the chunk cache: verified chunks stored under their
//! sha256 in one directory per node (`<node-dir>/chunks/ab/abcd…`), shared
//! by every image daemon on the node and kept across daemon restarts, so a
//! container that comes back to a node does not go back to the registry.
//!
//! Reads are synchronous (one file per chunk, read on the FUSE thread that
//! missed in memory) and every chunk read back is verified again by the
//! caller, so a damaged or half-written file is a miss, never wrong bytes.
//! Plain `std::fs`, not io_uring: for one 256 KiB read that a thread waits
//! on, io_uring measured 0.9–1.4× the time of open + read_exact + close,
//! warm (the page-cache copy dominates) and cold (the disk does); see
//! BENCHMARKS.md, "Disk tier I/O".
//! Writes go to one background thread over a bounded queue (a full queue
//! drops the write: the cache is best effort) as temp file + rename. When
//! the directory grows past its budget the writer deletes the least
//! recently used files (by mtime, which a disk hit refreshes) down to 90 %.

use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};

use crate::digest::Digest;

/// Chunks waiting for the writer; more are dropped.
const WRITE_QUEUE: usize = 256;

/// The node's chunk directory.
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    tx: Sender<(Digest, Arc<[u8]>)>,
    stats: Arc<DiskStats>,
}

/// Counters of a [`DiskCache`].
#[derive(Debug, Default)]
pub struct DiskStats {
    /// Chunks read back from disk.
    pub hits: AtomicU64,
    /// Chunks written.
    pub writes: AtomicU64,
    /// Writes dropped (queue full) or failed.
    pub write_drops: AtomicU64,
    /// Files deleted to stay within the budget.
    pub evictions: AtomicU64,
}

impl DiskCache {
    /// Opens (creating) the chunk directory `dir`, holding at most about
    /// `budget` bytes, and starts its writer thread. The thread ends when
    /// the cache is dropped.
    pub fn open(dir: &Path, budget: u64) -> io::Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let (tx, rx) = crossbeam_channel::bounded::<(Digest, Arc<[u8]>)>(WRITE_QUEUE);
        let stats = Arc::new(DiskStats::default());
        let writer = Writer {
            dir: dir.to_path_buf(),
            budget,
            used: None,
            stats: stats.clone(),
        };
        std::thread::Builder::new()
            .name("clip-disk-cache".into())
            .spawn(move || {
                let mut w = writer;
                while let Ok((digest, data)) = rx.recv() {
                    w.write(&digest, &data);
                }
            })?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            tx,
            stats,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &DiskStats {
        &self.stats
    }

    /// The stored bytes of chunk `digest` if a file of exactly `len` bytes
    /// holds them (unverified: the caller checks the digest).
    pub fn get(&self, digest: &Digest, len: usize) -> Option<Vec<u8>> {
        let path = path_of(&self.dir, digest);
        let mut f = std::fs::File::open(&path).ok()?;
        if f.metadata().ok()?.len() != len as u64 {
            return None;
        }
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).ok()?;
        // Refresh the LRU clock; a failure only ages the file.
        let _ = f.set_modified(SystemTime::now());
        self.stats.hits.fetch_add(1, Relaxed);
        Some(buf)
    }

    /// Queues chunk `digest` (already verified) for writing.
    pub fn put(&self, digest: Digest, data: Arc<[u8]>) {
        match self.tx.try_send((digest, data)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.write_drops.fetch_add(1, Relaxed);
            }
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
    stats: Arc<DiskStats>,
}

impl Writer {
    fn write(&mut self, digest: &Digest, data: &[u8]) {
        let path = path_of(&self.dir, digest);
        if path.exists() {
            return;
        }
        match write_atomic(&path, data) {
            Ok(()) => {
                self.stats.writes.fetch_add(1, Relaxed);
                let used = match self.used {
                    Some(u) => u + data.len() as u64,
                    None => scan(&self.dir).iter().map(|f| f.1).sum(),
                };
                self.used = Some(used);
                if used > self.budget {
                    self.used = Some(self.evict());
                }
            }
            Err(e) => {
                self.stats.write_drops.fetch_add(1, Relaxed);
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
                self.stats.evictions.fetch_add(1, Relaxed);
            }
        }
        used
    }
}

/// Temp file in the chunk's directory, then rename: a reader never sees a
/// partial chunk under its final name.
fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)?;
    let tmp = parent.join(format!(".tmp-{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    let written = f.write_all(data).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Every chunk file: (path, length, mtime). Temp files are skipped.
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
