//! `privileged_*` tests mount real FUSE filesystems and overlays; they skip
//! (through [`crate::testutil::skip`], a failure under
//! `CLIP_REQUIRE_PRIVILEGED=1`) unless running as root with `/dev/fuse`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::cache::{CacheError, ContentReader};
use crate::format::{
    write_index_file, DataRef, ImageMeta, IndexData, Layer, LayerKind, Node, NodeKind, Tree,
    WriteOptions,
};
use crate::fuse::{ClipFs, FsConfig};

pub(super) fn skip_unless_privileged() -> bool {
    match check_privileges() {
        Ok(()) => false,
        Err(e) => {
            crate::testutil::skip(&e.to_string());
            true
        }
    }
}

/// Held by tests that mount: the test that turns the fuse module's
/// `enable_uring` off and on again holds it for writing.
pub(super) static URING_PARAM: std::sync::RwLock<()> = std::sync::RwLock::new(());

pub(super) fn uring_param_shared() -> std::sync::RwLockReadGuard<'static, ()> {
    URING_PARAM.read().unwrap_or_else(|e| e.into_inner())
}

/// [`serve`] over `transport` (2 workers); checks it is the one in use.
fn serve_over(mnt: &Path, fs: ClipFs, transport: FuseTransport) -> MountHandle {
    let opts = ServeOptions {
        threads: 2,
        transport: TransportOptions {
            transport,
            ..TransportOptions::default()
        },
        ..ServeOptions::default()
    };
    let h = serve_with(mnt, fs, &opts).unwrap();
    let want = match transport {
        FuseTransport::Dev => TransportKind::Dev,
        _ => TransportKind::Uring,
    };
    assert_eq!(h.transport(), Some(want));
    h
}

/// Layer bytes held in memory; layer 1 always fails.
#[derive(Debug)]
pub(super) struct MemContent(pub Vec<Vec<u8>>);

impl ContentReader for MemContent {
    fn read(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        if layer == 1 {
            return Err(CacheError::Source {
                layer,
                digest: crate::Digest::of(b"bad"),
                source: crate::source::SourceError::remote(
                    crate::source::RemoteKind::Transient,
                    "injected failure",
                ),
            });
        }
        let data = self
            .0
            .get(layer as usize)
            .ok_or(CacheError::NoSuchLayer { layer })?;
        let start = (offset as usize).min(data.len());
        let n = buf.len().min(data.len() - start);
        buf[..n].copy_from_slice(&data[start..start + n]);
        Ok(n)
    }

    // Layer 0 is "in memory" (served inline); the failing layer takes the
    // hand-off path, whose errors must be EIO as well.
    fn would_block(&self, layer: u32, _offset: u64, _len: u64) -> bool {
        layer != 0
    }
}

const BIG: usize = 3 * 1024 * 1024 + 12_345;
const BIG_OFF: u64 = 1024;
const LONG: &str = "long-name-aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const UNI: &str = "ünïcødé-ファイル";

