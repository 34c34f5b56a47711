//! Archive round trips and refusals, without root: a directory → archive →
//! extract (and → the lazy read path) must give back every byte and every
//! column a non-root user can restore; damaged and hostile archives fail
//! with named errors and leave nothing behind.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{create, extract, Archive, ArchiveError, CreateOptions, CreateProgress, Input};
use super::{ExtractOptions, ExtractProgress};
use crate::cache::{CacheConfig, ContentCache, ContentReader};
use crate::format::{Node, NodeKind, ROOT_INO};
use crate::object::{FileObject, FileWriter};

/// Small frames and chunks so that files span frames and groups.
fn opts() -> CreateOptions {
    CreateOptions {
        frame_size: 64 << 10,
        chunk_size: 16 << 10,
        threads: 3,
        ..Default::default()
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 20) as u8
        })
        .collect()
}

/// A tree with what a non-root user can make: files of many sizes, empty
/// files, nested dirs, a symlink, a hard link, a fifo, odd modes, mtimes.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("a/b/c")).unwrap();
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    fs::write(root.join("a/small.txt"), b"hello\n").unwrap();
    fs::write(root.join("a/b/big.bin"), noise(300_000, 7)).unwrap();
    fs::write(root.join("a/b/c/mid.bin"), noise(70_000, 9)).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    for i in 0..40 {
        fs::write(root.join(format!("a/f{i:02}")), noise(i * 997, i as u64)).unwrap();
    }
    symlink("small.txt", root.join("a/link")).unwrap();
    symlink("/etc/passwd", root.join("abs-link")).unwrap();
    fs::hard_link(root.join("a/b/big.bin"), root.join("hard")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo").as_path(),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    fs::set_permissions(root.join("a/small.txt"), fs::Permissions::from_mode(0o751)).unwrap();
    rustix::fs::setxattr(
        root.join("a/small.txt").as_path(),
        "user.clip",
        b"v",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::set_permissions(root.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: 1_600_000_000,
            tv_nsec: 0,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: 1_600_000_123,
            tv_nsec: 456_789,
        },
    };
    for p in ["a/small.txt", "a/b", "a/link"] {
        rustix::fs::utimensat(
            rustix::fs::CWD,
            root.join(p).as_path(),
            &t,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

/// path → (type+mode, size, mtime, link target, content digest, link count, xattrs).
type Listing = BTreeMap<
    PathBuf,
    (
        u32,
        u64,
        (i64, i64),
        Option<PathBuf>,
        Option<String>,
        u64,
        Vec<(Vec<u8>, Vec<u8>)>,
    ),
>;

fn listing(root: &Path) -> Listing {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                stack.push(p.clone());
            }
            let content = ft
                .is_file()
                .then(|| crate::Digest::of(&fs::read(&p).unwrap()).to_string());
            let target = ft.is_symlink().then(|| fs::read_link(&p).unwrap());
            // Directory mtimes are checked too: they are set after their content.
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (
                    md.mode(),
                    md.len() * u64::from(ft.is_file()),
                    (md.mtime(), md.mtime_nsec()),
                    target,
                    content,
                    if ft.is_dir() { 0 } else { md.nlink() },
                    super::walk::read_xattrs(&p).unwrap(),
                ),
            );
        }
    }
    out
}

fn write_archive(input: Input, path: &Path) -> super::CreateSummary {
    create(input, &opts(), &CreateProgress::default(), |front| {
        Ok(Box::new(FileWriter::create(path, front)?))
    })
    .unwrap()
}

fn open(path: &Path) -> Archive {
    Archive::open(Arc::new(FileObject::open(path).unwrap())).unwrap()
}

fn extract_to(archive: &Archive, dir: &Path) -> Result<super::ExtractSummary, ArchiveError> {
    let opts = ExtractOptions {
        threads: 3,
        same_owner: false,
    };
    extract(archive, dir, &opts, &ExtractProgress::default())
}

#[test]
fn dir_roundtrip_extract_and_lazy_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let file = tmp.path().join("t.clip");
    let summary = write_archive(Input::from_dir(&src).unwrap(), &file);
    assert!(summary.frames > 4, "{summary:?}");
    let archive = open(&file);

    let out = tmp.path().join("out");
    let got = extract_to(&archive, &out).unwrap();
    assert_eq!(listing(&out), listing(&src));
    assert_eq!(got.bytes, summary.data_bytes);
    let root_mode = fs::metadata(&out).unwrap().mode();
    assert_eq!(root_mode, fs::metadata(&src).unwrap().mode());

    // The lazy path (what a mount serves) gives the same bytes.
    let cache = ContentCache::new(
        archive.index().clone(),
        Arc::new(archive.blob_source().unwrap()),
        CacheConfig::default(),
    );
    let idx = archive.index();
    let ino = idx.resolve(b"a/b/big.bin").unwrap().unwrap();
    let (layer, off) = idx.inode(ino).unwrap().data().unwrap();
    let mut buf = vec![0u8; 300_000];
    let mut done = 0;
    while done < buf.len() {
        done += cache
            .read(layer, off + done as u64, &mut buf[done..])
            .unwrap();
    }
    assert_eq!(buf, noise(300_000, 7));
    assert_eq!(idx.inode(ROOT_INO).unwrap().kind(), Some(NodeKind::Dir));
}

#[test]
fn empty_tree_roundtrips() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("zero"), b"").unwrap();
    let file = tmp.path().join("e.clip");
    write_archive(Input::from_dir(&src).unwrap(), &file);
    let out = tmp.path().join("out");
    extract_to(&open(&file), &out).unwrap();
    assert_eq!(listing(&out), listing(&src));
}

