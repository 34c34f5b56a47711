//! First-start warming: what to fetch ahead of a process that reads an
//! image the node has no startup profile for. Every cold read waits a
//! round trip to the registry, and a starting program reads one file after
//! another, so the round trips add up; these rules turn a first read into
//! fetches the process has not asked for yet, all in flight at once:
//!
//! - **the rest of the file**: a file's first READ hints the whole file
//!   (up to [`WarmConfig::whole_file_max`]; a bigger ELF file gets its
//!   [hot ranges](crate::format::Index::file_hints) instead) ahead of
//!   every speculative fetch: a loader faulting a library page by page,
//!   or an interpreter reading a module, needs most of it;
//! - **what it loads next**: the index lists, per ELF file, the shared
//!   libraries the dynamic loader will open (found at index time from
//!   `DT_NEEDED`, `DT_RUNPATH` and the usual library dirs); they are hinted
//!   too, before the loader asks for them;
//! - **its neighbours**: once [`WarmConfig::dir_trigger`] distinct small
//!   files of one directory were read, or one interpreter module (`.py`,
//!   `.pyc`: an import pulls in its package's siblings), the directory's
//!   other small files are hinted (at most [`WarmConfig::dir_budget`]
//!   bytes): they sit next to each other in the layer, so a few GETs bring
//!   them all.
//!
//! Speculation is capped per mount ([`WarmConfig::speculation_budget`]).
//! The rules only hint: the content reader decides what to fetch, and
//! every byte is verified as always.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

use crate::cache::{ContentReader, Urgency};
use crate::format::{Index, NodeKind};

/// Knobs of first-start warming.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WarmConfig {
    /// A file's first read hints the whole file when it is at least this
    /// big (smaller ones are read whole by their first READ anyway).
    pub whole_file_min: u64,
    /// ... and at most this big (default 16 MiB); bigger ELF files get
    /// their hot ranges, other big files the kernel's read-ahead.
    pub whole_file_max: u64,
    /// Hint the libraries an ELF file loads (default on).
    pub dependencies: bool,
    /// Files up to this size count as small for directory warming
    /// (default 128 KiB; 0 turns directory warming off).
    pub small_file_max: u64,
    /// Distinct small files read in one directory before its other small
    /// files are hinted (default 2: one read says nothing yet).
    pub dir_trigger: u8,
    /// Bytes of small files hinted per directory at most (default 8 MiB).
    pub dir_budget: u64,
    /// Speculative bytes (libraries, neighbours) hinted per mount at most
    /// (default 256 MiB).
    pub speculation_budget: u64,
}

impl Default for WarmConfig {
    fn default() -> Self {
        WarmConfig {
            whole_file_min: 256 << 10,
            whole_file_max: 16 << 20,
            dependencies: true,
            small_file_max: 128 << 10,
            dir_trigger: 2,
            dir_budget: 8 << 20,
            speculation_budget: 256 << 20,
        }
    }
}

/// Per-inode state of the warming rules; all atomics, no locks.
#[derive(Debug)]
pub(super) struct Warmer {
    cfg: WarmConfig,
    /// Bit `ino`: a reader has read the file.
    read: Vec<AtomicU64>,
    /// Bit `ino`: the file's content was hinted (by its read or speculation).
    hinted: Vec<AtomicU64>,
    /// `parent[ino]`: the directory the file was last looked up in (0: none).
    parent: Vec<AtomicU32>,
    /// Bit `ino`: the file is an interpreter's module ([`is_module`]).
    module: Vec<AtomicU64>,
    /// `small_reads[dir]`: distinct small files read there (saturating).
    small_reads: Vec<AtomicU8>,
    /// Speculative bytes hinted so far.
    speculated: AtomicU64,
}

/// Sets bit `ino`; `true` if it was clear.
fn first(bits: &[AtomicU64], ino: u64) -> bool {
    let Some(word) = bits.get((ino / 64) as usize) else {
        return false;
    };
    let bit = 1u64 << (ino % 64);
    word.fetch_or(bit, Relaxed) & bit == 0
}

/// Whether bit `ino` is set.
fn is_set(bits: &[AtomicU64], ino: u64) -> bool {
    bits.get((ino / 64) as usize)
        .is_some_and(|w| w.load(Relaxed) & (1u64 << (ino % 64)) != 0)
}

/// A file an interpreter loads as a module of a package: Python's source
/// and compiled modules (a `__pycache__` directory is nothing else).
fn is_module(name: &[u8]) -> bool {
    name.ends_with(b".pyc") || name.ends_with(b".py")
}