pub(super) fn layer0() -> Vec<u8> {
    let mut v: Vec<u8> = (0..BIG_OFF as usize + BIG + 4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    v[512..517].copy_from_slice(b"hello");
    v
}

fn big_bytes() -> Vec<u8> {
    layer0()[BIG_OFF as usize..BIG_OFF as usize + BIG].to_vec()
}

pub(super) fn image(hex_seed: &str) -> IndexData {
    let mut t = Tree::default();
    t.nodes[0].mtime = 1_600_000_000;
    let add = |t: &mut Tree, n: Node| {
        t.nodes.push(n);
        (t.nodes.len() - 1) as u32
    };
    let mut hello = Node::new(NodeKind::File);
    hello.size = 5;
    hello.perm = 0o4755;
    hello.uid = 1000;
    hello.gid = 1001;
    hello.mtime = 1_700_000_000;
    hello.mtime_nsec = 123_456_789;
    hello.data = Some(DataRef {
        layer: 0,
        offset: 512,
    });
    hello.xattrs = vec![
        (b"user.answer".to_vec(), b"42".to_vec()),
        (b"user.empty".to_vec(), vec![]),
    ];
    let hello = add(&mut t, hello);
    let mut big = Node::new(NodeKind::File);
    big.size = BIG as u64;
    big.data = Some(DataRef {
        layer: 0,
        offset: BIG_OFF,
    });
    let big = add(&mut t, big);
    let mut bad = Node::new(NodeKind::File);
    bad.size = 100;
    bad.data = Some(DataRef {
        layer: 1,
        offset: 0,
    });
    let bad = add(&mut t, bad);
    let empty = add(&mut t, Node::new(NodeKind::File));
    let mut link = Node::new(NodeKind::Symlink);
    link.link_target = b"sub/hard".to_vec();
    link.size = 8;
    let link = add(&mut t, link);
    let mut null = Node::new(NodeKind::CharDev);
    null.perm = 0o666;
    null.rdev_major = 1;
    null.rdev_minor = 3;
    let null = add(&mut t, null);
    let fifo = add(&mut t, Node::new(NodeKind::Fifo));
    let uni = add(&mut t, Node::new(NodeKind::File));
    let long = add(&mut t, Node::new(NodeKind::File));
    let mut sub = Node::new(NodeKind::Dir);
    sub.perm = 0o700;
    sub.children = BTreeMap::from([(b"hard".to_vec(), hello)]);
    let sub = add(&mut t, sub);
    t.nodes[0].children = BTreeMap::from([
        (b"hello".to_vec(), hello),
        (b"big".to_vec(), big),
        (b"bad".to_vec(), bad),
        (b"empty".to_vec(), empty),
        (b"link".to_vec(), link),
        (b"null".to_vec(), null),
        (b"fifo".to_vec(), fifo),
        (UNI.as_bytes().to_vec(), uni),
        (LONG.as_bytes().to_vec(), long),
        (b"sub".to_vec(), sub),
    ]);
    let layer = |n: u64| Layer {
        digest: crate::Digest::of(format!("{hex_seed}{n}").as_bytes()),
        diff_id: crate::Digest::of(b"x"),
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        kind: LayerKind::Tar,
        compressed_size: n,
        uncompressed_size: n,
        chunk_size: 1 << 20,
        checkpoints: vec![],
        chunks: vec![],
    };
    IndexData {
        meta: ImageMeta {
            manifest_digest: Some(crate::Digest::of(hex_seed.as_bytes())),
            ..Default::default()
        },
        layers: vec![layer(layer0().len() as u64), layer(100)],
        tree: t,
        profile: None,
        hints: Vec::new(),
    }
}

pub(super) fn write_image(dir: &Path, seed: &str) -> PathBuf {
    let p = dir.join(format!("{seed}.clip"));
    write_index_file(&image(seed), &p, WriteOptions::default()).unwrap();
    p
}

fn clipfs(clip: &Path) -> ClipFs {
    let index = Arc::new(crate::format::Index::open(clip).unwrap());
    ClipFs::new(
        index,
        Arc::new(MemContent(vec![layer0()])),
        FsConfig::default(),
    )
    .unwrap()
}

/// Unmounts (lazily) on drop, even on panic.
struct OverlayGuard(PathBuf);
impl Drop for OverlayGuard {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = unmount(&self.0, true);
        }
    }
}

mod xattr {
    //! Test-only xattr syscalls (std has none).
    #![allow(unsafe_code)]
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    fn c(p: &Path) -> CString {
        CString::new(p.as_os_str().as_bytes()).unwrap()
    }

