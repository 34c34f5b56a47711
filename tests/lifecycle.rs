//! Issue 10 part 3, on real mounts: a clipctl killed at each step of an
//! attach or a detach leaves nothing the next command does not repair; a
//! busy rootfs (a process's cwd or open file in it) is detached without
//! deleting anything under its users; a
//! slow daemon serving containers is never killed; a stale pid file never
//! gets another process killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use crate::common::{self, stderr, Dirs};

/// `clipctl <verb> --run-dir R [--node-dir N] args…` with `env`.
fn clip_with(d: &Dirs, verb: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = common::clipctl();
    c.arg(verb).arg("--run-dir").arg(d.run_dir());
    if verb == "mount" {
        c.arg("--node-dir").arg(d.node_dir());
    }
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("spawn clipctl")
}

fn mount(d: &Dirs, cid: &str, clip: &Path, env: &[(&str, &str)]) -> Output {
    clip_with(
        d,
        "mount",
        &[
            "--cid",
            cid,
            "--clip",
            clip.to_str().unwrap(),
            "--profile",
            "off",
        ],
        env,
    )
}

fn umount(d: &Dirs, cid: &str, env: &[(&str, &str)]) -> Output {
    clip_with(d, "umount", &["--cid", cid], env)
}

/// Pids of the image daemons whose pid files are under this test's run dir.
fn daemon_pids(d: &Dirs) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(d.run_dir().join("images")) else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path().join("daemon.pid")).ok())
        .filter_map(|t| t.split_whitespace().next()?.parse().ok())
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !matches!(
            s.rsplit_once(')').map(|r| r.1.trim_start().as_bytes()[0]),
            Some(b'Z' | b'X')
        )
    })
}

