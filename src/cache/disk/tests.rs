//! Unit tests of the chunk store: round trips, persistence, the budget,
//! damage, truncation, planted files, two stores sharing a directory.

use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::AtomicBool;

use super::*;
use crate::metrics::Metrics;

fn chunk(seed: u32, len: usize) -> (Digest, Vec<u8>) {
    let data: Vec<u8> = (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(97)) as u8
                ^ (i >> 11) as u8
        })
        .collect();
    (Digest::of(&data), data)
}

fn open(dir: &Path, budget: u64) -> (DiskCache, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    (DiskCache::open(dir, budget, m.clone()).unwrap(), m)
}

fn slab_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("slab-")
        })
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_partial_reads_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (s, m) = open(&dir, 8 << 20);
    assert_eq!(
        std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let (d, data) = chunk(1, 200_001);
    assert!(!s.contains(&d, data.len()));
    assert!(s.put(&d, &data));
    assert!(s.contains(&d, data.len()));
    assert!(!s.contains(&d, data.len() - 1));
    assert_eq!(s.get(&d, data.len()).unwrap(), data);
    // Unaligned pieces across page boundaries.
    for (from, n) in [
        (0, 1),
        (4095, 2),
        (5000, 9000),
        (123_457, 4096),
        (196_000, 4001),
    ] {
        let mut buf = vec![0u8; n];
        assert!(s.read_at(&d, data.len(), from, &mut buf));
        assert_eq!(buf, data[from..from + n]);
    }
    let mut past = vec![0u8; 10];
    assert!(!s.read_at(&d, data.len(), data.len() - 5, &mut past));
    assert_eq!(m.snapshot(Default::default()).counters.disk_writes, 1);
    drop(s);
    // A restarted daemon finds it.
    let (s, _) = open(&dir, 8 << 20);
    assert_eq!(s.get(&d, data.len()).unwrap(), data);
    // Too large for a slot: not stored.
    let (big, bigdata) = chunk(2, SLOT_BYTES + 1);
    assert!(!s.put(&big, &bigdata));
}

#[test]
fn stays_within_its_budget_and_evicts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let budget = 3 << 20; // 12 slots
    let (s, m) = open(&dir, budget);
    assert!(s.capacity() <= budget);
    let chunks: Vec<_> = (0..60).map(|i| chunk(i, SLOT_BYTES - i as usize)).collect();
    for (d, data) in &chunks {
        assert!(s.put(d, data));
    }
    let held = chunks
        .iter()
        .filter(|(d, data)| s.contains(d, data.len()))
        .count();
    assert!((8..=12).contains(&held), "{held}");
    let c = m.snapshot(Default::default()).counters;
    assert_eq!(c.disk_writes, 60);
    assert!(c.disk_evictions >= 48, "{c:?}");
    let bytes: u64 = slab_files(&dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes <= budget, "{bytes}");
    // What is held reads back right.
    for (d, data) in &chunks {
        if let Some(got) = s.get(d, data.len()) {
            assert_eq!(&got, data);
        }
    }
}

#[test]
fn damaged_bytes_are_never_served() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (s, m) = open(&dir, 4 << 20);
    let chunks: Vec<_> = (0..8).map(|i| chunk(i, SLOT_BYTES)).collect();
    for (d, data) in &chunks {
        assert!(s.put(d, data));
    }
    // Flip one byte in every slot's first page, through the file.
    let slab = &slab_files(&dir)[0];
    let mut bytes = std::fs::read(slab).unwrap();
    for slot in 0..bytes.len() / SLOT_BYTES {
        bytes[slot * SLOT_BYTES + 100] ^= 0x5a;
    }
    std::fs::write(slab, &bytes).unwrap();
    for (d, data) in &chunks {
        // A read of a page not flipped is still served...
        let mut tail = vec![0u8; 100];
        if s.read_at(d, data.len(), 8192, &mut tail) {
            assert_eq!(tail, data[8192..8292]);
        }
        // ...one of the flipped page never.
        assert!(s.get(d, data.len()).is_none());
        assert!(!s.contains(d, data.len()), "a damaged slot is freed");
    }
    assert!(m.snapshot(Default::default()).counters.disk_damaged >= 8);
    // Stored again, served again.
    for (d, data) in &chunks {
        assert!(s.put(d, data));
        assert_eq!(&s.get(d, data.len()).unwrap(), data);
    }
}

