//! Extracting an archive into an empty directory, as `tar -x --xattrs`
//! does as root: every file type, owners, modes (setuid and friends), xattrs
//! (file capabilities), hard links and mtimes.
//!
//! Phases: (1) plan from the index alone — every name checked, every
//! directory reached once, every data range inside the data section — so a
//! hostile archive is refused before anything is written; (2) create the
//! tree: directories, special files, and the regular files whose data spans
//! several work groups; (3) in parallel, per group of frames: one read of
//! the compressed bytes, decode, verify every chunk's sha256, write the
//! file pieces; (4) hard links, then metadata (directories last, deepest
//! first). On any error everything written is removed again.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::restore::{self, DirFd, Target};
use super::{Archive, ArchiveError};
use crate::digest::Digest;
use crate::format::{Index, LayerView, NodeKind, ROOT_INO};

/// Largest frame accepted (uncompressed); `create` writes at most 64 MiB.
const MAX_FRAME: u64 = 64 << 20;
/// Uncompressed bytes a work group aims at: one read per group.
const GROUP_TARGET: u64 = 16 << 20;
/// Directory depth at which an archive is refused.
const MAX_DEPTH: usize = 4096;

/// Settings of [`extract`].
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Worker threads (decode, verify, write).
    pub threads: usize,
    /// Restore owners (default: when running as root, like tar).
    pub same_owner: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            same_owner: rustix::process::geteuid().is_root(),
        }
    }
}

/// Counters for a progress display.
#[derive(Debug, Default)]
pub struct ExtractProgress {
    /// Uncompressed bytes verified and written.
    pub bytes: AtomicU64,
}

