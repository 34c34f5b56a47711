//! Checked, zero-copy views over the bytes of a `.clip` index file.
//!
//! `Index::open` reads the file into memory (a private copy: the file may be
//! rewritten or truncated in place while a daemon serves it, which would
//! make a mapping fault) and verifies the header, the section table and
//! every section's CRC once; afterwards every accessor still takes offsets
//! with `.get()` and returns `FormatError::Corrupt` instead of panicking, so
//! a hostile file can at worst produce errors.

use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::Path;

use zerocopy::FromBytes;

use super::raw::{
    self, kind, CheckpointRec, ChunkRec, DirentRec, FileHintRec, Header, HintRangeRec, InodeRec,
    LayerRec, SectionEntry, XattrRec,
};
use super::{AccessProfile, Checkpoint, Chunk, FormatError, ImageMeta, LayerKind, NodeKind};
use crate::digest::Digest;
use zerocopy::little_endian::U32;

/// Largest index file we open: far above any real image, low enough to stop
/// a corrupt length from driving allocation.
const MAX_FILE_SIZE: u64 = 4 << 30;
/// Largest decompressed section: same reasoning.
const MAX_SECTION_SIZE: u64 = 2 << 30;
/// Most bytes decompressed from all sections of one file together.
const MAX_DECOMPRESSED_TOTAL: u64 = 4 << 30;
/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Where a section's raw bytes are.
#[derive(Debug, Default)]
enum Section {
    #[default]
    Absent,
    InFile(Range<usize>),
    Decompressed(Vec<u8>),
}

/// An opened, verified index file.
#[derive(Debug)]
pub struct Index {
    /// The whole file.
    bytes: Vec<u8>,
    sections: [Section; kind::END as usize],
    meta: ImageMeta,
    /// The PROFILE section, parsed at open.
    profile: Option<AccessProfile>,
    file_size: u64,
}

fn corrupt(what: &'static str) -> FormatError {
    FormatError::Corrupt(what)
}

pub(super) fn records<
    'a,
    T: FromBytes + zerocopy::Immutable + zerocopy::KnownLayout + zerocopy::Unaligned,
>(
    bytes: &'a [u8],
    what: &'static str,
) -> Result<&'a [T], FormatError> {
    <[T]>::ref_from_bytes(bytes).map_err(|_| corrupt(what))
}

impl Index {
    /// Reads the index file at `path` into memory and verifies it. Once
    /// open, the index no longer depends on the file.
    pub fn open(path: &Path) -> Result<Self, FormatError> {
        let io_err = |source| FormatError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len > MAX_FILE_SIZE {
            return Err(FormatError::TooLarge("index file"));
        }
        // The file may grow while it is read: never read past the limit.
        let mut bytes = Vec::with_capacity(len as usize);
        file.take(MAX_FILE_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
        Self::from_bytes(bytes)
    }

    /// Verifies and wraps index bytes held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, FormatError> {
        if bytes.len() as u64 > MAX_FILE_SIZE {
            return Err(FormatError::TooLarge("index file"));
        }
        Self::parse(bytes)
    }

