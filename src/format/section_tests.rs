//! The section table's guards: duplicate kinds and decompression bombs are
//! refused by name, before anything is allocated for them.

use zerocopy::IntoBytes;

use super::raw::{self, kind, SectionEntry, HEADER_SIZE};
use super::*;

/// One section as stored: kind, flags, stored bytes, declared raw length.
struct Stored {
    kind: u32,
    flags: u32,
    bytes: Vec<u8>,
    raw_len: u64,
}

fn plain(kind: u32, bytes: &[u8]) -> Stored {
    Stored {
        kind,
        flags: 0,
        bytes: bytes.to_vec(),
        raw_len: bytes.len() as u64,
    }
}

/// A file with exactly these sections and valid checksums everywhere.
fn file(sections: &[Stored]) -> Vec<u8> {
    let mut out = vec![0u8; HEADER_SIZE];
    let mut table = Vec::new();
    for s in sections {
        table.push(SectionEntry {
            kind: s.kind.into(),
            flags: s.flags.into(),
            offset: (out.len() as u64).into(),
            stored_len: (s.bytes.len() as u64).into(),
            raw_len: s.raw_len.into(),
            crc: crc32fast::hash(&s.bytes).into(),
            reserved: 0.into(),
        });
        out.extend_from_slice(&s.bytes);
    }
    let table_off = out.len() as u64;
    out.extend_from_slice(table.as_bytes());
    let mut h = raw::Header {
        magic: raw::MAGIC,
        major: raw::MAJOR.into(),
        minor: raw::MINOR.into(),
        incompat: raw::INCOMPAT_ZSTD_SECTIONS.into(),
        compat: 0.into(),
        section_count: (table.len() as u32).into(),
        section_table: table_off.into(),
        file_size: (out.len() as u64).into(),
        header_crc: 0.into(),
        table_crc: crc32fast::hash(table.as_bytes()).into(),
        reserved: [0; 16],
    };
    h.header_crc = crc32fast::hash(h.as_bytes()).into();
    out[..HEADER_SIZE].copy_from_slice(h.as_bytes());
    out
}

#[test]
fn duplicate_section_kinds_are_refused() {
    let meta = serde_json::to_vec(&ImageMeta::default()).unwrap();
    for k in [kind::META, kind::INODES, 99] {
        let bytes = file(&[plain(kind::META, &meta), plain(k, b""), plain(k, b"")]);
        match Index::from_bytes(bytes) {
            Err(FormatError::DuplicateSection(got)) => assert_eq!(got, k),
            other => panic!("kind {k}: {other:?}"),
        }
    }
    let msg = FormatError::DuplicateSection(7).to_string();
    assert!(msg.contains("section kind 7 appears twice"), "{msg}");
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    // 64 MiB of zeros in ~2 KiB: far past the format's ratio.
    let zeros = vec![0u8; 64 << 20];
    let bomb = zstd::bulk::compress(&zeros, 3).unwrap();
    drop(zeros);
    assert!(bomb.len() < 64 << 10);
    let raw_len = 64u64 << 20;
    let bomb_len = bomb.len() as u64;
    let bytes = file(&[Stored {
        kind: kind::STRINGS,
        flags: raw::SECTION_ZSTD,
        bytes: bomb,
        raw_len,
    }]);
    match Index::from_bytes(bytes) {
        Err(FormatError::SectionBomb {
            section,
            stored_len,
            raw_len: r,
        }) => {
            assert_eq!(section, "STRINGS section");
            assert_eq!((stored_len, r), (bomb_len, raw_len));
        }
        other => panic!("{other:?}"),
    }
    // A declared size its frame does not confirm (here: larger, within the
    // ratio) is corrupt, and so is a frame without a declared size.
    let small = zstd::bulk::compress(&[7u8; 10_000], 3).unwrap();
    for raw_len in [20_000, 9_999] {
        let bytes = file(&[Stored {
            kind: kind::STRINGS,
            flags: raw::SECTION_ZSTD,
            bytes: small.clone(),
            raw_len,
        }]);
        let e = Index::from_bytes(bytes).unwrap_err();
        assert!(e.to_string().contains("does not declare"), "{e}");
    }
    let mut no_size = Vec::new();
    {
        let mut enc = zstd::stream::Encoder::new(&mut no_size, 3).unwrap();
        enc.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut enc, &[7u8; 10_000]).unwrap();
        enc.finish().unwrap();
    }
    let bytes = file(&[Stored {
        kind: kind::STRINGS,
        flags: raw::SECTION_ZSTD,
        bytes: no_size,
        raw_len: 10_000,
    }]);
    assert!(Index::from_bytes(bytes).is_err());
}

#[test]
fn writer_stores_what_compresses_past_the_ratio_as_is() {
    // A 1 MiB symlink target of one repeated byte: STRINGS compresses far
    // past the ratio, so it is stored uncompressed and reads back.
    let mut d = IndexData::default();
    let mut link = Node::new(NodeKind::Symlink);
    link.link_target = vec![b'a'; 1 << 20];
    link.size = 1 << 20;
    d.tree.nodes.push(link);
    d.tree.nodes[0].children.insert(b"l".to_vec(), 1);
    let bytes = write_index(&d, WriteOptions { compress: true }).unwrap();
    assert!(bytes.len() > 1 << 20);
    let idx = Index::from_bytes(bytes).unwrap();
    assert_eq!(idx.inode(2).unwrap().link_target().unwrap().len(), 1 << 20);
    assert!(super::bomb::ratio_ok(100, 100 * 256 + (64 << 10)));
    assert!(!super::bomb::ratio_ok(100, 100 * 256 + (64 << 10) + 1));
}
