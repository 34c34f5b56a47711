//! Sparse files in the index: written and read back (pieces, seeks,
//! allocated size, the feature bit), and hostile SPARSE sections refused at
//! open.

use zerocopy::{FromBytes, IntoBytes};

use super::raw::{kind, Header, HEADER_SIZE, INCOMPAT_SPARSE};
use super::tests::{patch_section, sample};
use super::*;

/// `sample()` plus a sparse file `/sp` (1 MiB, two runs) and an all-hole
/// file `/hole`.
fn sparse_sample() -> IndexData {
    let mut d = sample();
    let mut sp = Node::new(NodeKind::File);
    sp.size = 1 << 20;
    sp.data = Some(DataRef {
        layer: 0,
        offset: 1000,
    });
    sp.sparse = Some(vec![
        SparseSegment {
            file_offset: 100,
            len: 10,
            layer_offset: 1000,
        },
        SparseSegment {
            file_offset: 5000,
            len: 20,
            layer_offset: 1010,
        },
    ]);
    let mut hole = Node::new(NodeKind::File);
    hole.size = 4096;
    hole.sparse = Some(Vec::new());
    let n = d.tree.nodes.len() as u32;
    d.tree.nodes.push(sp);
    d.tree.nodes.push(hole);
    d.tree.nodes[0].children.insert(b"sp".to_vec(), n);
    d.tree.nodes[0].children.insert(b"hole".to_vec(), n + 1);
    d
}

fn header(bytes: &[u8]) -> Header {
    Header::read_from_bytes(&bytes[..HEADER_SIZE]).unwrap()
}

#[test]
fn sparse_files_round_trip() {
    for compress in [false, true] {
        let bytes = write_index(&sparse_sample(), WriteOptions { compress }).unwrap();
        let h = header(&bytes);
        assert_eq!(h.minor.get(), crate::format::FORMAT_MINOR);
        assert_ne!(h.incompat.get() & INCOMPAT_SPARSE, 0);
        let idx = Index::from_bytes(bytes).unwrap();
        let sp = idx.inode(idx.resolve(b"sp").unwrap().unwrap()).unwrap();
        assert!(sp.is_sparse());
        assert_eq!((sp.size(), sp.allocated_size()), (1 << 20, 30));
        assert_eq!(sp.data(), Some((0, 1000)));
        let pieces: Vec<Piece> = sp.pieces(95, 5015).unwrap().collect();
        assert_eq!(
            pieces,
            [
                Piece::Hole { len: 5 },
                Piece::Data {
                    layer_offset: 1000,
                    len: 10
                },
                Piece::Hole { len: 4890 },
                Piece::Data {
                    layer_offset: 1010,
                    len: 20
                },
                Piece::Hole { len: 90 },
            ]
        );
        // Mid-run start, a range inside a hole, a range past the end.
        let mid: Vec<Piece> = sp.pieces(105, 2).unwrap().collect();
        assert_eq!(
            mid,
            [Piece::Data {
                layer_offset: 1005,
                len: 2
            }]
        );
        let inside: Vec<Piece> = sp.pieces(200, 50).unwrap().collect();
        assert_eq!(inside, [Piece::Hole { len: 50 }]);
        assert_eq!(sp.pieces(1 << 20, 10).unwrap().count(), 0);
        let tail: Vec<Piece> = sp.pieces(5010, u64::MAX).unwrap().collect();
        assert_eq!(
            tail,
            [
                Piece::Data {
                    layer_offset: 1020,
                    len: 10
                },
                Piece::Hole {
                    len: (1 << 20) - 5020
                }
            ]
        );
        assert_eq!(sp.seek_data(0).unwrap(), Some(100));
        assert_eq!(sp.seek_data(105).unwrap(), Some(105));
        assert_eq!(sp.seek_data(110).unwrap(), Some(5000));
        assert_eq!(sp.seek_data(5020).unwrap(), None);
        assert_eq!(sp.seek_hole(0).unwrap(), Some(0));
        assert_eq!(sp.seek_hole(100).unwrap(), Some(110));
        assert_eq!(sp.seek_hole(5019).unwrap(), Some(5020));
        assert_eq!(sp.seek_hole(1 << 20).unwrap(), None);

        let hole = idx.inode(idx.resolve(b"hole").unwrap().unwrap()).unwrap();
        assert!(hole.is_sparse());
        assert_eq!((hole.data(), hole.allocated_size()), (None, 0));
        let all: Vec<Piece> = hole.pieces(0, 4096).unwrap().collect();
        assert_eq!(all, [Piece::Hole { len: 4096 }]);
        assert_eq!(hole.seek_data(0).unwrap(), None);
        assert_eq!(hole.seek_hole(10).unwrap(), Some(10));

        // A plain file: one data piece, no holes, seeks to its end.
        let plain = idx.inode(idx.resolve(b"hello").unwrap().unwrap()).unwrap();
        assert!(!plain.is_sparse());
        let p: Vec<Piece> = plain.pieces(1, 100).unwrap().collect();
        assert_eq!(
            p,
            [Piece::Data {
                layer_offset: 513,
                len: 4
            }]
        );
        assert_eq!(plain.seek_data(2).unwrap(), Some(2));
        assert_eq!(plain.seek_hole(2).unwrap(), Some(5));
    }
    // Without sparse files nothing changes for older readers: no bit, no
    // sparse sections (the ten of 2.1 and the three optional HINTS ones).
    let bytes = write_index(&sample(), WriteOptions { compress: true }).unwrap();
    let h = header(&bytes);
    assert_eq!(h.incompat.get() & INCOMPAT_SPARSE, 0);
    assert_eq!(h.section_count.get(), 13);
}