    fn parse(bytes: Vec<u8>) -> Result<Self, FormatError> {
        let data = &bytes[..];
        let head = data
            .get(..raw::HEADER_SIZE)
            .ok_or(FormatError::NotAnIndex)?;
        let header = Header::read_from_bytes(head).map_err(|_| FormatError::NotAnIndex)?;
        if header.magic != raw::MAGIC {
            return Err(FormatError::NotAnIndex);
        }
        let major = header.major.get();
        if major != raw::MAJOR {
            return Err(FormatError::UnsupportedVersion {
                major,
                minor: header.minor.get(),
            });
        }
        let mut zeroed = header;
        zeroed.header_crc = 0.into();
        if crc32fast::hash(zerocopy::IntoBytes::as_bytes(&zeroed)) != header.header_crc.get() {
            return Err(FormatError::Checksum("header"));
        }
        let unknown = header.incompat.get() & !raw::INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(FormatError::UnknownFeatures(unknown));
        }
        if header.file_size.get() != data.len() as u64 {
            return Err(FormatError::Truncated {
                expected: header.file_size.get(),
                actual: data.len() as u64,
            });
        }
        let count = header.section_count.get() as usize;
        let table_start = usize::try_from(header.section_table.get())
            .map_err(|_| corrupt("section table offset"))?;
        let table_len = count
            .checked_mul(size_of::<SectionEntry>())
            .ok_or(corrupt("section count"))?;
        let table_bytes = table_start
            .checked_add(table_len)
            .and_then(|end| data.get(table_start..end))
            .ok_or(corrupt("section table out of bounds"))?;
        if crc32fast::hash(table_bytes) != header.table_crc.get() {
            return Err(FormatError::Checksum("section table"));
        }
        let table: &[SectionEntry] = records(table_bytes, "section table")?;
        let mut kinds: Vec<u32> = table.iter().map(|e| e.kind.get()).collect();
        kinds.sort_unstable();
        if let Some(w) = kinds.windows(2).find(|w| w[0] == w[1]) {
            return Err(FormatError::DuplicateSection(w[0]));
        }
        let mut sections: [Section; kind::END as usize] = Default::default();
        let mut decompressed_total = 0u64;
        for entry in table {
            let k = entry.kind.get() as usize;
            let start =
                usize::try_from(entry.offset.get()).map_err(|_| corrupt("section offset"))?;
            let stored =
                usize::try_from(entry.stored_len.get()).map_err(|_| corrupt("section length"))?;
            let range = start..start.checked_add(stored).ok_or(corrupt("section length"))?;
            let bytes = data
                .get(range.clone())
                .ok_or(corrupt("section out of bounds"))?;
            if crc32fast::hash(bytes) != entry.crc.get() {
                return Err(FormatError::Checksum(section_name(k as u32)));
            }
            if k == 0 || k >= sections.len() {
                continue; // unknown section: skipped, as the spec says
            }
            let flags = entry.flags.get();
            sections[k] = if flags & raw::SECTION_ZSTD != 0 {
                let raw_len = entry.raw_len.get();
                super::bomb::check_declared_size(section_name(k as u32), bytes, raw_len)?;
                decompressed_total = decompressed_total.saturating_add(raw_len);
                if raw_len > MAX_SECTION_SIZE || decompressed_total > MAX_DECOMPRESSED_TOTAL {
                    return Err(FormatError::TooLarge("section"));
                }
                // The output buffer is exactly the checked, declared size:
                // decompression cannot write (or allocate) more.
                let out = zstd::bulk::decompress(bytes, raw_len as usize)
                    .map_err(|_| corrupt("compressed section does not decompress"))?;
                if out.len() as u64 != raw_len {
                    return Err(corrupt("compressed section has the wrong length"));
                }
                Section::Decompressed(out)
            } else {
                Section::InFile(range)
            };
        }
        let mut index = Index {
            file_size: data.len() as u64,
            bytes,
            sections,
            meta: ImageMeta::default(),
            profile: None,
        };
        let meta_bytes = index.section(kind::META);
        index.meta = serde_json::from_slice(meta_bytes)
            .map_err(|_| corrupt("metadata is not valid JSON"))?;
        let profile = index.section(kind::PROFILE);
        if !profile.is_empty() {
            index.profile = AccessProfile::from_section(profile)
                .map_err(|_| corrupt("PROFILE section is not a valid access profile"))?;
        }
        index.validate(header.incompat.get())?;
        Ok(index)
    }

    /// Structural checks done once, so that record arrays have whole records.
    /// One pass over every record: all cross references (dirent → inode,
    /// inode → dirents/xattrs/strings/layer, layer → checkpoints/chunks) are
    /// in bounds, so a file that opens never names something absent.
    fn validate(&self, incompat: u32) -> Result<(), FormatError> {
        let layers = records::<LayerRec>(self.section(kind::LAYERS), "layer records")?;
        let cps = records::<CheckpointRec>(self.section(kind::CHECKPOINTS), "checkpoint records")?;
        let chunks = records::<ChunkRec>(self.section(kind::CHUNKS), "chunk records")?;
        let dirents = records::<DirentRec>(self.section(kind::DIRENTS), "directory records")?;
        let xattrs = records::<XattrRec>(self.section(kind::XATTRS), "xattr records")?;
        let inodes = records::<InodeRec>(self.section(kind::INODES), "inode records")?;
        match inodes.first() {
            Some(root) if root.mode.get() & 0o170000 == NodeKind::Dir.type_bits() => {}
            _ => return Err(corrupt("no root directory")),
        }
        let strings = self.section(kind::STRINGS).len() as u64;
        let within =
            |first: u32, count: u32, len: usize| u64::from(first) + u64::from(count) <= len as u64;
        let str_ok = |off: u32, len: u32| u64::from(off) + u64::from(len) <= strings;
        for l in layers {
            if !within(
                l.first_checkpoint.get(),
                l.checkpoint_count.get(),
                cps.len(),
            ) || !within(l.first_chunk.get(), l.chunk_count.get(), chunks.len())
                || !str_ok(l.media_type_off.get(), l.media_type_len.get())
            {
                return Err(corrupt("layer record out of bounds"));
            }
            if LayerKind::from_u8(l.kind).is_none() {
                return Err(corrupt("unknown layer kind"));
            }
        }
        for i in inodes {
            let layer = i.data_layer.get();
            if !within(i.dirent_first.get(), i.dirent_count.get(), dirents.len())
                || !within(i.xattr_first.get(), i.xattr_count.get(), xattrs.len())
                || !str_ok(i.target_off.get(), i.target_len.get())
                || (layer != u32::MAX && layer as usize >= layers.len())
            {
                return Err(corrupt("inode record out of bounds"));
            }
        }
        for d in dirents {
            let ino = u64::from(d.ino.get());
            if ino == 0
                || ino > inodes.len() as u64
                || !str_ok(d.name_off.get(), d.name_len.get().into())
            {
                return Err(corrupt("directory entry out of bounds"));
            }
        }
        for x in xattrs {
            if !str_ok(x.name_off.get(), x.name_len.get())
                || !str_ok(x.value_off.get(), x.value_len.get())
            {
                return Err(corrupt("xattr record out of bounds"));
            }
        }
        let hints = records::<FileHintRec>(self.section(kind::FILE_HINTS), "file hint records")?;
        let deps = records::<U32>(self.section(kind::HINT_DEPS), "hint dependencies")?;
        records::<HintRangeRec>(self.section(kind::HINT_RANGES), "hint ranges")?;
        let ranges = self.section(kind::HINT_RANGES).len() / size_of::<HintRangeRec>();
        let mut last = 0;
        for h in hints {
            let ino = h.ino.get();
            if ino <= last
                || u64::from(ino) > inodes.len() as u64
                || !within(h.first_dep.get(), h.dep_count.get(), deps.len())
                || !within(h.first_range.get(), h.range_count.get(), ranges)
            {
                return Err(corrupt("file hint out of bounds or out of order"));
            }
            last = ino;
        }
        if deps
            .iter()
            .any(|d| d.get() == 0 || u64::from(d.get()) > inodes.len() as u64)
        {
            return Err(corrupt("file hint names no inode"));
        }
        self.validate_sparse(incompat, inodes, layers)
    }

    /// The read hints of file `ino`, if the index has any for it (binary
    /// search over the FILE_HINTS records, sorted by inode).
    pub fn file_hints(&self, ino: u64) -> Result<Option<FileHints<'_>>, FormatError> {
        let hints: &[FileHintRec] = records(self.section(kind::FILE_HINTS), "file hint records")?;
        let Ok(i) = hints.binary_search_by_key(&ino, |h| u64::from(h.ino.get())) else {
            return Ok(None);
        };
        let h = &hints[i];
        let slice = |first: u32, count: u32| {
            (first as usize)..(first as usize).saturating_add(count as usize)
        };
        let deps: &[U32] = records(self.section(kind::HINT_DEPS), "hint dependencies")?;
        let ranges: &[HintRangeRec] = records(self.section(kind::HINT_RANGES), "hint ranges")?;
        Ok(Some(FileHints {
            deps: deps
                .get(slice(h.first_dep.get(), h.dep_count.get()))
                .ok_or(corrupt("hint dependencies out of bounds"))?,
            ranges: ranges
                .get(slice(h.first_range.get(), h.range_count.get()))
                .ok_or(corrupt("hint ranges out of bounds"))?,
        }))
    }

    /// Number of files with read hints.
    pub fn hinted_files(&self) -> usize {
        self.section(kind::FILE_HINTS).len() / size_of::<FileHintRec>()
    }

    pub(super) fn section(&self, k: u32) -> &[u8] {
        match self.sections.get(k as usize) {
            Some(Section::InFile(r)) => self.bytes.get(r.clone()).unwrap_or(&[]),
            Some(Section::Decompressed(v)) => v,
            _ => &[],
        }
    }

    fn string(&self, off: u32, len: u32) -> Result<&[u8], FormatError> {
        let start = off as usize;
        self.section(kind::STRINGS)
            .get(start..start + len as usize)
            .ok_or(corrupt("string out of bounds"))
    }

    /// The embedded startup access profile, if the index carries one.
    pub fn profile(&self) -> Option<&AccessProfile> {
        self.profile.as_ref()
    }

    /// Image metadata.
    pub fn meta(&self) -> &ImageMeta {
        &self.meta
    }

    /// Size of the index file in bytes.
    pub fn file_size(&self) -> u64 {
        self.file_size
    }

    /// Number of layers.
    pub fn layer_count(&self) -> u32 {
        (self.section(kind::LAYERS).len() / size_of::<LayerRec>()) as u32
    }

    /// Layer `i` (0 = bottom).
    pub fn layer(&self, i: u32) -> Result<LayerView<'_>, FormatError> {
        let all: &[LayerRec] = records(self.section(kind::LAYERS), "layer records")?;
        let rec = all.get(i as usize).ok_or(FormatError::NoSuchLayer(i))?;
        let kind = LayerKind::from_u8(rec.kind).ok_or(corrupt("unknown layer kind"))?;
        let cps: &[CheckpointRec] = records(self.section(kind::CHECKPOINTS), "checkpoint records")?;
        let chunks: &[ChunkRec] = records(self.section(kind::CHUNKS), "chunk records")?;
        let slice = |first: u32, count: u32| {
            (first as usize)..(first as usize).saturating_add(count as usize)
        };
        let checkpoints = cps
            .get(slice(
                rec.first_checkpoint.get(),
                rec.checkpoint_count.get(),
            ))
            .ok_or(corrupt("layer checkpoints out of bounds"))?;
        let chunks = chunks
            .get(slice(rec.first_chunk.get(), rec.chunk_count.get()))
            .ok_or(corrupt("layer chunks out of bounds"))?;
        Ok(LayerView {
            index: self,
            number: i,
            rec,
            kind,
            checkpoints,
            chunks,
        })
    }

    /// Number of extended attributes over all inodes.
    pub fn xattr_count(&self) -> usize {
        self.section(kind::XATTRS).len() / size_of::<XattrRec>()
    }

    /// Number of inodes; valid inode numbers are `1..=inode_count()`.
    pub fn inode_count(&self) -> u64 {
        (self.section(kind::INODES).len() / size_of::<InodeRec>()) as u64
    }

    /// Inode `ino` (1 = root).
    pub fn inode(&self, ino: u64) -> Result<InodeView<'_>, FormatError> {
        let all: &[InodeRec] = records(self.section(kind::INODES), "inode records")?;
        let rec = ino
            .checked_sub(1)
            .and_then(|i| all.get(usize::try_from(i).ok()?))
            .ok_or(FormatError::NoSuchInode(ino))?;
        Ok(InodeView {
            index: self,
            ino,
            rec,
        })
    }

    fn dirents(&self, dir: &InodeView<'_>) -> Result<&[DirentRec], FormatError> {
        let all: &[DirentRec] = records(self.section(kind::DIRENTS), "directory records")?;
        let first = dir.rec.dirent_first.get() as usize;
        all.get(first..first.saturating_add(dir.rec.dirent_count.get() as usize))
            .ok_or(corrupt("directory entries out of bounds"))
    }

    /// Looks `name` up in directory `dir` (binary search over sorted names).
    pub fn lookup(&self, dir: u64, name: &[u8]) -> Result<Option<u64>, FormatError> {
        let dir = self.inode(dir)?;
        if dir.kind() != Some(NodeKind::Dir) {
            return Err(FormatError::NotADirectory(dir.ino));
        }
        let entries = self.dirents(&dir)?;
        let (mut lo, mut hi) = (0usize, entries.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let e = &entries[mid];
            let n = self.string(e.name_off.get(), e.name_len.get() as u32)?;
            match n.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some(e.ino.get() as u64)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Entries of directory `dir` from position `start`, in name order.
    pub fn read_dir(&self, dir: u64, start: usize) -> Result<DirIter<'_>, FormatError> {
        let dir = self.inode(dir)?;
        if dir.kind() != Some(NodeKind::Dir) {
            return Err(FormatError::NotADirectory(dir.ino));
        }
        let entries = self.dirents(&dir)?;
        Ok(DirIter {
            index: self,
            entries: entries.get(start..).unwrap_or(&[]),
            pos: start,
        })
    }

    /// Resolves a `/`-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> Result<Option<u64>, FormatError> {
        let mut ino = ROOT_INO;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            match self.lookup(ino, comp)? {
                Some(next) => ino = next,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }
}

