use std::collections::BTreeMap;
use std::sync::Arc;

use super::attr::{dirent_type, stat_of, statfs_of};
use super::*;
use crate::cache::Urgency;
use crate::format::{
    write_index, DataRef, FileHint, ImageMeta, IndexData, Layer, LayerKind, Node, Tree,
    WriteOptions,
};

/// A tiny image: /f (suid, xattrs, nsec mtime), /d/ (with hard link to f),
/// /l -> f, /c (char 1:3), /p (fifo), /big-dev (block 259:65536).
pub(super) fn tiny() -> Index {
    Index::from_bytes(write_index(&tiny_data(), WriteOptions::default()).unwrap()).unwrap()
}

fn tiny_data() -> IndexData {
    let mut t = Tree::default();
    let mut f = Node::new(NodeKind::File);
    f.perm = 0o4755;
    f.uid = 1000;
    f.gid = 100;
    f.size = 10_000;
    f.mtime = 1_700_000_000;
    f.mtime_nsec = 987_654_321;
    f.data = Some(DataRef {
        layer: 0,
        offset: 512,
    });
    f.xattrs = vec![(b"user.k".to_vec(), b"value".to_vec())];
    t.nodes.push(f); // ino 2
    let mut d = Node::new(NodeKind::Dir);
    d.children = BTreeMap::from([(b"hard".to_vec(), 1u32)]);
    t.nodes.push(d); // ino 3
    let mut l = Node::new(NodeKind::Symlink);
    l.link_target = b"f".to_vec();
    l.size = 1;
    t.nodes.push(l); // ino 4
    let mut c = Node::new(NodeKind::CharDev);
    c.rdev_major = 1;
    c.rdev_minor = 3;
    t.nodes.push(c); // ino 5
    t.nodes.push(Node::new(NodeKind::Fifo)); // ino 6
    let mut b = Node::new(NodeKind::BlockDev);
    b.rdev_major = 259;
    b.rdev_minor = 65536;
    t.nodes.push(b); // ino 7
    t.nodes[0].children = BTreeMap::from([
        (b"f".to_vec(), 1),
        (b"d".to_vec(), 2),
        (b"l".to_vec(), 3),
        (b"c".to_vec(), 4),
        (b"p".to_vec(), 5),
        (b"big-dev".to_vec(), 6),
    ]);
    IndexData {
        meta: ImageMeta::default(),
        layers: vec![Layer {
            digest: crate::Digest::of(b"l0"),
            diff_id: crate::Digest::of(b"l0"),
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            kind: LayerKind::Tar,
            compressed_size: 1 << 20,
            uncompressed_size: 1 << 20,
            chunk_size: 1 << 20,
            checkpoints: vec![],
            chunks: vec![],
        }],
        tree: t,
        profile: None,
        hints: Vec::new(),
    }
}

#[test]
fn stat_maps_every_field() {
    let idx = tiny();
    let st = stat_of(&idx.inode(2).unwrap());
    assert_eq!(st.st_ino, 2);
    assert_eq!(st.st_mode, 0o104755);
    assert_eq!((st.st_uid, st.st_gid), (1000, 100));
    assert_eq!(st.st_nlink, 2);
    assert_eq!(st.st_size, 10_000);
    assert_eq!(st.st_blocks, 20);
    assert_eq!(st.st_blksize, 4096);
    assert_eq!(
        (st.st_mtime, st.st_mtime_nsec),
        (1_700_000_000, 987_654_321)
    );
    assert_eq!(
        (st.st_ctime, st.st_ctime_nsec),
        (1_700_000_000, 987_654_321)
    );
    assert_eq!(st.st_rdev, 0);
    let c = stat_of(&idx.inode(5).unwrap());
    assert_eq!(c.st_mode & libc::S_IFMT, libc::S_IFCHR);
    assert_eq!((libc::major(c.st_rdev), libc::minor(c.st_rdev)), (1, 3));
    // A large minor survives the 32-bit FUSE attr encoding.
    let b = stat_of(&idx.inode(7).unwrap());
    assert_eq!(
        (libc::major(b.st_rdev), libc::minor(b.st_rdev)),
        (259, 65536)
    );
    let root = stat_of(&idx.inode(1).unwrap());
    assert_eq!(root.st_mode, 0o040755);
    assert_eq!(root.st_nlink, 3);
}