impl Warmer {
    pub fn new(cfg: WarmConfig, inode_count: u64) -> Self {
        let n = inode_count as usize + 1;
        Warmer {
            cfg,
            read: (0..n / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            hinted: (0..n / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            module: (0..n / 64 + 1).map(|_| AtomicU64::new(0)).collect(),
            parent: (0..n).map(|_| AtomicU32::new(0)).collect(),
            small_reads: (0..n).map(|_| AtomicU8::new(0)).collect(),
            speculated: AtomicU64::new(0),
        }
    }

    /// Notes that `ino` was found in directory `parent` under `name`.
    pub fn looked_up(&self, parent: u64, name: &[u8], ino: u64) {
        if let Some(p) = self.parent.get(ino as usize) {
            p.store(parent as u32, Relaxed);
        }
        if is_module(name) {
            first(&self.module, ino);
        }
    }

    /// Called on every READ of regular file `ino`; does its work once per file.
    pub fn on_read(&self, index: &Index, content: &dyn ContentReader, ino: u64) {
        if !first(&self.read, ino) {
            return;
        }
        if let Ok(node) = index.inode(ino) {
            if node.size() >= self.cfg.whole_file_min && first(&self.hinted, ino) {
                self.hint_file(index, content, ino, Urgency::Now);
            }
            if node.size() <= self.cfg.small_file_max {
                self.small_file_read(index, content, ino);
            }
        }
        if self.cfg.dependencies {
            if let Ok(Some(hints)) = index.file_hints(ino) {
                for dep in hints.dependencies() {
                    if first(&self.hinted, dep) {
                        self.hint_file(index, content, dep, Urgency::Later);
                    }
                }
            }
        }
    }

    /// Hints file `ino`'s content: whole, or its hot ranges when it is too
    /// big to fetch whole. Speculation counts against the mount's budget.
    fn hint_file(&self, index: &Index, content: &dyn ContentReader, ino: u64, urgency: Urgency) {
        let Ok(node) = index.inode(ino) else { return };
        let Some((layer, offset)) = node.data() else {
            return;
        };
        // A sparse file's runs are stored back to back from its first.
        let size = node.allocated_size();
        let ranges: Vec<(u64, u64)> = if size <= self.cfg.whole_file_max {
            vec![(0, size)]
        } else {
            match index.file_hints(ino) {
                Ok(Some(h)) => h.hot_ranges().collect(),
                _ => return,
            }
        };
        for (start, len) in ranges {
            let len = len.min(size.saturating_sub(start));
            if len == 0 || (urgency == Urgency::Later && !self.spend(len)) {
                continue;
            }
            content.prefetch(layer, offset + start, len, urgency);
        }
    }

    /// Counts a small file's first read in its directory; at the trigger,
    /// hints the directory's other small files (nearest in the layer first).
    fn small_file_read(&self, index: &Index, content: &dyn ContentReader, ino: u64) {
        if self.cfg.small_file_max == 0 {
            return;
        }
        let dir = self.parent.get(ino as usize).map_or(0, |p| p.load(Relaxed)) as u64;
        let Some(count) = self.small_reads.get(dir as usize).filter(|_| dir != 0) else {
            return;
        };
        let seen = count
            .fetch_update(Relaxed, Relaxed, |c| Some(c.saturating_add(1)))
            .unwrap_or(u8::MAX);
        // One module read is enough: an interpreter importing one module of
        // a package imports its siblings next.
        let trigger = if is_set(&self.module, ino) {
            1
        } else {
            self.cfg.dir_trigger.max(1)
        };
        if seen.saturating_add(1) != trigger {
            return;
        }
        let Ok(entries) = index.read_dir(dir, 0) else {
            return;
        };
        let Some(here) = index.inode(ino).ok().and_then(|n| n.data()) else {
            return;
        };
        // (distance from the file read, layer, offset, size, ino)
        let mut siblings: Vec<(u64, u32, u64, u64, u64)> = entries
            .filter_map(Result::ok)
            .filter(|e| e.kind == Some(NodeKind::File) && e.ino != ino)
            .filter_map(|e| {
                let n = index.inode(e.ino).ok()?;
                let (layer, offset) = n.data()?;
                let size = n.allocated_size();
                (layer == here.0 && size <= self.cfg.small_file_max)
                    .then(|| (offset.abs_diff(here.1), layer, offset, size, e.ino))
            })
            .collect();
        siblings.sort_unstable();
        let mut budget = self.cfg.dir_budget;
        let mut picked: Vec<(u64, u64)> = Vec::new();
        for (_, _, offset, size, sib) in siblings {
            if size > budget {
                break;
            }
            if first(&self.hinted, sib) {
                budget -= size;
                picked.push((offset, size));
            }
        }
        // In layer order, neighbours merged: a run of files is one hint.
        picked.sort_unstable();
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (offset, size) in picked {
            match runs.last_mut() {
                // Tar headers (512 B each, more for long names) sit between files.
                Some((s, e)) if offset <= *e + 64 * 1024 => *e = (*e).max(offset + size),
                _ => runs.push((offset, offset + size)),
            }
        }
        for (start, end) in runs {
            if self.spend(end - start) {
                content.prefetch(here.0, start, end - start, Urgency::Later);
            }
        }
    }

    /// Takes `bytes` from the speculation budget; `false` when it is spent.
    fn spend(&self, bytes: u64) -> bool {
        self.speculated
            .fetch_update(Relaxed, Relaxed, |s| {
                let next = s.saturating_add(bytes);
                (next <= self.cfg.speculation_budget).then_some(next)
            })
            .is_ok()
    }
}
