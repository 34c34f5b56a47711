//! The node's chunk store: verified chunks in fixed-size slots of a few
//! slab files, mapped read-only with memmap2 and shared by every image
//! daemon of the node, kept across daemon restarts. Layout and locking are
//! specified in docs/store.md.
//!
//! - `table` (mapped shared, read-write): a header and one record per slot:
//!   chunk digest, length, a crc32 per 4 KiB page, a CLOCK bit and a
//!   sequence number `gen` (odd while a writer changes the slot).
//! - `slab-NNNN`: `slab_slots` slots of 256 KiB each, sparse; written with
//!   `pwrite` only (never through the mapping: ENOSPC on a store through a
//!   mapping would be a SIGBUS), read through the mapping.
//! - `lock`: `flock`ed exclusively (plus a mutex within the process) for
//!   every table change. Readers take no lock: they look the digest up in
//!   its set of `ways` slots, copy from the mapping, check each page's
//!   crc32 on the copy, and re-read `gen`: a slot changed meanwhile is a
//!   miss, a page that fails its checksum is damage (counted, the slot
//!   freed). So a torn, overwritten or truncated slot is never served.
//! - Eviction: CLOCK within the set (set-associative: the set of a chunk is
//!   its digest modulo the set count), so every daemon finds a chunk in
//!   `ways` probes and the store never holds more than its slots.
//!
//! The mappings are guarded (module `guard`): a page of a slab or of the
//! table that was truncated away reads as zeros instead of raising a fatal
//! SIGBUS. Files are opened with `O_NOFOLLOW` and must be regular files;
//! the directory is created 0700. Any I/O error (ENOSPC, EACCES, a
//! read-only directory) makes the store a miss (served from the network),
//! is counted (`disk_errors`) and logged once.

#![allow(unsafe_code)]

mod guard;
mod table;

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use memmap2::{Mmap, MmapMut, MmapOptions};
use rustix::fs::{FlockOperation, Mode, OFlags};
use zerocopy::{FromBytes, IntoBytes};

use table::SLOT_BYTES;
use table::{digest_words, table_bytes, Header, Record, HEADER_BYTES, PAGE, RECORD_BYTES};

use crate::digest::Digest;
use crate::metrics::{Counter, Metrics};
use crate::sync::lock;

/// A per-process memory of where a chunk was last served from:
/// `(gen << 32) | (slot + 1)`, 0 for none (see [`DiskCache::read_hinted`]).
pub type SlotHint = AtomicU64;

/// Slots per set (fewer when the store has fewer slots).
const WAYS: usize = 8;
/// Slots per slab file: 32 MiB files, so a store stays within its budget
/// (the slots) and the files number a few per GiB.
const SLAB_SLOTS: usize = 128;
/// Most slots a store may have (4 TiB).
const MAX_SLOTS: usize = 1 << 24;

/// One slab file and its read-only mapping.
#[derive(Debug)]
struct Slab {
    file: File,
    /// Unregistered before `map` is unmapped (fields drop in order).
    _region: guard::Region,
    map: Mmap,
}

/// The node's chunk store (see the module doc).
#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    lock_file: File,
    table_file: File,
    /// Unregistered before `table` is unmapped.
    _table_region: guard::Region,
    table: MmapMut,
    slabs: Vec<Slab>,
    slots: usize,
    ways: usize,
    slab_slots: usize,
    /// Serialises this process's writers (flock is per open file).
    writer: Mutex<()>,
    /// The table went bad under the daemon: every lookup misses.
    broken: AtomicBool,
    /// Guard faults seen when the table was last checked.
    seen_faults: AtomicU64,
    /// An error was logged already (one line per store).
    logged: AtomicBool,
    metrics: Arc<Metrics>,
}

/// The two locks of a table change; released on drop.
struct WriteLock<'a> {
    _threads: MutexGuard<'a, ()>,
    file: &'a File,
}

impl Drop for WriteLock<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.file, FlockOperation::Unlock);
    }
}

