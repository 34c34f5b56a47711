//! clip as containerd's remote snapshotter (issue 14), with the real parts:
//! Debian's containerd (its own root, state and sockets in a temp dir, so
//! it never meets a system containerd), `ctr` as the client, the loopback
//! registry, FUSE, overlayfs and runc. The python image is a private copy,
//! so the index published for it is this test's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, run, stderr};

/// A containerd and a clip snapshotter in one temp dir; stopped, and
/// whatever they left mounted lazily unmounted, on drop.
struct Node {
    dir: tempfile::TempDir,
    snapshotter: Option<Child>,
    containerd: Option<Child>,
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} not ready after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop(child: &mut Child) {
    // SIGTERM first: the snapshotter removes its socket on the way out.
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Node {
    fn start() -> Node {
        let dir = common::tempdir();
        let d = dir.path();
        let config = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.gc.v1.scheduler"]
  deletion_threshold = 1
[proxy_plugins]
  [proxy_plugins.clip]
    type = "snapshot"
    address = "{d}/snapshotter.sock"
"#,
            d = d.display()
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let mut node = Node {
            dir,
            snapshotter: None,
            containerd: None,
        };
        node.start_snapshotter();
        let log = std::fs::File::create(node.path("containerd.log")).unwrap();
        node.containerd = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(node.path("config.toml"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("spawn containerd"),
        );
        wait_until("containerd", || node.ctr(&["version"]).status.success());
        node
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_snapshotter(&mut self) {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.path("snapshotter.log"))
            .unwrap();
        let child = common::clipctl()
            .arg("snapshotter")
            .arg("--address")
            .arg(self.path("snapshotter.sock"))
            .arg("--root")
            .arg(self.path("snapshotter"))
            .arg("--run-dir")
            .arg(self.path("run"))
            .arg("--node-dir")
            .arg(self.path("node"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn clipctl snapshotter");
        self.snapshotter = Some(child);
        let sock = self.path("snapshotter.sock");
        wait_until("clip snapshotter", || sock.exists());
    }

    fn restart_snapshotter(&mut self) {
        stop(self.snapshotter.as_mut().unwrap());
        assert!(!self.path("snapshotter.sock").exists());
        self.start_snapshotter();
        // containerd's gRPC client reconnects after a backoff (about 1 s).
        let clip = ["snapshots", "--snapshotter", "clip", "ls"];
        wait_until("containerd back on the snapshotter", || {
            self.ctr(&clip).status.success()
        });
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("--address")
            .arg(self.path("containerd.sock"))
            .args(args)
            .output()
            .expect("spawn ctr")
    }

    /// `ctr args`, which must succeed: its stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "ctr {args:?}: {}\n--- snapshotter log ---\n{}",
            stderr(&o),
            std::fs::read_to_string(self.path("snapshotter.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Rows of `ctr snapshots --snapshotter clip ls`.
    fn snapshots(&self) -> Vec<String> {
        let out = self.ctr_ok(&["snapshots", "--snapshotter", "clip", "ls"]);
        out.lines()
            .skip(1)
            .map(|l| l.trim_end().to_string())
            .collect()
    }

    /// Bytes the node's image daemons fetched ahead of their readers
    /// (`clipctl metrics`).
    fn prefetched(&self) -> u64 {
        let o = run(&[
            "metrics",
            "--run-dir",
            self.path("run").to_str().unwrap(),
            "--format",
            "json",
        ]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        let images = v["images"].as_array().cloned().unwrap_or_default();
        images
            .iter()
            .filter_map(|i| i["counters"]["prefetch_bytes"].as_u64())
            .sum()
    }

    /// Mount points under the node's dir.
    fn mounts(&self) -> Vec<String> {
        mounts_under(self.dir.path())
    }

    /// Live clip image daemons of this node, by their pid files (reading
    /// other processes' cmdlines can block behind a stuck one).
    fn daemons(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.path("run/images")) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_to_string(e.path().join("daemon.pid")).ok())
            // "pid starttime"
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .filter(|pid| Path::new("/proc").join(pid).exists())
            .collect()
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = format!("{}/", dir.display());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

impl Drop for Node {
    fn drop(&mut self) {
        for c in [self.containerd.as_mut(), self.snapshotter.as_mut()]
            .into_iter()
            .flatten()
        {
            stop(c);
        }
        let mut left = self.mounts();
        left.sort_by(|a, b| b.cmp(a));
        for m in left {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
    }
}

const IMPORT_NUMPY: &str = "import numpy; print(numpy.__version__)";

#[test]
fn privileged_containerd_snapshotter_lazy_python_fallback_and_cleanup() {
    let reg = crate::require!(common::privileged_registry(), "privileged registry");
    let python = common::private_copy(&reg, "python");
    let image = python.reference.as_str();
    let tiny = common::image_ref(&reg, "tiny");
    // Skipped without them (a failure under CLIP_REQUIRE_PRIVILEGED=1).
    if !(common::have_program("containerd", "containerd")
        && common::have_program("ctr", "containerd"))
    {
        return;
    }
    let mut node = Node::start();
    let plugins = node.ctr_ok(&["plugins", "ls"]);
    let clip_ok = |l: &&str| l.contains("snapshotter.v1") && l.contains(" clip ");
    let row = plugins.lines().find(clip_ok).unwrap_or_default();
    assert!(
        row.trim_end().ends_with("ok"),
        "no clip snapshotter:\n{plugins}"
    );

    // The publisher's step, then the node's lazy pull.
    let published = node.path("published.clip");
    let o = run(&[
        "index",
        "--image",
        image,
        "--push",
        "--out",
        published.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "index --push: {}", stderr(&o));
    let sock = node.path("containerd.sock");
    let o = run(&["rpull", "--address", sock.to_str().unwrap(), image]);
    assert!(o.status.success(), "rpull: {}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("4 layers"));
    // No layer was downloaded: the content store holds the manifest and config.
    let content = node.ctr_ok(&["content", "ls", "-q"]);
    assert_eq!(content.lines().count(), 2, "content store:\n{content}");
    let snaps = node.snapshots();
    assert_eq!(snaps.len(), 4, "{snaps:?}");
    assert!(snaps.iter().all(|s| s.ends_with("Committed")), "{snaps:?}");

    // A container's snapshot holds the image's daemon across a restart of
    // the snapshotter (state in its metadata, the daemon outlives it).
    node.ctr_ok(&[
        "container",
        "create",
        "--snapshotter",
        "clip",
        image,
        "c2",
        "--",
        "python3",
        "-c",
        IMPORT_NUMPY,
    ]);
    assert_eq!(node.daemons().len(), 1, "one daemon for the image");
    // Its first start warms what a container start reads before anything
    // asks, as `clipctl mount` does (no startup profile on this node yet).
    wait_until("first-start warming", || node.prefetched() > 0);
    node.restart_snapshotter();
    assert_eq!(node.snapshots().len(), 5);
    assert_eq!(node.ctr_ok(&["task", "start", "c2"]), "2.2.6");
    // A second container shares the image's one daemon.
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "clip",
        image,
        "c1",
        "python3",
        "-c",
        IMPORT_NUMPY,
    ]);
    assert_eq!(out, "2.2.6");
    assert_eq!(node.daemons().len(), 1);
    node.ctr_ok(&["container", "rm", "c2"]);

    // Fallback: a plain pull has no lazy labels; its layers are unpacked
    // into ordinary snapshots and run as usual.
    node.ctr_ok(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "clip",
        &tiny,
    ]);
    let out = node.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "clip",
        &tiny,
        "c3",
        "/bin/sh",
        "-c",
        "echo fallback ok",
    ]);
    assert_eq!(out, "fallback ok");

    // Removing the images removes every snapshot, mount and daemon.
    node.ctr_ok(&["image", "rm", "--sync", image, &tiny]);
    wait_until("snapshots removed", || node.snapshots().is_empty());
    assert_eq!(node.mounts(), Vec::<String>::new());
    assert_eq!(node.daemons(), Vec::<String>::new());
    let leftover = std::fs::read_dir(node.path("snapshotter/snapshots"))
        .unwrap()
        .count();
    assert_eq!(leftover, 0, "snapshot dirs left");
}
