//! A registry that stops answering stalls only the reads that need it:
//! metadata and cached reads of the same mount keep answering, an
//! interrupted read returns at once, and a stalled read ends in EIO at its
//! deadline. On both FUSE transports, with more stalled reads than the
//! daemon has `/dev/fuse` workers or io_uring queues. The registry is the
//! real one, behind an in-process TCP proxy that can stop forwarding.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{self, index_image, run, stderr, Dirs};
use crate::require;

/// Forwards TCP connections to the registry until stalled; a stalled proxy
/// accepts and holds connections but passes no byte either way.
struct Proxy {
    addr: String,
    stalled: Arc<AtomicBool>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stalled = Arc::new(AtomicBool::new(false));
        let (up, st) = (upstream.to_string(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(&up) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let st = st.clone();
                    std::thread::spawn(move || pump(from, to, &st));
                }
            }
        });
        Proxy { addr, stalled }
    }

    fn stall(&self, on: bool) {
        self.stalled.store(on, Ordering::SeqCst);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, stalled: &AtomicBool) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Regular files of the ground truth, path relative to the root, by size.
fn files(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                out.push((e.path().strip_prefix(root).unwrap().to_path_buf(), md.len()));
            }
        }
    }
    out.sort();
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// One READ of `len` bytes at `off` with O_DIRECT: always a FUSE READ
/// (never the page cache), synchronous, so a signal interrupts it.
fn direct_read(path: &Path, off: u64, len: usize) -> std::io::Result<usize> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let mut buf = vec![0u8; len];
    f.read_at(&mut buf, off)
}

#[test]
fn privileged_stalled_registry_stalls_only_its_reads_over_dev() {
    stalled_registry("dev");
}

#[test]
fn privileged_stalled_registry_stalls_only_its_reads_over_uring() {
    stalled_registry("uring");
}

fn stalled_registry(transport: &'static str) {
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
    let truth = bed.join("unpacked/python/rootfs");
    let all = files(&truth);
    let cached = PathBuf::from("usr/lib/python3.11/os.py");
    assert!(all.iter().any(|(p, _)| *p == cached));
    // Big files read in their middle: no chunk shared with os.py.
    let big: Vec<PathBuf> = all
        .iter()
        .filter(|(_, n)| *n > 4 << 20)
        .map(|(p, _)| p.clone())
        .take(4)
        .collect();
    assert_eq!(big.len(), 4, "the python image has big files");
    let fresh: Vec<PathBuf> = all
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| p.starts_with("usr/share") && !big.contains(p))
        .take(8)
        .collect();

    let proxy = Proxy::start(&reg);
    let reference = format!("{}/clip/python:latest", proxy.addr);
    let mut d = Dirs::over(transport);
    let clip = index_image(d.tmp.path(), &reference);
    let timeout = Duration::from_secs(4);
    d.mount(
        "stall",
        &[
            "--clip",
            clip.to_str().unwrap(),
            "--disk-cache",
            "0",
            "--profile",
            "off",
            "--threads",
            "2",
            "--read-timeout",
            "4s",
        ],
    )
    .unwrap();
    assert_eq!(d.transport_of("stall").as_deref(), Some(transport));
    let image_dir = std::fs::read_dir(d.run_dir().join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let mnt = image_dir.join("mnt");
    let want = std::fs::read(truth.join(&cached)).unwrap();
    assert_eq!(std::fs::read(mnt.join(&cached)).unwrap(), want);

    proxy.stall(true);
    // More stalled reads than workers (2) or queues (one per CPU).
    let readers: Vec<_> = big[..3]
        .iter()
        .map(|p| {
            let path = mnt.join(p);
            std::thread::spawn(move || {
                let t = Instant::now();
                let f = std::fs::File::open(&path).unwrap();
                let r = f.read_at(&mut vec![0u8; 65536], 1 << 20);
                (t.elapsed(), r.map_err(|e| e.raw_os_error()))
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let (mut stats, mut reads) = (Vec::new(), Vec::new());
    for p in &fresh {
        let t = Instant::now();
        std::fs::metadata(mnt.join(p)).unwrap();
        stats.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(
            direct_read(&mnt.join(&cached), 0, want.len()).unwrap(),
            want.len()
        );
        reads.push(t.elapsed());
    }
    eprintln!("{transport}: with 3 reads stalled, stat {stats:?}, cached read {reads:?}");
    assert!(
        readers.iter().all(|r| !r.is_finished()),
        "reads did not stall"
    );
    for (what, v) in [("stat", &stats), ("cached read", &reads)] {
        let (med, max) = (median(v.clone()), v.iter().max().copied().unwrap());
        assert!(
            med < Duration::from_millis(50),
            "{what}: median {med:?} >= 50 ms"
        );
        assert!(max < Duration::from_secs(2), "{what}: blocked for {max:?}");
    }

    // A stalled read whose process is killed: FUSE_INTERRUPT answers it.
    let mut dd = Command::new("dd")
        .arg(format!("if={}", mnt.join(&big[3]).display()))
        .args([
            "of=/dev/null",
            "bs=64k",
            "count=1",
            "skip=16",
            "iflag=direct",
        ])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dd.try_wait().unwrap().is_none(),
        "the direct read did not stall"
    );
    let t = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &dd.id().to_string()])
        .status()
        .unwrap()
        .success());
    while dd.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "an interrupted read still waits"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "{transport}: interrupted read returned after {:?}",
        t.elapsed()
    );

    // The stalled reads end in EIO at their deadline.
    for r in readers {
        let (took, res) = r.join().unwrap();
        assert_eq!(res, Err(Some(libc::EIO)), "after {took:?}");
        assert!(
            took >= timeout - Duration::from_millis(600) && took < timeout * 4,
            "EIO after {took:?}"
        );
    }
    let o = run(&[
        "metrics",
        "--cid",
        "stall",
        "--format",
        "json",
        "--run-dir",
        d.run_dir().to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let img = &m["images"][0];
    assert_eq!(img["fuse_transport"], transport, "{m}");
    assert!(img["errors"]["timeout"].as_u64() >= Some(3), "{m}");
    for (format, needle) in [
        ("prometheus", format!("transport=\"{transport}\"}} 1")),
        ("text", format!("transport   {transport}")),
    ] {
        let o = run(&[
            "metrics",
            "--cid",
            "stall",
            "--format",
            format,
            "--run-dir",
            d.run_dir().to_str().unwrap(),
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains(&needle), "{format}: {out}");
    }

    proxy.stall(false);
    assert!(d.umount("stall").status.success());
    d.cids.clear();
    assert!(d.mounts_left().is_empty(), "{}", d.explain());
}
