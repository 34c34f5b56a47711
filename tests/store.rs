//! The node's chunk store under live daemons (docs/store.md): two daemons
//! sharing a small store while its files are damaged, a store file
//! truncated under a daemon, a full or read-only store directory. Every
//! byte read through the mounts is compared with the umoci-unpacked tree.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::{self, index_image, stderr, Dirs};
use crate::require;

/// Regular files under `root`, relative, sorted.
fn files_of(root: &Path) -> Vec<PathBuf> {
    fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(root.join(rel)).unwrap().flatten() {
            let t = e.file_type().unwrap();
            let r = rel.join(e.file_name());
            if t.is_dir() {
                walk(root, &r, out);
            } else if t.is_file() {
                out.push(r);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, Path::new(""), &mut out);
    out.sort();
    out
}

/// `path` read through the mount, its page cache dropped first so the
/// read reaches the daemon.
fn read_cold(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let _ = rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut out).unwrap();
    out
}

/// Reads every file of `want` (the unpacked tree) through `mnt`; returns
/// how many differed.
fn compare_all(mnt: &Path, want: &Path, files: &[PathBuf], seed: usize) -> usize {
    let mut bad = 0;
    for i in 0..files.len() {
        let rel = &files[(i * 7 + seed) % files.len()];
        let got = read_cold(&mnt.join(rel));
        if got != std::fs::read(want.join(rel)).unwrap() {
            eprintln!("wrong bytes in {}", rel.display());
            bad += 1;
        }
    }
    bad
}

fn counters(d: &Dirs, cid: &str) -> serde_json::Value {
    d.metrics_json(cid)["images"][0]["counters"].clone()
}

/// Apparent bytes and allocated bytes of the store's slab files.
fn slab_bytes(store: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut out = (0, 0);
    for e in std::fs::read_dir(store).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("slab-") {
            let m = e.metadata().unwrap();
            out.0 += m.len();
            out.1 += m.blocks() * 512;
        }
    }
    out
}

