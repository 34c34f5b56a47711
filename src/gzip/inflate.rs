//! Resuming inflate at a checkpoint: [`SpanDecoder`] and [`read_range`].

use super::ffi::{ZStream, Z_BUF_ERROR, Z_NO_FLUSH, Z_STREAM_END};
use super::header::{HeaderParser, Trailer};
use super::{decompress_window, Checkpoint, GzipError, Stalls, ZranIndex};

/// Where the decoder is in the gzip framing.
#[derive(Debug)]
enum Phase {
    /// Waiting for the byte holding the checkpoint's leading `bits`.
    Prime(u8),
    /// Inside deflate data.
    Deflate,
    /// Skipping a member trailer.
    Trailer(Trailer),
    /// After a trailer: next member, zero padding or end of input.
    AfterMember,
    /// Inside a member header.
    Header(HeaderParser),
    /// In zero padding after the last member.
    Padding,
    /// End of stream.
    Finished,
}

/// A resumable decoder positioned at a checkpoint. Feed it the compressed
/// bytes from [`SpanDecoder::input_start`] on, in pieces of any size; it
/// crosses gzip member boundaries by itself. Member CRCs are not checked
/// here (a span starts mid-member): callers verify chunk digests instead.
#[derive(Debug)]
pub struct SpanDecoder {
    z: ZStream,
    phase: Phase,
    in_pos: u64,
    out_pos: u64,
    stalls: Stalls,
}

impl SpanDecoder {
    /// A decoder for `cp`: inflates its window and primes a raw inflater.
    pub fn new(cp: &Checkpoint) -> Result<Self, GzipError> {
        let bad = |msg: String| GzipError::BadCheckpoint {
            out_offset: cp.out_offset,
            msg,
        };
        if cp.bits > 7 {
            return Err(bad(format!("bit count {} > 7", cp.bits)));
        }
        if cp.bits > 0 && cp.in_offset == 0 {
            return Err(bad("bits > 0 at blob offset 0".into()));
        }
        let window = decompress_window(&cp.window, cp.window_len).map_err(|e| match e {
            GzipError::BadCheckpoint { msg, .. } => bad(msg),
            e => e,
        })?;
        let mut z = ZStream::new_raw().map_err(|(code, msg)| GzipError::Zlib { code, msg })?;
        if !window.is_empty() {
            let rc = z.set_dictionary(&window);
            if rc != 0 {
                return Err(bad(format!("inflateSetDictionary failed ({rc})")));
            }
        }
        Ok(SpanDecoder {
            z,
            phase: if cp.bits > 0 {
                Phase::Prime(cp.bits)
            } else {
                Phase::Deflate
            },
            in_pos: Self::input_start(cp),
            out_pos: cp.out_offset,
            stalls: Stalls::default(),
        })
    }

    /// Blob offset of the first compressed byte a decoder for `cp` needs
    /// (`cp.in_offset - 1` when `cp.bits > 0`).
    pub fn input_start(cp: &Checkpoint) -> u64 {
        if cp.bits > 0 {
            cp.in_offset.saturating_sub(1)
        } else {
            cp.in_offset
        }
    }

    /// Blob offset of the next input byte `decode` expects.
    pub fn input_position(&self) -> u64 {
        self.in_pos
    }

    /// Uncompressed offset of the next byte `decode` will produce.
    pub fn output_position(&self) -> u64 {
        self.out_pos
    }

