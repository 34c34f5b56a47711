//! Invariants under test (differential):
//! - for any input, `ZranReader` either fails or yields exactly what
//!   flate2's sequential `MultiGzDecoder` yields;
//! - when it succeeds, a read from every checkpoint via `read_range`
//!   returns the same bytes as the sequential decode.
#![no_main]

use std::io::Read;

use clip::gzip::{read_range, IndexerConfig, ZranReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Half the time, gzip the input first so the fuzzer explores valid streams too.
    let owned;
    let blob: &[u8] = if data.first().is_some_and(|b| b & 1 == 1) {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
        std::io::Write::write_all(&mut enc, &data[1..]).unwrap();
        owned = enc.finish().unwrap();
        &owned
    } else {
        data
    };
    let cfg = IndexerConfig { span: 1024, chunk_size: 512 };
    let mut out = Vec::new();
    let mut zr = ZranReader::new(blob, cfg);
    if zr.read_to_end(&mut out).is_err() {
        return;
    }
    let Ok(index) = zr.finish() else { return };
    let mut expected = Vec::new();
    if flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut expected).is_ok() {
        assert_eq!(out, expected);
    }
    for cp in &index.checkpoints {
        let start = cp.out_offset;
        let mut buf = vec![0u8; 700];
        if let Ok(n) = read_range(blob, &index, start, &mut buf) {
            let s = start as usize;
            assert_eq!(&buf[..n], &out[s..s + n]);
        }
    }
});