fn section_name(k: u32) -> &'static str {
    match k {
        kind::META => "META section",
        kind::LAYERS => "LAYERS section",
        kind::CHECKPOINTS => "CHECKPOINTS section",
        kind::CHUNKS => "CHUNKS section",
        kind::WINDOWS => "WINDOWS section",
        kind::INODES => "INODES section",
        kind::DIRENTS => "DIRENTS section",
        kind::STRINGS => "STRINGS section",
        kind::XATTRS => "XATTRS section",
        kind::PROFILE => "PROFILE section",
        kind::FILE_HINTS => "FILE_HINTS section",
        kind::HINT_DEPS => "HINT_DEPS section",
        kind::HINT_RANGES => "HINT_RANGES section",
        kind::SPARSE_FILES => "SPARSE_FILES section",
        kind::SPARSE_SEGMENTS => "SPARSE_SEGMENTS section",
        _ => "unknown section",
    }
}

/// The read hints of one file ([`Index::file_hints`]).
#[derive(Debug, Clone, Copy)]
pub struct FileHints<'a> {
    deps: &'a [U32],
    ranges: &'a [HintRangeRec],
}

impl FileHints<'_> {
    /// Inode numbers of the files a loader opens after this one, in order.
    pub fn dependencies(&self) -> impl Iterator<Item = u64> + '_ {
        self.deps.iter().map(|d| u64::from(d.get()))
    }

    /// `(offset, len)` ranges of the file a loader reads or maps.
    pub fn hot_ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|r| (r.offset.get(), r.len.get()))
    }
}