    /// getxattr(2) with a caller-chosen buffer size: Ok(bytes) or Err(errno).
    pub fn get(p: &Path, name: &str, size: usize) -> Result<Vec<u8>, i32> {
        let (p, n) = (c(p), CString::new(name).unwrap());
        let mut buf = vec![0u8; size];
        // SAFETY: valid C strings; buf has `size` writable bytes (null ptr when 0).
        let r = unsafe {
            libc::getxattr(
                p.as_ptr(),
                n.as_ptr(),
                if size == 0 {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                },
                size,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        buf.truncate(if size == 0 { 0 } else { r as usize });
        if size == 0 {
            buf = vec![0; r as usize];
        }
        Ok(buf)
    }

    /// listxattr(2) likewise.
    pub fn list(p: &Path, size: usize) -> Result<Vec<u8>, i32> {
        let p = c(p);
        let mut buf = vec![0u8; size];
        // SAFETY: as above.
        let r = unsafe {
            libc::listxattr(
                p.as_ptr(),
                if size == 0 {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                },
                size,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap());
        }
        buf.truncate(r as usize);
        if size == 0 {
            buf = vec![0; r as usize];
        }
        Ok(buf)
    }
}

fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.expect_err("expected an error")
        .raw_os_error()
        .unwrap_or(-1)
}

#[test]
fn cid_validation() {
    for ok in ["a", "A0", "abc_def.ghi-1", &"x".repeat(128)] {
        validate_cid(ok).unwrap();
    }
    for bad in [
        "",
        "-a",
        ".a",
        "a/b",
        "a b",
        "images",
        &"x".repeat(129),
        "ü",
    ] {
        assert!(
            matches!(validate_cid(bad), Err(MountError::InvalidCid(_))),
            "{bad}"
        );
    }
}

#[test]
fn daemon_spec_roundtrip() {
    let tmp = tempfile::tempdir().unwrap();
    let a = DaemonSpec::new(
        "/x/y.clip".into(),
        tmp.path().to_path_buf(),
        (3u32, "stack".to_string()),
    );
    let path = a.save().unwrap();
    assert_eq!(path, tmp.path().join(SPEC_FILE));
    assert_eq!(fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
    assert_eq!(DaemonSpec::load(&path).unwrap(), a);
    fs::write(&path, br#"{"version": 1, "bogus": true}"#).unwrap();
    assert!(matches!(
        DaemonSpec::<(u32, String)>::load(&path),
        Err(MountError::BadSpec { .. })
    ));
    fs::write(&path, br#"{"version": 99}"#).unwrap();
    assert!(matches!(
        DaemonSpec::<(u32, String)>::load(&path),
        Err(MountError::SpecVersion { found: 99, .. })
    ));
}

#[test]
fn privileged_fuse_metadata_reads_xattrs_dev() {
    if skip_unless_privileged() {
        return;
    }
    fuse_metadata_reads_xattrs(FuseTransport::Dev);
}

#[test]
fn privileged_fuse_metadata_reads_xattrs_uring() {
    if skip_unless_privileged() {
        return;
    }
    fuse_metadata_reads_xattrs(FuseTransport::Uring);
}

/// Metadata, listings, reads (inline and handed off), errnos, xattrs and
/// EROFS through a real mount over `transport`.
fn fuse_metadata_reads_xattrs(transport: FuseTransport) {
    let _param = uring_param_shared();
    let tmp = tempfile::tempdir().unwrap();
    let clip = write_image(tmp.path(), "meta");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let fs = clipfs(&clip);
    let metrics = fs.metrics().clone();
    let h = serve_over(&mnt, fs, transport);
    assert_eq!(mount_fstype(&mnt).as_deref(), Some("fuse.clip"));

    // Metadata.
    let m = fs::metadata(mnt.join("hello")).unwrap();
    assert_eq!(m.mode(), 0o104755);
    assert_eq!((m.uid(), m.gid()), (1000, 1001));
    assert_eq!(m.size(), 5);
    assert_eq!(m.nlink(), 2);
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 123_456_789));
    assert_eq!(m.blocks(), 1);
    assert_eq!(m.ino(), fs::metadata(mnt.join("sub/hard")).unwrap().ino());
    let root = fs::metadata(&mnt).unwrap();
    assert!(root.is_dir());
    assert_eq!(root.nlink(), 3);
    assert_eq!(root.ino(), 1);
    let null = fs::metadata(mnt.join("null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!((libc::major(null.rdev()), libc::minor(null.rdev())), (1, 3));
    assert_eq!(null.mode() & 0o7777, 0o666);
    assert!(fs::metadata(mnt.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(fs::metadata(mnt.join("sub")).unwrap().mode(), 0o040700);
    assert_eq!(errno(fs::metadata(mnt.join("nope"))), libc::ENOENT);
    assert_eq!(errno(fs::metadata(mnt.join("hello/x"))), libc::ENOTDIR);

    // Listing (std skips . and ..; they are checked in the unit test).
    let mut names: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want = vec![
        "bad", "big", "empty", "fifo", "hello", "link", "null", "sub", UNI, LONG,
    ];
    want.sort();
    assert_eq!(names, want);
    assert_eq!(fs::metadata(mnt.join(LONG)).unwrap().size(), 0);
    let types: BTreeMap<String, bool> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().into_string().unwrap(),
                e.file_type().unwrap().is_symlink(),
            )
        })
        .collect();
    assert!(types["link"] && !types["hello"]);

    // Symlinks.
    assert_eq!(
        fs::read_link(mnt.join("link")).unwrap(),
        PathBuf::from("sub/hard")
    );
    assert_eq!(fs::read(mnt.join("link")).unwrap(), b"hello");

    // Reads.
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hello");
    assert_eq!(fs::read(mnt.join("empty")).unwrap(), b"");
    let want = big_bytes();
    assert!(
        fs::read(mnt.join("big")).unwrap() == want,
        "whole-file read differs"
    );
    let f = fs::File::open(mnt.join("big")).unwrap();
    let cases: &[(usize, usize)] = &[
        (0, 1),
        (1, 4095),
        (4095, 2),
        (131_071, 131_073),
        (200_000, 1 << 20),
        (BIG - 10, 10),
        (BIG - 10, 100),
        (BIG, 10),
        (BIG + 5000, 10),
        (777_777, 2 * 1024 * 1024 + 3),
    ];
    for &(off, len) in cases {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], (off + got) as u64).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        let end = (off + len).min(BIG).max(off.min(BIG));
        assert_eq!(got, end - off.min(BIG), "count at {off}+{len}");
        assert!(
            buf[..got] == want[off.min(BIG)..end],
            "bytes at {off}+{len}"
        );
    }
    // Content errors are EIO, never wrong bytes.
    assert_eq!(errno(fs::read(mnt.join("bad"))), libc::EIO);

    // Xattrs: size probe, value, ERANGE, ENODATA, list.
    let hello = mnt.join("hello");
    assert_eq!(xattr::get(&hello, "user.answer", 0).unwrap().len(), 2);
    assert_eq!(xattr::get(&hello, "user.answer", 64).unwrap(), b"42");
    assert_eq!(xattr::get(&hello, "user.answer", 1), Err(libc::ERANGE));
    assert_eq!(xattr::get(&hello, "user.empty", 64).unwrap(), b"");
    assert_eq!(xattr::get(&hello, "user.missing", 64), Err(libc::ENODATA));
    assert_eq!(xattr::list(&hello, 0).unwrap().len(), 23);
    assert_eq!(
        xattr::list(&hello, 100).unwrap(),
        b"user.answer\0user.empty\0"
    );
    assert_eq!(xattr::list(&hello, 3), Err(libc::ERANGE));
    assert_eq!(xattr::list(&mnt.join("big"), 100).unwrap(), b"");

    // Writes fail with EROFS.
    assert_eq!(errno(fs::write(mnt.join("new"), b"x")), libc::EROFS);
    assert_eq!(
        errno(fs::OpenOptions::new().write(true).open(mnt.join("hello"))),
        libc::EROFS
    );
    assert_eq!(errno(fs::create_dir(mnt.join("d"))), libc::EROFS);
    assert_eq!(errno(fs::remove_file(mnt.join("hello"))), libc::EROFS);
    assert_eq!(
        errno(fs::rename(mnt.join("hello"), mnt.join("h2"))),
        libc::EROFS
    );
    assert_eq!(
        errno(fs::set_permissions(
            mnt.join("hello"),
            fs::Permissions::from_mode(0o600)
        )),
        libc::EROFS
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", mnt.join("s"))),
        libc::EROFS
    );
    assert_eq!(
        errno(fs::hard_link(mnt.join("hello"), mnt.join("h3"))),
        libc::EROFS
    );

    assert!(metrics.counters().fuse_read_errors >= 1);
    h.unmount().unwrap();
    assert!(!is_mounted(&mnt), "still in mountinfo after unmount");
}

#[test]
fn privileged_overlay_on_fuse_dev() {
    if skip_unless_privileged() {
        return;
    }
    overlay_on_fuse(FuseTransport::Dev);
}

#[test]
fn privileged_overlay_on_fuse_uring() {
    if skip_unless_privileged() {
        return;
    }
    overlay_on_fuse(FuseTransport::Uring);
}

fn overlay_on_fuse(transport: FuseTransport) {
    let _param = uring_param_shared();
    let tmp = tempfile::tempdir().unwrap();
    let clip = write_image(tmp.path(), "ovl");
    let mnt = tmp.path().join("mnt");
    let (upper, work, root) = (
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("rootfs"),
    );
    for d in [&mnt, &upper, &work, &root] {
        fs::create_dir(d).unwrap();
    }
    let h = serve_over(&mnt, clipfs(&clip), transport);
    mount_overlay(&mnt, &upper, &work, &root).unwrap();
    let g = OverlayGuard(root.clone());
    assert_eq!(mount_fstype(&root).as_deref(), Some("overlay"));

    assert_eq!(fs::read(root.join("hello")).unwrap(), b"hello");
    assert!(fs::read(root.join("big")).unwrap() == big_bytes());
    fs::write(root.join("new"), b"fresh").unwrap();
    fs::write(root.join("hello"), b"changed").unwrap(); // copy-up
    fs::remove_file(root.join("big")).unwrap();
    fs::create_dir(root.join("sub/more")).unwrap();

    assert_eq!(fs::read(root.join("new")).unwrap(), b"fresh");
    assert_eq!(fs::read(root.join("hello")).unwrap(), b"changed");
    assert_eq!(errno(fs::metadata(root.join("big"))), libc::ENOENT);
    // Lower unchanged.
    assert_eq!(fs::read(mnt.join("hello")).unwrap(), b"hello");
    assert_eq!(fs::metadata(mnt.join("big")).unwrap().size(), BIG as u64);
    // Upper: new files, copied-up file keeps its suid mode, whiteout for big.
    assert_eq!(fs::read(upper.join("new")).unwrap(), b"fresh");
    assert_eq!(fs::read(upper.join("hello")).unwrap(), b"changed");
    let wh = fs::symlink_metadata(upper.join("big")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "whiteout is a 0:0 char device"
    );

    // A non-root uid inside the container can read world-readable files
    // (needs allow_other on the FUSE mount).
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(root.join("sub/hard"))
        .output();
    if let Ok(out) = out {
        // sub is 0700 root-owned: permission denied is the right answer.
        assert!(!out.status.success());
        let out2 = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(root.join("link"))
            .output()
            .unwrap();
        assert!(!out2.status.success(), "link resolves into 0700 sub");
        let out3 = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "head",
                "-c",
                "4",
            ])
            .arg(mnt.join("big"))
            .output()
            .unwrap();
        assert!(
            out3.status.success(),
            "uid 65534 reads the FUSE mount: {}",
            String::from_utf8_lossy(&out3.stderr)
        );
        assert_eq!(out3.stdout, big_bytes()[..4]);
    }

    drop(g);
    assert!(!is_mounted(&root));
    h.unmount().unwrap();
    assert!(!is_mounted(&mnt));
}