#[test]
fn a_truncated_file_is_a_miss_not_a_crash() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let (s, m) = open(&dir, 4 << 20);
    let chunks: Vec<_> = (0..6).map(|i| chunk(i + 10, SLOT_BYTES - 7)).collect();
    for (d, data) in &chunks {
        assert!(s.put(d, data));
    }
    let slab = &slab_files(&dir)[0];
    std::fs::OpenOptions::new()
        .write(true)
        .open(slab)
        .unwrap()
        .set_len(0)
        .unwrap();
    for (d, data) in &chunks {
        assert!(s.get(d, data.len()).is_none());
    }
    assert!(m.snapshot(Default::default()).counters.disk_damaged >= 1);
    // The next write restores the file; everything stored is served.
    for (d, data) in &chunks {
        assert!(s.put(d, data));
    }
    for (d, data) in &chunks {
        assert_eq!(&s.get(d, data.len()).unwrap(), data);
    }
    // A truncated table: the store turns itself off.
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("table"))
        .unwrap()
        .set_len(100)
        .unwrap();
    for (d, data) in &chunks {
        let _ = s.get(d, data.len());
        let _ = s.put(d, data);
    }
    assert!(!s.contains(&chunks[0].0, chunks[0].1.len()));
    assert!(m.snapshot(Default::default()).counters.disk_errors >= 1);
    drop(s);
    // A new store over the directory starts afresh.
    let (s, _) = open(&dir, 4 << 20);
    assert!(s.get(&chunks[0].0, chunks[0].1.len()).is_none());
    assert!(s.put(&chunks[0].0, &chunks[0].1));
}

#[test]
fn planted_symlinks_and_fifos_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("elsewhere");
    std::fs::write(&target, b"keep").unwrap();
    let dir = tmp.path().join("a");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("table")).unwrap();
    let m = Arc::new(Metrics::new());
    assert!(DiskCache::open(&dir, 4 << 20, m.clone()).is_err());
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");

    let dir = tmp.path().join("b");
    std::fs::create_dir(&dir).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        dir.join("slab-0000"),
        rustix::fs::FileType::Fifo,
        Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert!(DiskCache::open(&dir, 4 << 20, m.clone()).is_err());

    // The store directory itself as a symlink.
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert!(DiskCache::open(&link, 4 << 20, m).is_err());
}

