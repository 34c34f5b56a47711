//! Helpers shared by the integration tests: the clipctl binary, the test
//! registry and test bed set up by `scripts/test.sh`, skip rules (every
//! skip goes through [`skip`], a failure under `CLIP_REQUIRE_PRIVILEGED=1`).

pub mod fault_proxy;
pub mod proxy;
pub mod s3;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `clipctl` as built for this test run.
pub fn clipctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clipctl"))
}

/// Runs clipctl with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    clipctl().args(args).output().expect("spawn clipctl")
}

/// The loopback registry (`CLIP_TEST_REGISTRY`, e.g. 127.0.0.1:5000), if the
/// test bed is up.
pub fn registry() -> Option<String> {
    std::env::var("CLIP_TEST_REGISTRY")
        .ok()
        .filter(|s| !s.is_empty())
}

/// The test bed directory (`CLIP_TESTBED`): OCI layouts and umoci-unpacked
/// ground truth of the test images.
pub fn testbed() -> Option<PathBuf> {
    std::env::var_os("CLIP_TESTBED")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
}

/// Whether privileged tests (FUSE, overlay, runc) can run here.
pub fn privileged() -> Result<(), &'static str> {
    // SAFETY-free check: uid 0 owns /proc/self.
    let uid = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    if uid.ok() != Some(0) {
        return Err("not root");
    }
    if !std::path::Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse");
    }
    Ok(())
}

/// Gives up on the calling test because a prerequisite is missing: prints
/// why, or fails the test under `CLIP_REQUIRE_PRIVILEGED=1` (`.ci/run`).
pub fn skip(why: &str) {
    clip::testutil::skip(why);
}

/// Whether privileged tests can run here; if not, the test is skipped
/// ([`skip`]) and the caller returns.
pub fn can_run_privileged() -> bool {
    match privileged() {
        Ok(()) => true,
        Err(why) => {
            skip(why);
            false
        }
    }
}

/// The test registry if privileged tests can run here; otherwise the test
/// is skipped ([`skip`]).
pub fn privileged_registry() -> Option<String> {
    if !can_run_privileged() {
        return None;
    }
    let reg = registry();
    if reg.is_none() {
        skip("CLIP_TEST_REGISTRY not set (run scripts/test.sh)");
    }
    reg
}

/// Whether `program` runs (`program --version`); if not, the test is
/// skipped ([`skip`]) and the caller returns.
pub fn have_program(program: &str, package: &str) -> bool {
    let ok = Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip(&format!("no {program} (apt-get install {package})"));
    }
    ok
}

/// Skips the calling test ([`skip`]) unless `$e` is `Some`.
#[macro_export]
macro_rules! require {
    ($e:expr, $why:expr) => {
        match $e {
            Some(v) => v,
            None => {
                $crate::common::skip($why);
                return;
            }
        }
    };
}

/// Mount flags under which every READ of an uncached chunk goes to the
/// registry when it is asked for: no disk tier, no profile, no warming, no
/// prefetch.
pub const UNCACHED: &[&str] = &[
    "--disk-cache",
    "0",
    "--profile",
    "off",
    "--warm",
    "off",
    "--prefetch-threads",
    "0",
];

/// Image reference of test image `name` in the test registry.
pub fn image_ref(registry: &str, name: &str) -> String {
    format!("{registry}/clip/{name}:latest")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh temporary directory.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("clip-test-")
        .tempdir()
        .expect("tempdir")
}

/// One layer for [`write_layout`].
pub struct TestLayer {
    /// Layer media type.
    pub media_type: String,
    /// Blob bytes as stored.
    pub blob: Vec<u8>,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Stores `data` as a blob of the layout at `dir`; returns `sha256:…`.
pub fn put_blob(dir: &std::path::Path, data: &[u8]) -> String {
    let hex = sha256_hex(data);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// A gzip'ed layer from an uncompressed tar.
pub fn gzip_layer(tar: &[u8]) -> TestLayer {
    TestLayer {
        media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        blob: clip::testutil::gzip(tar, 6),
        diff_id: format!("sha256:{}", sha256_hex(tar)),
    }
}

/// An uncompressed tar layer.
pub fn tar_layer(tar: &[u8]) -> TestLayer {
    TestLayer {
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
        blob: tar.to_vec(),
        diff_id: format!("sha256:{}", sha256_hex(tar)),
    }
}

/// Writes an OCI image layout with tag `latest` holding `layers` (bottom first).
/// `manifest_override` replaces the manifest bytes (for malformed-input tests).
pub fn write_layout(dir: &std::path::Path, layers: &[TestLayer], manifest_override: Option<&[u8]>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let diff_ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = put_blob(dir, &config);
    let descs: Vec<_> = layers
        .iter()
        .map(|l| {
            let d = put_blob(dir, &l.blob);
            serde_json::json!({"mediaType": l.media_type, "digest": d, "size": l.blob.len()})
        })
        .collect();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest = manifest_override.map(<[u8]>::to_vec).unwrap_or(manifest);
    let md = put_blob(dir, &manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A small tar: a few files, a dir, a symlink, a hard link.
pub fn small_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, data).unwrap();
    };
    add("etc/hostname", b"clip\n", 0o644);
    // 2.4 MB of 6-bit noise: compressible, but in many deflate blocks.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let big: Vec<u8> = (0..2_400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'0' + (x & 0x3f) as u8
        })
        .collect();
    add("usr/lib/big.bin", &big, 0o755);
    add("hello.txt", b"hello world\n", 0o644);
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    h.set_mode(0o777);
    b.append_link(&mut h, "link", "hello.txt").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    b.append_link(&mut h, "hard", "hello.txt").unwrap();
    b.into_inner().unwrap()
}

