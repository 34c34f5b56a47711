//! Replays every input under `fuzz/regressions/<target>/` through the same
//! invariant checks the fuzz targets run (`fuzz/src/invariants.rs`, included
//! below), so CI exercises past crashes and the seed inputs without
//! cargo-fuzz or a nightly toolchain.

use crate as clip;

#[path = "../fuzz/src/archive_invariants.rs"]
mod archive_invariants;
#[path = "../fuzz/src/invariants.rs"]
#[allow(dead_code)]
mod invariants;
#[path = "../fuzz/src/read_invariants.rs"]
#[allow(dead_code)]
mod read_invariants;

use std::path::Path;

/// Runs `check` on every file of `fuzz/regressions/<target>/`; each target
/// must have at least one input so the replay is never vacuous.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no inputs in {}", dir.display());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let res = std::panic::catch_unwind(|| check(&data));
        assert!(
            res.is_ok(),
            "{target}: invariant broken by {}",
            path.display()
        );
    }
}

#[test]
fn format_open_regressions() {
    replay("format_open", invariants::format_open);
}

#[test]
fn tar_entries_regressions() {
    replay("tar_entries", invariants::tar_entries);
}

#[test]
fn gzip_index_regressions() {
    replay("gzip_index", invariants::gzip_index);
}

#[test]
fn archive_open_regressions() {
    replay("archive_open", archive_invariants::archive_open);
}

#[test]
fn fuse_read_regressions() {
    replay("fuse_read", read_invariants::fuse_read);
}