fn mem_content() -> ContentFactory {
    Box::new(|_| Ok(Arc::new(MemContent(vec![layer0()])) as Arc<dyn ContentReader>))
}

fn in_process_launcher() -> Launcher<()> {
    Launcher::InProcess(Arc::new(|spec: DaemonSpec<()>| {
        let cfg = DaemonConfig::new(&spec, mem_content());
        if let Err(e) = run_daemon(cfg) {
            eprintln!("daemon: {e}");
        }
    }))
}

fn request(tmp: &Path, cid: &str, clip: &Path, launcher: Launcher<()>) -> MountRequest<()> {
    MountRequest {
        run_dir: tmp.join("run"),
        node_dir: tmp.join("node"),
        launcher,
        ready_timeout: Duration::from_secs(20),
        ..MountRequest::new(cid, clip)
    }
}

/// Detaches every container under `run` on drop (panic safety).
struct RunGuard(PathBuf);
impl Drop for RunGuard {
    fn drop(&mut self) {
        for c in list(&self.0) {
            let _ = detach_container(&c.cid, &self.0);
        }
        if let Ok(rd) = fs::read_dir(self.0.join("images")) {
            for e in rd.flatten() {
                let mnt = e.path().join("mnt");
                if is_mounted(&mnt) {
                    let _ = unmount(&mnt, true);
                }
            }
        }
    }
}

