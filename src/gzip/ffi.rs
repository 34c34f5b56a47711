//! The only unsafe code of the gzip module: a safe RAII wrapper over a raw
//! (headerless, `windowBits = -15`) `libz-rs-sys` inflate stream.
//!
//! The `z_stream` is boxed so its address never changes after
//! `inflateInit2_` (zlib-rs keeps a back pointer to it in its state), and the
//! input/output pointers are set right before each `inflate` call and cleared
//! right after, so no pointer into a caller's buffer outlives the call.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, CStr};

use libz_rs_sys::{
    inflate, inflateEnd, inflateGetDictionary, inflateInit2_, inflatePrime, inflateReset2,
    inflateSetDictionary, z_stream, zlibVersion, Z_OK,
};

pub(crate) use libz_rs_sys::{Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_STREAM_END};

/// Raw deflate, 32 KiB window.
const RAW_WINDOW_BITS: c_int = -15;

/// Outcome of one [`ZStream::inflate`] call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Step {
    /// zlib return code.
    pub code: c_int,
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// `z_stream.data_type` after the call (128 = at a block boundary,
    /// 64 = in the last block, `& 7` = unused bits of the last byte consumed).
    pub data_type: c_int,
}

/// An initialised raw inflate stream; `inflateEnd` runs on drop.
pub(crate) struct ZStream {
    strm: Box<z_stream>,
}

impl std::fmt::Debug for ZStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZStream")
            .field("total_in", &self.strm.total_in)
            .field("total_out", &self.strm.total_out)
            .finish()
    }
}

// SAFETY: the stream state is heap memory owned exclusively by this value
// (allocated through the Rust global allocator); zlib-rs uses no thread-local
// or global mutable state, and the stream holds no pointers into other
// values between calls (next_in/next_out are cleared after every call). Moving
// ownership to another thread is therefore sound. It is not Sync.
unsafe impl Send for ZStream {}

impl ZStream {
    /// A raw inflate stream (`inflateInit2_(-15)`).
    pub fn new_raw() -> Result<Self, (c_int, String)> {
        let mut strm = Box::new(z_stream::default());
        let version = zlibVersion();
        let size = c_int::try_from(std::mem::size_of::<z_stream>()).unwrap_or(c_int::MAX);
        // SAFETY: `strm` is a valid, default-initialised (allocator fields set)
        // z_stream at a stable heap address; `version` is zlib-rs's own
        // NUL-terminated version string.
        let rc = unsafe { inflateInit2_(&mut *strm, RAW_WINDOW_BITS, version, size) };
        if rc != Z_OK {
            return Err((rc, "inflateInit2 failed".to_string()));
        }
        Ok(ZStream { strm })
    }

    /// Resets to the start of a new raw deflate stream, dropping the window.
    pub fn reset_raw(&mut self) -> c_int {
        // SAFETY: the stream was initialised in `new_raw` and is not moved.
        unsafe { inflateReset2(&mut *self.strm, RAW_WINDOW_BITS) }
    }

    /// Inserts `bits` (0..=16) low bits of `value` ahead of the next input.
    pub fn prime(&mut self, bits: c_int, value: c_int) -> c_int {
        // SAFETY: the stream was initialised in `new_raw`; inflatePrime only
        // touches the stream state.
        unsafe { inflatePrime(&mut *self.strm, bits, value) }
    }

    /// Sets the preceding-output window (at most 32 KiB is used).
    pub fn set_dictionary(&mut self, dict: &[u8]) -> c_int {
        let Ok(len) = c_uint::try_from(dict.len()) else {
            return libz_rs_sys::Z_STREAM_ERROR;
        };
        // SAFETY: `dict` is valid for reads of `len` bytes for the duration of
        // the call; zlib copies it into its own window.
        unsafe { inflateSetDictionary(&mut *self.strm, dict.as_ptr(), len) }
    }

    /// Copies the current window (up to 32 KiB of the most recent output since
    /// the last reset) into `out`, returning its length.
    pub fn get_dictionary(&mut self, out: &mut [u8; 32768]) -> Result<usize, c_int> {
        let mut len: c_uint = 0;
        // SAFETY: `out` has room for 32 KiB, the most a 15-bit window holds;
        // `len` is a valid out-pointer.
        let rc = unsafe { inflateGetDictionary(&*self.strm, out.as_mut_ptr(), &mut len) };
        if rc != Z_OK {
            return Err(rc);
        }
        let len = usize::try_from(len).map_err(|_| libz_rs_sys::Z_STREAM_ERROR)?;
        if len > out.len() {
            return Err(libz_rs_sys::Z_STREAM_ERROR);
        }
        Ok(len)
    }

    /// One `inflate` call over `input` into `output` with the given flush mode.
    pub fn inflate(&mut self, input: &[u8], output: &mut [u8], flush: c_int) -> Step {
        let avail_in = c_uint::try_from(input.len()).unwrap_or(c_uint::MAX);
        let avail_out = c_uint::try_from(output.len()).unwrap_or(c_uint::MAX);
        self.strm.next_in = input.as_ptr();
        self.strm.avail_in = avail_in;
        self.strm.next_out = output.as_mut_ptr();
        self.strm.avail_out = avail_out;
        // SAFETY: next_in/avail_in describe a live shared slice and
        // next_out/avail_out a live exclusive slice, both valid for the whole
        // call; the stream was initialised and is at a stable address.
        let code = unsafe { inflate(&mut *self.strm, flush) };
        let left_in = self.strm.avail_in.min(avail_in);
        let left_out = self.strm.avail_out.min(avail_out);
        self.strm.next_in = std::ptr::null();
        self.strm.avail_in = 0;
        self.strm.next_out = std::ptr::null_mut();
        self.strm.avail_out = 0;
        Step {
            code,
            consumed: (avail_in - left_in) as usize,
            produced: (avail_out - left_out) as usize,
            data_type: self.strm.data_type,
        }
    }

    /// zlib's message for the last error, if any.
    pub fn msg(&self) -> String {
        if self.strm.msg.is_null() {
            return String::new();
        }
        // SAFETY: a non-null `msg` points at a static NUL-terminated string
        // set by zlib-rs.
        unsafe { CStr::from_ptr(self.strm.msg) }
            .to_string_lossy()
            .into_owned()
    }
}

impl Drop for ZStream {
    fn drop(&mut self) {
        // SAFETY: the stream was initialised in `new_raw` and is ended once.
        unsafe {
            inflateEnd(&mut *self.strm);
        }
    }
}
