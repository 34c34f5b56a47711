//! Decoding of one 512-byte tar header block (v7, ustar, GNU), including
//! octal and base-256 numeric fields.

use super::TarError;

/// Size of a tar block.
pub(crate) const BLOCK: u64 = 512;

/// Which header layout the block uses (decides whether `prefix` and the
/// device fields are meaningful).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Pre-POSIX: no magic; no prefix, no device numbers.
    V7,
    /// POSIX ustar (`"ustar\0"`): has prefix and device numbers.
    Ustar,
    /// GNU (`"ustar  \0"`): device numbers but no prefix.
    Gnu,
}

/// The fields of a header block this crate uses, still raw where the final
/// value depends on extension headers.
#[derive(Debug, Clone)]
pub(crate) struct Header {
    /// `name` field (with the ustar `prefix` joined in), up to the first NUL.
    pub name: Vec<u8>,
    /// `linkname` field up to the first NUL.
    pub linkname: Vec<u8>,
    /// `mode` field.
    pub mode: u64,
    /// `uid` field.
    pub uid: u64,
    /// `gid` field.
    pub gid: u64,
    /// `size` field (bytes of data following the header).
    pub size: u64,
    /// `mtime` field (seconds, may be negative in base-256).
    pub mtime: i64,
    /// Type flag byte.
    pub typeflag: u8,
    /// Device major (0 unless ustar/GNU and parseable).
    pub devmajor: u64,
    /// Device minor.
    pub devminor: u64,
}

/// `true` if the block is all zeros (end-of-archive marker).
pub(crate) fn is_zero_block(block: &[u8; 512]) -> bool {
    block.iter().all(|&b| b == 0)
}

/// Bytes of `field` up to (not including) the first NUL.
fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => &field[..n],
        None => field,
    }
}

/// Parses a numeric field: octal (space/NUL padded) or base-256 (high bit of
/// the first byte set; two's complement big-endian). `None` if malformed or
/// not representable in an `i64`.
pub(crate) fn parse_numeric(field: &[u8]) -> Option<i64> {
    let first = *field.first()?;
    if first & 0x80 != 0 {
        // Base-256. Bit 6 of the first byte is the sign.
        let inv: u8 = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &b) in field.iter().enumerate() {
            let mut c = b ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 55 != 0 {
                return None;
            }
            x = (x << 8) | u64::from(c);
        }
        if x >> 63 != 0 {
            return None;
        }
        let v = x as i64; // < 2^63: lossless
        return Some(if inv == 0xff { !v } else { v });
    }
    let s = cstr(field);
    let s = trim_spaces(s);
    if s.is_empty() {
        return Some(0);
    }
    let mut x: i64 = 0;
    for &b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        x = x.checked_mul(8)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(x)
}

fn trim_spaces(mut s: &[u8]) -> &[u8] {
    while let [b' ', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' '] = s {
        s = rest;
    }
    s
}

fn unsigned(field: &[u8], offset: u64, name: &'static str) -> Result<u64, TarError> {
    match parse_numeric(field) {
        Some(v) if v >= 0 => Ok(v as u64),
        _ => Err(TarError::BadNumber {
            offset,
            field: name,
        }),
    }
}

/// Verifies the checksum and decodes the block at stream `offset`.
pub(crate) fn parse(block: &[u8; 512], offset: u64) -> Result<Header, TarError> {
    // Checksum: sum of all bytes with the checksum field taken as spaces;
    // historic writers used signed chars, accept either.
    let stored = parse_numeric(&block[148..156]).ok_or(TarError::BadChecksum { offset })?;
    let mut unsigned_sum: i64 = 0;
    let mut signed_sum: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned_sum += i64::from(b);
        signed_sum += i64::from(b as i8);
    }
    if stored != unsigned_sum && stored != signed_sum {
        return Err(TarError::BadChecksum { offset });
    }

    let magic = &block[257..265];
    let format = if &magic[..6] == b"ustar\0" {
        Format::Ustar
    } else if magic == b"ustar  \0" {
        Format::Gnu
    } else {
        Format::V7
    };

    let mut name = cstr(&block[0..100]).to_vec();
    if format == Format::Ustar {
        let prefix = cstr(&block[345..500]);
        if !prefix.is_empty() {
            let mut full = Vec::with_capacity(prefix.len() + 1 + name.len());
            full.extend_from_slice(prefix);
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
    }
    let typeflag = block[156];
    let (devmajor, devminor) = if format != Format::V7 && matches!(typeflag, b'3' | b'4') {
        (
            unsigned(&block[329..337], offset, "devmajor")?,
            unsigned(&block[337..345], offset, "devminor")?,
        )
    } else {
        (0, 0)
    };
    Ok(Header {
        name,
        linkname: cstr(&block[157..257]).to_vec(),
        mode: unsigned(&block[100..108], offset, "mode")?,
        uid: unsigned(&block[108..116], offset, "uid")?,
        gid: unsigned(&block[116..124], offset, "gid")?,
        size: unsigned(&block[124..136], offset, "size")?,
        mtime: parse_numeric(&block[136..148]).ok_or(TarError::BadNumber {
            offset,
            field: "mtime",
        })?,
        typeflag,
        devmajor,
        devminor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_octal() {
        assert_eq!(parse_numeric(b"0000644\0"), Some(0o644));
        assert_eq!(parse_numeric(b"  644 \0"), Some(0o644));
        assert_eq!(parse_numeric(b"\0\0\0\0"), Some(0));
        assert_eq!(parse_numeric(b"        "), Some(0));
        assert_eq!(parse_numeric(b"77777777777\0"), Some(0o77777777777));
        assert_eq!(parse_numeric(b"0009"), None);
        assert_eq!(parse_numeric(b"12 4"), None);
        assert_eq!(parse_numeric(b""), None);
    }

    #[test]
    fn numeric_base256() {
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..].copy_from_slice(&(9u64 << 30).to_be_bytes());
        assert_eq!(parse_numeric(&f), Some(9 << 30));
        // -1 in two's complement.
        assert_eq!(parse_numeric(&[0xff; 12]), Some(-1));
        let mut g = [0xffu8; 8];
        g[7] = 0xfe;
        assert_eq!(parse_numeric(&g), Some(-2));
        // Too large for i64.
        let mut h = [0u8; 12];
        h[0] = 0x80;
        h[3] = 1;
        assert_eq!(parse_numeric(&h), None);
        let mut h = [0u8; 12];
        h[0] = 0x80;
        h[4] = 0x80;
        assert_eq!(parse_numeric(&h), None);
    }
}
