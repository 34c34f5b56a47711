//! Differential tests: for each test image, the merged tree in the index
//! (and every file's bytes read through the lazy read path from the real
//! registry) equals what `umoci unpack` produced.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use clip::cache::{CacheConfig, ContentCache, ContentReader};
use clip::format::{Index, NodeKind, Piece, ROOT_INO};
use clip::oci::{ImageRef, RegistryOptions, RegistrySource};

use crate::common::{self, run, stderr, walk_rootfs, Entry, LinkGroups, Tree};
use crate::require;

fn kind_name(k: Option<NodeKind>) -> &'static str {
    match k {
        Some(NodeKind::File) => "file",
        Some(NodeKind::Dir) => "dir",
        Some(NodeKind::Symlink) => "symlink",
        Some(NodeKind::CharDev) => "chardev",
        Some(NodeKind::BlockDev) => "blockdev",
        Some(NodeKind::Fifo) => "fifo",
        Some(NodeKind::Socket) => "socket",
        None => "invalid",
    }
}

/// Walks the index: path → entry, and inode → paths (hard link groups).
fn walk_index(idx: &Index) -> (Tree, LinkGroups<u64>, HashMap<Vec<u8>, u64>) {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<u64, Vec<Vec<u8>>> = HashMap::new();
    let mut inos = HashMap::new();
    let mut stack = vec![(ROOT_INO, Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in idx.read_dir(dir, 0).unwrap() {
            let e = e.unwrap();
            let mut path = prefix.clone();
            path.push(b'/');
            path.extend_from_slice(e.name);
            let node = idx.inode(e.ino).unwrap();
            let kind = node.kind();
            let (ma, mi) = node.rdev();
            let entry = Entry {
                kind: kind_name(kind),
                mode: if kind == Some(NodeKind::Symlink) {
                    0
                } else {
                    node.mode() & 0o7777
                },
                uid: node.uid(),
                gid: node.gid(),
                size: if kind == Some(NodeKind::File) {
                    node.size()
                } else {
                    0
                },
                target: node.link_target().unwrap().to_vec(),
                rdev: if matches!(kind, Some(NodeKind::CharDev | NodeKind::BlockDev)) {
                    (ma, mi)
                } else {
                    (0, 0)
                },
                xattrs: node
                    .xattrs()
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect(),
            };
            if kind == Some(NodeKind::Dir) {
                stack.push((e.ino, path.clone()));
            } else {
                groups.entry(e.ino).or_default().push(path.clone());
            }
            inos.insert(path.clone(), e.ino);
            out.insert(path, entry);
        }
    }
    (out, groups, inos)
}

fn differential(name: &str) {
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let bed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let rootfs = bed.join("unpacked").join(name).join("rootfs");
    assert!(rootfs.is_dir(), "ground truth {} missing", rootfs.display());
    let tmp = common::tempdir();
    let out = tmp.path().join(format!("{name}.clip"));
    let reference = common::image_ref(&reg, name);
    let o = run(&[
        "index",
        "--image",
        &reference,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let idx = Arc::new(Index::open(&out).unwrap());

    let (got, groups, inos) = walk_index(&idx);
    let (want, want_groups) = walk_rootfs(&rootfs);
    common::assert_same_tree(&got, &want, name);
    // Hard link groups: same partition of names.
    assert_eq!(
        common::link_groups(groups),
        common::link_groups(want_groups),
        "{name}: hard link groups differ"
    );

    // Every file's bytes, through the lazy read path from the registry.
    let image: ImageRef = reference.parse().unwrap();
    let source = RegistrySource::connect(&image, &RegistryOptions::default()).unwrap();
    let cache = ContentCache::new(idx.clone(), Arc::new(source), CacheConfig::default());
    let mut checked = 0u64;
    for (path, w) in &want {
        if w.kind != "file" {
            continue;
        }
        let disk = std::fs::read(
            rootfs.join(
                std::str::from_utf8(&path[1..])
                    .map(Path::new)
                    .unwrap_or_else(|_| {
                        use std::os::unix::ffi::OsStrExt;
                        Path::new(std::ffi::OsStr::from_bytes(&path[1..]))
                    }),
            ),
        )
        .unwrap();
        let node = idx.inode(inos[path]).unwrap();
        let mut buf = Vec::with_capacity(disk.len());
        // Data runs through the cache, holes (of sparse files) as zeros.
        for piece in node.pieces(0, node.size()).unwrap() {
            let (off, len) = match piece {
                Piece::Hole { len } => {
                    buf.resize(buf.len() + len as usize, 0);
                    continue;
                }
                Piece::Data { layer_offset, len } => (layer_offset, len as usize),
            };
            let layer = node.data().unwrap().0;
            let start = buf.len();
            buf.resize(start + len, 0);
            let mut done = 0;
            while done < len {
                let n = cache
                    .read(layer, off + done as u64, &mut buf[start + done..])
                    .unwrap();
                assert!(
                    n > 0,
                    "{name}: short read of {}",
                    String::from_utf8_lossy(path)
                );
                done += n;
            }
        }
        assert!(
            buf == disk,
            "{name}: bytes of {} differ",
            String::from_utf8_lossy(path)
        );
        checked += disk.len() as u64;
    }
    eprintln!(
        "{name}: {} entries and {checked} file bytes match umoci unpack",
        want.len()
    );
}

#[test]
fn differential_tiny() {
    differential("tiny");
}

#[test]
fn differential_python() {
    differential("python");
}
