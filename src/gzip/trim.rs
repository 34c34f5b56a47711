//! Checkpoint window trimming: zero the window bytes that the deflate data
//! after a checkpoint never references, so the stored window compresses to a
//! fraction of its size while decoding from the checkpoint stays identical.
//!
//! Deflate parsing never depends on output values and back-references reach
//! at most 32 KiB back, so a window byte matters only if one of the first
//! 32 KiB of output after the checkpoint is copied from it (directly or via a
//! chain of copies, which always starts with a direct copy in that range).
//! Two trial decodes of that stretch with synthetic windows — window byte `i`
//! set to the low byte of `i`, then to its high byte — reveal, for every
//! window-derived output byte, which window byte it came from. A third decode
//! with the trimmed window verifies the result against the real output.

use super::ffi::{ZStream, Z_BUF_ERROR, Z_NO_FLUSH, Z_STREAM_END};
use super::WINDOW_SIZE;

/// Reusable state for [`Trimmer::trim`]: a raw inflater and scratch space.
pub(crate) struct Trimmer {
    z: Option<ZStream>,
    out: Box<[u8; WINDOW_SIZE]>,
    marks: Box<[u64; WINDOW_SIZE / 64]>,
}

impl std::fmt::Debug for Trimmer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trimmer").finish_non_exhaustive()
    }
}

impl Trimmer {
    pub fn new() -> Self {
        Trimmer {
            z: None,
            out: Box::new([0u8; WINDOW_SIZE]),
            marks: Box::new([0u64; WINDOW_SIZE / 64]),
        }
    }

    /// Zeroes, in place, the bytes of `window` (the output preceding a
    /// checkpoint) that decoding from the checkpoint never reads. `input` is
    /// the compressed data from the checkpoint's input start (including the
    /// partial byte when `bits > 0`) and `real` the first (up to 32 KiB)
    /// bytes it decodes to. `scratch` is working space. Returns false, with
    /// `window` untouched, if trimming could not be verified.
    pub fn trim(
        &mut self,
        window: &mut [u8],
        bits: u8,
        input: &[u8],
        real: &[u8],
        scratch: &mut [u8; WINDOW_SIZE],
    ) -> bool {
        let w = window.len();
        let n = real.len().min(WINDOW_SIZE);
        let real = &real[..n];
        if w == 0 || n == 0 || w > WINDOW_SIZE || bits > 7 || (bits > 0 && input.is_empty()) {
            return false;
        }
        if self.z.is_none() {
            self.z = ZStream::new_raw().ok();
        }
        let Some(z) = self.z.as_mut() else {
            return false;
        };
        // Pass A: window byte i = low byte of i, output into `out`.
        for (i, b) in scratch[..w].iter_mut().enumerate() {
            *b = i as u8;
        }
        if !start(z, bits, input, &scratch[..w]) || !run(z, bits, input, &mut self.out[..n]) {
            return false;
        }
        // Pass B: window byte i = high byte of i, output into `scratch` (the
        // inflater copied the dictionary, so the buffer is free again).
        for (i, b) in scratch[..w].iter_mut().enumerate() {
            *b = (i >> 8) as u8;
        }
        if !start(z, bits, input, &scratch[..w]) || !run(z, bits, input, &mut scratch[..n]) {
            return false;
        }
        self.marks.fill(0);
        for p in 0..n {
            let (a, b, r) = (self.out[p], scratch[p], real[p]);
            if a != r || b != r {
                // The byte depends on the window: it came from window[s].
                let s = usize::from(a) | usize::from(b) << 8;
                if s >= w || window[s] != r {
                    return false; // cannot happen for a consistent decode
                }
                self.marks[s / 64] |= 1 << (s % 64);
            } else {
                // A literal (or window-independent copy), unless it is a copy
                // of window[257 * r] that happens to match both patterns.
                let s = usize::from(r) * 257;
                if s < w && window[s] == r {
                    self.marks[s / 64] |= 1 << (s % 64);
                }
            }
        }
        for (i, b) in scratch[..w].iter_mut().enumerate() {
            *b = if self.marks[i / 64] & (1 << (i % 64)) != 0 {
                window[i]
            } else {
                0
            };
        }
        // Verify: the trimmed window decodes to the real output.
        if !start(z, bits, input, &scratch[..w])
            || !run(z, bits, input, &mut self.out[..n])
            || self.out[..n] != *real
        {
            return false;
        }
        window.copy_from_slice(&scratch[..w]);
        true
    }
}

/// Resets `z` to a checkpoint: window `dict`, primed with the leading bits.
fn start(z: &mut ZStream, bits: u8, input: &[u8], dict: &[u8]) -> bool {
    if z.reset_raw() != 0 || z.set_dictionary(dict) != 0 {
        return false;
    }
    if bits > 0 {
        let Some(&b) = input.first() else {
            return false;
        };
        if z.prime(i32::from(bits), i32::from(b >> (8 - bits))) != 0 {
            return false;
        }
    }
    true
}

/// Inflates from the checkpoint until `out` is full; false if the data ends
/// (member end or input end) or is invalid first.
fn run(z: &mut ZStream, bits: u8, input: &[u8], out: &mut [u8]) -> bool {
    let mut used = usize::from(bits > 0);
    let mut made = 0;
    while made < out.len() {
        let step = z.inflate(&input[used..], &mut out[made..], Z_NO_FLUSH);
        used += step.consumed;
        made += step.produced;
        match step.code {
            Z_STREAM_END => break,
            0 | Z_BUF_ERROR if step.consumed > 0 || step.produced > 0 => {}
            _ => break,
        }
    }
    made == out.len()
}
