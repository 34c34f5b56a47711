//! Issue 10 (hardening), on real FUSE mounts: an image whose layers hold GNU
//! sparse files in all four dialects mounts byte for byte and attribute for
//! attribute as GNU tar extracts it; an index rewritten in place under a
//! running daemon does not bring it down.

use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{self, gzip_layer, small_tar, tar_layer, walk_rootfs, Dirs};

/// GNU tar's sparse dialects, each archived from its own directory.
const DIALECTS: [(&str, &[&str]); 4] = [
    ("gnu", &["--format=gnu"]),
    ("pax00", &["--format=posix", "--sparse-version=0.0"]),
    ("pax01", &["--format=posix", "--sparse-version=0.1"]),
    ("pax10", &["--format=posix", "--sparse-version=1.0"]),
];

/// Deterministic non-zero bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed) | 1)
        .collect()
}

/// A file of `size` bytes with data `runs` (offset, length) and real holes.
fn sparse_file(path: &Path, size: u64, runs: &[(u64, usize)], seed: u8) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (i, &(off, len)) in runs.iter().enumerate() {
        f.write_all_at(&pattern(len, seed.wrapping_add(i as u8)), off)
            .unwrap();
    }
}

/// The sparse test files of one directory.
fn make_files(dir: &Path, seed: u8) {
    std::fs::create_dir_all(dir).unwrap();
    sparse_file(
        &dir.join("two"),
        1 << 20,
        &[(100_000, 5000), (700_000, 8000)],
        seed,
    );
    let many: Vec<(u64, usize)> = (0..60).map(|i| (i * 16384 + 8192, 4096)).collect();
    sparse_file(&dir.join("many"), 60 * 16384 + 3, &many, seed);
    sparse_file(&dir.join("hole"), 3 << 20, &[], seed);
    sparse_file(
        &dir.join("ends"),
        300_000,
        &[(0, 5000), (290_000, 10_000)],
        seed,
    );
    // 64 MiB logical, 3 small runs.
    sparse_file(
        &dir.join("big"),
        64 << 20,
        &[(0, 4096), (20 << 20, 100_000), ((64 << 20) - 10, 10)],
        seed,
    );
    std::fs::write(dir.join("plain"), pattern(10_000, seed)).unwrap();
    // Last in name order: the archive's last member never ends in an
    // all-zero block (see `members`).
    std::fs::write(dir.join("zzz-end"), b"end\n").unwrap();
    std::fs::hard_link(dir.join("many"), dir.join("many-link")).unwrap();
    let private = dir.join("ends");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::chown(dir.join("two"), Some(1000), Some(1000)).unwrap();
}

