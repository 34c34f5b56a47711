//! Invariants under test:
//! - `Index::from_bytes` never panics and never allocates from an unchecked
//!   length, whatever the bytes;
//! - on a file it accepts, every accessor (inodes, lookups, readdir, xattrs,
//!   layers, checkpoints) returns values or errors, never panics.
#![no_main]

use clip::format::{Index, ROOT_INO};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = Index::from_bytes(data.to_vec()) else { return };
    let n = idx.inode_count().min(10_000);
    for ino in 1..=n {
        if let Ok(node) = idx.inode(ino) {
            let _ = node.link_target();
            let _ = node.xattrs();
            if let Ok(entries) = idx.read_dir(ino, 0) {
                for e in entries.take(1000).flatten() {
                    let _ = idx.lookup(ino, e.name);
                }
            }
        }
    }
    let _ = idx.resolve(b"/usr/bin/python3");
    let _ = idx.lookup(ROOT_INO, b"etc");
    for l in 0..idx.layer_count().min(64) {
        if let Ok(layer) = idx.layer(l) {
            let _ = layer.media_type();
            for c in 0..layer.checkpoint_count().min(1000) {
                let _ = layer.checkpoint(c);
                let _ = layer.span_range(c);
            }
            let _ = layer.checkpoint_for(u64::MAX);
        }
    }
});
