//! `clipctl create` / `extract` / `push` / `inspect` / `ls` on archives,
//! locally and through a real S3-compatible server (s3s-fs on loopback):
//! round trips equal their source in every column, an archive made from an
//! image equals the image's index, and bad input fails in one line without
//! leaving anything behind.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clip::archive::Archive;
use clip::cache::{CacheConfig, ContentCache, ContentReader};
use clip::format::{Index, NodeKind};
use clip::object::ObjectRead;
use clip::s3::{S3Client, S3Options};

use crate::common::s3::{self, S3Server};
use crate::common::{self, run, stderr, walk_rootfs};
use crate::require;

/// Every column of a tree: what `walk_rootfs` compares, plus mtimes, file
/// contents and hard link groups.
#[derive(Debug, PartialEq)]
struct Full {
    entries: common::Tree,
    mtimes: BTreeMap<Vec<u8>, (i64, i64)>,
    contents: BTreeMap<Vec<u8>, clip::Digest>,
    links: Vec<Vec<Vec<u8>>>,
}

fn full(root: &Path) -> Full {
    use std::os::unix::ffi::OsStrExt;
    let (entries, groups) = walk_rootfs(root);
    let mut mtimes = BTreeMap::new();
    let mut contents = BTreeMap::new();
    for (path, e) in &entries {
        let p = root.join(std::ffi::OsStr::from_bytes(&path[1..]));
        let md = std::fs::symlink_metadata(&p).unwrap();
        mtimes.insert(path.clone(), (md.mtime(), md.mtime_nsec()));
        if e.kind == "file" {
            contents.insert(path.clone(), clip::Digest::of(&std::fs::read(&p).unwrap()));
        }
    }
    let mut links: Vec<Vec<Vec<u8>>> = groups
        .into_values()
        .filter(|v| v.len() > 1)
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    links.sort();
    Full {
        entries,
        mtimes,
        contents,
        links,
    }
}

pub(crate) fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (full(got), full(want));
    assert_eq!(
        g.entries.keys().collect::<Vec<_>>(),
        w.entries.keys().collect::<Vec<_>>(),
        "path sets differ"
    );
    for (path, e) in &w.entries {
        assert_eq!(&g.entries[path], e, "{}", String::from_utf8_lossy(path));
        assert_eq!(
            g.mtimes[path],
            w.mtimes[path],
            "mtime of {}",
            String::from_utf8_lossy(path)
        );
    }
    assert_eq!(g.contents, w.contents, "file contents differ");
    assert_eq!(g.links, w.links, "hard link groups differ");
}

pub(crate) fn ok(o: &std::process::Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// A failed run: non-zero exit and exactly one line on stderr naming `what`.
pub(crate) fn one_line_error(o: &std::process::Output, what: &str) {
    assert!(!o.status.success(), "expected a failure");
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(what), "expected {what:?} in: {err}");
}

pub(crate) fn create(input: &Path, output: &str) -> std::process::Output {
    run(&[
        "create",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output,
    ])
}

/// `create` of `src` into `dir/a.clip`, `extract` into `dir/out`, which must
/// equal `src`; returns both paths.
fn roundtrip(src: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let file = dir.join("a.clip");
    ok(&create(src, file.to_str().unwrap()));
    let out = dir.join("out");
    ok(&run(&[
        "extract",
        "--archive",
        file.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]));
    assert_same_tree(&out, src);
    (file, out)
}