/// GNU tar of `names` under `dir` with `args` (and `--sparse`).
fn gnu_tar(dir: &Path, args: &[&str], names: &[&str]) -> Vec<u8> {
    let o = Command::new("tar")
        .current_dir(dir)
        .args(args)
        .args(["--sparse", "--numeric-owner", "--sort=name", "-cf", "-"])
        .args(names)
        .output()
        .expect("GNU tar");
    assert!(
        o.status.success(),
        "tar: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// An archive without its end-of-archive blocks (its last member, `zzz-end`,
/// does not end in an all-zero block).
fn members(mut tar: Vec<u8>) -> Vec<u8> {
    while tar.len() >= 512 && tar[tar.len() - 512..].iter().all(|&b| b == 0) {
        tar.truncate(tar.len() - 512);
    }
    tar
}

/// `(offset, len)` of every data run of `path` by SEEK_DATA/SEEK_HOLE.
#[allow(unsafe_code)]
fn data_map(path: &Path) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < size {
        // SAFETY: lseek on a valid fd owned by `f`; no memory is passed.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: a hole to the end
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        assert!(hole > data, "{}: SEEK_HOLE at {data}", path.display());
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    out
}

#[test]
fn privileged_sparse_image_matches_gnu_tar_extraction() {
    if !common::can_run_privileged() {
        return;
    }
    let mut d = Dirs::new();
    let work = d.tmp.path().to_path_buf();
    let src = work.join("src");
    for (i, (dir, _)) in DIALECTS.iter().enumerate() {
        make_files(&src.join(dir), i as u8 * 40);
    }
    // Layer 1: the four dialects in one stream.
    let mut l1 = Vec::new();
    for (dir, args) in DIALECTS {
        l1.extend(members(gnu_tar(&src, args, &[dir])));
    }
    l1.extend_from_slice(&[0u8; 1024]);
    // Layer 2: a sparse file whited out, one replaced by a plain file and
    // one by another sparse file.
    let up = work.join("upper");
    for (dir, _) in DIALECTS {
        std::fs::create_dir_all(up.join(dir)).unwrap();
    }
    std::fs::write(up.join("gnu/.wh.two"), b"").unwrap();
    std::fs::write(up.join("pax10/many"), b"replaced, not sparse\n").unwrap();
    sparse_file(&up.join("pax01/hole"), 2 << 20, &[(1 << 20, 3000)], 200);
    let l2 = gnu_tar(
        &up,
        &["--format=posix", "--sparse-version=1.0"],
        &["gnu", "pax00", "pax01", "pax10"],
    );

    // GNU tar's extraction of the same layers (whiteouts applied by hand).
    let truth = work.join("truth");
    std::fs::create_dir_all(&truth).unwrap();
    for (i, layer) in [&l1, &l2].into_iter().enumerate() {
        let f = work.join(format!("layer{i}.tar"));
        std::fs::write(&f, layer).unwrap();
        let o = Command::new("tar")
            .args(["--numeric-owner", "-xpf"])
            .arg(&f)
            .arg("-C")
            .arg(&truth)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "tar -x: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let wh = truth.join("gnu/.wh.two");
    std::fs::remove_file(&wh).unwrap();
    std::fs::remove_file(truth.join("gnu/two")).unwrap();

    let layout = work.join("layout");
    common::write_layout(&layout, &[gzip_layer(&l1), tar_layer(&l2)], None);
    let clip = common::index_layout(&layout, &work.join("sparse.clip"), &[]);
    let rootfs = d
        .mount("sparse", &["--clip", clip.to_str().unwrap()])
        .unwrap();
    // The FUSE mount itself (the rootfs is an overlay on top of it) is
    // where lseek and st_blocks come from; the overlay passes both through.
    let (got, got_links) = walk_rootfs(&rootfs);
    let (want, want_links) = walk_rootfs(&truth);
    common::assert_same_tree(&got, &want, "sparse image");
    assert_eq!(
        common::link_groups(got_links),
        common::link_groups(want_links),
        "hard link groups"
    );
    let mut sparse_seen = 0;
    for (path, w) in &want {
        if w.kind != "file" {
            continue;
        }
        let rel = std::str::from_utf8(&path[1..]).unwrap();
        let (a, b) = (rootfs.join(rel), truth.join(rel));
        assert!(
            std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
            "bytes of {rel} differ"
        );
        let map = data_map(&a);
        assert_eq!(map, data_map(&b), "data/hole map of {rel}");
        let md = std::fs::metadata(&a).unwrap();
        let data: u64 = map.iter().map(|r| r.1).sum();
        if data < md.len() {
            sparse_seen += 1;
            // st_blocks counts the data, not the holes.
            assert_eq!(md.blocks(), data.div_ceil(512), "st_blocks of {rel}");
        }
    }
    assert!(sparse_seen >= 4 * 5, "only {sparse_seen} sparse files");
    assert!(d.umount("sparse").status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

/// The entries of a tar as (path, bytes) for regular files.
fn tar_files(tar: &[u8]) -> Vec<(PathBuf, Vec<u8>)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.header().entry_type().is_file())
        .map(|mut e| {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).unwrap();
            (e.path().unwrap().into_owned(), v)
        })
        .collect()
}

#[test]
fn privileged_index_rewritten_in_place_keeps_serving() {
    if !common::can_run_privileged() {
        return;
    }
    let mut d = Dirs::new();
    let work = d.tmp.path().to_path_buf();
    let tar = small_tar();
    let layout = work.join("layout");
    common::write_layout(&layout, &[gzip_layer(&tar)], None);
    let clip = common::index_layout(&layout, &work.join("image.clip"), &["--span", "64K"]);
    let rootfs = d
        .mount("rewrite", &["--clip", clip.to_str().unwrap()])
        .unwrap();
    let files = tar_files(&tar);
    let (first, want) = &files[0];
    assert_eq!(&std::fs::read(rootfs.join(first)).unwrap(), want);
    // Rewrite the index in place under the daemon: truncate, fill with
    // garbage, shrink again. A mapped index would fault (SIGBUS) on the
    // next read of a window or checkpoint.
    let f = std::fs::OpenOptions::new().write(true).open(&clip).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(0).unwrap();
    f.write_all_at(&vec![0xAA; len as usize], 0).unwrap();
    f.set_len(100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    for round in 0..2 {
        for (path, want) in &files {
            let got = std::fs::read(rootfs.join(path))
                .unwrap_or_else(|e| panic!("round {round}: {}: {e}", path.display()));
            assert!(
                &got == want,
                "round {round}: bytes of {} differ",
                path.display()
            );
        }
        assert!(std::fs::read_dir(&rootfs).unwrap().count() >= 3);
    }
    assert!(d.umount("rewrite").status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}