/// What [`extract`] restored.
#[derive(Debug, Clone, Default)]
pub struct ExtractSummary {
    /// Names created (files, directories, links, ...), the root excluded.
    pub entries: u64,
    /// Regular files with data.
    pub files: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// One name in the tree, in breadth-first order (parents first).
#[derive(Debug)]
struct Entry {
    /// Entry index of the parent directory (the root is its own parent).
    parent: u32,
    name: Vec<u8>,
    /// Path relative to the target, `/`-separated ("" for the root).
    path: Vec<u8>,
    ino: u64,
    kind: NodeKind,
    /// The first name of its inode: created; later names are hard links.
    first: bool,
}

/// A run of a file's bytes inside one work group.
#[derive(Debug, Clone, Copy)]
struct Piece {
    entry: u32,
    /// Offset in the file.
    file_off: u64,
    /// Offset in the data stream.
    stream_off: u64,
    len: u64,
    /// The file lies in this group only: the worker creates it.
    create: bool,
}

/// Frames `[first, end)` and the file pieces they hold.
#[derive(Debug)]
struct Group {
    first: u32,
    end: u32,
    pieces: Vec<Piece>,
}

fn unsafe_entry(path: &[u8], why: &'static str) -> ArchiveError {
    ArchiveError::Unsafe {
        path: String::from_utf8_lossy(path).into_owned(),
        why,
    }
}

/// Every name of the tree, breadth first, checked.
fn plan_entries(index: &Index) -> Result<Vec<Entry>, ArchiveError> {
    let root = index.inode(ROOT_INO)?;
    if root.kind() != Some(NodeKind::Dir) {
        return Err(ArchiveError::Corrupt("the root is not a directory".into()));
    }
    let inodes = usize::try_from(index.inode_count()).unwrap_or(usize::MAX);
    let mut seen = vec![false; inodes + 1];
    seen[ROOT_INO as usize] = true;
    let mut entries = vec![Entry {
        parent: 0,
        name: Vec::new(),
        path: Vec::new(),
        ino: ROOT_INO,
        kind: NodeKind::Dir,
        first: true,
    }];
    let mut depth = vec![0usize];
    let mut i = 0;
    while i < entries.len() {
        if entries[i].kind == NodeKind::Dir {
            for de in index.read_dir(entries[i].ino, 0)? {
                let de = de?;
                let mut path = entries[i].path.clone();
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend_from_slice(de.name);
                if de.name.is_empty()
                    || de.name == b"."
                    || de.name == b".."
                    || de.name.iter().any(|&b| b == b'/' || b == 0)
                {
                    return Err(unsafe_entry(&path, "not a single path component"));
                }
                let kind = index.inode(de.ino)?.kind().ok_or(ArchiveError::Corrupt(
                    "inode with an invalid file type".into(),
                ))?;
                let first = !std::mem::replace(&mut seen[de.ino as usize], true);
                if kind == NodeKind::Dir && !first {
                    return Err(unsafe_entry(&path, "directory reached twice (a loop)"));
                }
                if depth[i] + 1 > MAX_DEPTH {
                    return Err(unsafe_entry(&path, "directories nested too deep"));
                }
                let parent = u32::try_from(i).map_err(|_| ArchiveError::TooLarge("entries"))?;
                entries.push(Entry {
                    parent,
                    name: de.name.to_vec(),
                    path,
                    ino: de.ino,
                    kind,
                    first,
                });
                depth.push(depth[i] + 1);
            }
        }
        i += 1;
    }
    Ok(entries)
}

/// Work groups of frames and the file pieces in each; the data ranges are
/// checked against the layer.
fn plan_groups(
    index: &Index,
    layer: &LayerView<'_>,
    entries: &[Entry],
    threads: usize,
) -> Result<Vec<Group>, ArchiveError> {
    let frames = layer.checkpoint_count();
    let total = layer.uncompressed_size();
    // Each frame's bytes are verified chunk by chunk.
    if frames > 0 && layer.chunk_size() == 0 {
        return Err(ArchiveError::Corrupt("chunk size is 0".into()));
    }
    let mut out_offsets = Vec::with_capacity(frames as usize + 1);
    for f in 0..frames {
        out_offsets.push(layer.checkpoint(f)?.out_offset);
    }
    out_offsets.push(total);
    if out_offsets
        .windows(2)
        .any(|w| w[1] < w[0] || w[1] - w[0] > MAX_FRAME)
    {
        return Err(ArchiveError::Corrupt("data frame too large".into()));
    }
    // Frames per group: about GROUP_TARGET bytes, but at least 4 groups per thread.
    let avg = (total / u64::from(frames.max(1))).max(1);
    let per = (GROUP_TARGET / avg)
        .min(u64::from(frames) / (4 * threads as u64).max(1))
        .max(1) as u32;
    let mut groups: Vec<Group> = (0..frames.div_ceil(per))
        .map(|g| Group {
            first: g * per,
            end: ((g + 1) * per).min(frames),
            pieces: Vec::new(),
        })
        .collect();
    let group_of = |off: u64| {
        let f = out_offsets.partition_point(|&o| o <= off).saturating_sub(1);
        (f as u32 / per) as usize
    };
    for (e, entry) in entries.iter().enumerate() {
        if !(entry.first && entry.kind == NodeKind::File) {
            continue;
        }
        let node = index.inode(entry.ino)?;
        let (Some((layer_no, start)), size) = (node.data(), node.size()) else {
            continue;
        };
        if size == 0 {
            continue;
        }
        let end = start.checked_add(size).filter(|&end| end <= total);
        if layer_no != 0 || end.is_none() {
            return Err(unsafe_entry(
                &entry.path,
                "file data outside the data section",
            ));
        }
        let end = end.unwrap_or(total);
        let (g0, g1) = (group_of(start), group_of(end - 1));
        for (g, group) in groups.iter_mut().enumerate().take(g1 + 1).skip(g0) {
            let lo = start.max(out_offsets[group.first as usize]);
            let hi = end.min(out_offsets[group.end as usize]);
            group.pieces.push(Piece {
                entry: e as u32,
                file_off: lo - start,
                stream_off: lo,
                len: hi - lo,
                create: g0 == g1 && g == g0,
            });
        }
    }
    Ok(groups)
}

/// Restores the archive into `dir`, which must be empty or not exist.
pub fn extract(
    archive: &Archive,
    dir: &Path,
    opts: &ExtractOptions,
    progress: &ExtractProgress,
) -> Result<ExtractSummary, ArchiveError> {
    let index = archive.index();
    let layer = index.layer(0)?;
    let threads = opts.threads.max(1);
    let entries = plan_entries(index)?;
    let groups = plan_groups(index, &layer, &entries, threads)?;
    let created = prepare_dir(dir)?;
    let result = Target::open(dir).and_then(|target| {
        let (summary, by_worker) = create_tree(index, &target, &entries, &groups)?;
        let workers = Workers {
            archive,
            layer: &layer,
            target: &target,
            entries: &entries,
            same_owner: opts.same_owner,
        };
        write_data(&workers, &groups, threads, progress)?;
        finish_tree(index, &target, dir, &entries, &by_worker, opts.same_owner)?;
        Ok(summary)
    });
    if result.is_err() {
        remove_output(dir, created);
    }
    let mut summary = result?;
    summary.bytes = progress.bytes.load(Ordering::Relaxed);
    Ok(summary)
}

/// Checks that `dir` is empty (creating it if missing); returns whether it was created.
fn prepare_dir(dir: &Path) -> Result<bool, ArchiveError> {
    let err = |source| ArchiveError::Output {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::read_dir(dir) {
        Ok(mut it) => match it.next() {
            None => Ok(false),
            Some(_) => Err(ArchiveError::NotEmpty {
                path: dir.to_path_buf(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(err)?;
            Ok(true)
        }
        Err(e) => Err(err(e)),
    }
}

/// Removes what a failed extraction wrote (best effort; never follows symlinks).
fn remove_output(dir: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(it) = std::fs::read_dir(dir) {
        for e in it.flatten() {
            let p = e.path();
            let _ = match e.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&p),
                _ => std::fs::remove_file(&p),
            };
        }
    }
}

/// Phase 2: directories, special files, empty files and files written by
/// several groups (created here, at full length, so groups only open them).
/// Returns which entries a worker creates (and finishes, metadata included).
fn create_tree(
    index: &Index,
    target: &Target,
    entries: &[Entry],
    groups: &[Group],
) -> Result<(ExtractSummary, Vec<bool>), ArchiveError> {
    let mut by_group = vec![false; entries.len()];
    for p in groups.iter().flat_map(|g| &g.pieces) {
        by_group[p.entry as usize] = p.create;
    }
    let mut cache = DirFd::new();
    let mut summary = ExtractSummary::default();
    for (e, entry) in entries.iter().enumerate().skip(1) {
        summary.entries += 1;
        if !entry.first || by_group[e] {
            summary.files += u64::from(by_group[e]);
            continue;
        }
        let node = index.inode(entry.ino)?;
        let parent = target.dir(&entries[entry.parent as usize].path, &mut cache)?;
        let r = if entry.kind == NodeKind::File {
            summary.files += u64::from(node.size() > 0);
            restore::create_file(parent, &entry.name, node.size()).map(drop)
        } else {
            restore::create_special(parent, &entry.name, &node)
        };
        r.map_err(|e| target.err(&entry.path, e))?;
    }
    Ok((summary, by_group))
}

/// What every extraction thread shares.
struct Workers<'a> {
    archive: &'a Archive,
    layer: &'a LayerView<'a>,
    target: &'a Target,
    entries: &'a [Entry],
    same_owner: bool,
}

/// Phase 3: the data, group by group on `threads` threads.
fn write_data(
    shared: &Workers<'_>,
    groups: &[Group],
    threads: usize,
    progress: &ExtractProgress,
) -> Result<(), ArchiveError> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let first_err: Mutex<Option<ArchiveError>> = Mutex::new(None);
    let fail = |e| {
        stop.store(true, Ordering::Relaxed);
        first_err
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
    };
    std::thread::scope(|s| {
        for _ in 0..threads.min(groups.len()) {
            s.spawn(|| {
                let mut worker = match Worker::new(shared) {
                    Ok(w) => w,
                    Err(e) => return fail(e),
                };
                while !stop.load(Ordering::Relaxed) {
                    let Some(g) = groups.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = worker.run(g, progress) {
                        return fail(e);
                    }
                }
            });
        }
    });
    match first_err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// One extraction thread's state.
struct Worker<'a> {
    shared: &'a Workers<'a>,
    archive: &'a Archive,
    layer: &'a LayerView<'a>,
    target: &'a Target,
    entries: &'a [Entry],
    zstd: zstd::bulk::Decompressor<'static>,
    compressed: Vec<u8>,
    /// The group's uncompressed bytes.
    data: Vec<u8>,
    dirs: DirFd,
}

impl<'a> Worker<'a> {
    fn new(shared: &'a Workers<'a>) -> Result<Self, ArchiveError> {
        Ok(Worker {
            shared,
            archive: shared.archive,
            layer: shared.layer,
            target: shared.target,
            entries: shared.entries,
            zstd: zstd::bulk::Decompressor::new().map_err(|e| ArchiveError::Decode {
                frame: 0,
                message: format!("zstd context: {e}"),
            })?,
            compressed: Vec::new(),
            data: Vec::new(),
            dirs: DirFd::new(),
        })
    }

