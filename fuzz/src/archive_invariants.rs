//! The checks behind the `archive_open` fuzz target, shared with the
//! library's replay test like `invariants.rs` (included with `#[path]` by
//! `src/fuzz_regressions.rs`): opening a `.clip` archive from hostile bytes,
//! reading its files lazily and extracting it.

use super::clip;
use super::invariants::repair_index;

use clip::format::NodeKind;

/// An object held in memory, for `Archive::open`.
#[derive(Debug)]
struct MemObject(Vec<u8>);

impl clip::object::ObjectRead for MemObject {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, clip::source::SourceError> {
        let start = (offset as usize).min(self.0.len());
        let n = buf.len().min(self.0.len() - start);
        buf[..n].copy_from_slice(&self.0[start..start + n]);
        Ok(n)
    }

    fn location(&self) -> String {
        "memory".into()
    }
}

/// `archive_open`: opening an archive never panics, as given and with the
/// header (magic, version, sizes, CRC) and the embedded index's CRCs
/// repaired; on an accepted archive every lazy read through the cache
/// returns bytes or an error, never more than asked, and an extraction into
/// an empty directory succeeds or fails without writing beside it.
pub fn archive_open(data: &[u8]) {
    check_archive(data);
    if let Some(fixed) = repair_archive(data) {
        check_archive(&fixed);
    }
}

/// Rewrites the 64-byte archive header so it passes the magic, version,
/// size and CRC gates (docs/format.md §7.1), and repairs the embedded
/// index in place with [`repair_index`] when its range is in bounds.
pub fn repair_archive(data: &[u8]) -> Option<Vec<u8>> {
    const HEADER: usize = 64;
    if data.len() < HEADER {
        return None;
    }
    let mut v = data.to_vec();
    let len = v.len() as u64;
    let rd64 = |v: &[u8], o: usize| u64::from_le_bytes(v[o..o + 8].try_into().unwrap());
    v[0..8].copy_from_slice(b"CLIPARC\0");
    v[8..10].copy_from_slice(&1u16.to_le_bytes());
    v[12..16].fill(0);
    v[56..64].copy_from_slice(&len.to_le_bytes());
    let data_offset = rd64(&v, 40);
    if data_offset <= len {
        v[48..56].copy_from_slice(&(len - data_offset).to_le_bytes());
    }
    let (index_offset, index_len) = (rd64(&v, 24), rd64(&v, 32));
    if let Some(end) = index_offset.checked_add(index_len).filter(|&e| e <= len) {
        let range = index_offset as usize..end as usize;
        if let Some(fixed) = repair_index(&v[range.clone()]) {
            v[range].copy_from_slice(&fixed);
        }
    }
    v[20..24].fill(0);
    let crc = crc32fast::hash(&v[..HEADER]);
    v[20..24].copy_from_slice(&crc.to_le_bytes());
    Some(v)
}

/// Bytes read lazily from one accepted archive (files larger are skipped).
const LAZY_READ_BUDGET: u64 = 4 << 20;

fn check_archive(data: &[u8]) {
    use clip::archive::{extract, Archive, ExtractOptions, ExtractProgress};
    use clip::cache::{CacheConfig, ContentCache, ContentReader};
    use std::sync::Arc;

    let Ok(archive) = Archive::open(Arc::new(MemObject(data.to_vec()))) else {
        return;
    };
    let idx = archive.index().clone();
    assert_eq!(idx.layer_count(), 1, "an archive has one data layer");
    let data_range = archive.data_range();
    assert!(data_range.start <= data_range.end && data_range.end == data.len() as u64);
    let index_range = archive.index_range();
    assert!(index_range.start >= 64 && index_range.end <= data_range.start);

    let source = archive.blob_source().expect("the data layer is readable");
    let cache = ContentCache::new(idx.clone(), Arc::new(source), CacheConfig::default());
    let mut budget = LAZY_READ_BUDGET;
    for ino in 1..=idx.inode_count().min(4096) {
        let Ok(node) = idx.inode(ino) else { continue };
        if node.kind() != Some(NodeKind::File) || node.size() > budget {
            continue;
        }
        budget -= node.size();
        let Some((layer, offset)) = node.data() else {
            continue;
        };
        let mut buf = vec![0u8; node.size() as usize];
        let mut done = 0;
        while done < buf.len() {
            match cache.read(layer, offset + done as u64, &mut buf[done..]) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    assert!(n <= buf.len() - done, "read more than asked");
                    done += n;
                }
            }
        }
    }

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("out");
    let opts = ExtractOptions {
        threads: 2,
        same_owner: false,
    };
    let _ = extract(&archive, &out, &opts, &ExtractProgress::default());
    let beside: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tempdir")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n != "out")
        .collect();
    assert!(
        beside.is_empty(),
        "extract wrote beside its target: {beside:?}"
    );
}