#[test]
fn dirent_types() {
    assert_eq!(dirent_type(Some(NodeKind::Fifo)), libc::DT_FIFO as u32);
    assert_eq!(dirent_type(Some(NodeKind::Dir)), libc::DT_DIR as u32);
    assert_eq!(dirent_type(None), libc::DT_UNKNOWN as u32);
}

#[test]
fn statfs_counts() {
    let idx = tiny();
    let st = statfs_of(&idx);
    assert_eq!(st.f_blocks, 256);
    assert_eq!(st.f_files, 7);
    assert_eq!(st.f_namemax, 255);
    assert_eq!(st.f_bfree, 0);
}

#[test]
fn errno_table() {
    use crate::cache::CacheError;
    let cases: Vec<(FsError, i32)> = vec![
        (FsError::NotFound, libc::ENOENT),
        (FsError::NotADirectory(3), libc::ENOTDIR),
        (FsError::IsADirectory(1), libc::EISDIR),
        (FsError::Invalid, libc::EINVAL),
        (FsError::NoXattr, libc::ENODATA),
        (FsError::NoXattrs, libc::ENOSYS),
        (FsError::Range(9), libc::ERANGE),
        (FsError::ReadOnly, libc::EROFS),
        (FsError::NoSuchOffset(7), libc::ENXIO),
        (FsError::Index(FormatError::NoSuchInode(99)), libc::ENOENT),
        (FsError::Index(FormatError::NotADirectory(2)), libc::ENOTDIR),
        (FsError::Index(FormatError::Corrupt("x")), libc::EIO),
        (
            FsError::Content {
                ino: 2,
                layer: 0,
                offset: 5,
                source: CacheError::NoSuchChunk { layer: 0, chunk: 7 },
            },
            libc::EIO,
        ),
        (FsError::OpenNotNeeded, libc::ENOSYS),
        (FsError::NotPositional, libc::ESPIPE),
        (
            FsError::Reply(io::Error::from_raw_os_error(libc::EPIPE)),
            libc::EPIPE,
        ),
        (
            FsError::ShortLayer {
                ino: 2,
                layer: 0,
                offset: 5,
            },
            libc::EIO,
        ),
    ];
    for (e, want) in cases {
        assert_eq!(e.errno(), want, "{e}");
        assert_eq!(io::Error::from(e).raw_os_error(), Some(want));
    }
}

#[derive(Debug)]
struct Nothing;
impl ContentReader for Nothing {
    fn read(&self, _: u32, _: u64, _: &mut [u8]) -> Result<usize, CacheError> {
        Ok(0)
    }
}

