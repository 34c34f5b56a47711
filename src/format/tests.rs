use std::collections::BTreeMap;

use super::*;
use crate::digest::Digest;
use zerocopy::{FromBytes, IntoBytes};

use super::raw::{kind, Header, SectionEntry, HEADER_SIZE};

pub(super) fn sample() -> IndexData {
    let mut tree = Tree::default();
    let mut file = Node::new(NodeKind::File);
    file.size = 5;
    file.perm = 0o4755;
    file.uid = 1000;
    file.mtime = 1_700_000_000;
    file.mtime_nsec = 123;
    file.data = Some(DataRef {
        layer: 0,
        offset: 512,
    });
    file.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"user.b".to_vec(), b"two".to_vec()),
    ];
    tree.nodes.push(file); // 1 -> ino 2
    let mut link = Node::new(NodeKind::Symlink);
    link.link_target = b"hello".to_vec();
    link.size = 5;
    tree.nodes.push(link); // ino 3
    let mut sub = Node::new(NodeKind::Dir);
    sub.children = BTreeMap::from([(b"hard".to_vec(), 1u32)]);
    tree.nodes.push(sub); // ino 4
    let mut dev = Node::new(NodeKind::CharDev);
    dev.rdev_major = 1;
    dev.rdev_minor = 3;
    tree.nodes.push(dev); // ino 5
    tree.nodes[0].children = BTreeMap::from([
        (b"hello".to_vec(), 1),
        (b"link".to_vec(), 2),
        (b"sub".to_vec(), 3),
        ("ünï".as_bytes().to_vec(), 4),
    ]);
    IndexData {
        meta: ImageMeta {
            reference: Some("127.0.0.1:5000/clip/tiny:latest".into()),
            platform: "linux/amd64".into(),
            ..Default::default()
        },
        layers: vec![Layer {
            digest: Digest::of(b"blob"),
            diff_id: Digest::of(b"tar"),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            kind: LayerKind::Gzip,
            compressed_size: 100,
            uncompressed_size: 4096,
            chunk_size: 1024,
            checkpoints: vec![
                Checkpoint {
                    in_offset: 10,
                    bits: 0,
                    out_offset: 0,
                    window: vec![],
                    window_len: 0,
                    first_chunk: 0,
                },
                Checkpoint {
                    in_offset: 50,
                    bits: 3,
                    out_offset: 2048,
                    window: vec![1, 2, 3],
                    window_len: 2048,
                    first_chunk: 2,
                },
            ],
            chunks: (0..4)
                .map(|i| Chunk {
                    digest: [i as u8; 32],
                    in_end: 20 + i * 20,
                })
                .collect(),
        }],
        tree,
        profile: None,
        hints: Vec::new(),
    }
}

fn roundtrip(compress: bool) {
    let bytes = write_index(&sample(), WriteOptions { compress }).unwrap();
    let idx = Index::from_bytes(bytes).unwrap();
    assert_eq!(idx.meta().platform, "linux/amd64");
    assert_eq!(idx.inode_count(), 5);
    let root = idx.inode(ROOT_INO).unwrap();
    assert_eq!(root.kind(), Some(NodeKind::Dir));
    assert_eq!(root.nlink(), 3);
    let f = idx.resolve(b"/sub/hard").unwrap().unwrap();
    assert_eq!(f, idx.lookup(1, b"hello").unwrap().unwrap());
    let fi = idx.inode(f).unwrap();
    assert_eq!(fi.nlink(), 2);
    assert_eq!(fi.mode(), 0o104755);
    assert_eq!(fi.data(), Some((0, 512)));
    assert_eq!(fi.mtime(), (1_700_000_000, 123));
    assert_eq!(fi.xattrs().unwrap()[1], (&b"user.b"[..], &b"two"[..]));
    let l = idx.inode(idx.resolve(b"link").unwrap().unwrap()).unwrap();
    assert_eq!(l.link_target().unwrap(), b"hello");
    let d = idx
        .inode(idx.resolve("ünï".as_bytes()).unwrap().unwrap())
        .unwrap();
    assert_eq!(d.rdev(), (1, 3));
    assert_eq!(idx.lookup(1, b"nope").unwrap(), None);
    let names: Vec<_> = idx
        .read_dir(1, 0)
        .unwrap()
        .map(|e| e.unwrap().name.to_vec())
        .collect();
    assert_eq!(
        names,
        vec![
            b"hello".to_vec(),
            b"link".to_vec(),
            b"sub".to_vec(),
            "ünï".as_bytes().to_vec()
        ]
    );
    assert_eq!(idx.read_dir(1, 3).unwrap().count(), 1);
    let layer = idx.layer(0).unwrap();
    assert_eq!(layer.checkpoint_count(), 2);
    assert_eq!(layer.checkpoint_for(2047), Some(0));
    assert_eq!(layer.checkpoint_for(5000), Some(1));
    assert_eq!(layer.span_range(1), Some(2048..4096));
    assert_eq!(
        layer.checkpoint(1).unwrap(),
        sample().layers[0].checkpoints[1]
    );
    assert_eq!(layer.chunk(3).unwrap().in_end, 80);
    assert_eq!(
        layer.media_type().unwrap(),
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
}

#[test]
fn roundtrip_plain_and_compressed() {
    roundtrip(false);
    roundtrip(true);
}

#[test]
fn every_truncation_and_bit_flip_is_an_error() {
    let bytes = write_index(&sample(), WriteOptions { compress: true }).unwrap();
    for len in 0..bytes.len() {
        assert!(
            Index::from_bytes(bytes[..len].to_vec()).is_err(),
            "truncated at {len}"
        );
    }
    for i in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            // Padding bytes are not covered by a checksum; everything else is.
            if let Ok(idx) = Index::from_bytes(b) {
                let _ = idx.resolve(b"sub/hard");
            }
        }
    }
}