#[test]
fn archive_roundtrip_tiny_rootfs() {
    let bed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let rootfs = bed.join("unpacked/tiny/rootfs");
    let tmp = common::tempdir();
    let (file, out) = roundtrip(&rootfs, tmp.path());
    // The root directory's own columns come back too.
    let (a, b) = (
        std::fs::metadata(&out).unwrap(),
        std::fs::metadata(&rootfs).unwrap(),
    );
    assert_eq!(
        (a.mode(), a.uid(), a.gid(), a.mtime()),
        (b.mode(), b.uid(), b.gid(), b.mtime())
    );

    let o = run(&["inspect", file.to_str().unwrap()]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("archive:"));
    let o = run(&["ls", file.to_str().unwrap(), "/etc"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("passwd"));
}

/// Makes a tree with every file type and column; needs root.
fn every_type_tree(root: &Path) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    use std::process::Command;
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-ec")
            .arg(script)
            .current_dir(root)
            .output()
            .unwrap();
        assert!(o.status.success(), "{script}: {}", stderr(&o));
    };
    std::fs::create_dir_all(root).unwrap();
    sh(
        "mkdir -p d/sub sticky setgid && chmod 1777 sticky && chmod 2775 setgid
        printf 'hello\\n' > d/file && head -c 3000000 /dev/urandom > d/big
        cp d/file suid && chown 1234:5678 suid && chmod 4755 suid
        mknod chr c 1 3 && mknod blk b 7 0 && mkfifo fifo && chown 7:8 chr
        ln d/file hard1 && ln d/file d/sub/hard2 && : > empty
        setfattr -n user.note -v hi d/file && setfattr -n trusted.t -v x d
        setfattr -n user.dir -v y d/sub
        touch -h -d '2001-02-03 04:05:06.789' d/sub suid
        python3 -c 'import socket; s=socket.socket(socket.AF_UNIX); s.bind(\"sock\")'",
    );
    symlink("d/file", root.join("rel-link")).unwrap();
    symlink("/nowhere/at/all", root.join("dangling")).unwrap();
    // File capabilities: cap_net_bind_service+ep as a v2 security.capability.
    let mut cap = Vec::new();
    for v in [0x0200_0001u32, 1 << 10, 0, 0, 0] {
        cap.extend_from_slice(&v.to_le_bytes());
    }
    xattr::set(root.join("d/big"), "security.capability", &cap).unwrap();
    std::fs::set_permissions(root.join("d/big"), std::fs::Permissions::from_mode(0o750)).unwrap();
}

#[test]
fn privileged_archive_roundtrip_every_file_type() {
    if !common::can_run_privileged() {
        return;
    }
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    every_type_tree(&src);
    let (_, out) = roundtrip(&src, tmp.path());
    let caps = xattr::get(out.join("d/big"), "security.capability").unwrap();
    assert!(caps.is_some(), "file capabilities restored");
    assert_eq!(
        std::fs::metadata(out.join("suid")).unwrap().mode() & 0o7777,
        0o4755
    );
}

/// Path → inode of every entry of an index.
fn paths(idx: &Index) -> BTreeMap<Vec<u8>, u64> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(clip::format::ROOT_INO, Vec::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for e in idx.read_dir(dir, 0).unwrap() {
            let e = e.unwrap();
            let mut p: Vec<u8> = prefix.clone();
            p.push(b'/');
            p.extend_from_slice(e.name);
            if e.kind == Some(NodeKind::Dir) {
                stack.push((e.ino, p.clone()));
            }
            out.insert(p, e.ino);
        }
    }
    out
}

fn read_all(cache: &ContentCache, idx: &Index, ino: u64) -> Vec<u8> {
    let node = idx.inode(ino).unwrap();
    let mut buf = vec![0u8; node.size() as usize];
    if let Some((layer, off)) = node.data() {
        let mut done = 0;
        while done < buf.len() {
            let n = cache
                .read(layer, off + done as u64, &mut buf[done..])
                .unwrap();
            assert!(n > 0);
            done += n;
        }
    }
    buf
}

