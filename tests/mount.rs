//! Privileged end-to-end tests: real FUSE mounts, real overlayfs, real runc,
//! against the loopback registry. Each test uses its own run and node dirs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, index_image, run, stderr, walk_rootfs, Dirs};
use crate::require;

fn runc_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-container.sh")
}

#[test]
fn privileged_runc_imports_numpy_over_dev() {
    runc_imports_numpy_over("dev");
}

#[test]
fn privileged_runc_imports_numpy_over_uring() {
    runc_imports_numpy_over("uring");
}

/// A cold `import numpy` in runc on a lazy mount served over `transport`.
fn runc_imports_numpy_over(transport: &'static str) {
    if !common::can_run_privileged() {
        return;
    }
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let mut d = Dirs::over(transport);
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, "python"));
    let rootfs = d
        .mount(
            "numpy",
            &[
                "--clip",
                clip.to_str().unwrap(),
                "--disk-cache",
                "0",
                "--profile",
                "off",
            ],
        )
        .unwrap();
    assert_eq!(d.transport_of("numpy").as_deref(), Some(transport));
    import_numpy(&rootfs);
    let m = d.metrics_json("numpy");
    assert_eq!(m["images"][0]["fuse_transport"], transport, "{m}");
    assert!(d.umount("numpy").status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

#[test]
fn privileged_runc_imports_numpy_from_a_lazy_mount() {
    if !common::can_run_privileged() {
        return;
    }
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let mut d = Dirs::new();
    // No --clip: mount indexes the image itself.
    let reference = common::image_ref(&reg, "python");
    let rootfs = d.mount("numpy", &["--image", &reference]).unwrap();
    import_numpy(&rootfs);
    // A second mount of the same image reuses the index and the daemon.
    let second = d.mount("numpy2", &["--image", &reference]).unwrap();
    assert!(second.join("usr/bin/python3").exists());
    let o = d.umount("numpy2");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = d.umount("numpy");
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
    let images = d.run_dir().join("images");
    let daemons: Vec<_> = std::fs::read_dir(&images)
        .map(|r| r.flatten().filter(|e| e.path().is_dir()).collect())
        .unwrap_or_default();
    assert!(daemons.is_empty(), "daemon state left: {daemons:?}");

    // The first start recorded a startup profile, saved at unmount.
    let profiles: Vec<_> = std::fs::read_dir(d.node_dir().join("profiles"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(profiles.len(), 1, "{profiles:?}");
    let p: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profiles[0]).unwrap()).unwrap();
    let ranges = p["ranges"].as_array().unwrap();
    assert!(ranges.len() > 10, "{p}");
    let bytes: u64 = ranges.iter().map(|r| r["len"].as_u64().unwrap()).sum();
    assert!(bytes > 10 << 20, "import numpy touches > 10 MiB: {bytes}");
    // A fresh daemon replays it: bytes are fetched ahead of any reader
    // (from the registry: the node's disk cache is off for this one). The
    // same workload still fits the profile: it is left as it was.
    let recorded = std::fs::read(&profiles[0]).unwrap();
    let rootfs = d
        .mount("numpy3", &["--image", &reference, "--disk-cache", "0"])
        .unwrap();
    wait_for_replay(&d, "numpy3");
    import_numpy(&rootfs);
    let o = d.umount("numpy3");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&profiles[0]).unwrap(), recorded);

    // Shipped in an index instead: a node without a profile of its own
    // replays the embedded one (and, as it fits, saves none).
    let shipped = d.tmp.path().join("shipped.clip");
    let o = run(&[
        "index",
        "--image",
        &reference,
        "--out",
        shipped.to_str().unwrap(),
        "--profile",
        profiles[0].to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_file(&profiles[0]).unwrap();
    let rootfs = d
        .mount(
            "numpy4",
            &["--clip", shipped.to_str().unwrap(), "--disk-cache", "0"],
        )
        .unwrap();
    wait_for_replay(&d, "numpy4");
    import_numpy(&rootfs);
    let o = d.umount("numpy4");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!profiles[0].exists(), "a fitting replay saves nothing");

    // The node's disk cache, filled by the first start: a fresh daemon
    // serves the import mostly from disk.
    let rootfs = d.mount("numpy5", &["--image", &reference]).unwrap();
    import_numpy(&rootfs);
    let m = d.metrics_json("numpy5");
    let disk_hits = m["images"][0]["counters"]["disk_hits"].as_u64().unwrap();
    assert!(disk_hits > 20, "{m}");
    let o = d.umount("numpy5");
    assert!(o.status.success(), "{}", stderr(&o));

    // The workload changes (pandas reads far more than numpy): the replayed
    // profile no longer fits and the node's profile is replaced.
    let numpy_only = std::fs::read(&profiles[0]).unwrap();
    let rootfs = d.mount("pandas", &["--image", &reference]).unwrap();
    let out = Command::new("bash")
        .arg(runc_script())
        .arg(&rootfs)
        .args(["python3", "-c", "import pandas; print(pandas.__version__)"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.2.3");
    let o = d.umount("pandas");
    assert!(o.status.success(), "{}", stderr(&o));
    let with_pandas = std::fs::read(&profiles[0]).unwrap();
    assert!(
        with_pandas.len() > numpy_only.len(),
        "profile not replaced: {} -> {} bytes",
        numpy_only.len(),
        with_pandas.len()
    );
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

/// Waits until the daemon of `cid` has fetched > 1 MiB ahead of readers.
pub(crate) fn wait_for_replay(d: &Dirs, cid: &str) {
    let t = Instant::now();
    loop {
        let m = d.metrics_json(cid);
        if m["images"][0]["counters"]["prefetch_bytes"].as_u64() > Some(1 << 20) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "no replay: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `import numpy` in `rootfs` with runc and checks the version printed.
pub(crate) fn import_numpy(rootfs: &Path) {
    let out = Command::new("bash")
        .arg(runc_script())
        .arg(rootfs)
        .args(["python3", "-c", "import numpy; print(numpy.__version__)"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2.2.6");
}

fn mount_matches_umoci(name: &str, transport: &'static str) {
    if !common::can_run_privileged() {
        return;
    }
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let bed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let truth = bed.join("unpacked").join(name).join("rootfs");
    let mut d = Dirs::over(transport);
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, name));
    // No disk cache: every byte comes through the lazy path (the reads that
    // wait on the registry take the hand-off).
    let rootfs = d
        .mount(
            name,
            &["--clip", clip.to_str().unwrap(), "--disk-cache", "0"],
        )
        .unwrap();
    assert_eq!(d.transport_of(name).as_deref(), Some(transport));
    let (got, got_links) = walk_rootfs(&rootfs);
    let (want, want_links) = walk_rootfs(&truth);
    common::assert_same_tree(&got, &want, name);
    assert_eq!(
        common::link_groups(got_links),
        common::link_groups(want_links),
        "{name}: hard link groups differ"
    );
    use std::os::unix::ffi::OsStrExt;
    for (path, w) in &want {
        if w.kind == "file" {
            let rel = std::ffi::OsStr::from_bytes(&path[1..]);
            let a = std::fs::read(rootfs.join(rel)).unwrap();
            let b = std::fs::read(truth.join(rel)).unwrap();
            assert!(
                a == b,
                "{name}: bytes of {} differ",
                String::from_utf8_lossy(path)
            );
        }
    }
    assert!(d.umount(name).status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty());
}

#[test]
fn privileged_mount_of_tiny_matches_umoci_over_dev() {
    mount_matches_umoci("tiny", "dev");
}

#[test]
fn privileged_mount_of_tiny_matches_umoci_over_uring() {
    mount_matches_umoci("tiny", "uring");
}

#[test]
fn privileged_mount_of_python_matches_umoci_over_dev() {
    mount_matches_umoci("python", "dev");
}

#[test]
fn privileged_mount_of_python_matches_umoci_over_uring() {
    mount_matches_umoci("python", "uring");
}

#[test]
fn privileged_overlay_changes_leave_the_image_untouched_over_dev() {
    overlay_changes_leave_the_image_untouched("dev");
}

#[test]
fn privileged_overlay_changes_leave_the_image_untouched_over_uring() {
    overlay_changes_leave_the_image_untouched("uring");
}

fn overlay_changes_leave_the_image_untouched(transport: &'static str) {
    if !common::can_run_privileged() {
        return;
    }
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let mut d = Dirs::over(transport);
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, "tiny"));
    let a = d.mount("a", &["--clip", clip.to_str().unwrap()]).unwrap();
    let b = d.mount("b", &["--clip", clip.to_str().unwrap()]).unwrap();
    std::fs::remove_file(a.join("hello.txt")).unwrap();
    std::fs::write(a.join("added.txt"), b"changed").unwrap();
    std::fs::write(a.join("new.txt"), b"new").unwrap();
    // The other container still sees the image as it is.
    assert_eq!(
        std::fs::read(b.join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    assert_eq!(
        std::fs::read(b.join("added.txt")).unwrap(),
        b"added in layer 2\n"
    );
    assert!(!b.join("new.txt").exists());
    // The deletion is an overlay whiteout (0:0 char device) in a's upper dir.
    let upper = d.node_dir().join("containers/a/upper/hello.txt");
    let md = std::fs::symlink_metadata(&upper).unwrap();
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    assert!(md.file_type().is_char_device() && md.rdev() == 0);
    for cid in ["a", "b"] {
        assert!(d.umount(cid).status.success());
    }
    d.cids.clear();
    assert!(d.mounts_left().is_empty());
}

#[test]
fn privileged_bad_mount_requests_fail_cleanly_over_dev() {
    bad_mount_requests_fail_cleanly("dev");
}

#[test]
fn privileged_bad_mount_requests_fail_cleanly_over_uring() {
    bad_mount_requests_fail_cleanly("uring");
}

fn bad_mount_requests_fail_cleanly(transport: &'static str) {
    if !common::can_run_privileged() {
        return;
    }
    let mut d = Dirs::over(transport);
    // Unknown cid: documented exit code 3.
    let o = d.umount("never-mounted");
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("never-mounted"));
    // Registry down at mount time.
    let err = d
        .mount("down", &["--image", "127.0.0.1:1/clip/tiny:latest"])
        .unwrap_err();
    assert!(err.contains("127.0.0.1:1"), "{err}");
    assert!(!d.run_dir().join("down").exists());
    // Invalid cid.
    let err = d
        .mount("../escape", &["--clip", "/nonexistent.clip"])
        .unwrap_err();
    assert!(
        err.to_lowercase().contains("cid") || err.contains("container id"),
        "{err}"
    );
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, "tiny"));
    d.mount("dup", &["--clip", clip.to_str().unwrap()]).unwrap();
    let err = d
        .mount("dup", &["--clip", clip.to_str().unwrap()])
        .unwrap_err();
    assert!(err.contains("in use"), "{err}");
    d.cids.dedup();
    // A damaged profile file given by the user: named, nothing mounted
    // (checked by the CLI even though the image's daemon is running).
    let bad = d.tmp.path().join("bad-profile.json");
    std::fs::write(&bad, b"{ not json").unwrap();
    let err = d
        .mount(
            "badprofile",
            &[
                "--clip",
                clip.to_str().unwrap(),
                "--profile",
                bad.to_str().unwrap(),
            ],
        )
        .unwrap_err();
    assert!(
        err.contains("not a clip access profile") && err.contains("bad-profile.json"),
        "{err}"
    );
    assert!(!d.run_dir().join("badprofile").exists());
    // A busy mount point for --mount-point.
    let busy = d.tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&busy)
        .status()
        .unwrap()
        .success());
    let o = run(&[
        "mount",
        "--clip",
        clip.to_str().unwrap(),
        "--mount-point",
        busy.to_str().unwrap(),
    ]);
    let _ = Command::new("umount").arg(&busy).status();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("busy") || stderr(&o).contains("already"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn privileged_killed_daemon_gives_eio_not_a_hang_and_umount_cleans_up_over_dev() {
    killed_daemon_gives_eio_not_a_hang_and_umount_cleans_up("dev");
}

#[test]
fn privileged_killed_daemon_gives_eio_not_a_hang_and_umount_cleans_up_over_uring() {
    killed_daemon_gives_eio_not_a_hang_and_umount_cleans_up("uring");
}

fn killed_daemon_gives_eio_not_a_hang_and_umount_cleans_up(transport: &'static str) {
    if !common::can_run_privileged() {
        return;
    }
    let reg = require!(
        common::registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let mut d = Dirs::over(transport);
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, "tiny"));
    let rootfs = d
        .mount("victim", &["--clip", clip.to_str().unwrap()])
        .unwrap();
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello again\n"
    );
    let pidfile = std::fs::read_dir(d.run_dir().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("daemon.pid"))
        .find(|p| p.exists())
        .unwrap();
    let pid = common::pid_in(&pidfile).to_string();
    assert!(Command::new("kill")
        .args(["-9", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(200));
    // Data never read before is gone with the daemon: an error, quickly.
    let started = Instant::now();
    let r = std::fs::read(rootfs.join("random-3MiB.bin"));
    assert!(r.is_err(), "read succeeded after the daemon died");
    assert!(started.elapsed() < Duration::from_secs(10));
    let o = d.umount("victim");
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}

/// Requests the kernel sends while the io_uring queues register are
/// answered: once every queue has one entry the kernel dispatches to the
/// ring, so an entry's REGISTER can complete with a request before its
/// queue finished registering (such a completion was once dropped, and the
/// request waited forever). Mounts over io_uring again and again while two
/// threads per CPU stat the mount as fast as they can.
#[test]
fn privileged_requests_racing_the_uring_registration_are_answered() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let clip = d.local_image();
    let mnt = d.tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // Two stat threads per CPU: the kernel queues a request on the queue
    // of the CPU its caller runs on, so every queue gets some.
    let threads = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut over_uring = 0;
    for round in 0..30 {
        let log = std::fs::File::create(d.tmp.path().join("mount.log")).unwrap();
        let mut child = common::clipctl()
            .args(["mount", "--clip", clip.to_str().unwrap()])
            .args(["--mount-point", mnt.to_str().unwrap()])
            .args(["--node-dir", d.node_dir().to_str().unwrap()])
            .args(["--fuse-transport", "auto", "--disk-cache", "0"])
            .args(["--profile", "off", "--warm", "off"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for _ in 0..threads {
            let (tx, file) = (tx.clone(), mnt.join("etc/hostname"));
            std::thread::spawn(move || {
                let t = Instant::now();
                while std::fs::metadata(&file).is_err() {
                    if t.elapsed() > Duration::from_secs(20) {
                        break;
                    }
                }
                let _ = tx.send(());
            });
        }
        drop(tx);
        for _ in 0..threads {
            if rx.recv_timeout(Duration::from_secs(30)).is_err() {
                if let Some(id) = clip::mount::mount_identity(&mnt) {
                    let minor = id.dev.rsplit(':').next().unwrap().to_string();
                    let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
                }
                let _ = child.kill();
                panic!("round {round}: a stat of the mount was never answered");
            }
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "round {round}: mount exited"
        );
        assert!(common::is_mounted_at(&mnt), "round {round}: not mounted");
        // A mount namespace created meanwhile elsewhere on the machine (a
        // container start) can hold a copy of the mount for a moment: EBUSY.
        let mut tries = 0;
        loop {
            let o = Command::new("umount").arg(&mnt).output().unwrap();
            if o.status.success() {
                break;
            }
            tries += 1;
            assert!(tries < 50, "round {round}: {}", stderr(&o));
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = child.wait().unwrap();
        let log = std::fs::read_to_string(d.tmp.path().join("mount.log")).unwrap_or_default();
        assert!(status.success(), "round {round}: mount {status}: {log}");
        over_uring += usize::from(log.contains(" over uring "));
    }
    // `auto`: a queue whose REGISTER the kernel refuses (seldom, under
    // load: ENOTCONN) falls back to /dev/fuse; the race needs the ring.
    assert!(
        over_uring >= 15,
        "only {over_uring} of 30 mounts ran over io_uring"
    );
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}