impl DiskCache {
    /// Opens (creating) the store in `dir` with about `budget` bytes of
    /// slots (at least one 256 KiB slot), counting into `metrics`. An
    /// existing store keeps the geometry it was created with. Errors when
    /// the directory or its files cannot be made or used.
    pub fn open(dir: &Path, budget: u64, metrics: Arc<Metrics>) -> io::Result<Self> {
        let want = (budget / SLOT_BYTES as u64).min(MAX_SLOTS as u64) as usize;
        if want == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a disk cache budget below one 256 KiB slot",
            ));
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let dirfd = rustix::fs::open(
            dir,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let st = rustix::fs::fstat(&dirfd)?;
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(&dirfd, Mode::from_raw_mode(0o700))?;
        }
        let lock_file = open_file(&dirfd, "lock")?;
        rustix::fs::flock(&lock_file, FlockOperation::LockExclusive)?;
        let opened = Self::open_locked(&dirfd, &lock_file, want);
        let _ = rustix::fs::flock(&lock_file, FlockOperation::Unlock);
        let (table_file, header, table, table_region, slabs) = opened?;
        Ok(DiskCache {
            dir: dir.to_path_buf(),
            lock_file,
            table_file,
            _table_region: table_region,
            table,
            slabs,
            slots: header.slots.get() as usize,
            ways: header.ways.get() as usize,
            slab_slots: header.slab_slots.get() as usize,
            writer: Mutex::new(()),
            broken: AtomicBool::new(false),
            seen_faults: AtomicU64::new(guard::faults()),
            logged: AtomicBool::new(false),
            metrics,
        })
    }

    /// [`Self::open`]'s work with the store's flock held: the table (made
    /// when absent or unusable), its mapping, the slabs at full size.
    #[allow(clippy::type_complexity)]
    fn open_locked(
        dirfd: &OwnedFd,
        _lock: &File,
        want: usize,
    ) -> io::Result<(File, Header, MmapMut, guard::Region, Vec<Slab>)> {
        let table_file = open_file(dirfd, "table")?;
        let header = match read_header(&table_file)? {
            Some(h) => {
                if h.slots.get() as usize != want / h.ways.get() as usize * h.ways.get() as usize {
                    tracing::info!(
                        slots = h.slots.get(),
                        asked = want,
                        "the disk cache keeps the size it was created with \
                         (delete its directory to change it)"
                    );
                }
                h
            }
            None => create_table(dirfd, &table_file, want)?,
        };
        let slots = header.slots.get() as usize;
        let len = table_bytes(slots);
        // SAFETY: the file is at least `len` bytes (read_header checked, or
        // we just made it so); a later truncation is caught by the guard.
        let mut table = unsafe { MmapOptions::new().len(len).map_mut(&table_file)? };
        let table_region = guard::register(table.as_mut_ptr(), len)
            .ok_or_else(|| io::Error::other("no SIGBUS guard for the disk cache"))?;
        let slab_slots = header.slab_slots.get() as usize;
        let mut slabs = Vec::new();
        for i in 0..slots.div_ceil(slab_slots) {
            let bytes = (slots - i * slab_slots).min(slab_slots) * SLOT_BYTES;
            let file = open_file(dirfd, &slab_name(i))?;
            if rustix::fs::fstat(&file)?.st_size < bytes as i64 {
                rustix::fs::ftruncate(&file, bytes as u64)?;
            }
            // SAFETY: the file holds `bytes` bytes (just checked or
            // extended); a later truncation is caught by the guard.
            let map = unsafe { MmapOptions::new().len(bytes).map(&file)? };
            let region = guard::register(map.as_ptr(), bytes)
                .ok_or_else(|| io::Error::other("no SIGBUS guard for the disk cache"))?;
            slabs.push(Slab {
                file,
                _region: region,
                map,
            });
        }
        Ok((table_file, header, table, table_region, slabs))
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of slots (the budget the store keeps).
    pub fn capacity(&self) -> u64 {
        (self.slots * SLOT_BYTES) as u64
    }

    fn record(&self, slot: usize) -> &Record {
        debug_assert!(slot < self.slots);
        let at = HEADER_BYTES + slot * RECORD_BYTES;
        // SAFETY: `at + RECORD_BYTES <= table.len()` (slot < slots), the
        // offset is 8-aligned in a page-aligned mapping, and a Record is
        // only atomics, valid for any bits. The mapping lives as long as
        // `self`; other processes change it only through atomics too (or
        // damage it, which yields other valid values).
        unsafe { &*(self.table.as_ptr().add(at) as *const Record) }
    }

    fn set_base(&self, words: &[u64; 4]) -> usize {
        let sets = (self.slots / self.ways) as u64;
        (words[0] % sets) as usize * self.ways
    }

    fn slab_of(&self, slot: usize) -> (&Slab, usize) {
        (
            &self.slabs[slot / self.slab_slots],
            (slot % self.slab_slots) * SLOT_BYTES,
        )
    }

    /// Copies `dst.len()` bytes at `at` of slot `slot` from the mapping.
    fn copy_out(&self, slot: usize, at: usize, dst: &mut [u8]) {
        let (slab, off) = self.slab_of(slot);
        assert!(at + dst.len() <= SLOT_BYTES && off + SLOT_BYTES <= slab.map.len());
        // SAFETY: in bounds (asserted). The bytes may be changed by another
        // process meanwhile: they are copied, not referenced, and the
        // caller verifies the copy. A page truncated away reads as zeros
        // (the guard), never a SIGBUS death.
        unsafe {
            std::ptr::copy_nonoverlapping(
                slab.map.as_ptr().add(off + at),
                dst.as_mut_ptr(),
                dst.len(),
            )
        }
    }

    /// Feeds bytes `at` of slot `slot` to `h`, read from the mapping.
    fn hash_mapped(&self, h: &mut crc32fast::Hasher, slot: usize, at: std::ops::Range<usize>) {
        if at.is_empty() {
            return;
        }
        let (slab, off) = self.slab_of(slot);
        assert!(at.end <= SLOT_BYTES && off + SLOT_BYTES <= slab.map.len());
        // In bounds (asserted) of a mapping that lives as long as `self`.
        // Other processes may change these bytes meanwhile: they are only
        // hashed, never served, so a change fails the check at worst; a
        // page truncated away reads as zeros (the guard).
        h.update(&slab.map[off + at.start..off + at.end]);
    }

    /// Whether the store can be used; notices a table truncated under it.
    fn healthy(&self) -> bool {
        if self.broken.load(Ordering::Relaxed) {
            return false;
        }
        let faults = guard::faults();
        if faults != self.seen_faults.swap(faults, Ordering::Relaxed) {
            let want = table_bytes(self.slots) as i64;
            let short = rustix::fs::fstat(&self.table_file).map_or(true, |s| s.st_size < want);
            if short {
                self.broken.store(true, Ordering::Relaxed);
                self.error("table", io::Error::other("the table file was truncated"));
                return false;
            }
        }
        true
    }

    /// Counts an I/O error, logging the first.
    fn error(&self, what: &str, e: io::Error) {
        self.metrics.count(Counter::DiskErrors, 1);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.dir.display(),
                what,
                error = %e,
                "disk cache error: serving from the network (logged once; counted in disk_errors)"
            );
        }
    }

    fn lock(&self) -> io::Result<WriteLock<'_>> {
        let threads = lock(&self.writer);
        rustix::fs::flock(&self.lock_file, FlockOperation::LockExclusive)?;
        Ok(WriteLock {
            _threads: threads,
            file: &self.lock_file,
        })
    }

    /// The slot holding chunk `words` of `len` bytes and its `gen`, if any.
    fn find(&self, words: &[u64; 4], len: u32) -> Option<(usize, u32)> {
        let base = self.set_base(words);
        (base..base + self.ways).find_map(|slot| {
            let r = self.record(slot);
            let gen = r.gen.load(Ordering::Acquire);
            (gen & 1 == 0 && r.names(words, len)).then_some((slot, gen))
        })
    }

    /// The slot and `gen` `hint` names if that slot still has that `gen`
    /// (nothing has changed the slot since this process served a chunk
    /// from it: every change of a slot changes its `gen`) and, given
    /// `words`, still names chunk `words` of `len` bytes. Without `words`
    /// the answer is only a guess: a table made afresh by another daemon
    /// starts its `gen`s from 0 again, so the same `gen` can then hold
    /// another chunk.
    fn hinted(&self, hint: &SlotHint, words: Option<(&[u64; 4], u32)>) -> Option<(usize, u32)> {
        let h = hint.load(Ordering::Relaxed);
        let slot = (h as u32 as usize).checked_sub(1)?;
        let gen = (h >> 32) as u32;
        if slot >= self.slots {
            return None;
        }
        let r = self.record(slot);
        let same = r.gen.load(Ordering::Acquire) == gen
            && words.is_none_or(|(words, len)| r.names(words, len));
        same.then_some((slot, gen))
    }

    /// [`Self::find`], or the slot `hint` names while it holds.
    fn find_hinted(
        &self,
        words: &[u64; 4],
        len: u32,
        hint: Option<&SlotHint>,
    ) -> Option<(usize, u32)> {
        hint.and_then(|h| self.hinted(h, Some((words, len))))
            .or_else(|| self.find(words, len))
    }

    /// Whether chunk `digest` (`len` bytes) is stored (its pages are
    /// verified only when read).
    pub fn contains(&self, digest: &Digest, len: usize) -> bool {
        self.contains_hinted(digest, len, None)
    }

    /// [`Self::contains`], answered by `hint` alone while it holds (see
    /// [`Self::read_hinted`]).
    pub fn contains_hinted(&self, digest: &Digest, len: usize, hint: Option<&SlotHint>) -> bool {
        self.healthy()
            && self
                .find_hinted(&digest_words(digest), len as u32, hint)
                .is_some()
    }

    /// Whether `hint` still names a slot with the `gen` it was learned at:
    /// a cheap guess that the store holds the hint's chunk, without its
    /// digest (right unless another daemon made the table afresh since).
    pub fn contains_by_hint(&self, hint: &SlotHint) -> bool {
        self.healthy() && self.hinted(hint, None).is_some()
    }

    /// Copies bytes `[from, from + dst.len())` of chunk `digest` (`len`
    /// bytes) into `dst` if the store holds it and every page they touch
    /// passes its checksum; `false` (a miss) otherwise.
    pub fn read_at(&self, digest: &Digest, len: usize, from: usize, dst: &mut [u8]) -> bool {
        self.read_hinted(digest, len, from, dst, None)
    }

    /// [`Self::read_at`] with a [`SlotHint`]: the per-process memory of
    /// where (slot) and at which `gen` this chunk was last served. While
    /// the slot still has that `gen`, it is used without a lookup;
    /// otherwise the chunk is looked up. A read that serves leaves its slot
    /// and `gen` in `hint`, one that does not leaves 0. Only the lookup is
    /// shortened: the bytes are checked exactly as by `read_at`.
    ///
    /// The first read through a hint of 0 (the first by this process)
    /// also starts reading the whole slot into the page cache
    /// (`MADV_WILLNEED`).
    pub fn read_hinted(
        &self,
        digest: &Digest,
        len: usize,
        from: usize,
        dst: &mut [u8],
        hint: Option<&SlotHint>,
    ) -> bool {
        if from + dst.len() > len || len > SLOT_BYTES || !self.healthy() {
            return false;
        }
        let first_touch = hint.is_some_and(|h| h.load(Ordering::Relaxed) == 0);
        let Some((slot, gen)) = self.find_hinted(&digest_words(digest), len as u32, hint) else {
            if let Some(h) = hint {
                h.store(0, Ordering::Relaxed);
            }
            return false;
        };
        if first_touch {
            // The first read of the chunk by this process: after a restart
            // (or an eviction from the page cache) its pages are likely on
            // disk only, and neighbouring bytes of the layer (the rest of
            // the directory's files) are likely read next. One
            // asynchronous I/O for the whole slot instead of page faults
            // of 128 KiB, each waited for.
            self.advise_slot(slot, len);
        }
        let ok = self.serve(slot, gen, len, from, dst);
        if let Some(h) = hint {
            let v = if ok {
                (u64::from(gen) << 32) | (slot as u64 + 1)
            } else {
                0
            };
            h.store(v, Ordering::Relaxed);
        }
        ok
    }

    /// The hit path without a lookup: serves `[from, from + dst.len())` of
    /// chunk `digest` (`len` bytes) from the slot `hint` names if that slot
    /// still has the `gen` it had when this process last served the chunk
    /// from it and still names the chunk (one record, no probing of the
    /// set). The bytes are checked as always (every page's crc32 on the
    /// copy, `gen` again after it). `None`: the hint does not hold (use
    /// [`Self::read_hinted`]); `Some(false)`: the bytes failed their check
    /// (the hint is dropped).
    pub fn read_by_hint(
        &self,
        digest: &Digest,
        len: usize,
        from: usize,
        dst: &mut [u8],
        hint: &SlotHint,
    ) -> Option<bool> {
        if from + dst.len() > len || len > SLOT_BYTES || !self.healthy() {
            return None;
        }
        let (slot, gen) = self.hinted(hint, Some((&digest_words(digest), len as u32)))?;
        let ok = self.serve(slot, gen, len, from, dst);
        if !ok {
            hint.store(0, Ordering::Relaxed);
        }
        Some(ok)
    }

    /// Copies `[from, from + dst.len())` of slot `slot`, found holding the
    /// chunk (`len` bytes) at `gen`, into `dst`, checking every page it
    /// touches; `false` if the slot changed meanwhile or failed its checks
    /// (then counted and freed as damaged).
    fn serve(&self, slot: usize, gen: u32, len: usize, from: usize, dst: &mut [u8]) -> bool {
        let r = self.record(slot);
        let mut ok = self.copy_verified(r, slot, len, from, dst);
        if !ok && self.still(r, gen) {
            // Zero pages left by the guard after a truncation are undone
            // by mapping the slot again; then one more try.
            self.remap(slot);
            ok = self.copy_verified(r, slot, len, from, dst);
        }
        if !self.still(r, gen) {
            return false;
        }
        if !ok {
            self.damaged(slot, gen);
            return false;
        }
        if r.referenced.load(Ordering::Relaxed) == 0 {
            r.referenced.store(1, Ordering::Relaxed);
        }
        true
    }

    /// Starts reading chunk `digest` (`len` bytes) into the page cache if
    /// the store holds it (`MADV_WILLNEED`: asynchronous, one I/O for the
    /// slot), so the copies that follow wait on that I/O rather than fault
    /// the slot in 128 KiB at a time, one after another.
    pub fn will_need(&self, digest: &Digest, len: usize, hint: Option<&SlotHint>) {
        if len > SLOT_BYTES || !self.healthy() {
            return;
        }
        if let Some((slot, _)) = self.find_hinted(&digest_words(digest), len as u32, hint) {
            self.advise_slot(slot, len);
        }
    }

    /// `MADV_WILLNEED` on the first `len` bytes of slot `slot`.
    fn advise_slot(&self, slot: usize, len: usize) {
        let (slab, off) = self.slab_of(slot);
        let _ = slab
            .map
            .advise_range(memmap2::Advice::WillNeed, off, len.next_multiple_of(PAGE));
    }

    /// Chunk `digest` (`len` bytes) whole, verified page by page.
    pub fn get(&self, digest: &Digest, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.read_at(digest, len, 0, &mut buf).then_some(buf)
    }

    /// Whether `r` still has sequence number `gen` (nothing changed it
    /// since the caller read it).
    fn still(&self, r: &Record, gen: u32) -> bool {
        fence(Ordering::Acquire);
        r.gen.load(Ordering::Relaxed) == gen
    }

    /// Copies `[from, from + dst.len())` of the slot into `dst`, checking
    /// each page the range touches against its crc32 (computed on the
    /// copy, so what is checked is what is served).
    fn copy_verified(
        &self,
        r: &Record,
        slot: usize,
        len: usize,
        from: usize,
        dst: &mut [u8],
    ) -> bool {
        let end = from + dst.len();
        let mut page = from / PAGE;
        while page * PAGE < end {
            let (ps, pe) = (page * PAGE, ((page + 1) * PAGE).min(len));
            let (a, b) = (ps.max(from), pe.min(end));
            let want = r.crc[page].load(Ordering::Relaxed);
            let d = &mut dst[a - from..b - from];
            self.copy_out(slot, a, d);
            let good = if (a, b) == (ps, pe) {
                crc32fast::hash(d) == want
            } else {
                // Only [a, b) is served: it is checked on the copy; the
                // rest of the page is hashed where it lies (a change there
                // can only fail the check, never reach the reader).
                let mut h = crc32fast::Hasher::new();
                self.hash_mapped(&mut h, slot, ps..a);
                h.update(d);
                self.hash_mapped(&mut h, slot, b..pe);
                h.finalize() == want
            };
            if !good {
                return false;
            }
            page += 1;
        }
        true
    }

    /// Maps slot `slot` again from its file.
    fn remap(&self, slot: usize) {
        let (slab, off) = self.slab_of(slot);
        // SAFETY: the slot's range is page aligned (SLOT_BYTES is a
        // multiple of the page) and inside this slab's own read-only
        // shared mapping of `slab.file`, at the same file offset.
        let r = unsafe {
            guard::remap_shared(
                slab.map.as_ptr().add(off),
                SLOT_BYTES,
                slab.file.as_fd(),
                off as u64,
            )
        };
        if let Err(e) = r {
            self.error("remap", e);
        }
    }

    /// A slot failed its checksums: counted, logged, freed (if no writer
    /// changed it meanwhile) so a fill stores the chunk again.
    fn damaged(&self, slot: usize, gen: u32) {
        self.metrics.count(Counter::DiskDamaged, 1);
        tracing::warn!(dir = %self.dir.display(), slot, "damaged slot in the disk cache; dropped");
        let Ok(_locked) = self.lock() else { return };
        let r = self.record(slot);
        if r.gen.load(Ordering::Relaxed) == gen {
            r.gen.store(gen.wrapping_add(1), Ordering::Relaxed);
            fence(Ordering::Release);
            r.len.store(0, Ordering::Relaxed);
            r.gen.store(gen.wrapping_add(2), Ordering::Release);
        }
    }

    /// Stores chunk `digest` (verified by the caller). Returns whether the
    /// store holds it; `false` when it is too large for a slot or an I/O
    /// error (counted, logged once) kept it out.
    pub fn put(&self, digest: &Digest, data: &[u8]) -> bool {
        if data.is_empty() || data.len() > SLOT_BYTES {
            self.metrics.count(Counter::DiskWriteDrops, 1);
            return false;
        }
        if !self.healthy() {
            return false;
        }
        let words = digest_words(digest);
        let len = data.len() as u32;
        let crcs: Vec<u32> = data.chunks(PAGE).map(crc32fast::hash).collect();
        let _locked = match self.lock() {
            Ok(l) => l,
            Err(e) => {
                self.error("lock", e);
                return false;
            }
        };
        if let Some((slot, _)) = self.find(&words, len) {
            self.record(slot).referenced.store(1, Ordering::Relaxed);
            return true;
        }
        let slot = self.victim(self.set_base(&words));
        let r = self.record(slot);
        let g0 = r.gen.load(Ordering::Relaxed);
        let evicting = g0 & 1 == 0 && r.len.load(Ordering::Relaxed) != 0;
        let odd = g0.wrapping_add(if g0 & 1 == 0 { 1 } else { 2 });
        r.gen.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        r.len.store(0, Ordering::Relaxed);
        if evicting {
            self.metrics.count(Counter::DiskEvictions, 1);
        }
        if let Err(e) = self.write_slot(slot, data) {
            r.gen.store(odd.wrapping_add(1), Ordering::Release);
            self.error("write", e);
            return false;
        }
        for (field, w) in r.digest.iter().zip(words) {
            field.store(w, Ordering::Relaxed);
        }
        for (field, c) in r.crc.iter().zip(crcs) {
            field.store(c, Ordering::Relaxed);
        }
        r.len.store(len, Ordering::Relaxed);
        r.referenced.store(0, Ordering::Relaxed);
        r.gen.store(odd.wrapping_add(1), Ordering::Release);
        self.metrics.count(Counter::DiskWrites, 1);
        true
    }

    /// The slot of the set at `base` to (re)use: a free one, else CLOCK:
    /// the hand clears reference bits until it finds a slot without one.
    /// Called with the write lock held.
    fn victim(&self, base: usize) -> usize {
        if let Some(free) = (base..base + self.ways).find(|&s| {
            let r = self.record(s);
            r.gen.load(Ordering::Relaxed) & 1 == 1 || r.len.load(Ordering::Relaxed) == 0
        }) {
            return free;
        }
        let head = self.record(base);
        let mut hand = head.hand.load(Ordering::Relaxed) as usize % self.ways;
        for _ in 0..2 * self.ways {
            let r = self.record(base + hand);
            let next = (hand + 1) % self.ways;
            if r.referenced.swap(0, Ordering::Relaxed) == 0 {
                head.hand.store(next as u32, Ordering::Relaxed);
                return base + hand;
            }
            hand = next;
        }
        head.hand
            .store(((hand + 1) % self.ways) as u32, Ordering::Relaxed);
        base + hand
    }

    /// Writes `data` into slot `slot`'s file range, first giving a slab
    /// that shrank under the store its size back (and mapping it again).
    fn write_slot(&self, slot: usize, data: &[u8]) -> io::Result<()> {
        let (slab, off) = self.slab_of(slot);
        if rustix::fs::fstat(&slab.file)?.st_size < slab.map.len() as i64 {
            rustix::fs::ftruncate(&slab.file, slab.map.len() as u64)?;
            tracing::warn!(dir = %self.dir.display(), "a disk cache file shrank; its size is restored");
            // SAFETY: the whole slab mapping, page aligned, of its own file.
            unsafe {
                guard::remap_shared(slab.map.as_ptr(), slab.map.len(), slab.file.as_fd(), 0)?;
            }
        }
        let mut done = 0;
        while done < data.len() {
            let n = rustix::io::pwrite(&slab.file, &data[done..], (off + done) as u64)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::WriteZero));
            }
            done += n;
        }
        Ok(())
    }
}