#[test]
fn archive_from_image_equals_its_index() {
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let tmp = common::tempdir();
    let reference = common::image_ref(&reg, "tiny");
    let index_file = common::index_image(tmp.path(), &reference);
    let file = tmp.path().join("tiny.clip");
    ok(&run(&[
        "create",
        "--image",
        &reference,
        "--output",
        file.to_str().unwrap(),
    ]));

    let image_idx = Arc::new(Index::open(&index_file).unwrap());
    let image: clip::oci::ImageRef = reference.parse().unwrap();
    let registry = clip::oci::RegistrySource::connect(&image, &Default::default()).unwrap();
    let image_cache = ContentCache::new(
        image_idx.clone(),
        Arc::new(registry),
        CacheConfig::default(),
    );
    let archive = Archive::open(Arc::new(clip::object::FileObject::open(&file).unwrap())).unwrap();
    let arch_idx = archive.index().clone();
    let arch_cache = ContentCache::new(
        arch_idx.clone(),
        Arc::new(archive.blob_source().unwrap()),
        CacheConfig::default(),
    );
    assert_eq!(
        arch_idx.meta().manifest_digest,
        image_idx.meta().manifest_digest
    );
    let (want, got) = (paths(&image_idx), paths(&arch_idx));
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    for (p, &wi) in &want {
        let (w, g) = (
            image_idx.inode(wi).unwrap(),
            arch_idx.inode(got[p]).unwrap(),
        );
        let name = String::from_utf8_lossy(p);
        assert_eq!(
            (
                w.mode(),
                w.uid(),
                w.gid(),
                w.size(),
                w.mtime(),
                w.rdev(),
                w.nlink()
            ),
            (
                g.mode(),
                g.uid(),
                g.gid(),
                g.size(),
                g.mtime(),
                g.rdev(),
                g.nlink()
            ),
            "{name}"
        );
        assert_eq!(w.link_target().unwrap(), g.link_target().unwrap(), "{name}");
        assert_eq!(w.xattrs().unwrap(), g.xattrs().unwrap(), "{name}");
        if w.kind() == Some(NodeKind::File) {
            assert!(
                read_all(&image_cache, &image_idx, wi) == read_all(&arch_cache, &arch_idx, got[p]),
                "{name}"
            );
        }
    }
}

#[test]
fn archive_bad_input_fails_in_one_line_and_leaves_nothing() {
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    bulky_tree(&src);
    let good = tmp.path().join("good.clip");
    ok(&create(&src, good.to_str().unwrap()));
    let bytes = std::fs::read(&good).unwrap();
    let data_offset = u64::from_le_bytes(bytes[40..48].try_into().unwrap()) as usize;
    let extract = |archive: &Path, out: &Path| {
        run(&[
            "extract",
            "--archive",
            archive.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
        ])
    };
    let case = |name: &str, data: &[u8], what: &str| {
        let f = tmp.path().join(name);
        std::fs::write(&f, data).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        one_line_error(&extract(&f, &out), what);
        assert!(!out.exists(), "{name}: nothing extracted");
    };
    case(
        "not.clip",
        b"#!/bin/sh\necho this is not an archive\n",
        "not a clip archive",
    );
    case("short.clip", &bytes[..bytes.len() - 4096], "truncated");
    // A flipped byte in the data, the index, the padding before the data.
    let index_end = 64 + u64::from_le_bytes(bytes[32..40].try_into().unwrap()) as usize;
    for (name, at) in [
        ("flip-data.clip", (data_offset + bytes.len()) / 2),
        ("flip-index.clip", 200),
        ("flip-pad.clip", (index_end + data_offset) / 2),
    ] {
        let mut flipped = bytes.clone();
        flipped[at] ^= 0x10;
        case(name, &flipped, "corrupt");
    }
    // An index is not an archive.
    let o = run(&["inspect", good.to_str().unwrap()]);
    ok(&o);
    // Output not empty: refused, untouched.
    let busy = tmp.path().join("busy");
    std::fs::create_dir(&busy).unwrap();
    std::fs::write(busy.join("mine"), b"keep").unwrap();
    one_line_error(&extract(&good, &busy), "not empty");
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);
    // create refuses a missing input and writes nothing.
    let out = tmp.path().join("never.clip");
    one_line_error(
        &create(&tmp.path().join("missing"), out.to_str().unwrap()),
        "missing",
    );
    assert!(!out.exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".clip-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

/// A tree large enough that one file is a small part of the archive.
pub(crate) fn bulky_tree(root: &Path) -> PathBuf {
    use std::io::Write;
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..24 {
        let mut f = std::fs::File::create(root.join(format!("blobs/{i:02}.bin"))).unwrap();
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        f.write_all(&data).unwrap();
    }
    std::fs::write(root.join("small.txt"), b"a small file\n").unwrap();
    root.to_path_buf()
}

#[test]
fn s3_create_extract_push_inspect_and_lazy_reads() {
    let server = S3Server::start();
    let tmp = common::tempdir();
    let src = bulky_tree(&tmp.path().join("src"));
    let url = server.url("trees/bulky.clip");
    let o = server.run(&["create", "--input", src.to_str().unwrap(), "--output", &url]);
    ok(&o);
    let stored = std::fs::metadata(server.object_path("trees/bulky.clip"))
        .unwrap()
        .len();
    assert!(stored > 20 << 20, "multipart upload of {stored} bytes");

    let out = tmp.path().join("out");
    ok(&server.run(&[
        "extract",
        "--archive",
        &url,
        "--output",
        out.to_str().unwrap(),
    ]));
    assert_same_tree(&out, &src);
    let o = server.run(&["ls", &url, "/blobs"]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stdout).contains("23.bin"));
    ok(&server.run(&["inspect", &url]));

    // push: a local archive goes up byte for byte.
    let local = tmp.path().join("local.clip");
    ok(&create(&src, local.to_str().unwrap()));
    let pushed = server.url("pushed/local.clip");
    ok(&server.run(&["push", local.to_str().unwrap(), &pushed]));
    assert!(
        std::fs::read(server.object_path("pushed/local.clip")).unwrap()
            == std::fs::read(&local).unwrap()
    );

    // Lazy: one small file costs a small part of the archive.
    let opts = S3Options {
        endpoint: Some(server.endpoint.clone()),
        keys: Some((s3::ACCESS_KEY.into(), s3::SECRET_KEY.into())),
    };
    let client = S3Client::connect(&url.parse().unwrap(), &opts).unwrap();
    let object = client.open().unwrap();
    let archive = Archive::open(Arc::new(object.clone())).unwrap();
    let idx = archive.index().clone();
    let cache = ContentCache::new(
        idx.clone(),
        Arc::new(archive.blob_source().unwrap()),
        CacheConfig::default(),
    );
    let ino = idx.resolve(b"small.txt").unwrap().unwrap();
    assert_eq!(read_all(&cache, &idx, ino), b"a small file\n");
    let stats = object.stats();
    eprintln!(
        "one small file: {} GETs, {} of {} bytes",
        stats.gets,
        stats.bytes,
        object.len()
    );
    assert!(
        stats.bytes * 10 < object.len(),
        "fetched {} of {}",
        stats.bytes,
        object.len()
    );
    // Every file equal through the lazy path.
    for (p, ino) in paths(&idx) {
        if idx.inode(ino).unwrap().kind() == Some(NodeKind::File) {
            let disk = std::fs::read(src.join(String::from_utf8_lossy(&p[1..]).as_ref())).unwrap();
            assert!(
                read_all(&cache, &idx, ino) == disk,
                "{}",
                String::from_utf8_lossy(&p)
            );
        }
    }
}

