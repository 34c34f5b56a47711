use std::collections::BTreeMap;
use std::sync::Arc;

use super::attr::{dirent_type, stat_of, statfs_of};
use super::*;
use crate::format::{
    write_index, DataRef, ImageMeta, IndexData, Layer, LayerKind, Node, Tree, WriteOptions,
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

#[test]
fn prefetch_hint_is_given_once_per_inode() {
    let fs = ClipFs::new(Arc::new(tiny()), Arc::new(Nothing), FsConfig::default()).unwrap();
    let n = fs.index().inode_count();
    for ino in 1..=n {
        assert!(fs.first_hint(ino), "first hint of {ino}");
    }
    for ino in 1..=n {
        assert!(!fs.first_hint(ino), "second hint of {ino}");
    }
    // Out of range: never hinted.
    assert!(!fs.first_hint(n + 64 * 10));
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