    /// Whether the whole stream has ended (after a member trailer, zero
    /// padding was seen, or an empty `input` signalled the end of the blob).
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished | Phase::Padding)
    }

    /// Feeds `input`, which must start exactly at [`Self::input_position`],
    /// and produces up to `out.len()` bytes. Returns `(consumed, produced)`.
    /// Stops when `out` is full, the input is used up, or the stream ends.
    /// `produced == 0` with all input consumed means it needs more input.
    /// An empty `input` means the blob has ended: fine between members
    /// (the decoder finishes), a [`GzipError::Truncated`] inside one.
    pub fn decode(&mut self, input: &[u8], out: &mut [u8]) -> Result<(usize, usize), GzipError> {
        let eof = input.is_empty();
        let mut used = 0usize;
        let mut made = 0usize;
        loop {
            let rest = &input[used..];
            match &mut self.phase {
                Phase::Finished => break,
                Phase::Prime(bits) => {
                    let Some(&b) = rest.first() else {
                        if eof {
                            return Err(self.truncated());
                        }
                        break;
                    };
                    let bits = *bits;
                    let rc = self.z.prime(i32::from(bits), i32::from(b >> (8 - bits)));
                    if rc != 0 {
                        return Err(GzipError::Zlib {
                            code: rc,
                            msg: "inflatePrime failed".into(),
                        });
                    }
                    used += 1;
                    self.in_pos += 1;
                    self.phase = Phase::Deflate;
                }
                Phase::Deflate => {
                    if made == out.len() {
                        break;
                    }
                    let step = self.z.inflate(rest, &mut out[made..], Z_NO_FLUSH);
                    used += step.consumed;
                    made += step.produced;
                    self.in_pos = self.in_pos.saturating_add(step.consumed as u64);
                    self.out_pos = self.out_pos.saturating_add(step.produced as u64);
                    match step.code {
                        Z_STREAM_END => self.phase = Phase::Trailer(Trailer::default()),
                        0 | Z_BUF_ERROR => {
                            let stalled = step.consumed == 0 && step.produced == 0;
                            if stalled && eof {
                                return Err(self.truncated());
                            }
                            if stalled && used == input.len() {
                                break;
                            }
                            self.stalls.note(!stalled, step.code)?;
                        }
                        code => {
                            let msg = self.z.msg();
                            return Err(GzipError::from_inflate(
                                code,
                                msg,
                                self.in_pos,
                                self.out_pos,
                            ));
                        }
                    }
                }
                Phase::Trailer(t) => {
                    if rest.is_empty() {
                        if eof {
                            return Err(self.truncated());
                        }
                        break;
                    }
                    let n = t.feed(rest);
                    let done = t.get().is_some();
                    used += n;
                    self.in_pos = self.in_pos.saturating_add(n as u64);
                    if done {
                        self.phase = Phase::AfterMember;
                    }
                }
                Phase::AfterMember => match rest.first() {
                    None if eof => self.phase = Phase::Finished,
                    None => break,
                    Some(0x1f) => self.phase = Phase::Header(HeaderParser::new()),
                    Some(0) => self.phase = Phase::Padding,
                    Some(_) => {
                        return Err(GzipError::TrailingGarbage {
                            in_offset: self.in_pos,
                        })
                    }
                },
                Phase::Header(p) => {
                    if rest.is_empty() {
                        if eof {
                            return Err(self.truncated());
                        }
                        break;
                    }
                    let n = p.feed(rest).map_err(|(i, msg)| GzipError::BadHeader {
                        in_offset: self.in_pos.saturating_add(i as u64),
                        msg,
                    })?;
                    let done = p.is_done();
                    used += n;
                    self.in_pos = self.in_pos.saturating_add(n as u64);
                    if done {
                        let rc = self.z.reset_raw();
                        if rc != 0 {
                            return Err(GzipError::Zlib {
                                code: rc,
                                msg: self.z.msg(),
                            });
                        }
                        self.phase = Phase::Deflate;
                    }
                }
                Phase::Padding => {
                    if let Some(i) = rest.iter().position(|&b| b != 0) {
                        return Err(GzipError::TrailingGarbage {
                            in_offset: self.in_pos.saturating_add(i as u64),
                        });
                    }
                    used += rest.len();
                    self.in_pos = self.in_pos.saturating_add(rest.len() as u64);
                    if eof {
                        self.phase = Phase::Finished;
                    }
                    break;
                }
            }
        }
        Ok((used, made))
    }

    fn truncated(&self) -> GzipError {
        GzipError::Truncated {
            in_offset: self.in_pos,
            out_offset: self.out_pos,
        }
    }
}

/// Decodes uncompressed `[start, start + out.len())` of a whole gzip blob held
/// in memory, from the last checkpoint at or before `start`. Returns the
/// number of bytes written (short only at the end of the stream).
pub fn read_range(
    blob: &[u8],
    index: &ZranIndex,
    start: u64,
    out: &mut [u8],
) -> Result<usize, GzipError> {
    if out.is_empty() || start >= index.uncompressed_size {
        return Ok(0);
    }
    let Some(cp) = index.checkpoints.get(index.checkpoint_for(start)) else {
        return Err(GzipError::BadCheckpoint {
            out_offset: start,
            msg: "index has no checkpoints".into(),
        });
    };
    if cp.out_offset > start {
        return Err(GzipError::BadCheckpoint {
            out_offset: cp.out_offset,
            msg: "first checkpoint is past the requested offset".into(),
        });
    }
    let mut dec = SpanDecoder::new(cp)?;
    let mut pos = usize::try_from(dec.input_position())
        .ok()
        .filter(|&p| p <= blob.len())
        .ok_or_else(|| GzipError::BadCheckpoint {
            out_offset: cp.out_offset,
            msg: "checkpoint lies beyond the blob".into(),
        })?;
    const PIECE: usize = 256 * 1024;
    let mut scratch = vec![0u8; 64 * 1024];
    let mut done = 0usize;
    while done < out.len() && !dec.is_finished() {
        let skip = start.saturating_sub(dec.output_position());
        let input = &blob[pos..(pos.saturating_add(PIECE)).min(blob.len())];
        let (used, _) = if skip > 0 {
            let n = usize::try_from(skip)
                .unwrap_or(usize::MAX)
                .min(scratch.len());
            dec.decode(input, &mut scratch[..n])?
        } else {
            let (used, made) = dec.decode(input, &mut out[done..])?;
            done += made;
            (used, made)
        };
        pos += used;
    }
    Ok(done)
}
