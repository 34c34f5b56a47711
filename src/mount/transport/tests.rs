//! The transport choice, the READ hand-off's answer-once rules, and (as
//! root) the fallback to `/dev/fuse` when the kernel does not offer
//! io_uring. The stalled-registry behaviour through real mounts is tested
//! end to end in `tests/stall.rs`.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::handoff::{Answer, Handoff, ReadReply, ReadRequest};
use super::*;
use crate::cache::{CacheError, ContentReader};
use crate::format::{Index, ROOT_INO};
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::Metrics;
use crate::mount::tests::{layer0, skip_unless_privileged, write_image, MemContent, URING_PARAM};
use crate::mount::{serve_with, ServeOptions};

#[test]
fn transport_names_parse() {
    for (s, t) in [
        ("auto", FuseTransport::Auto),
        ("uring", FuseTransport::Uring),
        ("io_uring", FuseTransport::Uring),
        ("dev", FuseTransport::Dev),
    ] {
        assert_eq!(s.parse::<FuseTransport>().unwrap(), t);
    }
    assert_eq!(FuseTransport::Uring.to_string(), "uring");
    let e = "fuse".parse::<FuseTransport>().unwrap_err();
    assert!(e.contains("auto, uring or dev"), "{e}");
}

/// [`MemContent`] whose reads wait while the gate is closed.
#[derive(Debug)]
struct Gated {
    inner: MemContent,
    open: Mutex<bool>,
    cv: Condvar,
    reads: AtomicBool,
}

impl Gated {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

impl ContentReader for Gated {
    fn read(&self, layer: u32, offset: u64, buf: &mut [u8]) -> Result<usize, CacheError> {
        self.reads.store(true, Ordering::SeqCst);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.cv.wait(open).unwrap();
        }
        drop(open);
        self.inner.read(layer, offset, buf)
    }
}

/// Collects the replies of handed-off reads.
struct Replies(Mutex<mpsc::Sender<(u64, ReadReply)>>);

impl Answer for Replies {
    fn send(&self, unique: u64, reply: ReadReply) {
        let _ = self.0.lock().unwrap().send((unique, reply));
    }
}