#[test]
fn newer_major_is_refused_by_name() {
    let mut bytes = write_index(&sample(), WriteOptions::default()).unwrap();
    bytes[8] = 3;
    assert!(matches!(
        Index::from_bytes(bytes),
        Err(FormatError::UnsupportedVersion { major: 3, .. })
    ));
}

/// Applies `patch` to the entry and stored bytes of every section of kind
/// `k` in an uncompressed index, then fixes every checksum.
pub(super) fn patch_section(
    bytes: &mut [u8],
    k: u32,
    mut patch: impl FnMut(&mut SectionEntry, &mut [u8]),
) {
    let header = Header::read_from_bytes(&bytes[..HEADER_SIZE]).unwrap();
    let table_at = header.section_table.get() as usize;
    let n = header.section_count.get() as usize;
    let size = size_of::<SectionEntry>();
    for i in 0..n {
        let at = table_at + i * size;
        let mut e = SectionEntry::read_from_bytes(&bytes[at..at + size]).unwrap();
        if e.kind.get() != k {
            continue;
        }
        let start = e.offset.get() as usize;
        let end = start + e.stored_len.get() as usize;
        patch(&mut e, &mut bytes[start..end]);
        e.crc = crc32fast::hash(&bytes[start..end]).into();
        bytes[at..at + size].copy_from_slice(e.as_bytes());
    }
    let mut header = header;
    header.table_crc = crc32fast::hash(&bytes[table_at..table_at + n * size]).into();
    header.header_crc = 0.into();
    header.header_crc = crc32fast::hash(header.as_bytes()).into();
    bytes[..HEADER_SIZE].copy_from_slice(header.as_bytes());
}

#[test]
fn dangling_directory_entry_is_refused_at_open() {
    let mut bytes = write_index(&sample(), WriteOptions { compress: false }).unwrap();
    // First dirent's inode number (offset 8 in the record) → 9999.
    patch_section(&mut bytes, kind::DIRENTS, |_, b| {
        b[8..12].copy_from_slice(&9999u32.to_le_bytes())
    });
    assert!(matches!(
        Index::from_bytes(bytes),
        Err(FormatError::Corrupt("directory entry out of bounds"))
    ));
}

fn sample_profile() -> AccessProfile {
    AccessProfile {
        version: PROFILE_VERSION,
        manifest: Some(crate::Digest::of(b"m")),
        window_secs: 30,
        ranges: vec![ProfileRange {
            layer: crate::Digest::of(b"l"),
            offset: 1 << 20,
            len: 65_536,
        }],
    }
}

#[test]
fn embedded_profile_round_trips_and_is_checked_at_open() {
    for compress in [false, true] {
        let data = IndexData {
            profile: Some(sample_profile()),
            ..sample()
        };
        let idx =
            Index::from_bytes(write_index(&data, WriteOptions { compress }).unwrap()).unwrap();
        assert_eq!(idx.profile(), Some(&sample_profile()));
    }
    let idx = Index::from_bytes(write_index(&sample(), WriteOptions::default()).unwrap()).unwrap();
    assert_eq!(idx.profile(), None);

    let with = IndexData {
        profile: Some(sample_profile()),
        ..sample()
    };
    // Valid JSON, checksums right, but not a profile: refused by name.
    let mut bytes = write_index(&with, WriteOptions { compress: false }).unwrap();
    patch_section(&mut bytes, kind::PROFILE, |_, b| b[0] = b'[');
    assert!(matches!(
        Index::from_bytes(bytes),
        Err(FormatError::Corrupt(
            "PROFILE section is not a valid access profile"
        ))
    ));
    // A profile version this reader does not know: no profile, index usable.
    let mut bytes = write_index(&with, WriteOptions { compress: false }).unwrap();
    patch_section(&mut bytes, kind::PROFILE, |_, b| {
        let at = b.windows(11).position(|w| w == b"\"version\":1").unwrap();
        b[at + 10] = b'7';
    });
    let idx = Index::from_bytes(bytes).unwrap();
    assert_eq!(idx.profile(), None);
    // A section kind this reader does not know is skipped (how a 2.0
    // reader opens a 2.1 file with a PROFILE).
    let mut bytes = write_index(&with, WriteOptions { compress: false }).unwrap();
    patch_section(&mut bytes, kind::PROFILE, |e, _| e.kind = 77.into());
    let idx = Index::from_bytes(bytes).unwrap();
    assert_eq!(idx.profile(), None);
    assert_eq!(idx.inode_count(), 5);
}

