//! Issue 10 part 1: no host user but root reaches a container's rootfs or
//! an image's FUSE mount (the run and node trees are 0700, an existing
//! wider dir is narrowed), so an image's setuid-root file cannot be run
//! nor its 0600 files read from the host; inside a container, uid 1000
//! cannot read a 0600 root-owned file of the image (`default_permissions`).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{self, stderr, Dirs};

/// `args` run by a shell as uid/gid 65534. Through a shell: setpriv
/// itself still has root's capabilities when it execs its argument, so
/// only a process started by the unprivileged shell shows what a host
/// user can do.
fn as_nobody(args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        .args(["/bin/sh", "-c", "exec \"$@\"", "sh"])
        .args(args)
        .output()
        .expect("setpriv")
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn privileged_host_users_cannot_reach_a_rootfs_and_container_users_keep_their_permissions() {
    let Some(reg) = common::privileged_registry() else {
        return;
    };
    if !common::have_program("setpriv", "util-linux") || !common::have_program("runc", "runc") {
        return;
    }
    let mut d = Dirs::new();
    // Only our dirs stand in the way: the test's temp dir is open to all,
    // and the node dir exists already with a wide mode.
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir(d.node_dir()).unwrap();
    std::fs::set_permissions(d.node_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let image = common::image_ref(&reg, "tiny");
    let rootfs = d
        .mount("safe", &["--image", &image, "--profile", "off"])
        .expect("mount");
    let run = d.run_dir();
    let image_dir = std::fs::read_dir(run.join("images"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    for dir in [
        run.clone(),
        run.join("images"),
        image_dir.clone(),
        run.join("safe"),
        d.node_dir(),
        d.node_dir().join("containers"),
        d.node_dir().join("containers/safe"),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    // Root sees the image's setuid file and its private file.
    assert_eq!(mode(&rootfs.join("suid")), 0o4755);
    assert_eq!(
        std::fs::read(rootfs.join("private/secret")).unwrap().len(),
        7
    );

    let suid = rootfs.join("suid");
    let busybox = rootfs.join("bin/busybox");
    let hello = rootfs.join("hello.txt");
    for (what, args) in [
        ("stat the rootfs", vec!["stat", rootfs.to_str().unwrap()]),
        ("run the setuid file", vec![suid.to_str().unwrap()]),
        (
            "run a binary of the image",
            vec![busybox.to_str().unwrap(), "true"],
        ),
        ("read a file", vec!["cat", hello.to_str().unwrap()]),
        (
            "list the image mount",
            vec!["ls", image_dir.join("mnt").to_str().unwrap()],
        ),
        ("list the run dir", vec!["ls", run.to_str().unwrap()]),
    ] {
        let o = as_nobody(&args);
        assert!(!o.status.success(), "uid 65534 could {what}");
        assert!(
            stderr(&o).contains("Permission denied"),
            "{what}: {}",
            stderr(&o)
        );
    }

    // Inside a container (runc), uid 1000 reads its own and world-readable
    // files, never a 0600 root file.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/run-container.sh");
    let in_container = |cmd: &str| {
        Command::new("bash")
            .arg(&script)
            .arg(&rootfs)
            .args(["/bin/sh", "-c", cmd])
            .env("CONTAINER_USER", "1000:1000")
            .output()
            .unwrap()
    };
    let o = in_container("cat /user-file /hello.txt");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = in_container("cat /private/secret");
    assert!(!o.status.success(), "uid 1000 read /private/secret");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let o = in_container("ls /private");
    assert!(!o.status.success(), "uid 1000 listed /private");
}
