//! The window limit every streaming zstd decoder in clip runs with: the
//! layer indexer (`index`) and the cache's span decoders (`cache`). A frame
//! that asks for a larger window is refused — a named error in both — instead
//! of making the process allocate whatever a hostile blob declares.
//!
//! A leaf: depends on the `zstd` crate only.

use std::io;

use zstd::stream::raw::{DParameter, Decoder};
use zstd::zstd_safe::zstd_sys::ZSTD_ErrorCode;

/// log2 of the largest zstd window decoded: 128 MiB, the limit the zstd CLI
/// decodes with by default (frames written with `--long=28` or more need
/// `--memory`, here they are refused).
pub const WINDOW_LOG_MAX: u32 = 27;

/// A streaming zstd decoder limited to [`WINDOW_LOG_MAX`].
pub fn decoder() -> io::Result<Decoder<'static>> {
    let mut d = Decoder::new()?;
    d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG_MAX))?;
    Ok(d)
}

/// Whether a decoder error is libzstd refusing a frame whose window is
/// larger than [`WINDOW_LOG_MAX`] allows. (The `zstd` crate turns error
/// codes into `io::Error`s carrying libzstd's name for the code.)
pub fn is_window_too_large(e: &io::Error) -> bool {
    let code = (ZSTD_ErrorCode::ZSTD_error_frameParameter_windowTooLarge as usize).wrapping_neg();
    e.to_string() == zstd::zstd_safe::get_error_name(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use zstd::stream::raw::Operation as _;

    /// A frame with a 256 MiB window (as `zstd --long=28` writes).
    fn wide_frame() -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.set_parameter(zstd::stream::raw::CParameter::WindowLog(28))
            .unwrap();
        enc.write_all(&[7u8; 4096]).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn wide_windows_are_refused_by_name() {
        let frame = wide_frame();
        let mut out = vec![0u8; 8192];
        let Err(e) = decoder().unwrap().run_on_buffers(&frame, &mut out) else {
            panic!("a 256 MiB window was accepted");
        };
        assert!(is_window_too_large(&e), "{e}");
        // Within the limit: decodes; other errors are not window errors.
        let ok = zstd::bulk::compress(&[1u8; 4096], 3).unwrap();
        let st = decoder().unwrap().run_on_buffers(&ok, &mut out).unwrap();
        assert_eq!(st.bytes_written, 4096);
        // A frame header with its reserved bit set.
        let mut bad = ok.clone();
        bad[4] |= 0x08;
        let Err(e) = decoder().unwrap().run_on_buffers(&bad, &mut out) else {
            panic!("a broken frame header was accepted");
        };
        assert!(!is_window_too_large(&e), "{e}");
    }
}