#[test]
fn parents_and_dir_walk() {
    let fs = ClipFs::new(Arc::new(tiny()), Arc::new(Nothing), FsConfig::default()).unwrap();
    assert_eq!(fs.parent_of(3), 1);
    assert_eq!(fs.parent_of(1), 1);
    let mut seen = Vec::new();
    fs.walk_dir(1, 0, &mut |c, n, i, _| {
        seen.push((c, n.to_vec(), i));
        Ok(true)
    })
    .unwrap();
    let names: Vec<_> = seen
        .iter()
        .map(|s| String::from_utf8(s.1.clone()).unwrap())
        .collect();
    assert_eq!(names, [".", "..", "big-dev", "c", "d", "f", "l", "p"]);
    let cookies: Vec<_> = seen.iter().map(|s| s.0).collect();
    assert_eq!(cookies, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Resuming at every cookie yields exactly the rest.
    for (k, &(c, _, _)) in seen.iter().enumerate() {
        let mut rest = Vec::new();
        fs.walk_dir(1, c, &mut |c2, _, _, _| {
            rest.push(c2);
            Ok(true)
        })
        .unwrap();
        assert_eq!(rest, cookies[k + 1..]);
    }
    // Stopping early.
    let mut n = 0;
    fs.walk_dir(1, 0, &mut |_, _, _, _| {
        n += 1;
        Ok(n < 3)
    })
    .unwrap();
    assert_eq!(n, 3);
    assert!(matches!(
        fs.walk_dir(2, 0, &mut |_, _, _, _| Ok(true)),
        Err(FsError::NotADirectory(2))
    ));
}

/// Records every prefetch hint.
#[derive(Debug, Default)]
struct Hints(std::sync::Mutex<Vec<(u32, u64, u64, Urgency)>>);

impl ContentReader for Hints {
    fn read(&self, _: u32, _: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        Ok(buf.len())
    }
    fn prefetch(&self, layer: u32, offset: u64, len: u64, urgency: Urgency) {
        self.0.lock().unwrap().push((layer, offset, len, urgency));
    }
}

impl Hints {
    fn take(&self) -> Vec<(u32, u64, u64, Urgency)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// /mid (1 MiB at 0), /big (40 MiB at 2 MiB, hot ranges), /lib/a.so
/// (needs b.so), /lib/b.so, /py/{m0..m4} (8 KiB each, contiguous from
/// 64 MiB), one layer.
fn warm_image() -> (Arc<Index>, [u64; 5], [u64; 2]) {
    let mut t = Tree::default();
    let file = |t: &mut Tree, size: u64, offset: u64| {
        let mut f = Node::new(NodeKind::File);
        f.size = size;
        f.data = Some(DataRef { layer: 0, offset });
        t.nodes.push(f);
        t.nodes.len() as u32 - 1
    };
    let mid = file(&mut t, 1 << 20, 0);
    let big = file(&mut t, 40 << 20, 2 << 20);
    let a = file(&mut t, 300 << 10, 50 << 20);
    let b = file(&mut t, 400 << 10, 51 << 20);
    let mut lib = Node::new(NodeKind::Dir);
    lib.children = BTreeMap::from([(b"a.so".to_vec(), a), (b"b.so".to_vec(), b)]);
    t.nodes.push(lib);
    let lib = t.nodes.len() as u32 - 1;
    let mut py = Node::new(NodeKind::Dir);
    let mut pyc = [0u64; 5];
    for (i, ino) in pyc.iter_mut().enumerate() {
        let n = file(&mut t, 8 << 10, (64 << 20) + i as u64 * (9 << 10));
        py.children.insert(format!("m{i}").into_bytes(), n);
        *ino = u64::from(n) + 1;
    }
    t.nodes.push(py);
    let py = t.nodes.len() as u32 - 1;
    t.nodes[0].children = BTreeMap::from([
        (b"mid".to_vec(), mid),
        (b"big".to_vec(), big),
        (b"lib".to_vec(), lib),
        (b"py".to_vec(), py),
    ]);
    let mut data = tiny_data();
    data.tree = t;
    data.hints = vec![
        FileHint {
            ino: u64::from(big) + 1,
            dependencies: vec![],
            hot_ranges: vec![(0, 64 << 10), (30 << 20, 1 << 20)],
        },
        FileHint {
            ino: u64::from(a) + 1,
            dependencies: vec![u64::from(b) + 1],
            hot_ranges: vec![(0, 64 << 10)],
        },
    ];
    let index = Index::from_bytes(write_index(&data, WriteOptions::default()).unwrap()).unwrap();
    (
        Arc::new(index),
        pyc,
        [u64::from(lib) + 1, u64::from(py) + 1],
    )
}

fn read_one(fs: &ClipFs, ino: u64) {
    fs.warm_on_read(ino);
}

#[test]
fn warming_fetches_the_rest_of_a_file_once() {
    let (index, _, _) = warm_image();
    let hints = Arc::new(Hints::default());
    let fs = ClipFs::new(index.clone(), hints.clone(), FsConfig::default()).unwrap();
    let mid = index.resolve(b"mid").unwrap().unwrap();
    read_one(&fs, mid);
    assert_eq!(hints.take(), [(0, 0, 1 << 20, Urgency::Now)]);
    read_one(&fs, mid);
    assert_eq!(hints.take(), []);
    // Too big to fetch whole: only the hot ranges.
    let big = index.resolve(b"big").unwrap().unwrap();
    read_one(&fs, big);
    assert_eq!(
        hints.take(),
        [
            (0, 2 << 20, 64 << 10, Urgency::Now),
            (0, 32 << 20, 1 << 20, Urgency::Now)
        ]
    );
}

#[test]
fn warming_fetches_the_libraries_a_program_loads() {
    let (index, _, _) = warm_image();
    let hints = Arc::new(Hints::default());
    let fs = ClipFs::new(index.clone(), hints.clone(), FsConfig::default()).unwrap();
    let a = index.resolve(b"lib/a.so").unwrap().unwrap();
    let b = index.resolve(b"lib/b.so").unwrap().unwrap();
    read_one(&fs, a);
    assert_eq!(
        hints.take(),
        [
            (0, 50 << 20, 300 << 10, Urgency::Now),
            (0, 51 << 20, 400 << 10, Urgency::Later)
        ]
    );
    // The library was hinted already: its own first read adds nothing.
    read_one(&fs, b);
    assert_eq!(hints.take(), []);
    // Without dependencies: only the file itself.
    let cfg = FsConfig {
        warm: Some(WarmConfig {
            dependencies: false,
            ..WarmConfig::default()
        }),
        ..FsConfig::default()
    };
    let fs = ClipFs::new(index, hints.clone(), cfg).unwrap();
    read_one(&fs, a);
    assert_eq!(hints.take().len(), 1);
}

#[test]
fn warming_fetches_a_directorys_small_files_after_the_second_read() {
    let (index, pyc, [_, py]) = warm_image();
    let hints = Arc::new(Hints::default());
    let fs = ClipFs::new(index.clone(), hints.clone(), FsConfig::default()).unwrap();
    fs.looked_up(py, b"m1", pyc[1]);
    read_one(&fs, pyc[1]);
    assert_eq!(hints.take(), [], "one small file says nothing yet");
    fs.looked_up(py, b"m3", pyc[3]);
    read_one(&fs, pyc[3]);
    // The other three (not the two read) as runs of neighbours: m0, m2,
    // m4 are 9 KiB apart, so one run from m0 to the end of m4.
    let base = 64u64 << 20;
    assert_eq!(
        hints.take(),
        [(0, base, 4 * (9 << 10) + (8 << 10), Urgency::Later)]
    );
    // Once per directory.
    fs.looked_up(py, b"m4", pyc[4]);
    read_one(&fs, pyc[4]);
    assert_eq!(hints.take(), []);

    // A Python module: its first read warms the directory.
    let fs = ClipFs::new(index.clone(), hints.clone(), FsConfig::default()).unwrap();
    fs.looked_up(py, b"m0.cpython-311.pyc", pyc[0]);
    read_one(&fs, pyc[0]);
    assert_eq!(hints.take().len(), 1);

    // A budget for one file: the nearest to the file read (m2 next to m3).
    let cfg = FsConfig {
        warm: Some(WarmConfig {
            dir_budget: 8 << 10,
            ..WarmConfig::default()
        }),
        ..FsConfig::default()
    };
    let fs = ClipFs::new(index, hints.clone(), cfg).unwrap();
    for i in [1, 3] {
        fs.looked_up(py, b"m", pyc[i]);
        read_one(&fs, pyc[i]);
    }
    assert_eq!(
        hints.take(),
        [(0, base + 2 * (9 << 10), 8 << 10, Urgency::Later)]
    );
}

#[test]
fn warming_stops_at_the_speculation_budget_and_when_off() {
    let (index, _, _) = warm_image();
    let hints = Arc::new(Hints::default());
    let cfg = FsConfig {
        warm: Some(WarmConfig {
            speculation_budget: 100 << 10,
            ..WarmConfig::default()
        }),
        ..FsConfig::default()
    };
    let fs = ClipFs::new(index.clone(), hints.clone(), cfg).unwrap();
    let a = index.resolve(b"lib/a.so").unwrap().unwrap();
    read_one(&fs, a);
    // The file itself is not speculation; its 400 KiB library is over budget.
    assert_eq!(hints.take(), [(0, 50 << 20, 300 << 10, Urgency::Now)]);

    let cfg = FsConfig {
        warm: None,
        ..FsConfig::default()
    };
    let fs = ClipFs::new(index.clone(), hints.clone(), cfg).unwrap();
    read_one(&fs, index.resolve(b"mid").unwrap().unwrap());
    read_one(&fs, a);
    assert_eq!(hints.take(), []);
}

#[test]
fn xattrs_without_any_in_the_image_are_unsupported_for_the_mount() {
    use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply};
    let ctx = Context::default();
    let name = c"user.k";
    // An image with xattrs: a value for one that exists, ENODATA otherwise.
    let fs = ClipFs::new(Arc::new(tiny()), Arc::new(Nothing), FsConfig::default()).unwrap();
    assert!(matches!(
        fs.getxattr(&ctx, 2, name, 64),
        Ok(GetxattrReply::Value(v)) if v == b"value"
    ));
    let err = fs.getxattr(&ctx, 3, name, 64).err().unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::ENODATA));

    // An image without any: ENOSYS, which the kernel remembers per mount.
    let mut data = tiny_data();
    data.tree.nodes[1].xattrs.clear();
    let bare = Index::from_bytes(write_index(&data, WriteOptions::default()).unwrap()).unwrap();
    assert_eq!(bare.xattr_count(), 0);
    let fs = ClipFs::new(Arc::new(bare), Arc::new(Nothing), FsConfig::default()).unwrap();
    for ino in [1, 2, 3] {
        let err = fs.getxattr(&ctx, ino, name, 64).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSYS));
        let err = fs.listxattr(&ctx, ino, 64).err().unwrap();
        assert_eq!(err.raw_os_error(), Some(libc::ENOSYS));
    }
}

