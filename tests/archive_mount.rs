//! `clipctl mount --archive`: a local archive and one in a real S3 server
//! (s3s-fs on loopback) mount lazily through the image machinery (the
//! daemon, `ps`, `metrics`, overlay rootfs, runc, `umount`), every file
//! equal to the source tree, one small file costing a small part of the
//! archive; bad archives and bad S3 settings fail in one line and leave
//! nothing mounted.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::archive::{assert_same_tree, bulky_tree, create, ok, one_line_error};
use crate::common::s3::S3Server;
use crate::common::{self, stderr, Dirs};
use crate::require;

/// `mount --cid CID --archive LOCATION` with `d`'s dirs, run by `cmd`
/// (plain clipctl, or one with S3 settings); the mount is remembered for
/// cleanup when it succeeds.
fn mount_archive(d: &mut Dirs, mut cmd: Command, cid: &str, location: &str) -> Output {
    let (r, n) = (d.run_dir(), d.node_dir());
    let o = cmd
        .args(["mount", "--cid", cid, "--archive", location])
        .args(["--run-dir", r.to_str().unwrap()])
        .args(["--node-dir", n.to_str().unwrap()])
        .args(["--disk-cache", "0", "--profile", "off"])
        .output()
        .expect("spawn clipctl");
    if o.status.success() {
        d.cids.push(cid.to_string());
    }
    o
}