/// Rewrites the segment records (24 bytes each) of an uncompressed index.
fn patch_segments(bytes: &mut [u8], f: impl Fn(&mut [u8])) {
    patch_section(bytes, kind::SPARSE_SEGMENTS, |_, b| f(b));
}

/// A change to a section's stored bytes.
type Patch = Box<dyn Fn(&mut [u8])>;

fn open_err(bytes: Vec<u8>) -> String {
    match Index::from_bytes(bytes) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a hostile sparse map was accepted"),
    }
}

#[test]
fn hostile_sparse_sections_are_refused_at_open() {
    let good = write_index(&sparse_sample(), WriteOptions { compress: false }).unwrap();
    Index::from_bytes(good.clone()).unwrap();
    let put = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let cases: Vec<(&str, Patch)> = vec![
        // Second run starts inside the first.
        ("overlap", Box::new(move |b| put(b, 24, 105))),
        // Runs out of order.
        ("unsorted", Box::new(move |b| put(b, 24, 50))),
        ("empty run", Box::new(move |b| put(b, 8, 0))),
        (
            "past the size",
            Box::new(move |b| put(b, 24, (1 << 20) - 5)),
        ),
        ("overflow", Box::new(move |b| put(b, 24, u64::MAX - 5))),
        ("past the layer", Box::new(move |b| put(b, 40, 4090))),
    ];
    for (what, f) in cases {
        let mut bytes = good.clone();
        patch_segments(&mut bytes, |b| f(b));
        let msg = open_err(bytes);
        assert!(msg.contains("sparse"), "{what}: {msg}");
    }
    // File records: unsorted, naming a directory or no inode, a run out of
    // bounds, an all-hole file with a data layer.
    let files: Vec<(&str, Patch)> = vec![
        ("unsorted", Box::new(|b| b.swap(0, 16))),
        (
            "directory",
            Box::new(|b| b[..4].copy_from_slice(&1u32.to_le_bytes())),
        ),
        (
            "no inode",
            Box::new(|b| b[..4].copy_from_slice(&999u32.to_le_bytes())),
        ),
        (
            "run",
            Box::new(|b| b[4..8].copy_from_slice(&1u32.to_le_bytes())),
        ),
    ];
    for (what, f) in files {
        let mut bytes = good.clone();
        patch_section(&mut bytes, kind::SPARSE_FILES, |_, b| f(b));
        let msg = open_err(bytes);
        assert!(msg.contains("sparse"), "{what}: {msg}");
    }
    // The same sections without the feature bit: refused (an older writer
    // would not have set them; an older reader would serve wrong bytes).
    let mut bytes = good.clone();
    let mut h = header(&bytes);
    h.incompat = (h.incompat.get() & !INCOMPAT_SPARSE).into();
    h.header_crc = 0.into();
    h.header_crc = crc32fast::hash(h.as_bytes()).into();
    bytes[..HEADER_SIZE].copy_from_slice(h.as_bytes());
    assert!(open_err(bytes).contains("feature bit"));
    // An all-hole file that names a data layer.
    let mut d = sparse_sample();
    let hole = d.tree.nodes.len() - 1;
    d.tree.nodes[hole].data = Some(DataRef {
        layer: 0,
        offset: 0,
    });
    let bytes = write_index(&d, WriteOptions { compress: false }).unwrap();
    assert!(open_err(bytes).contains("all-hole"));
    // A reader that does not know the bit refuses the file by name.
    let mut bytes = good;
    let mut h = header(&bytes);
    h.incompat = (h.incompat.get() | 0x8000).into();
    h.header_crc = 0.into();
    h.header_crc = crc32fast::hash(h.as_bytes()).into();
    bytes[..HEADER_SIZE].copy_from_slice(h.as_bytes());
    assert!(matches!(
        Index::from_bytes(bytes),
        Err(FormatError::UnknownFeatures(0x8000))
    ));
}

#[test]
fn writer_refuses_inconsistent_sparse_nodes() {
    let mut d = sparse_sample();
    let sp = d.tree.nodes.len() - 2;
    d.tree.nodes[sp].data = None;
    assert!(matches!(
        write_index(&d, WriteOptions::default()),
        Err(FormatError::Invalid(_))
    ));
    let mut d = sparse_sample();
    d.tree.nodes[3].sparse = Some(Vec::new()); // the directory `sub`
    assert!(matches!(
        write_index(&d, WriteOptions::default()),
        Err(FormatError::Invalid(_))
    ));
}
