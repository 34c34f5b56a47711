//! GNU sparse files: the four ways GNU tar records which parts of a file hold
//! data, reduced to one checked list of [`SparseSegment`]s.
//!
//! - old GNU (type `S`, `--format=gnu`): up to 4 `(offset, numbytes)` pairs
//!   in the header, more in 512-byte extension blocks of 21 pairs that
//!   follow it; the real size in the header's `realsize` field;
//! - PAX 0.0: repeated `GNU.sparse.offset` / `GNU.sparse.numbytes` records,
//!   `GNU.sparse.numblocks`, `GNU.sparse.size`;
//! - PAX 0.1: `GNU.sparse.map` = `off,len,off,len,…`, `GNU.sparse.numblocks`,
//!   `GNU.sparse.size`, `GNU.sparse.name`;
//! - PAX 1.0: `GNU.sparse.major=1`, `minor=0`, `name`, `realsize`; the map is
//!   at the start of the member's data: decimal numbers, one per line (the
//!   count, then the pairs), padded to a block boundary.
//!
//! In every dialect the data segments follow one another in the stream with
//! no padding between them, so segment `i` starts at the data start plus the
//! lengths of the segments before it. The map is checked as Go's
//! `archive/tar` does (sorted, non-overlapping, inside the real size, no
//! overflow) and must account for exactly the data the member holds.

use super::header::BLOCK;
use super::MAX_META_SIZE;

/// One run of a sparse file's data; the bytes between runs are holes (zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseSegment {
    /// Offset of the run in the file.
    pub offset: u64,
    /// Length of the run (never 0).
    pub len: u64,
    /// Offset of the run's first byte in the (uncompressed) tar stream.
    pub data_offset: u64,
}

/// Pairs in the old-GNU header block.
const HEADER_PAIRS: usize = 4;
/// Pairs in one old-GNU extension block.
const EXT_PAIRS: usize = 21;
/// Offset of the header's pairs, its `isextended` byte and `realsize` field.
const HEADER_MAP: usize = 386;
const HEADER_EXTENDED: usize = 482;
const HEADER_REALSIZE: std::ops::Range<usize> = 483..495;
/// Offset of the `isextended` byte of an extension block.
const EXT_EXTENDED: usize = 504;
/// Most old-GNU extension blocks read for one entry: as much map as the
/// other extension members may hold ([`MAX_META_SIZE`]).
pub(crate) const MAX_EXT_BLOCKS: u64 = MAX_META_SIZE / BLOCK;

/// The `GNU.sparse.*` records of one PAX header.
#[derive(Debug, Default, Clone)]
pub(crate) struct PaxSparse {
    /// Whether any `GNU.sparse.*` record was present.
    pub any: bool,
    /// `GNU.sparse.major` / `GNU.sparse.minor`, raw.
    pub major: Option<Vec<u8>>,
    pub minor: Option<Vec<u8>>,
    /// `GNU.sparse.size` (0.x) or `GNU.sparse.realsize` (1.0): the real size.
    pub size: Option<u64>,
    /// `GNU.sparse.numblocks`.
    pub numblocks: Option<u64>,
    /// `GNU.sparse.name`: the real path (0.1, 1.0).
    pub name: Option<Vec<u8>>,
    /// `GNU.sparse.map`, raw (0.1).
    pub map: Option<Vec<u8>>,
    /// Pairs from `GNU.sparse.offset` / `GNU.sparse.numbytes` records (0.0),
    /// in record order.
    pub pairs: Vec<(u64, u64)>,
    /// A `GNU.sparse.offset` still waiting for its `numbytes`.
    pub pending_offset: Option<u64>,
}

/// Where an entry's sparse map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// Old GNU `S`: pairs in the header block (and extension blocks).
    OldGnu,
    /// PAX 0.0 or 0.1: these pairs, from the PAX records.
    Pax0(Vec<(u64, u64)>),
    /// PAX 1.0: the map opens the member's data.
    Pax1,
}

/// Parses a decimal `u64`.
fn decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