/// Serves a layer's bytes from memory and records every range asked for.
#[derive(Debug, Default)]
struct Recorded {
    layer: Vec<u8>,
    asked: std::sync::Mutex<Vec<(u64, usize)>>,
}

impl ContentReader for Recorded {
    fn read(&self, _: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        self.asked.lock().unwrap().push((offset, buf.len()));
        let start = (offset as usize).min(self.layer.len());
        let n = buf.len().min(self.layer.len() - start);
        buf[..n].copy_from_slice(&self.layer[start..start + n]);
        Ok(n)
    }
}

/// `tiny` plus /sparse (100 KiB: runs at 4096 and 60000) and /allhole.
fn sparse_fs() -> (ClipFs, Arc<Recorded>) {
    use crate::format::SparseSegment;
    let mut data = tiny_data();
    let mut s = Node::new(NodeKind::File);
    s.size = 100 << 10;
    s.data = Some(DataRef {
        layer: 0,
        offset: 20_000,
    });
    s.sparse = Some(vec![
        SparseSegment {
            file_offset: 4096,
            len: 100,
            layer_offset: 20_000,
        },
        SparseSegment {
            file_offset: 60_000,
            len: 5000,
            layer_offset: 20_100,
        },
    ]);
    let mut h = Node::new(NodeKind::File);
    h.size = 1 << 30;
    h.sparse = Some(Vec::new());
    let n = data.tree.nodes.len() as u32;
    data.tree.nodes.push(s); // ino n + 1
    data.tree.nodes.push(h); // ino n + 2
    data.tree.nodes[0].children.insert(b"sparse".to_vec(), n);
    data.tree.nodes[0]
        .children
        .insert(b"allhole".to_vec(), n + 1);
    let idx = Index::from_bytes(write_index(&data, WriteOptions::default()).unwrap()).unwrap();
    let content = Arc::new(Recorded {
        layer: (0..(1u32 << 20)).map(|i| (i % 251) as u8 + 1).collect(),
        asked: Default::default(),
    });
    let fs = ClipFs::new(Arc::new(idx), content.clone(), FsConfig::default()).unwrap();
    (fs, content)
}

