//! Incremental gzip member header and trailer parsing (RFC 1952), fed in
//! arbitrary pieces so a header may straddle input buffers.

/// Where an incremental header parse stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the 10 fixed bytes; `n` seen so far.
    Fixed(u8),
    /// Reading the 2-byte XLEN; `n` seen so far.
    Xlen(u8),
    /// Skipping `n` remaining FEXTRA bytes.
    Extra(u16),
    /// Skipping the NUL-terminated FNAME.
    Name,
    /// Skipping the NUL-terminated FCOMMENT.
    Comment,
    /// Skipping `n` remaining FHCRC bytes.
    Hcrc(u8),
    /// Complete.
    Done,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
const FRESERVED: u8 = 0xe0;

/// Parses one gzip member header, byte by byte as input arrives.
#[derive(Debug, Clone)]
pub(crate) struct HeaderParser {
    state: State,
    flags: u8,
    xlen_lo: u8,
}

impl HeaderParser {
    /// A parser expecting the first header byte (0x1f).
    pub fn new() -> Self {
        HeaderParser {
            state: State::Fixed(0),
            flags: 0,
            xlen_lo: 0,
        }
    }

    /// Whether the whole header has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes header bytes from `input`; returns how many were used. Stops
    /// at the end of the header (the rest of `input` is deflate data). On
    /// error returns the index in `input` of the offending byte and why.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, (usize, &'static str)> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Fixed(n) => {
                    match n {
                        0 if b != 0x1f => return Err((i, "bad magic")),
                        1 if b != 0x8b => return Err((i, "bad magic")),
                        2 if b != 8 => return Err((i, "compression method is not deflate")),
                        3 => {
                            if b & FRESERVED != 0 {
                                return Err((i, "reserved flag bits set"));
                            }
                            self.flags = b;
                        }
                        _ => {}
                    }
                    i += 1;
                    self.state = if n + 1 < 10 {
                        State::Fixed(n + 1)
                    } else {
                        self.after(FEXTRA)
                    };
                }
                State::Xlen(0) => {
                    self.xlen_lo = b;
                    i += 1;
                    self.state = State::Xlen(1);
                }
                State::Xlen(_) => {
                    i += 1;
                    let xlen = u16::from_le_bytes([self.xlen_lo, b]);
                    self.state = if xlen > 0 {
                        State::Extra(xlen)
                    } else {
                        self.after(FNAME)
                    };
                }
                State::Extra(n) => {
                    let take = (n as usize).min(input.len() - i);
                    i += take;
                    // take <= n, so this fits in u16.
                    let left = n - take as u16;
                    self.state = if left > 0 {
                        State::Extra(left)
                    } else {
                        self.after(FNAME)
                    };
                }
                State::Name | State::Comment => match input[i..].iter().position(|&c| c == 0) {
                    Some(p) => {
                        i += p + 1;
                        self.state = if self.state == State::Name {
                            self.after(FCOMMENT)
                        } else {
                            self.after(FHCRC)
                        };
                    }
                    None => i = input.len(),
                },
                State::Hcrc(n) => {
                    i += 1;
                    self.state = if n > 1 {
                        State::Hcrc(n - 1)
                    } else {
                        State::Done
                    };
                }
            }
        }
        Ok(i)
    }

    /// The state following the field `from` (FEXTRA → FNAME → FCOMMENT →
    /// FHCRC → done), skipping absent optional fields.
    fn after(&self, from: u8) -> State {
        let order = [FEXTRA, FNAME, FCOMMENT, FHCRC];
        let start = order.iter().position(|&f| f == from).unwrap_or(order.len());
        for &f in &order[start..] {
            if self.flags & f != 0 {
                return match f {
                    FEXTRA => State::Xlen(0),
                    FNAME => State::Name,
                    FCOMMENT => State::Comment,
                    _ => State::Hcrc(2),
                };
            }
        }
        State::Done
    }
}

/// Collects the 8-byte member trailer (CRC32, ISIZE; little endian).
#[derive(Debug, Clone, Default)]
pub(crate) struct Trailer {
    buf: [u8; 8],
    have: usize,
}

impl Trailer {
    /// Consumes up to the missing trailer bytes from `input`; returns how many.
    pub fn feed(&mut self, input: &[u8]) -> usize {
        let take = (8 - self.have).min(input.len());
        self.buf[self.have..self.have + take].copy_from_slice(&input[..take]);
        self.have += take;
        take
    }

    /// `(crc32, isize)` once all 8 bytes are in.
    pub fn get(&self) -> Option<(u32, u32)> {
        (self.have == 8).then(|| {
            let [a, b, c, d, e, f, g, h] = self.buf;
            (
                u32::from_le_bytes([a, b, c, d]),
                u32::from_le_bytes([e, f, g, h]),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(h: &[u8], piece: usize) -> Result<usize, &'static str> {
        let mut p = HeaderParser::new();
        let mut used = 0;
        for c in h.chunks(piece) {
            let n = p.feed(c).map_err(|e| e.1)?;
            used += n;
            if p.is_done() {
                return Ok(used);
            }
        }
        Err("incomplete")
    }

    #[test]
    fn all_flags_in_pieces() {
        let mut h = vec![
            0x1f,
            0x8b,
            8,
            FEXTRA | FNAME | FCOMMENT | FHCRC,
            0,
            0,
            0,
            0,
            0,
            3,
        ];
        h.extend_from_slice(&[3, 0, 1, 2, 3]);
        h.extend_from_slice(b"name\0comment\0");
        h.extend_from_slice(&[0xaa, 0xbb]);
        let len = h.len();
        h.extend_from_slice(&[0xde, 0xad]);
        for piece in 1..8 {
            assert_eq!(parse_all(&h, piece), Ok(len));
        }
        assert_eq!(parse_all(&h[..10], 10), Ok(10).and(Err("incomplete")));
    }

    #[test]
    fn rejects() {
        assert!(parse_all(&[0x1f, 0x8c, 8, 0, 0, 0, 0, 0, 0, 0], 3).is_err());
        assert!(parse_all(&[0x1f, 0x8b, 7, 0, 0, 0, 0, 0, 0, 0], 3).is_err());
        assert!(parse_all(&[0x1f, 0x8b, 8, 0x20, 0, 0, 0, 0, 0, 0], 3).is_err());
        assert_eq!(
            parse_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 1], 4),
            Ok(10)
        );
    }
}