#[derive(Debug, PartialEq)]
/// One tree entry as compared by the differential tests.
pub struct Entry {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub target: Vec<u8>,
    pub rdev: (u32, u32),
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Inode key → every name of it (hard link groups).
pub type LinkGroups<K> = HashMap<K, Vec<Vec<u8>>>;

/// Path (`/a/b`) → entry.
pub type Tree = BTreeMap<Vec<u8>, Entry>;

/// Asserts two walks hold the same paths with the same entries (`what`
/// names the image in messages).
pub fn assert_same_tree(got: &Tree, want: &Tree, what: &str) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: path sets differ"
    );
    for (path, w) in want {
        assert_eq!(&got[path], w, "{what}: {}", String::from_utf8_lossy(path));
    }
}

/// The hard link groups of a walk (two names or more), sorted, for comparing
/// two trees whatever their inode numbers.
pub fn link_groups<K>(m: LinkGroups<K>) -> Vec<Vec<Vec<u8>>> {
    let mut v: Vec<_> = m
        .into_values()
        .filter(|g| g.len() > 1)
        .map(|mut g| {
            g.sort();
            g
        })
        .collect();
    v.sort();
    v
}

/// Walks a directory tree (an unpacked rootfs or a mount): path → entry, and
/// (dev, ino) → names for hard link groups.
pub fn walk_rootfs(root: &Path) -> (Tree, LinkGroups<(u64, u64)>) {
    use std::os::unix::ffi::OsStrExt;
    let mut out = BTreeMap::new();
    let mut groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap();
            let mut key = b"/".to_vec();
            key.extend_from_slice(rel.as_os_str().as_bytes());
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else if ft.is_char_device() {
                "chardev"
            } else if ft.is_block_device() {
                "blockdev"
            } else if ft.is_fifo() {
                "fifo"
            } else {
                "socket"
            };
            let target = if ft.is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            } else {
                Vec::new()
            };
            let mut xattrs = BTreeMap::new();
            if !ft.is_symlink() {
                // EOPNOTSUPP: a clip mount of an image without any xattrs.
                let names = match xattr::list(&p) {
                    Ok(names) => names.collect(),
                    Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Vec::new(),
                    Err(e) => panic!("listxattr {}: {e}", p.display()),
                };
                for name in names {
                    let n = name.as_bytes();
                    // umoci drops no xattrs we index; skip kernel-managed security labels.
                    if n.starts_with(b"security.selinux") {
                        continue;
                    }
                    xattrs.insert(
                        n.to_vec(),
                        xattr::get(&p, &name).unwrap().unwrap_or_default(),
                    );
                }
            }
            let rdev = if ft.is_char_device() || ft.is_block_device() {
                let r = md.rdev();
                (libc::major(r), libc::minor(r))
            } else {
                (0, 0)
            };
            if ft.is_dir() {
                stack.push(p.clone());
            } else {
                groups
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .push(key.clone());
            }
            out.insert(
                key,
                Entry {
                    kind,
                    mode: if ft.is_symlink() {
                        0
                    } else {
                        md.mode() & 0o7777
                    },
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_file() { md.size() } else { 0 },
                    target,
                    rdev,
                    xattrs,
                },
            );
        }
    }
    (out, groups)
}