#[test]
fn privileged_daemon_attach_reuse_detach() {
    if skip_unless_privileged() {
        return;
    }
    let _param = uring_param_shared();
    let tmp = tempfile::tempdir().unwrap();
    let clip = write_image(tmp.path(), "shared");
    let run = tmp.path().join("run");
    let _g = RunGuard(run.clone());
    let r1 = attach_container(&request(tmp.path(), "c1", &clip, in_process_launcher())).unwrap();
    let r2 = attach_container(&request(tmp.path(), "c2", &clip, in_process_launcher())).unwrap();
    assert_eq!(r1, run.join("c1/rootfs"));
    assert!(matches!(
        attach_container(&request(tmp.path(), "c1", &clip, in_process_launcher())),
        Err(MountError::CidInUse(_))
    ));
    let hex = crate::Digest::of(b"shared").hex()[..super::container::IMAGE_KEY_LEN].to_string();
    let image_dir = run.join("images").join(&hex);
    // One FUSE mount shared by both.
    let fuse_mounts = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&format!("{hex}/mnt")) && l.contains(" - fuse.clip "))
        .count();
    assert_eq!(fuse_mounts, 1);
    assert_eq!(
        fs::read_to_string(image_dir.join("containers")).unwrap(),
        "c1\nc2\n"
    );
    assert_eq!(fs::read(r1.join("hello")).unwrap(), b"hello");
    fs::write(r1.join("only-in-c1"), b"1").unwrap();
    assert!(!r2.join("only-in-c1").exists());
    let mode = fs::metadata(image_dir.join("control.sock")).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // The spec the daemon was started from stays, enough to start it again.
    let spec_path = image_dir.join(SPEC_FILE);
    assert_eq!(fs::metadata(&spec_path).unwrap().mode() & 0o777, 0o600);
    let spec = DaemonSpec::<()>::load(&spec_path).unwrap();
    assert_eq!(spec.clip_path, clip.canonicalize().unwrap());
    assert_eq!(spec.image_dir, image_dir);
    let sock = image_dir.join("control.sock");
    assert_eq!(
        control_request(&sock, "ping", Duration::from_secs(2))
            .unwrap()
            .0,
        "pong"
    );
    let stats: serde_json::Value = serde_json::from_str(
        &control_request(&sock, "stats", Duration::from_secs(2))
            .unwrap()
            .0,
    )
    .unwrap();
    // The daemon's metrics, labelled with the image and its containers.
    assert_eq!(
        stats["metrics"]["labels"]["digest"],
        crate::Digest::of(b"shared").to_string()
    );
    assert_eq!(
        stats["metrics"]["labels"]["cids"],
        serde_json::json!(["c1", "c2"])
    );
    assert!(stats["fs"]["reads"].as_u64().unwrap() >= 1);
    assert!(control_request(&sock, "bogus", Duration::from_secs(2))
        .unwrap()
        .0
        .starts_with("error"));

    let ps = list(&run);
    assert_eq!(
        ps.iter().map(|c| c.cid.as_str()).collect::<Vec<_>>(),
        ["c1", "c2"]
    );
    assert!(ps
        .iter()
        .all(|c| c.mounted && c.daemon_alive && c.image == hex));

    let o1 = detach_container("c1", &run).unwrap();
    assert!(!o1.daemon_stopped);
    assert!(
        !is_mounted(&r1)
            && !run.join("c1").exists()
            && !tmp.path().join("node/containers/c1").exists()
    );
    assert!(matches!(
        detach_container("c1", &run),
        Err(MountError::UnknownCid(_))
    ));
    assert_eq!(fs::read(r2.join("hello")).unwrap(), b"hello");
    let o2 = detach_container("c2", &run).unwrap();
    assert!(o2.daemon_stopped && !o2.daemon_was_dead);
    assert!(!image_dir.exists());
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&hex));
    assert!(list(&run).is_empty());
}

