//! Resumable decoders positioned at a checkpoint: gzip (zran) via
//! `gzip::SpanDecoder`, zstd via the streaming `zstd` decoder (which moves
//! across frame boundaries by itself, and refuses frames whose window is over
//! [`crate::zstd_limits::WINDOW_LOG_MAX`]).
//!
//! All kinds share one contract: `decode` takes input starting exactly at
//! `input_position()` and returns `(consumed, produced)`; `(0, 0)` with all
//! input consumed means it needs more input.

use std::fmt;

use zstd::stream::raw::Operation as _;

use crate::format::{Checkpoint, LayerKind};
use crate::gzip as gz;
use crate::zstd_limits;

/// Why a decoder failed.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// A zstd frame asks for a window over [`zstd_limits::WINDOW_LOG_MAX`].
    ZstdWindowTooLarge,
    /// Corrupt or truncated input, or no decoder for the kind.
    Failed(String),
}

impl From<String> for DecodeError {
    fn from(message: String) -> Self {
        DecodeError::Failed(message)
    }
}

/// A live decoder of one layer's compressed stream.
pub(crate) enum Decoder {
    Gzip(gz::SpanDecoder),
    Zstd {
        dec: Box<zstd::stream::raw::Decoder<'static>>,
        in_pos: u64,
        out_pos: u64,
    },
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Decoder::Gzip(_) => "gzip",
            Decoder::Zstd { .. } => "zstd",
        };
        f.debug_struct("Decoder")
            .field("kind", &kind)
            .field("in", &self.input_position())
            .field("out", &self.output_position())
            .finish()
    }
}

impl Decoder {
    /// A decoder for a layer of `kind` positioned at `cp`.
    pub(crate) fn new(kind: LayerKind, cp: &Checkpoint) -> Result<Self, String> {
        match kind {
            LayerKind::Gzip => gz::SpanDecoder::new(cp)
                .map(Decoder::Gzip)
                .map_err(|e| e.to_string()),
            LayerKind::ZstdFrames | LayerKind::ZstdWhole => {
                let dec = zstd_limits::decoder().map_err(|e| format!("zstd decoder: {e}"))?;
                Ok(Decoder::Zstd {
                    dec: Box::new(dec),
                    in_pos: cp.in_offset,
                    out_pos: cp.out_offset,
                })
            }
            LayerKind::Tar => Err("uncompressed layers have no decoder".to_string()),
        }
    }

    /// Blob offset of the next input byte expected.
    pub(crate) fn input_position(&self) -> u64 {
        match self {
            Decoder::Gzip(d) => d.input_position(),
            Decoder::Zstd { in_pos, .. } => *in_pos,
        }
    }

    /// Uncompressed offset of the next byte produced.
    pub(crate) fn output_position(&self) -> u64 {
        match self {
            Decoder::Gzip(d) => d.output_position(),
            Decoder::Zstd { out_pos, .. } => *out_pos,
        }
    }

    /// Decodes `input` (starting at `input_position()`) into `out`; returns
    /// `(consumed, produced)`.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), DecodeError> {
        match self {
            Decoder::Gzip(d) => d
                .decode(input, out)
                .map_err(|e| DecodeError::Failed(e.to_string())),
            Decoder::Zstd {
                dec,
                in_pos,
                out_pos,
            } => {
                let st = dec.run_on_buffers(input, out).map_err(|e| {
                    if zstd_limits::is_window_too_large(&e) {
                        DecodeError::ZstdWindowTooLarge
                    } else {
                        DecodeError::Failed(format!("zstd: {e}"))
                    }
                })?;
                *in_pos += st.bytes_read as u64;
                *out_pos += st.bytes_written as u64;
                Ok((st.bytes_read, st.bytes_written))
            }
        }
    }
}