    /// `(in_offset, out_offset)` where frame `f` starts; the section's ends
    /// for `f` = frame count.
    fn frame_start(&self, f: u32) -> Result<(u64, u64), ArchiveError> {
        if f >= self.layer.checkpoint_count() {
            return Ok((self.layer.compressed_size(), self.layer.uncompressed_size()));
        }
        let cp = self.layer.checkpoint(f)?;
        Ok((cp.in_offset, cp.out_offset))
    }

    /// Reads, decodes and verifies the group's frames, then writes its pieces.
    fn run(&mut self, g: &Group, progress: &ExtractProgress) -> Result<(), ArchiveError> {
        let (in_start, out_start) = self.frame_start(g.first)?;
        let (in_end, _) = self.frame_start(g.end)?;
        self.compressed.resize((in_end - in_start) as usize, 0);
        self.archive.object().read_exact_at(
            self.archive.data_range().start + in_start,
            &mut self.compressed,
        )?;
        self.data.clear();
        let chunk_size = self.layer.chunk_size() as usize;
        for f in g.first..g.end {
            let (in_off, out_off) = self.frame_start(f)?;
            let (in_next, out_next) = self.frame_start(f + 1)?;
            let len = (out_next - out_off) as usize;
            let src = &self.compressed[(in_off - in_start) as usize..(in_next - in_start) as usize];
            let at = self.data.len();
            self.data.resize(at + len, 0);
            let n = self
                .zstd
                .decompress_to_buffer(src, &mut self.data[at..])
                .map_err(|e| ArchiveError::Decode {
                    frame: u64::from(f),
                    message: e.to_string(),
                })?;
            if n != len {
                return Err(ArchiveError::Decode {
                    frame: u64::from(f),
                    message: format!("decoded {n} bytes, the index says {len}"),
                });
            }
            let first_chunk = u64::from(self.layer.checkpoint(f)?.first_chunk);
            for (i, c) in self.data[at..].chunks(chunk_size).enumerate() {
                let no = first_chunk + i as u64;
                let want = u32::try_from(no).ok().and_then(|n| self.layer.chunk(n));
                if want.map(|w| w.digest) != Some(*Digest::of(c).as_bytes()) {
                    return Err(ArchiveError::DigestMismatch { chunk: no });
                }
            }
            progress.bytes.fetch_add(len as u64, Ordering::Relaxed);
        }
        for p in &g.pieces {
            let entry = &self.entries[p.entry as usize];
            let parent = self
                .target
                .dir(&self.entries[entry.parent as usize].path, &mut self.dirs)?;
            let at = (p.stream_off - out_start) as usize;
            let bytes = &self.data[at..at + p.len as usize];
            let written = if p.create {
                // The whole file is here: write it and finish it on its fd.
                let node = self.archive.index().inode(entry.ino)?;
                restore::create_file(parent, &entry.name, 0).and_then(|f| {
                    restore::write_at(&f, bytes, p.file_off)?;
                    restore::apply_meta_fd(&f, &node, self.shared.same_owner)
                })
            } else {
                restore::open_file(parent, &entry.name)
                    .and_then(|f| restore::write_at(&f, bytes, p.file_off))
            };
            written.map_err(|e| self.target.err(&entry.path, e))?;
        }
        Ok(())
    }
}

/// Phase 4: hard links, metadata of everything but directories and the
/// files workers finished (`done`), then directories deepest first (their
/// mtimes change while they fill).
fn finish_tree(
    index: &Index,
    target: &Target,
    dir: &Path,
    entries: &[Entry],
    done: &[bool],
    same_owner: bool,
) -> Result<(), ArchiveError> {
    let mut first_name = std::collections::HashMap::new();
    let (mut cache, mut from_cache) = (DirFd::new(), DirFd::new());
    for (e, entry) in entries.iter().enumerate().skip(1) {
        if entry.first {
            first_name.insert(entry.ino, e);
            continue;
        }
        let Some(&src) = first_name.get(&entry.ino) else {
            return Err(ArchiveError::Corrupt("hard link before its inode".into()));
        };
        let src = &entries[src];
        let from = target.dir(&entries[src.parent as usize].path, &mut from_cache)?;
        let to = target.dir(&entries[entry.parent as usize].path, &mut cache)?;
        restore::link(from, &src.name, to, &entry.name).map_err(|e| target.err(&entry.path, e))?;
    }
    for (_, entry) in entries
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, e)| e.first && e.kind != NodeKind::Dir && !done[*i])
    {
        let node = index.inode(entry.ino)?;
        let parent = target.dir(&entries[entry.parent as usize].path, &mut cache)?;
        restore::apply_meta(parent, &entry.name, &node, same_owner)
            .map_err(|e| target.err(&entry.path, e))?;
    }
    for entry in entries
        .iter()
        .skip(1)
        .rev()
        .filter(|e| e.kind == NodeKind::Dir)
    {
        let node = index.inode(entry.ino)?;
        let parent = target.dir(&entries[entry.parent as usize].path, &mut cache)?;
        restore::apply_meta(parent, &entry.name, &node, same_owner)
            .map_err(|e| target.err(&entry.path, e))?;
    }
    restore::apply_root_meta(dir, &index.inode(ROOT_INO)?, same_owner)
        .map_err(|e| target.err(b"", e))
}