/// Two stores on one directory (as two daemons), each with writer and
/// reader threads, filling and evicting at once while a thread flips bytes
/// in the slab files: every read served is right, the files stay within
/// the budget.
#[test]
fn two_stores_share_a_directory_under_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    let budget = 4 << 20;
    let (a, ma) = open(&dir, budget);
    let (b, mb) = open(&dir, budget);
    let chunks: Arc<Vec<_>> = Arc::new(
        (0..40)
            .map(|i| chunk(100 + i, SLOT_BYTES - (i as usize * 997) % 5000))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let served = AtomicU64::new(0);
    let flipper = {
        let (dir, stop) = (dir.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut x = 7u64;
            while !stop.load(Ordering::Relaxed) {
                for p in slab_files(&dir) {
                    let Ok(f) = std::fs::OpenOptions::new().read(true).write(true).open(&p) else {
                        continue;
                    };
                    let len = f.metadata().unwrap().len();
                    if len == 0 {
                        continue;
                    }
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    let at = (x >> 20) % len;
                    let mut byte = [0u8];
                    let _ = rustix::io::pread(&f, &mut byte, at);
                    byte[0] ^= 1 << (x % 8);
                    let _ = rustix::io::pwrite(&f, &byte, at);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    std::thread::scope(|sc| {
        for (store, seed) in [(&a, 1u64), (&b, 2), (&a, 3), (&b, 4)] {
            let chunks = chunks.clone();
            let served = &served;
            sc.spawn(move || {
                // Two of the readers go through the hinted fast path.
                let hints: Vec<SlotHint> = (0..chunks.len()).map(|_| SlotHint::new(0)).collect();
                let mut x = seed;
                for _ in 0..3000 {
                    x = x
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let i = (x >> 33) as usize % chunks.len();
                    let (d, data) = &chunks[i];
                    let from = (x >> 13) as usize % data.len();
                    let n = (data.len() - from).min(4096 + (x as usize % 9000));
                    let mut buf = vec![0u8; n];
                    let hint = (seed <= 2).then_some(&hints[i]);
                    if store.read_hinted(d, data.len(), from, &mut buf, hint) {
                        assert_eq!(buf, data[from..from + n], "wrong bytes served");
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        store.put(d, data);
                    }
                }
            });
        }
    });
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    let bytes: u64 = slab_files(&dir)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(bytes <= budget, "{bytes}");
    let (ca, cb) = (
        ma.snapshot(Default::default()).counters,
        mb.snapshot(Default::default()).counters,
    );
    assert!(ca.disk_evictions + cb.disk_evictions > 0);
    assert!(served.load(Ordering::Relaxed) > 0);
}

/// The hinted fast path (a per-process memory of the slot and `gen` a chunk
/// was served from) checks as much as a lookup: a slot rewritten by another
/// store, bytes flipped in the file after the hint was learned (in the
/// served part of a page or in the part of it that is not served), a hint
/// naming another chunk's slot or no slot at all: never a wrong byte, the
/// hint dropped or corrected.
#[test]
fn hinted_reads_check_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("store");
    // One slot: every chunk goes into slot 0.
    let (a, ma) = open(&dir, SLOT_BYTES as u64);
    let (b, _) = open(&dir, SLOT_BYTES as u64);
    let (d1, one) = chunk(1, SLOT_BYTES);
    let (d2, two) = chunk(2, SLOT_BYTES - 3);
    assert!(a.put(&d1, &one));
    let hint = SlotHint::new(0);
    let mut buf = vec![0u8; 4096];
    // Not learned by a `contains`: learned by the first read that serves.
    assert!(a.contains_hinted(&d1, one.len(), Some(&hint)));
    assert_eq!(hint.load(Ordering::Relaxed), 0);
    assert_eq!(a.read_by_hint(&d1, one.len(), 512, &mut buf, &hint), None);
    assert!(a.read_hinted(&d1, one.len(), 512, &mut buf, Some(&hint)));
    assert_eq!(buf, one[512..4608]);
    assert_eq!(hint.load(Ordering::Relaxed) as u32, 1);
    assert!(a.contains_by_hint(&hint));
    buf.fill(0);
    assert_eq!(
        a.read_by_hint(&d1, one.len(), 512, &mut buf, &hint),
        Some(true)
    );
    assert_eq!(buf, one[512..4608]);

    // Another daemon reuses the slot: the hint no longer holds, the read
    // looks the chunk up and misses, the hint is dropped; the new chunk
    // reads right through a stale hint.
    assert!(b.put(&d2, &two));
    assert!(!a.contains_by_hint(&hint));
    assert_eq!(a.read_by_hint(&d1, one.len(), 512, &mut buf, &hint), None);
    assert!(!a.read_hinted(&d1, one.len(), 512, &mut buf, Some(&hint)));
    assert!(!a.contains_hinted(&d1, one.len(), Some(&hint)));
    assert_eq!(hint.load(Ordering::Relaxed), 0);
    let stale = SlotHint::new(1);
    assert!(a.read_hinted(&d2, two.len(), 100, &mut buf, Some(&stale)));
    assert_eq!(buf, two[100..4196]);

    // Bytes flipped after the hint was learned: in the served part of a
    // page, then in the part of a page a partial read does not serve.
    assert!(a.put(&d1, &one));
    let hint = SlotHint::new(0);
    assert!(a.read_hinted(&d1, one.len(), 512, &mut buf, Some(&hint)));
    let slab = &slab_files(&dir)[0];
    let flip = |at: u64| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(slab)
            .unwrap();
        let mut byte = [0u8];
        rustix::io::pread(&f, &mut byte, at).unwrap();
        byte[0] ^= 0x10;
        rustix::io::pwrite(&f, &byte, at).unwrap();
    };
    flip(1000);
    assert_eq!(
        a.read_by_hint(&d1, one.len(), 512, &mut buf, &hint),
        Some(false)
    );
    assert_eq!(hint.load(Ordering::Relaxed), 0);
    assert!(!a.contains(&d1, one.len()), "a damaged slot is freed");
    assert!(a.put(&d1, &one));
    assert!(a.read_hinted(&d1, one.len(), 512, &mut buf, Some(&hint)));
    assert_eq!(buf, one[512..4608]);
    flip(8192 + 4000); // page 2, past what a read of [8192, 8192 + 100) serves
    let mut small = vec![0u8; 100];
    assert_eq!(
        a.read_by_hint(&d1, one.len(), 8192, &mut small, &hint),
        Some(false)
    );
    assert!(!a.read_hinted(&d1, one.len(), 8192, &mut small, Some(&hint)));
    assert!(ma.snapshot(Default::default()).counters.disk_damaged >= 2);

    // A hint naming no slot is ignored.
    assert!(a.put(&d1, &one));
    let wild = SlotHint::new(u64::MAX);
    assert_eq!(a.read_by_hint(&d1, one.len(), 0, &mut buf, &wild), None);
    assert!(a.read_hinted(&d1, one.len(), 0, &mut buf, Some(&wild)));
    assert_eq!(buf, one[..4096]);
    assert_eq!(wild.load(Ordering::Relaxed) as u32, 1);

    // Another daemon makes the table afresh (its header damaged): `gen`s
    // start from 0 again, so the hinted slot comes to have the hint's `gen`
    // while it holds another chunk. The digest is compared: no wrong byte.
    let gen = (wild.load(Ordering::Relaxed) >> 32) as u32;
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("table"))
        .and_then(|f| rustix::io::pwrite(&f, b"NOTASTOR", 0).map_err(Into::into))
        .unwrap();
    let (c, _) = open(&dir, SLOT_BYTES as u64);
    let (d3, three) = chunk(3, SLOT_BYTES);
    for i in 0.. {
        if c.record(0).gen.load(Ordering::Relaxed) >= gen {
            break;
        }
        let (d, data) = if i % 2 == 0 {
            (&d2, &two)
        } else {
            (&d3, &three)
        };
        assert!(c.put(d, data));
    }
    assert_eq!(c.record(0).gen.load(Ordering::Relaxed), gen);
    assert_eq!(a.read_by_hint(&d1, one.len(), 0, &mut buf, &wild), None);
    assert!(!a.read_hinted(&d1, one.len(), 0, &mut buf, Some(&wild)));
    assert_eq!(wild.load(Ordering::Relaxed), 0);
}