impl PaxSparse {
    /// Folds one `GNU.sparse.<key>` record in.
    pub(crate) fn record(&mut self, key: &[u8], value: &[u8]) -> Result<(), &'static str> {
        self.any = true;
        let num = || decimal(value).ok_or("bad number in a GNU.sparse record");
        match key {
            b"major" => self.major = Some(value.to_vec()),
            b"minor" => self.minor = Some(value.to_vec()),
            b"size" | b"realsize" => self.size = Some(num()?),
            b"numblocks" => self.numblocks = Some(num()?),
            b"name" => self.name = Some(value.to_vec()),
            b"map" => self.map = Some(value.to_vec()),
            b"offset" if self.pending_offset.is_some() => {
                return Err("GNU.sparse.offset without its numbytes")
            }
            b"offset" => self.pending_offset = Some(num()?),
            b"numbytes" => {
                let off = self
                    .pending_offset
                    .take()
                    .ok_or("GNU.sparse.numbytes without an offset")?;
                self.pairs.push((off, num()?));
            }
            _ => {} // other GNU.sparse keys carry nothing we need
        }
        Ok(())
    }

    /// Which dialect these records describe; `None` if the entry is not
    /// sparse.
    pub(crate) fn dialect(&self) -> Result<Option<Dialect>, &'static str> {
        if !self.any {
            return Ok(None);
        }
        if self.pending_offset.is_some() {
            return Err("GNU.sparse.offset without its numbytes");
        }
        match (self.major.as_deref(), self.minor.as_deref()) {
            (Some(b"1"), Some(b"0")) => return Ok(Some(Dialect::Pax1)),
            (Some(b"0"), Some(b"0" | b"1")) | (None, None) => {}
            _ => return Err("unknown GNU sparse format version"),
        }
        let pairs = match (&self.map, self.pairs.is_empty()) {
            (Some(_), false) => return Err("both GNU.sparse.map and GNU.sparse.offset records"),
            (Some(map), true) => parse_map_01(map)?,
            (None, true) if self.numblocks.is_none() => {
                return Err("GNU.sparse records without a sparse map")
            }
            (None, _) => self.pairs.clone(),
        };
        let declared = self
            .numblocks
            .ok_or("sparse map without GNU.sparse.numblocks")?;
        if declared != pairs.len() as u64 {
            return Err("GNU.sparse.numblocks does not match the map");
        }
        Ok(Some(Dialect::Pax0(pairs)))
    }
}

/// Parses a 0.1 `GNU.sparse.map` value (`off,len,off,len,…`; may be empty).
fn parse_map_01(map: &[u8]) -> Result<Vec<(u64, u64)>, &'static str> {
    if map.is_empty() {
        return Ok(Vec::new());
    }
    let nums = map
        .split(|&b| b == b',')
        .map(|s| decimal(s).ok_or("bad number in GNU.sparse.map"))
        .collect::<Result<Vec<u64>, _>>()?;
    if nums.len() % 2 != 0 {
        return Err("GNU.sparse.map has an odd count of numbers");
    }
    Ok(nums.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Reads `(offset, numbytes)` pairs from an old-GNU header or extension
/// block (`count` pairs from `at`) into `out`, stopping at the first pair
/// whose offset field starts with NUL (as GNU, BSD and Go tar do).
fn old_gnu_pairs(
    block: &[u8; 512],
    at: usize,
    count: usize,
    out: &mut Vec<(u64, u64)>,
) -> Result<(), &'static str> {
    for i in 0..count {
        let p = at + i * 24;
        if block[p] == 0 {
            break;
        }
        let num = |r: std::ops::Range<usize>| {
            super::header::parse_numeric(&block[r])
                .and_then(|v| u64::try_from(v).ok())
                .ok_or("bad number in the old GNU sparse map")
        };
        out.push((num(p..p + 12)?, num(p + 12..p + 24)?));
    }
    Ok(())
}

/// What an old-GNU `S` header block says about the file's map.
#[derive(Debug)]
pub(crate) struct OldGnuHeader {
    /// The pairs in the header itself.
    pub pairs: Vec<(u64, u64)>,
    /// The file's real size.
    pub real_size: u64,
    /// An extension block follows.
    pub extended: bool,
}