#[test]
fn profile_files_round_trip_and_bad_ones_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/p.json");
    let p = sample_profile();
    p.save(&path).unwrap();
    assert_eq!(AccessProfile::load(&path).unwrap(), p);
    // Only the profile is left in the directory (no temp files).
    assert_eq!(
        std::fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1
    );

    let missing = AccessProfile::load(&dir.path().join("none.json")).unwrap_err();
    assert!(matches!(missing, ProfileError::Io { .. }), "{missing}");
    assert!(missing.to_string().contains("none.json"));
    for (bad, why) in [
        (&b"not json"[..], "not a clip access profile"),
        (
            br#"{"version":99,"window_secs":1,"ranges":[]}"#,
            "version 99",
        ),
        (
            br#"{"version":1,"window_secs":1,"ranges":[{"layer":"sha256:zz","offset":0,"len":1}]}"#,
            "not a clip access profile",
        ),
    ] {
        std::fs::write(&path, bad).unwrap();
        let e = AccessProfile::load(&path).unwrap_err().to_string();
        assert!(
            e.contains(why) && e.contains("not a clip access profile") && e.contains("p.json"),
            "{e}"
        );
    }
}

#[test]
fn overlap_counts_shared_bytes_per_layer() {
    let (a, b) = (crate::Digest::of(b"a"), crate::Digest::of(b"b"));
    let p = |ranges: &[(crate::Digest, u64, u64)]| AccessProfile {
        version: PROFILE_VERSION,
        manifest: None,
        window_secs: 1,
        ranges: ranges
            .iter()
            .map(|&(layer, offset, len)| ProfileRange { layer, offset, len })
            .collect(),
    };
    let old = p(&[(a, 0, 100), (a, 50, 100), (b, 1000, 10), (a, 500, 10)]);
    assert_eq!(old.overlap_bytes(&old), old.bytes());
    let c = crate::Digest::of(b"c");
    let new = p(&[(a, 90, 20), (a, 140, 400), (b, 0, 1005), (c, 0, 9)]);
    // a: 90..110 → 20; 140..540 → 140..150 + 500..510 = 20; b: 1000..1005 → 5.
    assert_eq!(new.overlap_bytes(&old), 45);
    assert_eq!(p(&[]).overlap_bytes(&old), 0);
    assert_eq!(new.overlap_bytes(&p(&[])), 0);
}

fn with_hints() -> IndexData {
    let mut data = sample();
    data.hints = vec![FileHint {
        ino: 2,
        dependencies: vec![5, 3],
        hot_ranges: vec![(0, 4096), (8192, 100)],
    }];
    data
}

#[test]
fn file_hints_round_trip_and_absent_ones_are_none() {
    for compress in [false, true] {
        let bytes = write_index(&with_hints(), WriteOptions { compress }).unwrap();
        let idx = Index::from_bytes(bytes).unwrap();
        assert_eq!(idx.hinted_files(), 1);
        let h = idx.file_hints(2).unwrap().unwrap();
        assert_eq!(h.dependencies().collect::<Vec<_>>(), [5, 3]);
        assert_eq!(h.hot_ranges().collect::<Vec<_>>(), [(0, 4096), (8192, 100)]);
        for ino in [1, 3, 4, 5, 99] {
            assert!(idx.file_hints(ino).unwrap().is_none());
        }
    }
    // An index without hints (as written before 2.3) has none.
    let idx = Index::from_bytes(write_index(&sample(), WriteOptions::default()).unwrap()).unwrap();
    assert_eq!(idx.hinted_files(), 0);
    assert!(idx.file_hints(2).unwrap().is_none());
}

#[test]
fn bad_file_hints_are_refused_when_written_and_when_opened() {
    let mut data = with_hints();
    data.hints[0].dependencies.push(99);
    assert!(matches!(
        write_index(&data, WriteOptions::default()),
        Err(FormatError::Invalid(_))
    ));
    let mut data = with_hints();
    data.hints.push(data.hints[0].clone());
    assert!(matches!(
        write_index(&data, WriteOptions::default()),
        Err(FormatError::Invalid(_))
    ));
    // Patched on disk (CRCs fixed up): a dependency on no inode, a record
    // pointing past the dependency list, an inode out of range.
    let cases: [(u32, usize, u32, &str); 3] = [
        (kind::HINT_DEPS, 0, 0, "file hint names no inode"),
        (
            kind::FILE_HINTS,
            8,
            7,
            "file hint out of bounds or out of order",
        ),
        (
            kind::FILE_HINTS,
            0,
            4242,
            "file hint out of bounds or out of order",
        ),
    ];
    for (k, at, value, want) in cases {
        let mut bytes = write_index(&with_hints(), WriteOptions { compress: false }).unwrap();
        patch_section(&mut bytes, k, |_, b| {
            b[at..at + 4].copy_from_slice(&value.to_le_bytes())
        });
        match Index::from_bytes(bytes) {
            Err(FormatError::Corrupt(msg)) => assert_eq!(msg, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }
}