/// One directory entry as read from the index.
#[derive(Debug, Clone, Copy)]
pub struct DirEntry<'a> {
    /// Entry name.
    pub name: &'a [u8],
    /// Inode number.
    pub ino: u64,
    /// Kind of the target, if valid.
    pub kind: Option<NodeKind>,
    /// Position of the next entry (a readdir cookie).
    pub next: usize,
}

/// Iterator over a directory's entries.
#[derive(Debug)]
pub struct DirIter<'a> {
    index: &'a Index,
    entries: &'a [DirentRec],
    pos: usize,
}

impl<'a> Iterator for DirIter<'a> {
    type Item = Result<DirEntry<'a>, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (e, rest) = self.entries.split_first()?;
        self.entries = rest;
        self.pos += 1;
        Some(
            self.index
                .string(e.name_off.get(), e.name_len.get() as u32)
                .map(|name| DirEntry {
                    name,
                    ino: e.ino.get() as u64,
                    kind: NodeKind::from_u8(e.kind),
                    next: self.pos,
                }),
        )
    }
}

/// One extended attribute: (name, value).
pub type Xattr<'a> = (&'a [u8], &'a [u8]);

/// A checked view of one inode.
#[derive(Debug, Clone, Copy)]
pub struct InodeView<'a> {
    pub(super) index: &'a Index,
    pub(super) ino: u64,
    rec: &'a InodeRec,
}