/// Run and node dirs of one privileged test (`--run-dir`/`--node-dir`); on
/// drop, every container it mounted is unmounted, then the dirs are removed.
pub struct Dirs {
    /// The test's temporary directory (run dir and node dir live inside).
    pub tmp: tempfile::TempDir,
    /// Containers mounted so far (unmounted on drop).
    pub cids: Vec<String>,
    /// `--fuse-transport` of every mount (None: the default, auto).
    pub transport: Option<&'static str>,
    /// Environment of every `clipctl mount` (and so of the daemons it
    /// starts), e.g. `SSL_CERT_FILE`, `REGISTRY_AUTH_FILE`.
    pub env: Vec<(String, String)>,
    /// `--node-dir` when not `tmp/node` ([`Dirs::sharing_node`]).
    pub node: Option<PathBuf>,
}

impl Dirs {
    /// Fresh, empty dirs.
    pub fn new() -> Self {
        Dirs {
            tmp: tempdir(),
            cids: Vec::new(),
            transport: None,
            env: Vec::new(),
            node: None,
        }
    }

    /// Fresh run dirs on the node dir of `other`: mounts of the same image
    /// get a daemon of their own, sharing the node's store with `other`'s.
    pub fn sharing_node(other: &Dirs) -> Self {
        let mut d = Dirs::new();
        d.node = Some(other.node_dir());
        d
    }

