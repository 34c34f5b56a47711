//! zstd layers: decode the blob once, frame by frame, while recording where
//! every frame starts (compressed and uncompressed offsets). zstd frames are
//! independent, so any frame start is a resume point with no window: a
//! checkpoint is placed at a frame start once `span` uncompressed bytes have
//! passed since the previous one. Spans are cut into verification chunks
//! from their start, as for gzip; a chunk's `in_end` is the end of the frame
//! that holds its last byte.
//!
//! Skippable frames (magic `0x184D2A50..=0x184D2A5F`) are decoded (skipped)
//! by libzstd like any other frame and produce no output. Frames whose
//! window exceeds [`crate::zstd_limits::WINDOW_LOG_MAX`] are refused.

use std::io::{self, Read};

use zstd::stream::raw::{Decoder, Operation as _};

use crate::digest::Hasher;
use crate::format::{Checkpoint, Chunk};
use crate::zstd_limits;

/// Compressed input buffered at once.
const INPUT_BUF: usize = 128 << 10;
/// Consecutive decoder calls without progress before giving up.
const MAX_STALLS: u32 = 16;

/// What [`FrameIndexer::finish`] yields.
#[derive(Debug)]
pub(super) struct ZstdIndex {
    /// Resume points: the first at 0, the others at frame starts.
    pub checkpoints: Vec<Checkpoint>,
    /// Chunk digests, spans cut from their start.
    pub chunks: Vec<Chunk>,
}

/// A `Read` of the uncompressed stream of a zstd blob that records frame
/// boundaries, places checkpoints and cuts and hashes chunks on the way.
/// Memory is bounded by the input buffer, the decoder's window and the
/// records themselves.
pub(super) struct FrameIndexer<R> {
    inner: R,
    dec: Decoder<'static>,
    input: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    eof: bool,
    /// Compressed bytes consumed by the decoder.
    in_pos: u64,
    /// Uncompressed bytes produced.
    out_pos: u64,
    /// The next input byte starts a frame.
    at_frame_start: bool,
    /// Output of the current frame so far.
    frame_out: u64,
    /// End (blob offset) of the last frame that produced output.
    data_frame_end: u64,
    /// Frames started so far (data and skippable), for error messages.
    frames: u64,
    /// Blob offset where the current frame started.
    frame_in_start: u64,
    stalls: u32,
    span: u64,
    chunk_size: u64,
    checkpoints: Vec<Checkpoint>,
    /// A frame start (blob offset) due to become a checkpoint once output
    /// follows it: a stream that ends in empty or skippable frames gets no
    /// checkpoint at its very end.
    candidate: Option<u64>,
    chunks: Vec<Chunk>,
    /// `chunks[pending..]` were completed in the current frame: their
    /// `in_end` is set when the frame ends.
    pending: usize,
    hasher: Hasher,
    in_chunk: u64,
    /// The first decode error, kept so the caller can report it as zstd's
    /// rather than as whatever the tar reader wrapped it in.
    error: Option<String>,
    /// That error was a frame asking for too large a window.
    window_too_large: bool,
}

impl<R: Read> FrameIndexer<R> {
    pub(super) fn new(inner: R, span: u64, chunk_size: u32) -> io::Result<Self> {
        Ok(FrameIndexer {
            inner,
            dec: zstd_limits::decoder()?,
            input: vec![0u8; INPUT_BUF].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            eof: false,
            in_pos: 0,
            out_pos: 0,
            at_frame_start: true,
            frame_out: 0,
            data_frame_end: 0,
            frames: 0,
            frame_in_start: 0,
            stalls: 0,
            span: span.max(1),
            chunk_size: u64::from(chunk_size.max(1)),
            checkpoints: vec![Checkpoint::default()],
            candidate: None,
            chunks: Vec::new(),
            pending: 0,
            hasher: Hasher::new(),
            in_chunk: 0,
            error: None,
            window_too_large: false,
        })
    }

    /// Whether decoding stopped at a frame whose window is over the limit.
    pub(super) fn window_too_large(&self) -> bool {
        self.window_too_large
    }

    /// The decode error that stopped the stream, if any.
    pub(super) fn take_error(&mut self) -> Option<io::Error> {
        self.error
            .take()
            .map(|m| io::Error::new(io::ErrorKind::InvalidData, m))
    }