#[test]
fn sparse_reads_serve_holes_as_zeros_without_fetching() {
    let (fs, content) = sparse_fs();
    let ino = fs.index().resolve(b"sparse").unwrap().unwrap();
    let layer = content.layer.clone();
    let mut want = vec![0u8; 100 << 10];
    want[4096..4196].copy_from_slice(&layer[20_000..20_100]);
    want[60_000..65_000].copy_from_slice(&layer[20_100..25_100]);
    for (off, size) in [
        (0u64, 200_000u32),
        (4000, 200),
        (4100, 10),
        (5000, 50_000),
        (64_990, 100),
    ] {
        let mut w = super::zerocopy::VecWriter::default();
        let n = fs.read_file(ino, off, size, &mut w).unwrap();
        let end = (off as usize + size as usize).min(want.len());
        assert_eq!(n, end - off as usize);
        assert!(w.0 == want[off as usize..end], "read at {off}+{size}");
    }
    // A range that is all hole asks the content reader for nothing (not
    // even a prefetch: that goes through `prefetch`, a no-op here).
    content.asked.lock().unwrap().clear();
    let mut w = super::zerocopy::VecWriter::default();
    assert_eq!(fs.read_file(ino, 10_000, 40_000, &mut w).unwrap(), 40_000);
    assert!(w.0.iter().all(|&b| b == 0));
    assert!(content.asked.lock().unwrap().is_empty());
    // Data reads ask for exactly the runs' layer ranges.
    fs.read_file(ino, 4000, 200, &mut super::zerocopy::VecWriter::default())
        .unwrap();
    assert_eq!(*content.asked.lock().unwrap(), [(20_000, 100)]);

    let hole = fs.index().resolve(b"allhole").unwrap().unwrap();
    let mut w = super::zerocopy::VecWriter::default();
    assert_eq!(
        fs.read_file(hole, 5 << 20, 1 << 20, &mut w).unwrap(),
        1 << 20
    );
    assert!(w.0.iter().all(|&b| b == 0));
    assert_eq!(content.asked.lock().unwrap().len(), 1);

    // stat: the logical size, blocks of data only.
    let st = stat_of(&fs.index().inode(ino).unwrap());
    assert_eq!((st.st_size, st.st_blocks), (100 << 10, 10));
    let st = stat_of(&fs.index().inode(hole).unwrap());
    assert_eq!((st.st_size, st.st_blocks), (1 << 30, 0));
}

