//! One streaming pass over a gzip blob: [`ZranReader`] yields the
//! uncompressed bytes and records checkpoints and chunk digests on the way.

use std::collections::VecDeque;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use super::ffi::{Step, ZStream, Z_BLOCK, Z_BUF_ERROR, Z_NO_FLUSH, Z_STREAM_END};
use super::header::{HeaderParser, Trailer};
use super::trim::Trimmer;
use super::{
    compress_window_with, trimmed_window_compressor, window_compressor, Checkpoint, Chunk,
    GzipError, IndexerConfig, SpanDecoder, Stalls, ZranIndex, WINDOW_SIZE,
};

/// Compressed input buffer size.
const IN_BUF: usize = 256 * 1024;
/// Staging buffer for callers that read in small pieces.
const STAGE_BUF: usize = 128 * 1024;
/// Reads at least this large inflate straight into the caller's buffer.
const DIRECT_MIN: usize = 32 * 1024;
/// Most compressed bytes logged for window trimming; past this (only
/// pathological streams, e.g. long runs of empty blocks, need that much for
/// 32 KiB of output) the checkpoints in flight keep their full windows.
const TRIM_LOG_MAX: usize = 192 * 1024;
/// Most checkpoints awaiting trimming at once (several only with spans under
/// 32 KiB); further ones keep their full windows.
const MAX_TRIMS: usize = 8;

/// A committed checkpoint whose window waits for the 32 KiB of output after
/// it, to be trimmed (see `trim`) and compressed.
#[derive(Debug)]
struct Trim {
    /// Index in `checkpoints`.
    cp: usize,
    /// The raw window.
    window: Vec<u8>,
}

/// Where the reader is in the gzip framing.
#[derive(Debug)]
enum Phase {
    /// Inside a member header.
    Header(HeaderParser),
    /// Inside a member's deflate data.
    Deflate,
    /// Inside a member trailer.
    Trailer(Trailer),
    /// Just after a member trailer: another member, zero padding or the end.
    AfterMember,
    /// In zero padding after the last member.
    Padding,
    /// The stream ended cleanly.
    Done,
}

/// A `Read` adaptor: reads a gzip stream (one or more members) from `inner`
/// and yields the uncompressed bytes, while recording checkpoints and chunk
/// digests in one pass. Memory stays bounded whatever the stream size: about
/// 600 KiB, of which ~150 KiB for window trimming (logs of the 32 KiB after a
/// checkpoint, a trial inflater, scratch); at most ~450 KiB more on spans
/// under 32 KiB or pathological streams. Checkpoint windows are finalized
/// (trimmed, see `trim`, and compressed) once 32 KiB of output follow them
/// or their member ends. Errors surface as `io::Error`s wrapping a [`GzipError`];
/// [`ZranReader::finish`] returns the typed error.
pub struct ZranReader<R: Read> {
    inner: R,
    cfg: IndexerConfig,
    z: Option<ZStream>,
    error: Option<GzipError>,
    inbuf: Box<[u8]>,
    in_lo: usize,
    in_hi: usize,
    in_eof: bool,
    /// Blob offset of `inbuf[in_lo]`.
    in_pos: u64,
    stage: Box<[u8]>,
    st_lo: usize,
    st_hi: usize,
    /// Uncompressed bytes produced so far.
    out_pos: u64,
    phase: Phase,
    members: u64,
    member_out: u64,
    crc: crc32fast::Hasher,
    checkpoints: Vec<Checkpoint>,
    chunks: Vec<Chunk>,
    /// Uncompressed bytes since the last checkpoint.
    span_out: u64,
    chunk_len: u32,
    chunk_hash: Sha256,
    /// Blob offset after the last inflate call that produced output.
    last_out_in: u64,
    /// A checkpoint (member start, or block boundary with its window still
    /// uncompressed) committed once more output follows it.
    pending: Option<Checkpoint>,
    window: Box<[u8; WINDOW_SIZE]>,
    compressor: libdeflater::Compressor,
    stalls: Stalls,
    /// Whether checkpoint windows are trimmed.
    trim: bool,
    /// Checkpoints awaiting trimming, oldest first (more than one only when
    /// the span is under 32 KiB).
    trims: VecDeque<Trim>,
    /// Whether the logs below are recording (a trim, or a pending block
    /// checkpoint with a window, is in flight).
    logging: bool,
    /// Compressed input consumed from blob offset `log_in_base` on.
    log_in: Vec<u8>,
    log_in_base: u64,
    /// Output produced from uncompressed offset `log_out_base` on.
    log_out: Vec<u8>,
    log_out_base: u64,
    /// The last input byte consumed (a checkpoint's partial byte).
    last_in: u8,
    trimmer: Trimmer,
    trimmed_compressor: libdeflater::Compressor,
}