/// Waits (up to 10 s) until `pid` has exited.
fn wait_gone(pid: u32) {
    let t = Instant::now();
    while alive(pid) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "pid {pid} still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the run dir holds no container, no image daemon and no mount,
/// and the node dir no container dirs.
fn assert_clean(d: &Dirs, after: &str) {
    // `ps` first: it repairs.
    assert_eq!(d.ps(), serde_json::json!([]), "{after}: containers left");
    assert_eq!(
        d.mounts_left(),
        Vec::<String>::new(),
        "{after}: mounts left"
    );
    let images: Vec<_> = std::fs::read_dir(d.run_dir().join("images"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().is_dir())
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    assert!(images.is_empty(), "{after}: image dirs left: {images:?}");
    let containers = std::fs::read_dir(d.node_dir().join("containers"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    assert_eq!(containers, 0, "{after}: node container dirs left");
}

#[test]
fn privileged_a_killed_attach_or_detach_is_repaired_by_the_next_command() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let clip = d.local_image();
    for point in [
        "after-record",
        "after-daemon",
        "after-overlay",
        "after-containers",
    ] {
        let o = mount(&d, "crash", &clip, &[("CLIP_TEST_CRASH_AT", point)]);
        assert!(!o.status.success(), "{point}: mount did not crash");
        assert!(stderr(&o).contains(point), "{point}: {}", stderr(&o));
        let daemons = daemon_pids(&d);
        assert_clean(&d, point);
        for pid in daemons {
            wait_gone(pid);
        }
        // And the cid is free again.
        let o = mount(&d, "crash", &clip, &[]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        let rootfs = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        assert_eq!(
            std::fs::read(rootfs.join("hello.txt")).unwrap(),
            b"hello world\n"
        );
        let o = umount(&d, "crash", &[]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert_clean(&d, &format!("{point}, then mount and umount"));
    }
    for point in ["detach-after-unmount", "detach-after-upper"] {
        let o = mount(&d, "crash2", &clip, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let daemons = daemon_pids(&d);
        let o = umount(&d, "crash2", &[("CLIP_TEST_CRASH_AT", point)]);
        assert!(!o.status.success(), "{point}: umount did not crash");
        // `gc` repairs it and says what it did.
        let o = clip_with(&d, "gc", &[], &[]);
        assert!(o.status.success(), "{point}: {}", stderr(&o));
        assert!(!o.stdout.is_empty(), "{point}: gc did nothing");
        assert_clean(&d, point);
        for pid in daemons {
            wait_gone(pid);
        }
    }
}

/// A process that keeps its cwd in `dir`, or (`open`) a file of it open.
fn user_of(dir: &Path, open: bool) -> Child {
    let mut c = Command::new("sleep");
    c.arg("300");
    if open {
        c.stdin(std::fs::File::open(dir.join("hello.txt")).unwrap());
    } else {
        c.current_dir(dir);
    }
    c.spawn().expect("spawn")
}

#[test]
fn privileged_umount_of_a_busy_rootfs_deletes_nothing_under_its_users() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let clip = d.local_image();
    for open in [false, true] {
        let o = mount(&d, "busy", &clip, &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let rootfs = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        std::fs::write(rootfs.join("written"), b"by the container").unwrap();
        let mut user = user_of(&rootfs, open);
        let upper = d.node_dir().join("containers/busy/upper");
        let daemon = daemon_pids(&d)[0];

        let o = umount(&d, "busy", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let msg = stderr(&o);
        assert!(
            msg.contains(&format!("in use by pid {}", user.id())),
            "{msg}"
        );
        assert!(!common::is_mounted_at(&rootfs), "rootfs still mounted here");
        assert_eq!(
            std::fs::read(upper.join("written")).unwrap(),
            b"by the container"
        );
        assert!(alive(daemon), "the daemon went under a user");
        let ps = d.ps();
        assert_eq!(ps[0]["state"], "draining", "{ps}");
        // The user still reads the image and its own writes.
        if !open {
            let cwd = PathBuf::from(format!("/proc/{}/cwd", user.id()));
            assert_eq!(
                std::fs::read(cwd.join("hello.txt")).unwrap(),
                b"hello world\n"
            );
            assert_eq!(
                std::fs::read(cwd.join("written")).unwrap(),
                b"by the container"
            );
        }
        // Again while still in use: still draining, still nothing deleted.
        let o = umount(&d, "busy", &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(upper.join("written").exists());

        user.kill().unwrap();
        user.wait().unwrap();
        let o = clip_with(&d, "gc", &[], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("busy"), "{o:?}");
        assert_clean(&d, "busy rootfs, user gone, gc");
        wait_gone(daemon);
    }
}

#[test]
fn privileged_a_slow_daemon_with_containers_is_not_killed() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let clip = d.local_image();
    let o = mount(&d, "slow1", &clip, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rootfs = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
    let daemon = daemon_pids(&d)[0];
    // A stopped daemon answers nothing, like one stuck for a long time.
    let kill = |sig: &str| {
        let s = Command::new("kill")
            .args([sig, &daemon.to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    };
    kill("-STOP");
    let o = mount(&d, "slow2", &clip, &[]);
    kill("-CONT");
    assert!(!o.status.success(), "mount over a stopped daemon succeeded");
    assert!(stderr(&o).contains("not answering"), "{}", stderr(&o));
    assert!(alive(daemon), "a slow daemon with containers was killed");
    assert_eq!(
        std::fs::read(rootfs.join("hello.txt")).unwrap(),
        b"hello world\n"
    );
    let o = mount(&d, "slow2", &clip, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(daemon_pids(&d), vec![daemon], "the daemon was replaced");
    for cid in ["slow1", "slow2"] {
        assert!(umount(&d, cid, &[]).status.success());
    }
    assert_clean(&d, "slow daemon");
}

#[test]
fn privileged_a_stale_pid_file_never_kills_another_process() {
    if !common::can_run_privileged() {
        return;
    }
    let d = Dirs::new();
    let clip = d.local_image();
    let o = mount(&d, "stale", &clip, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let daemon = daemon_pids(&d)[0];
    let image_dir = std::fs::read_dir(d.run_dir().join("images"))
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    // The daemon dies; its pid goes to an unrelated process.
    Command::new("kill")
        .args(["-KILL", &daemon.to_string()])
        .status()
        .unwrap();
    wait_gone(daemon);
    let mut other = Command::new("sleep").arg("300").spawn().unwrap();
    std::fs::write(image_dir.join("daemon.pid"), format!("{}\n", other.id())).unwrap();
    let o = umount(&d, "stale", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        other.try_wait().unwrap().is_none(),
        "an unrelated process was killed"
    );
    other.kill().unwrap();
    other.wait().unwrap();
    assert_clean(&d, "stale pid file");
}