#[test]
fn s3_errors_are_one_line() {
    let server = S3Server::start();
    let tmp = common::tempdir();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let url = server.url("k.clip");
    ok(&server.run(&["create", "--input", src.to_str().unwrap(), "--output", &url]));
    let out = tmp.path().join("out");
    let out_s = out.to_str().unwrap();

    let wrong = server
        .clipctl()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args(["extract", "--archive", &url, "--output", out_s])
        .output()
        .unwrap();
    one_line_error(&wrong, "access denied");
    one_line_error(
        &server.run(&[
            "extract",
            "--archive",
            "s3://no-such-bucket/k.clip",
            "--output",
            out_s,
        ]),
        "no such bucket",
    );
    one_line_error(
        &server.run(&[
            "extract",
            "--archive",
            &server.url("missing.clip"),
            "--output",
            out_s,
        ]),
        "no such key",
    );
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = server
        .clipctl()
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead}"))
        .args(["extract", "--archive", &url, "--output", out_s])
        .output()
        .unwrap();
    one_line_error(&unreachable, "cannot reach");
    // Writing with wrong credentials leaves no object.
    let wrong_put = server
        .clipctl()
        .env("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        .args([
            "create",
            "--input",
            src.to_str().unwrap(),
            "--output",
            &server.url("denied.clip"),
        ])
        .output()
        .unwrap();
    one_line_error(&wrong_put, "access denied");
    assert!(!server.object_path("denied.clip").exists());
    // No credentials at all, with a custom endpoint: said so, no metadata lookups.
    let mut none = common::clipctl();
    s3::isolate(&mut none);
    let o = none
        .args(["inspect", &url, "--s3-endpoint", &server.endpoint])
        .output()
        .unwrap();
    one_line_error(&o, "no S3 credentials");
    assert!(!out.exists());
}