#[test]
fn lseek_finds_data_and_holes() {
    use fuse_backend_rs::api::filesystem::{Context, FileSystem};
    let (fs, _) = sparse_fs();
    let ctx = Context::default();
    let ino = fs.index().resolve(b"sparse").unwrap().unwrap();
    let (data, hole) = (libc::SEEK_DATA as u32, libc::SEEK_HOLE as u32);
    assert_eq!(fs.lseek(&ctx, ino, 0, 0, data).unwrap(), 4096);
    assert_eq!(fs.lseek(&ctx, ino, 0, 4096, hole).unwrap(), 4196);
    assert_eq!(fs.lseek(&ctx, ino, 0, 4196, data).unwrap(), 60_000);
    assert_eq!(fs.lseek(&ctx, ino, 0, 61_000, hole).unwrap(), 65_000);
    let nx = fs.lseek(&ctx, ino, 0, 65_000, data).unwrap_err();
    assert_eq!(nx.raw_os_error(), Some(libc::ENXIO));
    let nx = fs.lseek(&ctx, ino, 0, 100 << 10, hole).unwrap_err();
    assert_eq!(nx.raw_os_error(), Some(libc::ENXIO));
    // A plain file: data from anywhere inside, its end is the only hole.
    assert_eq!(fs.lseek(&ctx, 2, 0, 7, data).unwrap(), 7);
    assert_eq!(fs.lseek(&ctx, 2, 0, 7, hole).unwrap(), 10_000);
    let e = fs.lseek(&ctx, 1, 0, 0, data).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EISDIR));
    let e = fs.lseek(&ctx, 2, 0, 0, libc::SEEK_END as u32).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
}