fn slab_name(i: usize) -> String {
    format!("slab-{i:04}")
}

/// Opens (creating, 0600) file `name` of the store directory: never through
/// a symlink, never anything but a regular file (a planted FIFO is refused
/// without blocking on it).
fn open_file(dirfd: &OwnedFd, name: &str) -> io::Result<File> {
    let fd = rustix::fs::openat(
        dirfd,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other(format!(
            "{name} in the disk cache is not a regular file"
        )));
    }
    Ok(File::from(fd))
}

/// The table's header if the file holds a usable table (`None`: make one).
fn read_header(file: &File) -> io::Result<Option<Header>> {
    let size = rustix::fs::fstat(file)?.st_size as u64;
    let mut buf = [0u8; std::mem::size_of::<Header>()];
    if size < HEADER_BYTES as u64 {
        return Ok(None);
    }
    let n = rustix::io::pread(file, &mut buf, 0)?;
    let Ok(h) = Header::read_from_bytes(&buf[..n]) else {
        return Ok(None);
    };
    let (slots, ways, slab_slots) = (
        h.slots.get() as usize,
        h.ways.get() as usize,
        h.slab_slots.get() as usize,
    );
    let usable = h.magic.get() == table::MAGIC
        && h.version.get() == table::VERSION
        && h.slot_bytes.get() as usize == SLOT_BYTES
        && (1..=64).contains(&ways)
        && (1..=MAX_SLOTS).contains(&slots)
        && slots.is_multiple_of(ways)
        && slab_slots > 0
        && size >= table_bytes(slots) as u64;
    if !usable {
        tracing::warn!("disk cache table unusable (other version or damaged); starting afresh");
        return Ok(None);
    }
    Ok(Some(h))
}