/// Entry point when this test binary is re-executed as a daemon by
/// `privileged_killed_daemon_is_cleaned_up` (does nothing otherwise).
#[test]
#[ignore = "helper: runs only as a spawned daemon"]
fn daemon_child_entry() {
    if std::env::var_os("CLIP_TEST_DAEMON").is_none() {
        return;
    }
    let args: Vec<std::ffi::OsString> = std::env::args_os()
        .skip_while(|a| a != "--")
        .skip(1)
        .collect();
    assert_eq!(
        args.len(),
        3,
        "want __daemon --spec PATH after --: {args:?}"
    );
    assert_eq!(args[1], "--spec");
    let spec = DaemonSpec::<()>::load(Path::new(&args[2])).unwrap();
    run_daemon(DaemonConfig::new(&spec, mem_content())).unwrap();
}

#[test]
fn privileged_killed_daemon_is_cleaned_up() {
    if skip_unless_privileged() {
        return;
    }
    let _param = uring_param_shared();
    let tmp = tempfile::tempdir().unwrap();
    let clip = write_image(tmp.path(), "killed");
    let run = tmp.path().join("run");
    let _g = RunGuard(run.clone());
    let launcher = Launcher::Exec {
        exe: std::env::current_exe().unwrap(),
        args: [
            "mount::tests::daemon_child_entry",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "--",
            // The daemon's verb: what the pid checks look for.
            process::DAEMON_VERB,
        ]
        .map(Into::into)
        .to_vec(),
        env: vec![("CLIP_TEST_DAEMON".into(), "1".into())],
    };
    let rootfs = attach_container(&request(tmp.path(), "k1", &clip, launcher)).unwrap();
    assert_eq!(fs::read(rootfs.join("hello")).unwrap(), b"hello");
    let image_dir = run
        .join("images")
        .join(&crate::Digest::of(b"killed").hex()[..super::container::IMAGE_KEY_LEN]);
    let pid = process::read_pid_file(&image_dir).unwrap().0 as i32;
    assert_ne!(pid as u32, std::process::id());
    // The daemon is in its own session.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let sid: i32 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(sid, pid);
    sys::kill(pid, libc::SIGKILL).unwrap();
    let mut tries = 0;
    while list(&run)[0].daemon_alive && tries < 200 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    assert!(!list(&run)[0].daemon_alive);
    // A dead FUSE server: ENOTCONN, or ECONNABORTED once the kernel has
    // aborted the connection, or (io_uring) ECANCELED for a request that
    // reached a ring entry of the dead task before the teardown; never a
    // hang or a false answer. The kernel answers at once when the daemon's
    // last /dev/fuse file closes; when something delays that close (seen
    // with the io_uring teardown on a loaded machine), the reader waits
    // until clipctl's cleanup aborts the connection: then it must get its
    // error, not hang on.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = image_dir.join("mnt/never-looked-up");
    std::thread::spawn(move || tx.send(errno(fs::metadata(probe))));
    let early = rx.recv_timeout(Duration::from_secs(10)).ok();
    let out = detach_container("k1", &run).unwrap();
    let e = early.unwrap_or_else(|| {
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a reader of a dead daemon's mount still waits after umount")
    });
    assert!(
        [libc::ENOTCONN, libc::ECONNABORTED, libc::ECANCELED].contains(&e),
        "errno {e}"
    );
    assert!(out.daemon_stopped && out.daemon_was_dead);
    assert!(!is_mounted(&rootfs) && !is_mounted(&image_dir.join("mnt")) && !image_dir.exists());
}

