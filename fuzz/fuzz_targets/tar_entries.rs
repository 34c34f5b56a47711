//! Invariants under test:
//! - the tar reader never panics, hangs or allocates without bound on any input;
//! - every entry it accepts has a normalised path (no `..`, no leading `/`)
//!   and a data range inside the stream it read.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    let mut entries = Vec::new();
    let result = clip::tar::read_entries(std::io::Cursor::new(data), |e| {
        entries.push(e);
        Ok(())
    });
    if result.is_ok() {
        for e in &entries {
            assert!(!e.path.starts_with(b"/"));
            assert!(!e.path.split(|&b| b == b'/').any(|c| c == b".."));
            assert!(e.data_offset.saturating_add(e.size) <= len);
        }
    }
});