/// Flips a random bit of a random store file (table records or slabs)
/// every millisecond until `stop`.
fn flipper(
    store: PathBuf,
    stop: Arc<AtomicBool>,
    flips: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while !stop.load(Ordering::Relaxed) {
            for e in std::fs::read_dir(&store).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let skip = if name == "table" { 4096 } else { 0 };
                if !(name == "table" || name.starts_with("slab-")) {
                    continue;
                }
                let Ok(f) = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(e.path())
                else {
                    continue;
                };
                let len = f.metadata().unwrap().len();
                if len <= skip {
                    continue;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = skip + x % (len - skip);
                let mut b = [0u8];
                if rustix::io::pread(&f, &mut b, at) == Ok(1) {
                    b[0] ^= 1 << (x >> 60 & 7);
                    let _ = rustix::io::pwrite(&f, &b, at);
                    flips.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    })
}

/// Two daemons of the tiny image (two run dirs on one node dir) fill and
/// evict a 2 MiB store (8 slots for an 8 MB image) at once, two readers
/// each, while a thread flips bits in the store's files: no wrong byte is
/// served and the slabs stay within the budget.
#[test]
fn privileged_two_daemons_share_a_small_store_under_damage() {
    let reg = require!(
        common::privileged_registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let testbed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let want = testbed.join("unpacked/tiny/rootfs");
    let mut a = Dirs::new();
    let mut b = Dirs::sharing_node(&a);
    let clip = index_image(a.tmp.path(), &common::image_ref(&reg, "tiny"));
    let budget = 2u64 << 20;
    let args = [
        "--clip",
        clip.to_str().unwrap(),
        "--disk-cache",
        "2M",
        "--memory-cache",
        "1M",
        "--profile",
        "off",
        "--warm",
        "off",
    ];
    let ra = a.mount("store-a", &args).unwrap();
    let rb = b.mount("store-b", &args).unwrap();
    let store = a.node_dir().join("store");
    let files = files_of(&want);
    assert!(files.len() > 10);

    let stop = Arc::new(AtomicBool::new(false));
    let flips = Arc::new(AtomicU64::new(0));
    let flip = flipper(store.clone(), stop.clone(), flips.clone());
    let bad: usize = std::thread::scope(|s| {
        let readers: Vec<_> = [(&ra, 0), (&ra, 1), (&rb, 2), (&rb, 3)]
            .into_iter()
            .map(|(root, seed)| {
                let (want, files) = (&want, &files);
                s.spawn(move || {
                    (0..3)
                        .map(|pass| compare_all(root, want, files, seed * 5 + pass))
                        .sum::<usize>()
                })
            })
            .collect();
        readers.into_iter().map(|r| r.join().unwrap()).sum()
    });
    stop.store(true, Ordering::Relaxed);
    flip.join().unwrap();
    assert_eq!(bad, 0, "wrong bytes served");
    assert!(flips.load(Ordering::Relaxed) > 10);

    let (apparent, allocated) = slab_bytes(&store);
    assert!(
        apparent <= budget && allocated <= budget,
        "{apparent} {allocated}"
    );
    let (ca, cb) = (counters(&a, "store-a"), counters(&b, "store-b"));
    eprintln!("a: {ca}\nb: {cb}");
    for c in [&ca, &cb] {
        assert!(c["disk_writes"].as_u64().unwrap() > 0, "{c}");
        assert!(c["rss_anon_bytes"].as_u64().unwrap() > 0, "{c}");
    }
    let evictions = ca["disk_evictions"].as_u64().unwrap() + cb["disk_evictions"].as_u64().unwrap();
    assert!(evictions > 0);
    // Both daemons are still serving.
    assert!(ra.join(&files[0]).exists() && rb.join(&files[0]).exists());
    for (d, cid) in [(&a, "store-a"), (&b, "store-b")] {
        let o = d.umount(cid);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    a.cids.clear();
    b.cids.clear();
}

/// A slab file truncated to nothing under a running daemon: the daemon
/// neither dies (no SIGBUS) nor serves wrong bytes; it refetches, and the
/// store heals as it writes again.
#[test]
fn privileged_a_store_file_truncated_under_a_daemon() {
    let reg = require!(
        common::privileged_registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let testbed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let want = testbed.join("unpacked/tiny/rootfs");
    let mut d = Dirs::new();
    let clip = index_image(d.tmp.path(), &common::image_ref(&reg, "tiny"));
    let root = d
        .mount(
            "trunc",
            &[
                "--clip",
                clip.to_str().unwrap(),
                "--disk-cache",
                "64M",
                "--profile",
                "off",
            ],
        )
        .unwrap();
    let files = files_of(&want);
    assert_eq!(compare_all(&root, &want, &files, 0), 0);
    let store = d.node_dir().join("store");
    let before = counters(&d, "trunc");
    assert!(before["disk_writes"].as_u64().unwrap() > 0, "{before}");
    for e in std::fs::read_dir(&store).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("slab-") {
            std::fs::OpenOptions::new()
                .write(true)
                .open(e.path())
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
    for pass in 0..2 {
        assert_eq!(compare_all(&root, &want, &files, pass), 0);
    }
    let after = counters(&d, "trunc");
    assert!(after["disk_damaged"].as_u64().unwrap() > 0, "{after}");
    assert!(after["disk_hits"].as_u64().unwrap() > before["disk_hits"].as_u64().unwrap());
    let o = d.umount("trunc");
    assert!(o.status.success(), "{}", stderr(&o));
    d.cids.clear();
}

/// A tmpfs mounted at `path` (unmounted lazily on drop).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(o.status.success(), "mount tmpfs: {}", stderr(&o));
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A store on a full file system (a 512 KiB tmpfs for a 4 MiB budget) or
/// a read-only one: every byte is served (from the network), the errors
/// are counted.
#[test]
fn privileged_a_full_or_read_only_store_serves_from_the_network() {
    let reg = require!(
        common::privileged_registry(),
        "CLIP_TEST_REGISTRY not set (run scripts/test.sh)"
    );
    let testbed = require!(
        common::testbed(),
        "CLIP_TESTBED not set (run scripts/test.sh)"
    );
    let want = testbed.join("unpacked/tiny/rootfs");
    let files = files_of(&want);
    for (cid, opts) in [("full", "size=512k,mode=0700"), ("ro", "ro,size=1m")] {
        let top = common::tempdir();
        let clip = index_image(top.path(), &common::image_ref(&reg, "tiny"));
        // The daemon is unmounted and `d` dropped before the tmpfs goes.
        let mut d = Dirs::new();
        let _fs = Tmpfs::mount(&d.node_dir().join("store"), opts);
        let root = d
            .mount(
                cid,
                &[
                    "--clip",
                    clip.to_str().unwrap(),
                    "--disk-cache",
                    "4M",
                    "--profile",
                    "off",
                ],
            )
            .unwrap();
        assert_eq!(compare_all(&root, &want, &files, 0), 0, "{cid}");
        let c = counters(&d, cid);
        assert!(c["disk_errors"].as_u64().unwrap() > 0, "{cid}: {c}");
        let o = d.umount(cid);
        assert!(o.status.success(), "{}", stderr(&o));
        d.cids.clear();
        drop(d);
    }
}