/// Documents why `allow_other` is on: without it, a non-root uid cannot
/// read the FUSE mount (EACCES from the kernel's FUSE permission gate),
/// directly or through an overlay.
#[test]
fn privileged_allow_other_is_needed() {
    if skip_unless_privileged() {
        return;
    }
    let _param = uring_param_shared();
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        return crate::testutil::skip("no setpriv (util-linux)");
    }
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let clip = write_image(tmp.path(), "ao");
    let as_nobody = |p: &Path| {
        std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "head",
                "-c",
                "5",
            ])
            .arg(p)
            .output()
            .unwrap()
            .status
            .success()
    };
    let mut results = Vec::new();
    for allow_other in [false, true] {
        let mnt = tmp.path().join(format!("mnt-{allow_other}"));
        let (upper, work, root) = (
            tmp.path().join(format!("u-{allow_other}")),
            tmp.path().join(format!("w-{allow_other}")),
            tmp.path().join(format!("r-{allow_other}")),
        );
        for d in [&mnt, &upper, &work, &root] {
            fs::create_dir(d).unwrap();
        }
        let opts = ServeOptions {
            threads: 1,
            allow_other,
            read_ahead_kb: None,
            ..ServeOptions::default()
        };
        let h = serve_with(&mnt, clipfs(&clip), &opts).unwrap();
        mount_overlay(&mnt, &upper, &work, &root).unwrap();
        let g = OverlayGuard(root.clone());
        results.push((
            allow_other,
            as_nobody(&mnt.join("hello")),
            as_nobody(&root.join("hello")),
        ));
        drop(g);
        h.unmount().unwrap();
    }
    eprintln!("(allow_other, direct read ok, overlay read ok) = {results:?}");
    assert_eq!(results[1], (true, true, true));
    assert!(
        !results[0].1,
        "without allow_other a non-root uid must be refused on the FUSE mount"
    );
}