#[test]
fn handed_off_reads_are_answered_once_by_bytes_deadline_or_interrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let clip = write_image(tmp.path(), "handoff");
    let index = Arc::new(Index::open(&clip).unwrap());
    let big = index.lookup(ROOT_INO, b"big").unwrap().unwrap();
    let gate = Arc::new(Gated {
        inner: MemContent(vec![layer0()]),
        open: Mutex::new(false),
        cv: Condvar::new(),
        reads: AtomicBool::new(false),
    });
    let fs = Arc::new(ClipFs::new(index, gate.clone(), FsConfig::default()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let timeout = Duration::from_millis(300);
    let h = Handoff::start(fs.clone(), timeout, Some(metrics.clone())).unwrap();
    let (tx, rx) = mpsc::channel();
    let answer = || Box::new(Replies(Mutex::new(tx.clone())));
    let req = |unique| ReadRequest {
        unique,
        ino: big,
        offset: 4096,
        size: 65536,
    };

    // The source never answers: EIO at the deadline, not before.
    let t = Instant::now();
    h.submit(req(2), answer());
    let (u, r) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let took = t.elapsed();
    assert_eq!(u, 2);
    assert!(matches!(r, ReadReply::Error(libc::EIO)), "{r:?}");
    assert!(took >= timeout && took < timeout * 10, "{took:?}");
    assert!(gate.reads.load(Ordering::SeqCst), "the read was started");

    // An interrupt answers EINTR at once, and only once.
    h.submit(req(4), answer());
    std::thread::sleep(Duration::from_millis(20));
    assert!(h.interrupt(4));
    let (u, r) = rx.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(u, 4);
    assert!(matches!(r, ReadReply::Error(libc::EINTR)), "{r:?}");
    assert!(!h.interrupt(4), "already answered");
    assert!(!h.interrupt(99), "never handed off");

    // Bytes once the source answers; the reads that lost their race finish
    // in the background without a second answer.
    gate.open();
    h.submit(req(6), answer());
    let (u, r) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(u, 6);
    let ReadReply::Data(d) = r else {
        panic!("{r:?}")
    };
    let mut want = vec![0u8; 65536];
    let n = MemContent(vec![layer0()])
        .read(0, 1024 + 4096, &mut want)
        .unwrap();
    assert_eq!(d, want[..n], "handed-off bytes");
    std::thread::sleep(timeout * 2);
    assert!(rx.try_recv().is_err(), "a request was answered twice");
    assert_eq!(h.waiting(), 0);
    let snap = metrics.snapshot(Default::default());
    assert_eq!(snap.errors["timeout"], 1, "{:?}", snap.errors);
    assert_eq!(snap.fuse_ops["read"].count, 3);
    assert_eq!(snap.fuse_op_errors["read"], 2);
    h.close();
}

/// Mounts the test image with `opts` and reads a file through it.
fn mount_and_read(
    dir: &std::path::Path,
    opts: &ServeOptions,
) -> Result<Option<TransportKind>, MountError> {
    let clip = write_image(dir, "param");
    let mnt = dir.join(format!("mnt-{:?}", Instant::now()));
    std::fs::create_dir(&mnt).unwrap();
    let index = Arc::new(Index::open(&clip).unwrap());
    let fs = ClipFs::new(
        index,
        Arc::new(MemContent(vec![layer0()])),
        FsConfig::default(),
    )
    .unwrap();
    let h = serve_with(&mnt, fs, opts)?;
    let f = std::fs::File::open(mnt.join("hello")).unwrap();
    let mut b = [0u8; 5];
    f.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(&b, b"hello");
    drop(f);
    let kind = h.transport();
    h.unmount().unwrap();
    Ok(kind)
}

#[test]
fn privileged_transport_follows_the_module_parameter() {
    if skip_unless_privileged() {
        return;
    }
    let Some(was_on) = uring_param() else {
        // No FUSE over io_uring in this kernel: auto must use /dev/fuse and
        // uring must refuse.
        let tmp = tempfile::tempdir().unwrap();
        let auto = ServeOptions::default();
        assert_eq!(
            mount_and_read(tmp.path(), &auto).unwrap(),
            Some(TransportKind::Dev)
        );
        return;
    };
    let _param = URING_PARAM.write().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let opts = |transport, may_enable_uring| ServeOptions {
        transport: TransportOptions {
            transport,
            may_enable_uring,
            ..TransportOptions::default()
        },
        ..ServeOptions::default()
    };
    std::fs::write(ENABLE_URING_PARAM, "N").unwrap();
    let restore = |on: bool| {
        let _ = std::fs::write(ENABLE_URING_PARAM, if on { "Y" } else { "N" });
    };
    // Off and not to be touched: auto falls back, uring refuses, dev is dev.
    let auto_off = mount_and_read(tmp.path(), &opts(FuseTransport::Auto, false));
    let uring_off = mount_and_read(tmp.path(), &opts(FuseTransport::Uring, false));
    let dev = mount_and_read(tmp.path(), &opts(FuseTransport::Dev, true));
    let param_after_dev = uring_param();
    // Off, but auto may switch it on (root).
    let auto_on = mount_and_read(tmp.path(), &opts(FuseTransport::Auto, true));
    let param_after_auto = uring_param();
    restore(was_on);
    assert_eq!(auto_off.unwrap(), Some(TransportKind::Dev));
    let e = uring_off.unwrap_err().to_string();
    assert!(e.contains("enable_uring") && e.contains("off"), "{e}");
    assert_eq!(dev.unwrap(), Some(TransportKind::Dev));
    assert_eq!(
        param_after_dev,
        Some(false),
        "dev must not touch the parameter"
    );
    assert_eq!(auto_on.unwrap(), Some(TransportKind::Uring));
    assert_eq!(param_after_auto, Some(true));
}
