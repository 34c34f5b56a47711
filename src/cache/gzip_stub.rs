//! TEMPORARY stand-in for `crate::gzip` until the gzip branch is merged.
#![allow(missing_docs, dead_code)]
use crate::format::Checkpoint;

#[derive(Debug, thiserror::Error)]
#[error("gzip support not merged yet")]
pub struct GzipError;

#[derive(Debug)]
pub struct SpanDecoder;

impl SpanDecoder {
    pub fn new(_cp: &Checkpoint) -> Result<Self, GzipError> {
        Err(GzipError)
    }
    pub fn input_start(cp: &Checkpoint) -> u64 {
        cp.in_offset - u64::from(cp.bits > 0)
    }
    pub fn input_position(&self) -> u64 {
        0
    }
    pub fn output_position(&self) -> u64 {
        0
    }
    pub fn decode(&mut self, _input: &[u8], _out: &mut [u8]) -> Result<(usize, usize), GzipError> {
        Err(GzipError)
    }
    pub fn is_finished(&self) -> bool {
        false
    }
}