impl<'a> InodeView<'a> {
    /// Inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }
    /// Kind, from the mode's type bits (None if they are invalid).
    pub fn kind(&self) -> Option<NodeKind> {
        let t = self.rec.mode.get() & 0o170000;
        (1..=7)
            .filter_map(NodeKind::from_u8)
            .find(|k| k.type_bits() == t)
    }
    /// Full `st_mode`.
    pub fn mode(&self) -> u32 {
        self.rec.mode.get()
    }
    /// Owner.
    pub fn uid(&self) -> u32 {
        self.rec.uid.get()
    }
    /// Group.
    pub fn gid(&self) -> u32 {
        self.rec.gid.get()
    }
    /// Link count.
    pub fn nlink(&self) -> u32 {
        self.rec.nlink.get()
    }
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.rec.size.get()
    }
    /// Modification time (seconds, nanoseconds).
    pub fn mtime(&self) -> (i64, u32) {
        (self.rec.mtime.get(), self.rec.mtime_nsec.get())
    }
    /// Device numbers (major, minor).
    pub fn rdev(&self) -> (u32, u32) {
        (self.rec.rdev_major.get(), self.rec.rdev_minor.get())
    }
    /// Where the file's bytes live: (layer, offset in its uncompressed stream).
    pub fn data(&self) -> Option<(u32, u64)> {
        let layer = self.rec.data_layer.get();
        (layer != u32::MAX).then(|| (layer, self.rec.data_offset.get()))
    }
    /// Number of directory entries (directories).
    pub fn entry_count(&self) -> u32 {
        self.rec.dirent_count.get()
    }
    /// Symlink target.
    pub fn link_target(&self) -> Result<&'a [u8], FormatError> {
        self.index
            .string(self.rec.target_off.get(), self.rec.target_len.get())
    }
    /// Extended attributes as (name, value) pairs, sorted by name.
    pub fn xattrs(&self) -> Result<Vec<Xattr<'a>>, FormatError> {
        let all: &[XattrRec] = records(self.index.section(kind::XATTRS), "xattr records")?;
        let first = self.rec.xattr_first.get() as usize;
        let recs = all
            .get(first..first.saturating_add(self.rec.xattr_count.get() as usize))
            .ok_or(corrupt("xattrs out of bounds"))?;
        recs.iter()
            .map(|x| {
                Ok((
                    self.index.string(x.name_off.get(), x.name_len.get())?,
                    self.index.string(x.value_off.get(), x.value_len.get())?,
                ))
            })
            .collect()
    }
}