/// Makes an empty table of `want` slots (rounded down to whole sets),
/// allocated up front (so its mapping never needs a block), and drops slab
/// files a larger old store left.
fn create_table(dirfd: &OwnedFd, file: &File, want: usize) -> io::Result<Header> {
    let ways = WAYS.min(want);
    let slots = want / ways * ways;
    let slab_slots = SLAB_SLOTS.min(slots);
    let len = table_bytes(slots) as u64;
    rustix::fs::ftruncate(file, 0)?;
    rustix::fs::ftruncate(file, len)?;
    rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len)?;
    let h = Header {
        magic: table::MAGIC.into(),
        version: table::VERSION.into(),
        slot_bytes: (SLOT_BYTES as u32).into(),
        slots: (slots as u32).into(),
        ways: (ways as u32).into(),
        slab_slots: (slab_slots as u32).into(),
        reserved: 0.into(),
    };
    rustix::io::pwrite(file, h.as_bytes(), 0)?;
    let slabs = slots.div_ceil(slab_slots);
    for i in slabs.. {
        match rustix::fs::unlinkat(dirfd, slab_name(i), rustix::fs::AtFlags::empty()) {
            Ok(()) => {}
            Err(_) => break,
        }
    }
    // Slabs kept from an older table hold chunks it no longer names:
    // harmless (never referenced), overwritten as slots are reused.
    Ok(h)
}

#[cfg(test)]
mod tests;