    /// Fresh dirs whose mounts use FUSE transport `t` (`dev`, `uring`).
    pub fn over(t: &'static str) -> Self {
        let mut d = Dirs::new();
        d.transport = Some(t);
        d
    }
    /// `--run-dir` of this test.
    pub fn run_dir(&self) -> PathBuf {
        self.tmp.path().join("run")
    }
    /// `clipctl metrics --cid CID --format json` of this test's run dir.
    pub fn metrics_json(&self, cid: &str) -> serde_json::Value {
        let run_dir = self.run_dir();
        let o = run(&[
            "metrics",
            "--cid",
            cid,
            "--format",
            "json",
            "--run-dir",
            run_dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "clipctl metrics: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// `--node-dir` of this test.
    pub fn node_dir(&self) -> PathBuf {
        self.node
            .clone()
            .unwrap_or_else(|| self.tmp.path().join("node"))
    }
    /// `clipctl mount --cid` with this test's dirs; returns the rootfs.
    pub fn mount(&mut self, cid: &str, extra: &[&str]) -> Result<PathBuf, String> {
        let o = self.mount_output(cid, extra);
        if !o.status.success() {
            return Err(stderr(&o));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    }
    /// `clipctl mount --cid` with this test's dirs; its whole output.
    pub fn mount_output(&mut self, cid: &str, extra: &[&str]) -> Output {
        let (r, n) = (self.run_dir(), self.node_dir());
        let mut args = vec![
            "mount",
            "--cid",
            cid,
            "--run-dir",
            r.to_str().unwrap(),
            "--node-dir",
            n.to_str().unwrap(),
        ];
        if let Some(t) = self.transport {
            args.extend(["--fuse-transport", t]);
        }
        args.extend_from_slice(extra);
        let o = clipctl()
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("spawn clipctl");
        if o.status.success() {
            self.cids.push(cid.to_string());
        }
        o
    }
    /// `clipctl ps --json` of this test's run dir.
    pub fn ps(&self) -> serde_json::Value {
        let o = run(&[
            "ps",
            "--json",
            "--run-dir",
            self.run_dir().to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
    /// `clipctl umount --cid` with this test's run dir.
    pub fn umount(&self, cid: &str) -> Output {
        run(&[
            "umount",
            "--cid",
            cid,
            "--run-dir",
            self.run_dir().to_str().unwrap(),
        ])
    }
    /// The FUSE transport the daemon of container `cid` serves with, from
    /// `clipctl ps --json`.
    pub fn transport_of(&self, cid: &str) -> Option<String> {
        let o = run(&[
            "ps",
            "--json",
            "--run-dir",
            self.run_dir().to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v.as_array()?
            .iter()
            .find(|c| c["cid"] == cid)?
            .get("fuse_transport")?
            .as_str()
            .map(str::to_string)
    }

    /// The FUSE mountpoint of the (one) image this test mounted.
    pub fn image_mnt(&self) -> PathBuf {
        std::fs::read_dir(self.run_dir().join("images"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir())
            .expect("an image dir")
            .join("mnt")
    }

    /// A small local image (an OCI layout of [`small_tar`], no registry
    /// needed) indexed into `tmp/image.clip`; returns that path.
    pub fn local_image(&self) -> PathBuf {
        let layout = self.tmp.path().join("layout");
        write_layout(&layout, &[tar_layer(&small_tar())], None);
        index_layout(&layout, &self.tmp.path().join("image.clip"), &[])
    }

    /// What a failed cleanup check needs to be diagnosed: the mounts left,
    /// every path under the run dir (the FUSE mounts not entered), and the
    /// tail of each daemon log with whether its pid still runs.
    pub fn explain(&self) -> String {
        let mounts = self.mounts_left();
        let mut out = format!("mounts left: {mounts:#?}\nrun dir:\n");
        let mut stack = vec![self.run_dir()];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                let p = e.path();
                let kind = e.file_type().map(|t| format!("{t:?}")).unwrap_or_default();
                out.push_str(&format!("  {} {kind}\n", p.display()));
                let name = p.to_string_lossy().into_owned();
                let mounted = mounts.iter().any(|m| m.contains(&format!(" {name} ")));
                if e.file_type().is_ok_and(|t| t.is_dir()) && !mounted {
                    stack.push(p.clone());
                }
                if p.file_name().is_some_and(|n| n == "daemon.log") {
                    let text = std::fs::read_to_string(&p).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
                    out.push_str(&format!("--- tail of {} ---\n{tail}\n", p.display()));
                }
                if p.file_name().is_some_and(|n| n == "daemon.pid") {
                    let pid = pid_in(&p);
                    let alive = Path::new(&format!("/proc/{pid}")).exists();
                    out.push_str(&format!("  (pid {pid} alive: {alive})\n"));
                }
            }
        }
        out
    }

    /// Lines of /proc/self/mountinfo under this test's dirs.
    pub fn mounts_left(&self) -> Vec<String> {
        let base = self.tmp.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&base))
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Dirs {
    fn drop(&mut self) {
        for cid in &self.cids {
            let _ = self.umount(cid);
        }
    }
}

/// The pid in a daemon's pid file (`<pid> <start time>`).
pub fn pid_in(pid_file: &Path) -> u32 {
    std::fs::read_to_string(pid_file)
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a pid")
}

/// Whether something is mounted at exactly `path` (this namespace).
pub fn is_mounted_at(path: &Path) -> bool {
    clip::mount::is_mounted(path)
}

/// `clipctl index --layout DIR:latest --out OUT (extra…)`; returns OUT.
pub fn index_layout(layout: &Path, out: &Path, extra: &[&str]) -> PathBuf {
    let spec = format!("{}:latest", layout.display());
    let mut args = vec!["index", "--layout", &spec, "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = run(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    out.to_path_buf()
}

/// `clipctl index --image reference` into `dir/image.clip`; returns its path.
pub fn index_image(dir: &Path, reference: &str) -> PathBuf {
    let out = dir.join("image.clip");
    let o = run(&[
        "index",
        "--image",
        reference,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    out
}

/// A private copy of a test image ([`private_copy`]); removed from the
/// registry (the image manifest, what is attached to it and the tag schema
/// index) on drop, best effort.
#[derive(Debug)]
pub struct PrivateImage {
    /// `registry/repo:latest`.
    pub reference: String,
}

impl Drop for PrivateImage {
    fn drop(&mut self) {
        let Some((registry, rest)) = self.reference.split_once('/') else {
            return;
        };
        let repo = rest.trim_end_matches(":latest");
        let base = format!("http://{registry}/v2/{repo}/manifests");
        let accept = "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";
        let curl = |args: &[&str]| {
            Command::new("curl")
                .args(["-fsS", "-H", accept])
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let digest_of = |url: &str| {
            curl(&["-I", url])?.lines().find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("docker-content-digest:")
                    .map(|d| d.trim().to_string())
            })
        };
        let Some(image) = digest_of(&format!("{base}/latest")) else {
            return;
        };
        let tag = format!("{base}/sha256-{}", image.trim_start_matches("sha256:"));
        let mut doomed: Vec<String> = curl(&[&tag])
            .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                let list = v["manifests"].as_array()?.iter();
                Some(
                    list.filter_map(|m| m["digest"].as_str().map(str::to_string))
                        .collect(),
                )
            })
            .unwrap_or_default();
        doomed.extend(digest_of(&tag));
        doomed.push(image);
        for d in doomed {
            let _ = curl(&["-o", "/dev/null", "-X", "DELETE", &format!("{base}/{d}")]);
        }
    }
}

/// Copies test image `name` of the registry into a repository of its own
/// (same manifest digest, blobs mounted across repositories), so that what
/// a test attaches to it is seen by that test alone.
pub fn private_copy(registry: &str, name: &str) -> PrivateImage {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let to = format!("{registry}/clip/{name}-{}-{n}:latest", std::process::id());
    let o = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
        ])
        .arg(format!("docker://{}", image_ref(registry, name)))
        .arg(format!("docker://{to}"))
        .output()
        .expect("skopeo (scripts/install-deps.sh installs it)");
    assert!(o.status.success(), "skopeo copy: {}", stderr(&o));
    PrivateImage { reference: to }
}