impl<R: Read> std::fmt::Debug for ZranReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZranReader")
            .field("cfg", &self.cfg)
            .field("in_pos", &self.in_pos)
            .field("out_pos", &self.out_pos)
            .field("phase", &self.phase)
            .field("checkpoints", &self.checkpoints.len())
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl<R: Read> ZranReader<R> {
    /// Wraps `inner`, which must yield a gzip stream from its start (blob
    /// offset 0). A zero `span` or `chunk_size` makes every read fail.
    pub fn new(inner: R, cfg: IndexerConfig) -> Self {
        let mut error = None;
        let z = match ZStream::new_raw() {
            Ok(z) => Some(z),
            Err((code, msg)) => {
                error = Some(GzipError::Zlib { code, msg });
                None
            }
        };
        if cfg.span == 0 {
            error = Some(GzipError::Config("span must be > 0"));
        } else if cfg.chunk_size == 0 {
            error = Some(GzipError::Config("chunk_size must be > 0"));
        }
        ZranReader {
            inner,
            cfg,
            z,
            error,
            inbuf: vec![0u8; IN_BUF].into_boxed_slice(),
            in_lo: 0,
            in_hi: 0,
            in_eof: false,
            in_pos: 0,
            stage: vec![0u8; STAGE_BUF].into_boxed_slice(),
            st_lo: 0,
            st_hi: 0,
            out_pos: 0,
            phase: Phase::Header(HeaderParser::new()),
            members: 0,
            member_out: 0,
            crc: crc32fast::Hasher::new(),
            checkpoints: Vec::new(),
            chunks: Vec::new(),
            span_out: 0,
            chunk_len: 0,
            chunk_hash: Sha256::new(),
            last_out_in: 0,
            pending: None,
            window: Box::new([0u8; WINDOW_SIZE]),
            compressor: window_compressor(),
            stalls: Stalls::default(),
            trim: true,
            trims: VecDeque::new(),
            logging: false,
            log_in: Vec::new(),
            log_in_base: 0,
            log_out: Vec::new(),
            log_out_base: 0,
            last_in: 0,
            trimmer: Trimmer::new(),
            trimmed_compressor: trimmed_window_compressor(),
        }
    }

    /// Whether to store only the window bytes that decoding from each
    /// checkpoint reads, zeroing the rest (default: on). Trimmed windows
    /// decode to exactly the same output and compress several times smaller.
    /// Takes effect for checkpoints placed after the call.
    pub fn set_window_trimming(&mut self, on: bool) {
        self.trim = on;
    }

    /// Finishes the pass and returns the index. Reads (and hashes) whatever
    /// uncompressed data the caller left unread, so a consumer that stops at
    /// the end of its own format (e.g. tar's end-of-archive) still gets a
    /// complete index. Fails if the stream is corrupt, truncated or followed
    /// by non-zero garbage.
    pub fn finish(mut self) -> Result<ZranIndex, GzipError> {
        let mut scratch = vec![0u8; 64 * 1024];
        loop {
            if self.read_inner(&mut scratch)? == 0 {
                break;
            }
        }
        self.finish_trims();
        self.close_chunk(self.last_out_in);
        Ok(ZranIndex {
            checkpoints: self.checkpoints,
            chunks: self.chunks,
            compressed_size: self.in_pos,
            uncompressed_size: self.out_pos,
        })
    }

    /// Compressed bytes consumed so far.
    pub fn compressed_pos(&self) -> u64 {
        self.in_pos
    }

    /// Uncompressed bytes produced so far.
    pub fn uncompressed_pos(&self) -> u64 {
        self.out_pos
    }

    /// `read` with a typed error. A failure is sticky: later calls (and
    /// [`ZranReader::finish`]) report the same error again.
    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, GzipError> {
        if let Some(e) = &self.error {
            return Err(e.duplicate());
        }
        self.read_loop(buf)
            .inspect_err(|e| self.error = Some(e.duplicate()))
    }

    fn read_loop(&mut self, buf: &mut [u8]) -> Result<usize, GzipError> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.st_lo < self.st_hi {
                let n = (self.st_hi - self.st_lo).min(buf.len());
                buf[..n].copy_from_slice(&self.stage[self.st_lo..self.st_lo + n]);
                self.st_lo += n;
                return Ok(n);
            }
            match &mut self.phase {
                Phase::Done => return Ok(0),
                Phase::Deflate => {
                    if self.in_lo == self.in_hi {
                        self.fill()?;
                    }
                    if buf.len() >= DIRECT_MIN {
                        let n = self.deflate_step(buf)?;
                        if n > 0 {
                            return Ok(n);
                        }
                    } else {
                        let mut stage = std::mem::take(&mut self.stage);
                        let r = self.deflate_step(&mut stage);
                        self.stage = stage;
                        self.st_lo = 0;
                        self.st_hi = r?;
                    }
                }
                Phase::Header(_) => {
                    if self.in_lo == self.in_hi && !self.fill()? {
                        return Err(self.truncated());
                    }
                    let Phase::Header(p) = &mut self.phase else {
                        unreachable!("phase checked above")
                    };
                    let input = &self.inbuf[self.in_lo..self.in_hi];
                    let used = p.feed(input).map_err(|(i, msg)| GzipError::BadHeader {
                        in_offset: self.in_pos.saturating_add(i as u64),
                        msg,
                    })?;
                    let done = p.is_done();
                    self.consume(used);
                    if done {
                        self.start_member()?;
                    }
                }
                Phase::Trailer(_) => {
                    if self.in_lo == self.in_hi && !self.fill()? {
                        return Err(self.truncated());
                    }
                    let Phase::Trailer(t) = &mut self.phase else {
                        unreachable!("phase checked above")
                    };
                    let used = t.feed(&self.inbuf[self.in_lo..self.in_hi]);
                    let got = t.get();
                    self.consume(used);
                    if let Some((crc, isize)) = got {
                        self.check_trailer(crc, isize)?;
                        self.phase = Phase::AfterMember;
                    }
                }
                Phase::AfterMember => {
                    if self.in_lo == self.in_hi && !self.fill()? {
                        self.phase = Phase::Done;
                        continue;
                    }
                    match self.inbuf[self.in_lo] {
                        0x1f => self.phase = Phase::Header(HeaderParser::new()),
                        0 => self.phase = Phase::Padding,
                        _ => {
                            return Err(GzipError::TrailingGarbage {
                                in_offset: self.in_pos,
                            })
                        }
                    }
                }
                Phase::Padding => {
                    if self.in_lo == self.in_hi && !self.fill()? {
                        self.phase = Phase::Done;
                        continue;
                    }
                    let input = &self.inbuf[self.in_lo..self.in_hi];
                    if let Some(i) = input.iter().position(|&b| b != 0) {
                        return Err(GzipError::TrailingGarbage {
                            in_offset: self.in_pos.saturating_add(i as u64),
                        });
                    }
                    self.consume(input.len());
                }
            }
        }
    }

    fn truncated(&self) -> GzipError {
        GzipError::Truncated {
            in_offset: self.in_pos,
            out_offset: self.out_pos,
        }
    }

    fn consume(&mut self, n: usize) {
        if n > 0 {
            self.last_in = self.inbuf[self.in_lo + n - 1];
        }
        self.in_lo += n;
        self.in_pos = self.in_pos.saturating_add(n as u64);
    }

    /// Refills the (empty) input buffer; false at end of input.
    fn fill(&mut self) -> Result<bool, GzipError> {
        debug_assert_eq!(self.in_lo, self.in_hi);
        if self.in_eof {
            return Ok(false);
        }
        self.in_lo = 0;
        self.in_hi = 0;
        loop {
            match self.inner.read(&mut self.inbuf) {
                Ok(0) => {
                    self.in_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.in_hi = n.min(self.inbuf.len());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(GzipError::Io(e)),
            }
        }
    }

    /// A member header was parsed: reset the inflater, place the first
    /// checkpoint or a member-start candidate.
    fn start_member(&mut self) -> Result<(), GzipError> {
        let z = self.z.as_mut().ok_or(GzipError::Zlib {
            code: -2,
            msg: "no inflate stream".into(),
        })?;
        let rc = z.reset_raw();
        if rc != 0 {
            return Err(GzipError::Zlib {
                code: rc,
                msg: z.msg(),
            });
        }
        let cp = Checkpoint {
            in_offset: self.in_pos,
            bits: 0,
            out_offset: self.out_pos,
            window: Vec::new(),
            window_len: 0,
            first_chunk: 0,
        };
        if self.members == 0 {
            self.push_checkpoint(cp)?;
        } else if self.span_out >= self.cfg.span {
            self.pending = Some(cp);
        }
        self.members = self.members.saturating_add(1);
        self.member_out = 0;
        self.crc = crc32fast::Hasher::new();
        self.phase = Phase::Deflate;
        Ok(())
    }

    fn check_trailer(&mut self, crc: u32, isize: u32) -> Result<(), GzipError> {
        let have = std::mem::take(&mut self.crc).finalize();
        let corrupt = |msg: String| GzipError::Corrupt {
            in_offset: self.in_pos,
            out_offset: self.out_pos,
            msg,
        };
        if have != crc {
            return Err(corrupt(format!(
                "member CRC32 mismatch: trailer {crc:08x}, data {have:08x}"
            )));
        }
        if self.member_out as u32 != isize {
            return Err(corrupt(format!(
                "member ISIZE mismatch: trailer {isize}, data {} (mod 2^32)",
                self.member_out as u32
            )));
        }
        Ok(())
    }

    /// One inflate call into `out`; returns bytes produced (0 when the call
    /// only consumed input, hit a block boundary or ended the member).
    fn deflate_step(&mut self, out: &mut [u8]) -> Result<usize, GzipError> {
        let chunk_size = self.cfg.chunk_size as usize;
        let (since, room) = if self.pending.is_some() {
            (0, chunk_size)
        } else {
            (self.span_out, chunk_size - self.chunk_len as usize)
        };
        let mut limit = out.len().min(room);
        let flush = if since >= self.cfg.span {
            Z_BLOCK
        } else {
            let to_span = usize::try_from(self.cfg.span - since).unwrap_or(usize::MAX);
            limit = limit.min(to_span);
            Z_NO_FLUSH
        };
        if self.logging {
            // Stop where the oldest trim has its 32 KiB, so the logs stay small.
            let need = (self.log_out_base + WINDOW_SIZE as u64).saturating_sub(self.out_pos);
            if need > 0 {
                limit = limit.min(need as usize);
            }
        }
        let Some(z) = self.z.as_mut() else {
            return Err(GzipError::Zlib {
                code: -2,
                msg: "no inflate stream".into(),
            });
        };
        let step: Step = z.inflate(
            &self.inbuf[self.in_lo..self.in_hi],
            &mut out[..limit],
            flush,
        );
        if self.logging {
            self.log_in
                .extend_from_slice(&self.inbuf[self.in_lo..self.in_lo + step.consumed]);
            if self.log_in.len() > TRIM_LOG_MAX {
                self.finish_trims();
            }
        }
        self.consume(step.consumed);
        if step.produced > 0 {
            self.last_out_in = self.in_pos;
            if let Some(cp) = self.pending.take() {
                self.commit_pending(cp)?;
            }
            if self.logging {
                self.log_out.extend_from_slice(&out[..step.produced]);
            }
            self.account(&out[..step.produced]);
            self.advance_trims();
        }
        match step.code {
            Z_STREAM_END => {
                self.stalls.reset();
                // Nothing after the member end references the window.
                self.finish_trims();
                self.phase = Phase::Trailer(Trailer::default());
            }
            0 | Z_BUF_ERROR => {
                let dt = step.data_type;
                if dt & 128 != 0
                    && dt & 64 == 0
                    && self.pending.is_none()
                    && self.span_out >= self.cfg.span
                {
                    self.block_checkpoint((dt & 7) as u8)?;
                }
                let stalled = step.consumed == 0 && step.produced == 0;
                if stalled && self.in_lo == self.in_hi && self.in_eof {
                    return Err(self.truncated());
                }
                self.stalls.note(!stalled, step.code)?;
            }
            code => {
                let msg = self.z.as_ref().map(|z| z.msg()).unwrap_or_default();
                return Err(GzipError::from_inflate(
                    code,
                    msg,
                    self.in_pos,
                    self.out_pos,
                ));
            }
        }
        Ok(step.produced)
    }

    /// Hashes produced bytes into chunks and advances the counters.
    fn account(&mut self, data: &[u8]) {
        self.crc.update(data);
        let chunk_size = self.cfg.chunk_size as usize;
        let mut rest = data;
        while !rest.is_empty() {
            let take = (chunk_size - self.chunk_len as usize).min(rest.len());
            self.chunk_hash.update(&rest[..take]);
            self.chunk_len += take as u32; // take <= chunk_size - chunk_len
            rest = &rest[take..];
            if self.chunk_len as usize == chunk_size {
                self.close_chunk(self.in_pos);
            }
        }
        let n = data.len() as u64;
        self.span_out = self.span_out.saturating_add(n);
        self.member_out = self.member_out.saturating_add(n);
        self.out_pos = self.out_pos.saturating_add(n);
    }

    /// Ends the current chunk (if it holds any bytes).
    fn close_chunk(&mut self, in_end: u64) {
        if self.chunk_len == 0 {
            return;
        }
        let digest = std::mem::take(&mut self.chunk_hash).finalize().into();
        self.chunks.push(Chunk { digest, in_end });
        self.chunk_len = 0;
    }

    fn push_checkpoint(&mut self, mut cp: Checkpoint) -> Result<(), GzipError> {
        cp.first_chunk = u32::try_from(self.chunks.len())
            .map_err(|_| GzipError::Config("more than 2^32 chunks: raise chunk_size"))?;
        self.checkpoints.push(cp);
        self.span_out = 0;
        Ok(())
    }

    /// Notes a checkpoint at the block boundary inflate just stopped at. It
    /// becomes pending (window kept raw) and is committed only once more
    /// output follows, so no checkpoint lands at the very end of the stream.
    fn block_checkpoint(&mut self, bits: u8) -> Result<(), GzipError> {
        let Some(z) = self.z.as_mut() else {
            return Ok(());
        };
        let len = z
            .get_dictionary(&mut self.window)
            .map_err(|code| GzipError::Zlib {
                code,
                msg: "inflateGetDictionary failed".into(),
            })?;
        let cp = Checkpoint {
            in_offset: self.in_pos,
            bits,
            out_offset: self.out_pos,
            window: self.window[..len].to_vec(),
            window_len: len as u32, // len <= WINDOW_SIZE
            first_chunk: 0,
        };
        if self.trim && len > 0 && !self.logging {
            // Start the logs at this checkpoint (with trims in flight they
            // already run, from an earlier one).
            self.log_in.clear();
            self.log_in_base = SpanDecoder::input_start(&cp);
            if bits > 0 {
                self.log_in.push(self.last_in);
            }
            self.log_out.clear();
            self.log_out_base = self.out_pos;
            self.logging = true;
        }
        self.pending = Some(cp);
        Ok(())
    }

    /// Commits the pending checkpoint now that output follows it: its window
    /// (still raw) is queued for trimming, or compressed right away.
    fn commit_pending(&mut self, mut cp: Checkpoint) -> Result<(), GzipError> {
        self.close_chunk(cp.in_offset);
        let queue = self.trim
            && !cp.window.is_empty()
            && self.logging
            && self.trims.len() < MAX_TRIMS
            && self.log_in_base <= SpanDecoder::input_start(&cp)
            && self.log_out_base <= cp.out_offset;
        let window = std::mem::take(&mut cp.window);
        if !queue {
            cp.window = compress_window_with(&mut self.compressor, &window);
        }
        self.push_checkpoint(cp)?;
        if queue {
            self.trims.push_back(Trim {
                cp: self.checkpoints.len() - 1,
                window,
            });
        }
        Ok(())
    }

    /// Finalizes the trims that have their 32 KiB of output, then drops the
    /// log bytes no remaining trim (or pending checkpoint) needs.
    fn advance_trims(&mut self) {
        while let Some(t) = self.trims.front() {
            let out = self.checkpoints[t.cp].out_offset;
            if self.out_pos < out.saturating_add(WINDOW_SIZE as u64) {
                break;
            }
            if let Some(t) = self.trims.pop_front() {
                self.finish_trim(t);
            }
        }
        let next = match (self.trims.front(), &self.pending) {
            (Some(t), _) => Some(&self.checkpoints[t.cp]),
            (None, Some(cp)) if !cp.window.is_empty() => Some(cp),
            _ => None,
        };
        let Some(next) = next else {
            self.stop_logging();
            return;
        };
        let (in_start, out_start) = (SpanDecoder::input_start(next), next.out_offset);
        let di = usize::try_from(in_start.saturating_sub(self.log_in_base)).unwrap_or(usize::MAX);
        let d_o =
            usize::try_from(out_start.saturating_sub(self.log_out_base)).unwrap_or(usize::MAX);
        if di > 0 {
            self.log_in.drain(..di.min(self.log_in.len()));
            self.log_in_base = in_start;
        }
        if d_o > 0 {
            self.log_out.drain(..d_o.min(self.log_out.len()));
            self.log_out_base = out_start;
        }
    }

    /// Finalizes every trim in flight with the output logged so far (at a
    /// member end, at the end, or when the logs grew too big).
    fn finish_trims(&mut self) {
        while let Some(t) = self.trims.pop_front() {
            self.finish_trim(t);
        }
        self.stop_logging();
    }

    fn stop_logging(&mut self) {
        self.logging = false;
        self.log_in.clear();
        self.log_out.clear();
    }

    /// Trims (if the logs allow) and compresses one queued window.
    fn finish_trim(&mut self, t: Trim) {
        let Trim { cp: i, mut window } = t;
        let cp = &self.checkpoints[i];
        let ok = self.logging
            && self.log_in_base <= SpanDecoder::input_start(cp)
            && self.log_out_base <= cp.out_offset
            && {
                let di = (SpanDecoder::input_start(cp) - self.log_in_base) as usize;
                let d_o = (cp.out_offset - self.log_out_base) as usize;
                let input = self.log_in.get(di..).unwrap_or_default();
                let real = self.log_out.get(d_o..).unwrap_or_default();
                let real = &real[..real.len().min(WINDOW_SIZE)];
                self.trimmer
                    .trim(&mut window, cp.bits, input, real, &mut self.window)
            };
        let c = if ok {
            &mut self.trimmed_compressor
        } else {
            &mut self.compressor
        };
        self.checkpoints[i].window = compress_window_with(c, &window);
    }
}

impl<R: Read> Read for ZranReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_inner(buf).map_err(io::Error::from)
    }
}