/// Decodes the map fields of an old-GNU `S` header block.
pub(crate) fn old_gnu_header(block: &[u8; 512]) -> Result<OldGnuHeader, &'static str> {
    if &block[257..265] != b"ustar  \0" {
        return Err("type S entry without the GNU magic");
    }
    let realsize = super::header::parse_numeric(&block[HEADER_REALSIZE])
        .and_then(|v| u64::try_from(v).ok())
        .ok_or("bad realsize in the old GNU sparse header")?;
    let mut pairs = Vec::new();
    old_gnu_pairs(block, HEADER_MAP, HEADER_PAIRS, &mut pairs)?;
    Ok(OldGnuHeader {
        pairs,
        real_size: realsize,
        extended: block[HEADER_EXTENDED] != 0,
    })
}

/// Adds the pairs of one old-GNU extension block; `true` if another follows.
pub(crate) fn old_gnu_extension(
    block: &[u8; 512],
    pairs: &mut Vec<(u64, u64)>,
) -> Result<bool, &'static str> {
    old_gnu_pairs(block, 0, EXT_PAIRS, pairs)?;
    Ok(block[EXT_EXTENDED] != 0)
}

/// Incremental parser of a PAX 1.0 map (the text that opens the data).
#[derive(Debug, Default)]
pub(crate) struct Map1 {
    text: Vec<u8>,
    /// Newlines in `text`: each ends one number.
    newlines: u64,
    /// Numbers the map holds (the count line and two per pair), once known.
    need: Option<u64>,
}

impl Map1 {
    /// Adds one block of the map; returns the pairs once the blocks so far
    /// hold the whole map, `None` while more are needed.
    pub(crate) fn feed(&mut self, block: &[u8]) -> Result<Option<Vec<(u64, u64)>>, &'static str> {
        self.text.extend_from_slice(block);
        self.newlines += block.iter().filter(|&&b| b == b'\n').count() as u64;
        if self.newlines == 0 {
            return Ok(None);
        }
        let need = match self.need {
            Some(n) => n,
            None => {
                let count = self
                    .text
                    .split(|&b| b == b'\n')
                    .next()
                    .and_then(decimal)
                    .ok_or("bad entry count in the PAX 1.0 sparse map")?;
                let n = count
                    .checked_mul(2)
                    .and_then(|n| n.checked_add(1))
                    .ok_or("entry count of the PAX 1.0 sparse map overflows")?;
                *self.need.insert(n)
            }
        };
        if self.newlines < need {
            return Ok(None);
        }
        // need <= newlines <= text length: the allocation is bounded by input.
        let nums = self
            .text
            .split(|&b| b == b'\n')
            .skip(1)
            .take((need - 1) as usize)
            .map(|line| decimal(line).ok_or("bad number in the PAX 1.0 sparse map"))
            .collect::<Result<Vec<u64>, _>>()?;
        Ok(Some(nums.chunks_exact(2).map(|p| (p[0], p[1])).collect()))
    }

    /// Bytes of map read so far (whole blocks).
    pub(crate) fn len(&self) -> u64 {
        self.text.len() as u64
    }
}

