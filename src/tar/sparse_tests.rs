//! GNU sparse files: archives written by GNU tar in all four dialects
//! (`--format=gnu` old-GNU `S` headers, `--format=posix --sparse-version=0.0,
//! 0.1, 1.0`) read back to the files they came from, and hand-made hostile
//! maps are clear errors.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use super::tests::{cat, collect, end, hdr, member, oct, pax, seal};
use super::{Entry, EntryKind, TarError};

/// Deterministic non-zero bytes (zeros would be holes to GNU tar).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// A test file: its size and its data runs (offset, bytes); zeros elsewhere.
struct Layout {
    name: &'static str,
    size: u64,
    runs: Vec<(u64, Vec<u8>)>,
}

impl Layout {
    fn contents(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.size as usize];
        for (off, data) in &self.runs {
            v[*off as usize..*off as usize + data.len()].copy_from_slice(data);
        }
        v
    }
}

fn layouts() -> Vec<Layout> {
    vec![
        Layout {
            name: "two",
            size: 1 << 20,
            runs: vec![(100_000, pattern(5000, 1)), (700_000, pattern(8000, 2))],
        },
        // More than 4 runs (old GNU: extension blocks) and more than 21 (several).
        Layout {
            name: "many",
            size: 60 * 16384 + 3,
            runs: (0..60)
                .map(|i| (i * 16384 + 8192, pattern(4096, i as u8)))
                .collect(),
        },
        Layout {
            name: "hole",
            size: 3 << 20,
            runs: Vec::new(),
        },
        // Data at both ends: no leading or trailing hole.
        Layout {
            name: "ends",
            size: 300_000,
            runs: vec![(0, pattern(5000, 3)), (290_000, pattern(10_000, 4))],
        },
        Layout {
            name: "plain",
            size: 10_000,
            runs: vec![(0, pattern(10_000, 5))],
        },
    ]
}

/// Creates the layouts in `dir` with real holes.
fn create(dir: &Path, layouts: &[Layout]) {
    for l in layouts {
        let f = std::fs::File::create(dir.join(l.name)).unwrap();
        f.set_len(l.size).unwrap();
        for (off, data) in &l.runs {
            f.write_all_at(data, *off).unwrap();
        }
    }
}