fn rootfs_of(o: &Output) -> PathBuf {
    ok(o);
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

/// `clipctl metrics --cid CID --format json`: the image's counters.
fn counters(d: &Dirs, cid: &str) -> serde_json::Value {
    let r = d.run_dir();
    let o = common::run(
        &["metrics", "--cid", cid, "--format", "json"]
            .iter()
            .copied()
            .chain(["--run-dir", r.to_str().unwrap()])
            .collect::<Vec<_>>(),
    );
    ok(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["images"][0]["counters"].clone()
}

/// Unmounts `cid` and checks that nothing of it is left.
fn umount_clean(d: &mut Dirs, cid: &str) {
    let o = d.umount(cid);
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.retain(|c| c != cid);
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
    assert_eq!(d.ps().as_array().map(Vec::len), Some(0), "{}", d.ps());
}

#[test]
fn privileged_mount_local_archive_runs_in_runc() {
    if !common::can_run_privileged() {
        return;
    }
    let bed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let src = bed.join("unpacked/tiny/rootfs");
    let mut d = Dirs::new();
    let file = d.tmp.path().join("tiny.clip");
    ok(&create(&src, file.to_str().unwrap()));
    let rootfs = rootfs_of(&mount_archive(
        &mut d,
        common::clipctl(),
        "arc",
        file.to_str().unwrap(),
    ));
    assert_same_tree(&rootfs, &src);
    let ps = d.ps();
    assert_eq!(ps[0]["provenance"]["index"]["from"], "archive", "{ps}");

    // The overlay rootfs runs a container.
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-container.sh"))
        .arg(&rootfs)
        .args(["/bin/busybox", "cat", "/hello.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        out.stdout,
        std::fs::read(src.join("hello.txt")).unwrap(),
        "runc output"
    );
    // A second container shares the daemon; the archive's image never
    // shares one with the image it could have been made from.
    let second = rootfs_of(&mount_archive(
        &mut d,
        common::clipctl(),
        "arc2",
        file.to_str().unwrap(),
    ));
    assert!(second.join("bin/busybox").exists());
    let ps = d.ps();
    assert_eq!(ps[0]["image"], ps[1]["image"], "{ps}");
    let o = d.umount("arc2");
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.retain(|c| c != "arc2");
    assert!(!second.join("bin/busybox").exists(), "arc2 unmounted");
    umount_clean(&mut d, "arc");
}

#[test]
fn privileged_mount_archive_from_s3_is_lazy() {
    if !common::can_run_privileged() {
        return;
    }
    let server = S3Server::start();
    let mut d = Dirs::new();
    let src = bulky_tree(&d.tmp.path().join("src"));
    let url = server.url("trees/bulky.clip");
    ok(&server.run(&["create", "--input", src.to_str().unwrap(), "--output", &url]));
    let archive_len = std::fs::metadata(server.object_path("trees/bulky.clip"))
        .unwrap()
        .len();

    let rootfs = rootfs_of(&mount_archive(&mut d, server.clipctl(), "s3arc", &url));
    assert_eq!(
        std::fs::read(rootfs.join("small.txt")).unwrap(),
        b"a small file\n"
    );
    let c = counters(&d, "s3arc");
    let fetched = c["bytes_fetched"].as_u64().unwrap();
    eprintln!("one small file: {fetched} of {archive_len} bytes fetched");
    assert!(fetched > 0, "{c}");
    assert!(
        fetched * 10 < archive_len,
        "fetched {fetched} of {archive_len}"
    );

    // Every file equal, through the lazy path.
    assert_same_tree(&rootfs, &src);
    umount_clean(&mut d, "s3arc");
}

#[test]
fn privileged_mount_archive_at_a_mount_point() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let src = bulky_tree(&d.tmp.path().join("src"));
    let file = d.tmp.path().join("b.clip");
    ok(&create(&src, file.to_str().unwrap()));
    let mnt = d.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut child = common::clipctl()
        .args(["mount", "--archive", file.to_str().unwrap()])
        .args(["--mount-point", mnt.to_str().unwrap()])
        .args(["--node-dir", d.node_dir().to_str().unwrap()])
        .args(["--disk-cache", "0"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !mnt.join("small.txt").exists() {
        assert!(child.try_wait().unwrap().is_none(), "mount exited early");
        assert!(Instant::now() < deadline, "not mounted within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_same_tree(&mnt, &src);
    let o = Command::new("umount").arg(&mnt).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(child.wait().unwrap().success());
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

/// A failed `mount --archive`: one line, non-zero, nothing mounted or left
/// in the run dir.
fn refused(d: &mut Dirs, o: &Output, what: &str) {
    one_line_error(o, what);
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
    assert!(!d.run_dir().join("bad").exists(), "container dir left");
}

#[test]
fn privileged_mount_archive_bad_input() {
    if !common::can_run_privileged() {
        return;
    }
    let server = S3Server::start();
    let mut d = Dirs::new();
    let tmp = d.tmp.path().to_path_buf();
    let src = bulky_tree(&tmp.join("src"));
    let good = tmp.join("good.clip");
    ok(&create(&src, good.to_str().unwrap()));
    let bytes = std::fs::read(&good).unwrap();
    let at = |name: &str, data: &[u8]| {
        let p = tmp.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    };

    let not_archive = at("text.clip", b"just some text, long enough to be read\n");
    let o = mount_archive(&mut d, common::clipctl(), "bad", &not_archive);
    refused(&mut d, &o, "not a clip archive");
    let truncated = at("trunc.clip", &bytes[..bytes.len() - 100]);
    let o = mount_archive(&mut d, common::clipctl(), "bad", &truncated);
    refused(&mut d, &o, "truncated");
    let mut header = bytes.clone();
    header[40] ^= 0x10;
    let o = mount_archive(&mut d, common::clipctl(), "bad", &at("hdr.clip", &header));
    refused(&mut d, &o, "corrupt");
    let missing = tmp.join("missing.clip");
    let o = mount_archive(&mut d, common::clipctl(), "bad", missing.to_str().unwrap());
    refused(&mut d, &o, "missing.clip");

    // A flipped byte in the data: the mount is lazy, so it comes up; the
    // damaged file reads as EIO, never as wrong bytes; others still read.
    let mut data = bytes.clone();
    let flip = bytes.len() - (4 << 20);
    data[flip] ^= 0x40;
    let flipped = at("flipped.clip", &data);
    let rootfs = rootfs_of(&mount_archive(&mut d, common::clipctl(), "flip", &flipped));
    let mut eio = 0;
    for i in 0..24 {
        let name = format!("blobs/{i:02}.bin");
        match std::fs::read(rootfs.join(&name)) {
            Ok(got) => assert!(got == std::fs::read(src.join(&name)).unwrap(), "{name}"),
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::EIO), "{name}: {e}");
                eio += 1;
            }
        }
    }
    assert!(eio >= 1, "the damaged file must fail to read");
    let c = counters(&d, "flip");
    assert!(c["fuse_read_errors"].as_u64().unwrap() >= 1, "{c}");
    umount_clean(&mut d, "flip");

    // S3: wrong credentials, missing bucket or key, unreachable endpoint.
    let url = server.url("good.clip");
    ok(&server.run(&["push", good.to_str().unwrap(), &url]));
    let mut wrong = server.clipctl();
    wrong.env("AWS_SECRET_ACCESS_KEY", "not-the-secret");
    let o = mount_archive(&mut d, wrong, "bad", &url);
    refused(&mut d, &o, "access denied");
    let o = mount_archive(
        &mut d,
        server.clipctl(),
        "bad",
        "s3://no-such-bucket/k.clip",
    );
    refused(&mut d, &o, "no such bucket");
    let o = mount_archive(&mut d, server.clipctl(), "bad", &server.url("nope.clip"));
    refused(&mut d, &o, "no such key");
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = server.clipctl();
    unreachable.env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{dead}"));
    let o = mount_archive(&mut d, unreachable, "bad", &url);
    refused(&mut d, &o, "cannot reach");
    assert_eq!(d.ps().as_array().map(Vec::len), Some(0));
}