#[test]
fn damaged_archives_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let file = tmp.path().join("t.clip");
    let summary = write_archive(Input::from_dir(&src).unwrap(), &file);
    let bytes = fs::read(&file).unwrap();
    let load = |b: &[u8]| {
        let p = tmp.path().join("bad.clip");
        fs::write(&p, b).unwrap();
        Archive::open(Arc::new(FileObject::open(&p).unwrap()))
    };

    // A flipped byte in the data: a digest (or zstd) error, never wrong bytes.
    let mut flipped = bytes.clone();
    let at = summary.front_len as usize + (bytes.len() - summary.front_len as usize) / 2;
    flipped[at] ^= 0x40;
    let out = tmp.path().join("out-flipped");
    let err = extract_to(&load(&flipped).unwrap(), &out).unwrap_err();
    assert!(
        matches!(
            err,
            ArchiveError::DigestMismatch { .. } | ArchiveError::Decode { .. }
        ),
        "{err}"
    );
    assert!(!out.exists(), "a failed extraction removes what it wrote");

    // Into an existing empty directory: it is emptied again, not removed.
    let out = tmp.path().join("out-existing");
    fs::create_dir(&out).unwrap();
    extract_to(&load(&flipped).unwrap(), &out).unwrap_err();
    assert_eq!(fs::read_dir(&out).unwrap().count(), 0);

    // A flipped byte in the index or the header: a checksum error at open.
    for at in [30, 100, summary.front_len as usize / 2] {
        let mut b = bytes.clone();
        b[at] ^= 1;
        let err = load(&b).unwrap_err();
        assert!(
            matches!(
                err,
                ArchiveError::Corrupt(_) | ArchiveError::Index(_) | ArchiveError::Truncated { .. }
            ),
            "byte {at}: {err}"
        );
    }
    // Truncated.
    let err = load(&bytes[..bytes.len() - 1]).unwrap_err();
    assert!(matches!(err, ArchiveError::Truncated { .. }), "{err}");
    assert!(matches!(
        load(&bytes[..10]).unwrap_err(),
        ArchiveError::NotAnArchive | ArchiveError::Truncated { .. }
    ));
    // Not an archive at all, or an index.
    assert!(matches!(
        load(b"hello world").unwrap_err(),
        ArchiveError::NotAnArchive
    ));
    let idx = crate::format::write_index(&Default::default(), Default::default()).unwrap();
    assert!(matches!(load(&idx).unwrap_err(), ArchiveError::IsIndex));

    // A non-empty target is refused and left alone.
    let busy = tmp.path().join("busy");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("keep"), b"x").unwrap();
    let err = extract_to(&open(&file), &busy).unwrap_err();
    assert!(matches!(err, ArchiveError::NotEmpty { .. }), "{err}");
    assert_eq!(fs::read(busy.join("keep")).unwrap(), b"x");
}

/// An input with a hand-made tree (the walk would never produce these).
fn hostile(names: &[(&[u8], NodeKind)], dir_twice: bool) -> Input {
    let mut root = Node::new(NodeKind::Dir);
    let mut nodes = vec![];
    for (i, (name, kind)) in names.iter().enumerate() {
        root.children.insert(name.to_vec(), i as u32 + 1);
        let mut n = Node::new(*kind);
        if *kind == NodeKind::Symlink {
            n.link_target = b"/etc".to_vec();
            n.size = 4;
        }
        nodes.push(n);
    }
    if dir_twice {
        // Directory 1 lists itself: a loop.
        nodes[0].children.insert(b"again".to_vec(), 1);
    }
    nodes.insert(0, root);
    Input {
        tree: crate::format::Tree { nodes },
        items: Vec::new(),
        meta: Default::default(),
        feed: Box::new(NoData),
    }
}

struct NoData;
impl super::create::Feed for NoData {
    fn fill(&mut self, _: &mut [u8]) -> Result<(), ArchiveError> {
        Err(ArchiveError::Corrupt("no data".into()))
    }
}

/// Names and kinds under the root, and whether a directory loops.
type Case<'a> = (&'a [(&'a [u8], NodeKind)], bool);

#[test]
fn hostile_trees_are_refused_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: [Case<'_>; 4] = [
        (&[(b"..", NodeKind::Dir)], false),
        (&[(b"../escape", NodeKind::File)], false),
        (&[(b"etc/passwd", NodeKind::File)], false),
        (&[(b"d", NodeKind::Dir)], true),
    ];
    for (i, (names, twice)) in cases.into_iter().enumerate() {
        let file = tmp.path().join(format!("h{i}.clip"));
        write_archive(hostile(names, twice), &file);
        let out = tmp.path().join(format!("out{i}"));
        let err = extract_to(&open(&file), &out).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Unsafe { .. }),
            "case {i}: {err}"
        );
        assert!(!out.exists(), "case {i}: nothing created");
    }
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn changed_input_fails_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let input = Input::from_dir(&src).unwrap();
    fs::write(src.join("a/b/big.bin"), b"shorter now").unwrap();
    let file = tmp.path().join("c.clip");
    let err = create(input, &opts(), &CreateProgress::default(), |front| {
        Ok(Box::new(FileWriter::create(&file, front)?))
    })
    .unwrap_err();
    assert!(matches!(err, ArchiveError::Changed { .. }), "{err}");
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "no archive, no temp file"
    );
}

#[test]
fn object_len_matches_header() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let file = tmp.path().join("t.clip");
    let s = write_archive(Input::from_dir(&src).unwrap(), &file);
    let a = open(&file);
    assert_eq!(a.object().len(), s.archive_len);
    assert_eq!(a.data_range().start, s.front_len);
    assert_eq!(a.data_range().end, s.archive_len);
    assert!(a.index_range().end <= s.front_len);
}