/// Throughput of `dd` through the mount from an in-memory reader; run with
/// `cargo test --lib privileged_bench -- --ignored --nocapture` (optionally
/// with `GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold=4194304`).
#[test]
#[ignore = "benchmark"]
fn privileged_bench_read_throughput() {
    if skip_unless_privileged() {
        return;
    }
    let _param = uring_param_shared();
    const SIZE: usize = 512 << 20;
    let tmp = tempfile::tempdir().unwrap();
    let mut data = image("bench");
    data.layers[0].uncompressed_size = SIZE as u64 + 4096;
    let mut big = Node::new(NodeKind::File);
    big.size = SIZE as u64;
    big.data = Some(DataRef {
        layer: 0,
        offset: 512,
    });
    data.tree.nodes.push(big);
    let ino = (data.tree.nodes.len() - 1) as u32;
    data.tree.nodes[0].children.insert(b"huge".to_vec(), ino);
    let clip = tmp.path().join("bench.clip");
    write_index_file(&data, &clip, WriteOptions::default()).unwrap();
    let layer: Arc<Vec<u8>> =
        Arc::new((0..SIZE + 4096).map(|i| (i * 7 + i / 4093) as u8).collect());
    eprintln!("GLIBC_TUNABLES={:?}", std::env::var("GLIBC_TUNABLES").ok());
    for (threads, ra) in [(2, Some(128)), (2, Some(4096)), (1, Some(4096))] {
        let mut mbs = Vec::new();
        for run in 0..3 {
            let mnt = tmp.path().join(format!("m-{threads}-{ra:?}-{run}"));
            fs::create_dir(&mnt).unwrap();
            let index = Arc::new(crate::format::Index::open(&clip).unwrap());
            let content = Arc::new(MemContent(vec![(*layer).clone()]));
            let fs_ = ClipFs::new(index, content, FsConfig::default()).unwrap();
            let h = serve_with(
                &mnt,
                fs_,
                &ServeOptions {
                    threads,
                    allow_other: false,
                    read_ahead_kb: ra,
                    ..ServeOptions::default()
                },
            )
            .unwrap();
            let t = std::time::Instant::now();
            let out = std::process::Command::new("dd")
                .arg(format!("if={}", mnt.join("huge").display()))
                .args(["of=/dev/null", "bs=1M"])
                .output()
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            assert!(out.status.success());
            mbs.push(SIZE as f64 / secs / 1e6);
            h.unmount().unwrap();
        }
        eprintln!(
            "threads={threads} ra={ra:?}KiB: {:.0} / {:.0} / {:.0} MB/s",
            mbs[0], mbs[1], mbs[2]
        );
    }
}