    /// The records, once the stream has been read to its end.
    pub(super) fn finish(mut self) -> io::Result<ZstdIndex> {
        if let Some(e) = self.take_error() {
            return Err(e);
        }
        if !(self.at_frame_start && self.eof && self.in_start == self.in_end) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "stream was not decoded to its end",
            ));
        }
        self.close_chunk(self.data_frame_end);
        debug_assert_eq!(self.pending, self.chunks.len());
        Ok(ZstdIndex {
            checkpoints: self.checkpoints,
            chunks: self.chunks,
        })
    }

    fn fail(&mut self, message: String) -> io::Error {
        let e = io::Error::new(io::ErrorKind::InvalidData, message.clone());
        self.error.get_or_insert(message);
        e
    }

    /// Closes a partial chunk (end of a span or of the stream).
    fn close_chunk(&mut self, in_end: u64) {
        if self.in_chunk > 0 {
            let h = std::mem::take(&mut self.hasher);
            self.chunks.push(Chunk {
                digest: *h.finish().as_bytes(),
                in_end,
            });
            self.in_chunk = 0;
            // Its last byte came from an earlier frame: the hint is final.
            self.pending = self.chunks.len();
        }
    }

    fn frame_start(&mut self) {
        self.frames += 1;
        self.frame_in_start = self.in_pos;
        self.at_frame_start = false;
        let last = self.checkpoints.last().map_or(0, |c| c.out_offset);
        if self.out_pos - last >= self.span && self.candidate.is_none() {
            self.candidate = Some(self.in_pos);
        }
    }

    /// Output follows a candidate frame start: it becomes a checkpoint and
    /// the span before it is closed.
    fn commit_checkpoint(&mut self, in_offset: u64) {
        self.close_chunk(self.data_frame_end);
        self.checkpoints.push(Checkpoint {
            in_offset,
            bits: 0,
            out_offset: self.out_pos,
            window: Vec::new(),
            window_len: 0,
            first_chunk: self.chunks.len() as u32,
        });
    }

    fn frame_end(&mut self) {
        let end = self.in_pos;
        for c in &mut self.chunks[self.pending..] {
            c.in_end = end;
        }
        self.pending = self.chunks.len();
        if self.frame_out > 0 {
            self.data_frame_end = end;
        }
        self.frame_out = 0;
        self.at_frame_start = true;
    }

    /// Hashes output into chunks; completed chunks wait for their frame's end.
    fn absorb(&mut self, mut out: &[u8]) {
        if out.is_empty() {
            return;
        }
        if let Some(at) = self.candidate.take() {
            self.commit_checkpoint(at);
        }
        self.out_pos += out.len() as u64;
        self.frame_out += out.len() as u64;
        while !out.is_empty() {
            let take = out.len().min((self.chunk_size - self.in_chunk) as usize);
            self.hasher.update(&out[..take]);
            self.in_chunk += take as u64;
            out = &out[take..];
            if self.in_chunk == self.chunk_size {
                let h = std::mem::take(&mut self.hasher);
                self.chunks.push(Chunk {
                    digest: *h.finish().as_bytes(),
                    in_end: 0,
                });
                self.in_chunk = 0;
            }
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        while self.in_start == self.in_end && !self.eof {
            match self.inner.read(&mut self.input) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.in_start = 0;
                    self.in_end = n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for FrameIndexer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(m) = &self.error {
            return Err(io::Error::new(io::ErrorKind::InvalidData, m.clone()));
        }
        loop {
            self.refill()?;
            if self.at_frame_start {
                if self.in_start == self.in_end {
                    // End of the blob between frames: the end of the stream.
                    return Ok(0);
                }
                self.frame_start();
            }
            let input = &self.input[self.in_start..self.in_end];
            let st = match self.dec.run_on_buffers(input, buf) {
                Ok(st) => st,
                Err(e) => {
                    self.window_too_large |= zstd_limits::is_window_too_large(&e);
                    return Err(self.fail(format!(
                        "frame {} (at blob offset {}): {e}",
                        self.frames, self.frame_in_start
                    )));
                }
            };
            self.in_start += st.bytes_read;
            self.in_pos += st.bytes_read as u64;
            let written = st.bytes_written;
            self.absorb(&buf[..written]);
            if st.remaining == 0 {
                // libzstd returns 0 exactly when a frame is fully decoded and
                // flushed, and never reads past the frame's last byte.
                self.frame_end();
            }
            if written > 0 {
                self.stalls = 0;
                return Ok(written);
            }
            if st.remaining == 0 || st.bytes_read > 0 {
                self.stalls = 0;
                continue;
            }
            if self.eof && self.in_start == self.in_end {
                return Err(self.fail(format!(
                    "truncated: frame {} (at blob offset {}) is cut at {}",
                    self.frames, self.frame_in_start, self.in_pos
                )));
            }
            self.stalls += 1;
            if self.stalls > MAX_STALLS {
                return Err(self.fail(format!(
                    "decoder makes no progress at blob offset {}",
                    self.in_pos
                )));
            }
        }
    }
}

#[cfg(test)]
#[path = "zstd_tests.rs"]
mod tests;