/// GNU tar's archive of `names` in `dir` with `args`.
fn gnu_tar(dir: &Path, args: &[&str], names: &[&str]) -> Vec<u8> {
    let out = Command::new("tar")
        .current_dir(dir)
        .args(args)
        .args(["--sparse", "-cf", "-"])
        .args(names)
        .output()
        .expect("GNU tar (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An entry's file contents, holes as zeros.
fn contents(tar: &[u8], e: &Entry) -> Vec<u8> {
    let at = |off: u64, len: u64| &tar[off as usize..(off + len) as usize];
    match &e.sparse {
        None => at(e.data_offset, e.size).to_vec(),
        Some(segs) => {
            let mut v = vec![0u8; e.size as usize];
            for s in segs {
                v[s.offset as usize..(s.offset + s.len) as usize]
                    .copy_from_slice(at(s.data_offset, s.len));
            }
            v
        }
    }
}

const DIALECTS: [&[&str]; 4] = [
    &["--format=gnu"],
    &["--format=posix", "--sparse-version=0.0"],
    &["--format=posix", "--sparse-version=0.1"],
    &["--format=posix", "--sparse-version=1.0"],
];

#[test]
fn gnu_tar_sparse_files_in_every_dialect() {
    let dir = tempfile::tempdir().unwrap();
    let layouts = layouts();
    create(dir.path(), &layouts);
    let names: Vec<&str> = layouts.iter().map(|l| l.name).collect();
    for args in DIALECTS {
        let tar = gnu_tar(dir.path(), args, &names);
        let es = collect(&tar).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let got: Vec<&[u8]> = es.iter().map(|e| e.path.as_slice()).collect();
        let want: Vec<&[u8]> = names.iter().map(|n| n.as_bytes()).collect();
        assert_eq!(got, want, "{args:?}");
        for (e, l) in es.iter().zip(&layouts) {
            assert_eq!(e.kind, EntryKind::File);
            assert_eq!(e.size, l.size, "{args:?} {}", l.name);
            assert!(
                contents(&tar, e) == l.contents(),
                "{args:?} {}: bytes differ",
                l.name
            );
            let segs = e.sparse.as_deref();
            match l.name {
                "plain" => assert_eq!(segs, None, "{args:?}"),
                "hole" => assert_eq!(segs, Some(&[][..]), "{args:?}"),
                "many" => assert!(segs.unwrap().len() >= 60, "{args:?} {segs:?}"),
                _ => assert!(segs.is_some_and(|s| !s.is_empty()), "{args:?} {segs:?}"),
            }
            // Runs are stored back to back from the data start, in order.
            let mut at = e.data_offset;
            let mut end = 0;
            for s in segs.unwrap_or_default() {
                assert!(s.len > 0 && s.offset >= end && s.offset + s.len <= e.size);
                assert_eq!(s.data_offset, at);
                at += s.len;
                end = s.offset + s.len;
            }
        }
    }
}

// ---------- hand-made hostile maps ----------

/// An old-GNU `S` header with up to 4 pairs in the header itself.
fn gnu_sparse(pairs: &[(u64, u64)], realsize: u64, stored: u64, extended: bool) -> [u8; 512] {
    let mut b = hdr(b"sparse", b'S', stored);
    b[257..265].copy_from_slice(b"ustar  \0");
    put_pairs(&mut b, 386, pairs);
    b[482] = u8::from(extended);
    b[483..495].copy_from_slice(&oct(realsize, 12));
    seal(b)
}

fn put_pairs(b: &mut [u8; 512], at: usize, pairs: &[(u64, u64)]) {
    for (i, &(o, l)) in pairs.iter().enumerate() {
        b[at + 24 * i..at + 24 * i + 12].copy_from_slice(&oct(o, 12));
        b[at + 24 * i + 12..at + 24 * i + 24].copy_from_slice(&oct(l, 12));
    }
}

/// An old-GNU extension block (no checksum: it is not a header).
fn gnu_ext(pairs: &[(u64, u64)], extended: bool) -> Vec<u8> {
    let mut b = [0u8; 512];
    put_pairs(&mut b, 0, pairs);
    b[504] = u8::from(extended);
    b.to_vec()
}

/// A PAX-sparse member: the records, then a `0` header of `stored` bytes.
fn pax_sparse(records: &[(&str, &[u8])], typeflag: u8, data: &[u8]) -> Vec<u8> {
    cat(&[
        pax(records),
        member(hdr(b"GNUSparseFile.0/s", typeflag, data.len() as u64), data),
    ])
}

/// Member data padded to a block boundary (for a header built apart).
fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// PAX records as (key, value).
type Records<'a> = &'a [(&'a str, &'a [u8])];

fn sparse_err(tar: &[u8]) -> String {
    match collect(tar) {
        Err(e @ TarError::BadSparse { .. }) => e.to_string(),
        other => panic!("expected a sparse map error, got {other:?}"),
    }
}

#[test]
fn old_gnu_map_by_hand() {
    // 6 runs: 4 in the header, 2 in an extension block, then a plain entry.
    let pairs: Vec<(u64, u64)> = (0..6).map(|i| (i * 1000, 10)).collect();
    let data = pattern(60, 9);
    let tar = cat(&[
        gnu_sparse(&pairs[..4], 6000, 60, true).to_vec(),
        gnu_ext(&pairs[4..], false),
        padded(&data),
        member(hdr(b"after", b'0', 2), b"ok"),
        end(),
    ]);
    let es = collect(&tar).unwrap();
    assert_eq!(es[0].size, 6000);
    assert_eq!(es[0].data_offset, 1024);
    let segs = es[0].sparse.as_ref().unwrap();
    assert_eq!(segs.len(), 6);
    assert_eq!((segs[5].offset, segs[5].data_offset), (5000, 1024 + 50));
    assert_eq!(es[1].path, b"after");

    // Unsorted and overlapping runs.
    let t = cat(&[
        gnu_sparse(&[(4096, 10), (0, 10)], 8192, 20, false).to_vec(),
        padded(&[1; 20]),
        end(),
    ]);
    assert!(sparse_err(&t).contains("not sorted"));
    // A type S header must be a GNU one.
    let mut h = gnu_sparse(&[(0, 1)], 1, 1, false);
    h[257..265].copy_from_slice(b"ustar\x0000");
    let t = cat(&[member(seal(h), b"x"), end()]);
    assert!(sparse_err(&t).contains("GNU magic"));
    // Extension blocks that stop early, or never stop.
    let t = gnu_sparse(&[(0, 1)], 1, 1, true).to_vec();
    assert!(matches!(collect(&t), Err(TarError::Truncated { .. })));
    let mut t = gnu_sparse(&[], 1, 0, true).to_vec();
    for _ in 0..super::sparse::MAX_EXT_BLOCKS + 1 {
        t.extend(gnu_ext(&[], true));
    }
    assert!(matches!(
        collect(&t),
        Err(TarError::MetaTooLarge {
            what: "GNU sparse map",
            ..
        })
    ));
}

#[test]
fn pax_maps_by_hand() {
    // An all-hole file written by hand (0.1, empty map).
    let t = cat(&[
        pax_sparse(
            &[
                ("GNU.sparse.numblocks", b"0"),
                ("GNU.sparse.map", b""),
                ("GNU.sparse.size", b"5000"),
                ("GNU.sparse.name", b"real/name"),
            ],
            b'0',
            b"",
        ),
        end(),
    ]);
    let es = collect(&t).unwrap();
    assert_eq!(
        (es[0].path.as_slice(), es[0].size, es[0].sparse.as_deref()),
        (&b"real/name"[..], 5000, Some(&[][..]))
    );

    let v01 = |map: &[u8], size: &[u8], data: &[u8]| {
        let n = map.split(|&b| b == b',').count() / 2;
        cat(&[
            pax_sparse(
                &[
                    ("GNU.sparse.numblocks", n.to_string().as_bytes()),
                    ("GNU.sparse.map", map),
                    ("GNU.sparse.size", size),
                ],
                b'0',
                data,
            ),
            end(),
        ])
    };
    for (map, size, stored, why) in [
        (&b"0,10,5,10"[..], &b"100"[..], 20, "overlap"),
        (b"50,10,0,10", b"100", 20, "not sorted"),
        (b"95,10", b"100", 10, "beyond the file's real size"),
        (
            b"18446744073709551615,1",
            b"18446744073709551615",
            1,
            "overflows",
        ),
        (
            b"0,4096,8192,4096",
            b"16384",
            4096,
            "more data than the entry holds",
        ),
        (b"0,10", b"100", 20, "does not place"),
    ] {
        let msg = sparse_err(&v01(map, size, &vec![7u8; stored]));
        assert!(msg.contains(why), "{msg}");
    }
    // Numbers that do not fit a u64 are malformed PAX.
    let t = v01(b"18446744073709551616,1", b"100", &[1]);
    assert!(sparse_err(&t).contains("bad number"));
    let t = v01(b"0,1", b"18446744073709551616", &[1]);
    assert!(matches!(collect(&t), Err(TarError::BadPax { .. })));
    // numblocks disagreeing with the map, a missing size, an unknown version,
    // a sparse directory.
    let cases: [(Records, u8, &str); 4] = [
        (
            &[
                ("GNU.sparse.numblocks", b"2"),
                ("GNU.sparse.map", b"0,1"),
                ("GNU.sparse.size", b"1"),
            ],
            b'0',
            "numblocks",
        ),
        (
            &[("GNU.sparse.numblocks", b"1"), ("GNU.sparse.map", b"0,1")],
            b'0',
            "GNU.sparse.size",
        ),
        (
            &[("GNU.sparse.major", b"2"), ("GNU.sparse.minor", b"0")],
            b'0',
            "version",
        ),
        (
            &[
                ("GNU.sparse.numblocks", b"0"),
                ("GNU.sparse.map", b""),
                ("GNU.sparse.size", b"0"),
            ],
            b'5',
            "not a regular file",
        ),
    ];
    for (records, typeflag, why) in cases {
        let data: &[u8] = if typeflag == b'0' { b"x" } else { b"" };
        let msg = sparse_err(&cat(&[pax_sparse(records, typeflag, data), end()]));
        assert!(msg.contains(why), "{msg}");
    }
    // 0.0: offset/numbytes pairs; a pair claiming bytes the member lacks.
    let t = cat(&[
        pax_sparse(
            &[
                ("GNU.sparse.size", b"100"),
                ("GNU.sparse.numblocks", b"1"),
                ("GNU.sparse.offset", b"10"),
                ("GNU.sparse.numbytes", b"30"),
            ],
            b'0',
            &[3; 20],
        ),
        end(),
    ]);
    assert!(sparse_err(&t).contains("more data"));
}

#[test]
fn pax_1_0_maps_by_hand() {
    let v10 = |map: &[u8], data_len: usize| {
        let mut data = map.to_vec();
        while !data.len().is_multiple_of(512) {
            data.push(0);
        }
        data.extend(pattern(data_len, 8));
        cat(&[
            pax_sparse(
                &[
                    ("GNU.sparse.major", b"1"),
                    ("GNU.sparse.minor", b"0"),
                    ("GNU.sparse.realsize", b"100000"),
                    ("GNU.sparse.name", b"s"),
                ],
                b'0',
                &data,
            ),
            member(hdr(b"after", b'0', 1), b"!"),
            end(),
        ])
    };
    let t = v10(b"2\n10\n5\n50000\n7\n", 12);
    let es = collect(&t).unwrap();
    // PAX header and records (1024), the entry's header (512), the map (512).
    assert_eq!(es[0].data_offset, 2048);
    let segs = es[0].sparse.as_ref().unwrap();
    assert_eq!((segs[1].offset, segs[1].data_offset), (50000, 2048 + 5));
    assert_eq!(es[1].path, b"after");
    // A map across two blocks.
    let mut long = b"100\n".to_vec();
    for i in 0..100u64 {
        long.extend(format!("{}\n1\n", i * 10).bytes());
    }
    assert!(long.len() > 512);
    let es = collect(&v10(&long, 100)).unwrap();
    assert_eq!(es[0].sparse.as_ref().unwrap().len(), 100);
    assert_eq!(es[0].data_offset, 1536 + 1024);

    assert!(sparse_err(&v10(b"x\n", 0)).contains("entry count"));
    assert!(sparse_err(&v10(b"1\n0\n", 0)).contains("runs past"));
    assert!(sparse_err(&v10(b"1\n0\n5\n", 4)).contains("more data"));
    // A map that never ends is cut at the meta limit.
    let mut endless = b"999999999\n".to_vec();
    while endless.len() <= super::MAX_META_SIZE as usize {
        endless.extend_from_slice(b"1\n");
    }
    assert!(matches!(
        collect(&v10(&endless, 0)),
        Err(TarError::MetaTooLarge {
            what: "PAX 1.0 sparse map",
            ..
        })
    ));
}

#[test]
fn mutated_sparse_archives_never_panic() {
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let layouts = layouts();
    create(dir.path(), &layouts[..2]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EA5);
    for args in DIALECTS {
        let base = gnu_tar(dir.path(), args, &["two", "many"]);
        for _ in 0..400 {
            let mut t = base.clone();
            // Mutate the first blocks: headers, PAX records, maps.
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..t.len().min(4096));
                t[i] = if rng.gen_bool(0.5) {
                    rng.gen()
                } else {
                    b"0123456789,\n"[rng.gen_range(0..12)]
                };
            }
            let mut off = 0;
            while off + 512 <= t.len() {
                if t[off + 257..off + 262] == *b"ustar" {
                    let blk: [u8; 512] = t[off..off + 512].try_into().unwrap();
                    t[off..off + 512].copy_from_slice(&seal(blk));
                }
                off += 512;
            }
            let len = t.len() as u64;
            let _ = crate::tar::read_entries(&t[..], |e| {
                for s in e.sparse.iter().flatten() {
                    assert!(s.len > 0 && s.offset + s.len <= e.size);
                    assert!(s.data_offset + s.len <= len);
                }
                Ok(())
            });
        }
    }
}