/// Checks `pairs` against the real `size` and the `stored` data bytes that
/// follow `data_start` in the stream, and places every non-empty run there.
pub(crate) fn segments(
    pairs: &[(u64, u64)],
    size: u64,
    stored: u64,
    data_start: u64,
) -> Result<Vec<SparseSegment>, &'static str> {
    let mut out = Vec::with_capacity(pairs.len());
    let mut prev_end = 0u64;
    let mut at = data_start;
    let mut total = 0u64;
    for &(offset, len) in pairs {
        let end = offset
            .checked_add(len)
            .ok_or("sparse segment end overflows")?;
        if offset < prev_end {
            return Err("sparse segments overlap or are not sorted");
        }
        if end > size {
            return Err("sparse segment beyond the file's real size");
        }
        prev_end = end;
        total = total
            .checked_add(len)
            .ok_or("sparse map data length overflows")?;
        if total > stored {
            return Err("sparse map claims more data than the entry holds");
        }
        if len > 0 {
            out.push(SparseSegment {
                offset,
                len,
                data_offset: at,
            });
            at += len; // total <= stored: no overflow past the stream
        }
    }
    if total != stored {
        return Err("entry holds data its sparse map does not place");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pax(records: &[(&str, &str)]) -> PaxSparse {
        let mut p = PaxSparse::default();
        for (k, v) in records {
            p.record(k.as_bytes(), v.as_bytes()).unwrap();
        }
        p
    }

    #[test]
    fn dialects() {
        assert_eq!(PaxSparse::default().dialect(), Ok(None));
        let p = pax(&[("major", "1"), ("minor", "0"), ("realsize", "10")]);
        assert_eq!(p.dialect(), Ok(Some(Dialect::Pax1)));
        let p = pax(&[("numblocks", "1"), ("map", "0,4"), ("size", "9")]);
        assert_eq!(p.dialect(), Ok(Some(Dialect::Pax0(vec![(0, 4)]))));
        let p = pax(&[
            ("numblocks", "2"),
            ("offset", "0"),
            ("numbytes", "1"),
            ("offset", "5"),
            ("numbytes", "2"),
        ]);
        assert_eq!(p.dialect(), Ok(Some(Dialect::Pax0(vec![(0, 1), (5, 2)]))));
        for bad in [
            pax(&[("major", "2"), ("minor", "0")]),
            pax(&[("numblocks", "2"), ("map", "0,4")]),
            pax(&[("map", "0,4")]),
            pax(&[("numblocks", "1"), ("map", "0,4,5")]),
            pax(&[("numblocks", "1"), ("map", "0,x")]),
            pax(&[("numblocks", "1"), ("offset", "0")]),
            pax(&[("name", "x")]),
        ] {
            assert!(bad.dialect().is_err(), "{bad:?}");
        }
        let mut p = PaxSparse::default();
        assert!(p.record(b"numbytes", b"1").is_err());
        assert!(p.record(b"size", b"99999999999999999999999").is_err());
        assert!(p.record(b"size", b"-1").is_err());
    }

    #[test]
    fn map_1_0_across_blocks() {
        let mut m = Map1::default();
        assert_eq!(m.feed(b"3\n0\n5\n"), Ok(None));
        assert_eq!(m.feed(b"7"), Ok(None));
        let mut m = Map1::default();
        assert_eq!(m.feed(b"2\n0\n1\n10\n"), Ok(None));
        assert_eq!(m.feed(b"2\n"), Ok(Some(vec![(0, 1), (10, 2)])));
        let mut m = Map1::default();
        assert!(m.feed(b"x\n").is_err());
        let mut m = Map1::default();
        assert!(m.feed(b"18446744073709551615\n").is_err());
        let mut m = Map1::default();
        assert!(m.feed(b"1\n0\n-1\n").is_err());
    }

    #[test]
    fn segment_checks() {
        let s = segments(&[(0, 2), (4, 0), (10, 3), (20, 0)], 20, 5, 1000).unwrap();
        assert_eq!(
            s,
            [
                SparseSegment {
                    offset: 0,
                    len: 2,
                    data_offset: 1000
                },
                SparseSegment {
                    offset: 10,
                    len: 3,
                    data_offset: 1002
                }
            ]
        );
        assert_eq!(segments(&[], 100, 0, 0), Ok(Vec::new()));
        for (pairs, size, stored) in [
            (vec![(5, 2), (0, 1)], 10, 3),              // unsorted
            (vec![(0, 5), (4, 1)], 10, 6),              // overlapping
            (vec![(8, 4)], 10, 4),                      // beyond the real size
            (vec![(u64::MAX, 2)], u64::MAX, 2),         // overflows
            (vec![(0, 4), (6, 4)], 10, 4),              // claims more than held
            (vec![(0, 4)], 10, 6),                      // holds more than placed
            (vec![(0, u64::MAX), (0, 1)], u64::MAX, 0), // total overflows
        ] {
            assert!(segments(&pairs, size, stored, 0).is_err(), "{pairs:?}");
        }
    }
}