/// A checked view of one layer.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    index: &'a Index,
    number: u32,
    rec: &'a LayerRec,
    kind: LayerKind,
    checkpoints: &'a [CheckpointRec],
    chunks: &'a [ChunkRec],
}

impl<'a> LayerView<'a> {
    /// Layer number (0 = bottom).
    pub fn number(&self) -> u32 {
        self.number
    }
    /// Blob digest.
    pub fn digest(&self) -> Digest {
        Digest::from_bytes(self.rec.digest)
    }
    /// Uncompressed digest.
    pub fn diff_id(&self) -> Digest {
        Digest::from_bytes(self.rec.diff_id)
    }
    /// How ranges are served.
    pub fn kind(&self) -> LayerKind {
        self.kind
    }
    /// Media type.
    pub fn media_type(&self) -> Result<&'a str, FormatError> {
        let b = self
            .index
            .string(self.rec.media_type_off.get(), self.rec.media_type_len.get())?;
        std::str::from_utf8(b).map_err(|_| corrupt("media type is not UTF-8"))
    }
    /// Blob size.
    pub fn compressed_size(&self) -> u64 {
        self.rec.compressed_size.get()
    }
    /// Uncompressed size.
    pub fn uncompressed_size(&self) -> u64 {
        self.rec.uncompressed_size.get()
    }
    /// Verification chunk size.
    pub fn chunk_size(&self) -> u32 {
        self.rec.chunk_size.get()
    }
    /// Number of checkpoints.
    pub fn checkpoint_count(&self) -> u32 {
        self.checkpoints.len() as u32
    }
    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }
    /// Index of the last checkpoint at or before uncompressed offset `out`.
    pub fn checkpoint_for(&self, out: u64) -> Option<u32> {
        let n = self
            .checkpoints
            .partition_point(|c| c.out_offset.get() <= out);
        n.checked_sub(1).map(|i| i as u32)
    }
    /// Uncompressed range `[start, end)` of span `i` (checkpoint `i` to the next).
    pub fn span_range(&self, i: u32) -> Option<Range<u64>> {
        let start = self.checkpoints.get(i as usize)?.out_offset.get();
        let end = match self.checkpoints.get(i as usize + 1) {
            Some(next) => next.out_offset.get(),
            None => self.uncompressed_size(),
        };
        (start <= end).then_some(start..end)
    }
    /// Checkpoint `i` with its window, as the gzip module takes it.
    pub fn checkpoint(&self, i: u32) -> Result<Checkpoint, FormatError> {
        let c = self
            .checkpoints
            .get(i as usize)
            .ok_or(corrupt("checkpoint index"))?;
        let windows = self.index.section(kind::WINDOWS);
        let start = usize::try_from(c.window_off.get()).map_err(|_| corrupt("window offset"))?;
        let window = start
            .checked_add(c.window_stored_len.get() as usize)
            .and_then(|end| windows.get(start..end))
            .ok_or(corrupt("window out of bounds"))?;
        if c.bits > 7 || c.window_len.get() > 32768 {
            return Err(corrupt("checkpoint fields out of range"));
        }
        Ok(Checkpoint {
            in_offset: c.in_offset.get(),
            bits: c.bits,
            out_offset: c.out_offset.get(),
            window: window.to_vec(),
            window_len: c.window_len.get(),
            first_chunk: c.first_chunk.get(),
        })
    }
    /// Chunk `i` of the layer.
    pub fn chunk(&self, i: u32) -> Option<Chunk> {
        self.chunks.get(i as usize).map(|c| Chunk {
            digest: c.digest,
            in_end: c.in_end.get(),
        })
    }
    /// Total stored window bytes of this layer.
    pub fn window_bytes(&self) -> u64 {
        self.checkpoints
            .iter()
            .map(|c| c.window_stored_len.get() as u64)
            .sum()
    }
}
