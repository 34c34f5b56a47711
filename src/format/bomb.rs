//! The guard against decompression bombs in zstd-compressed sections
//! (docs/format.md §3): before anything is allocated, a section's declared
//! `raw_len` must equal the content size its zstd frame header declares and
//! stay within [`MAX_RATIO`] of the stored bytes. Writers store a section
//! uncompressed when compressing it would pass that ratio, so every file a
//! writer produces passes.

use super::FormatError;

/// Largest ratio of declared (raw) to stored bytes of a compressed section,
/// on top of [`SLACK`]. The sections of real indexes compress at most ~11×
/// (INODES of the python and tiny test images; most sections 1–5×), so this
/// costs real files nothing and caps what a 4 GiB file can declare.
pub(super) const MAX_RATIO: u64 = 256;
/// Raw bytes any compressed section may declare beyond the ratio.
pub(super) const SLACK: u64 = 64 << 10;

/// Whether `raw` bytes compressed to `stored` bytes may be stored as such.
pub(super) fn ratio_ok(stored: u64, raw: u64) -> bool {
    raw <= stored.saturating_mul(MAX_RATIO).saturating_add(SLACK)
}

/// Checks a compressed section's declared length against its stored bytes
/// (one zstd frame) before any output buffer is allocated.
pub(super) fn check_declared_size(
    section: &'static str,
    stored: &[u8],
    raw_len: u64,
) -> Result<(), FormatError> {
    if !ratio_ok(stored.len() as u64, raw_len) {
        return Err(FormatError::SectionBomb {
            section,
            stored_len: stored.len() as u64,
            raw_len,
        });
    }
    match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) if n == raw_len => Ok(()),
        _ => Err(FormatError::Corrupt(
            "a compressed section's zstd frame does not declare the section's length",
        )),
    }
}
