//! PAX extended header records (`"<len> <key>=<value>\n"`), reduced to the
//! keys this crate uses.

use super::sparse::PaxSparse;
use super::TarError;

/// The PAX keys that matter to us, from one `x` header.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pax {
    /// `path`.
    pub path: Option<Vec<u8>>,
    /// `linkpath`.
    pub linkpath: Option<Vec<u8>>,
    /// `size`.
    pub size: Option<u64>,
    /// `uid`.
    pub uid: Option<u64>,
    /// `gid`.
    pub gid: Option<u64>,
    /// `mtime` as (seconds, nanoseconds).
    pub mtime: Option<(i64, u32)>,
    /// `SCHILY.xattr.<name>` records, in record order (later duplicates win
    /// when sorted by the caller).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// The `GNU.sparse.*` records (a GNU sparse file, PAX 0.0, 0.1 or 1.0).
    pub sparse: PaxSparse,
}

fn bad(offset: u64, reason: &'static str) -> TarError {
    TarError::BadPax { offset, reason }
}

/// Parses a decimal, non-negative integer.
fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut x: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return None;
        }
        x = x.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(x)
}

/// Parses a PAX time `[-]SECONDS[.FRACTION]` into (seconds, nanoseconds),
/// nanoseconds always in `0..1e9` (so `-1.5` is `(-2, 500_000_000)`).
/// Fraction digits beyond nanoseconds are truncated.
pub(crate) fn parse_time(s: &[u8]) -> Option<(i64, u32)> {
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let (secs, frac) = match s.iter().position(|&b| b == b'.') {
        Some(p) => (&s[..p], Some(&s[p + 1..])),
        None => (s, None),
    };
    let secs = i64::try_from(parse_u64(secs)?).ok()?;
    let mut nsec: u32 = 0;
    if let Some(frac) = frac {
        if !frac.iter().all(u8::is_ascii_digit) {
            return None;
        }
        for i in 0..9 {
            let d = frac.get(i).map_or(0, |&b| u32::from(b - b'0'));
            nsec = nsec * 10 + d;
        }
    }
    if !neg {
        return Some((secs, nsec));
    }
    if nsec == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - nsec))
    }
}

/// Parses the body of a PAX `x` header read at stream `offset`.
pub(crate) fn parse(mut data: &[u8], offset: u64) -> Result<Pax, TarError> {
    let mut pax = Pax::default();
    // Writers pad the member with NULs at most; stop at the first.
    while let Some(&first) = data.first() {
        if first == 0 {
            break;
        }
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad(offset, "record without length"))?;
        let len = parse_u64(&data[..sp]).ok_or_else(|| bad(offset, "bad record length"))?;
        let len = usize::try_from(len).map_err(|_| bad(offset, "bad record length"))?;
        if len <= sp + 1 || len > data.len() {
            return Err(bad(offset, "record length out of range"));
        }
        let record = &data[sp + 1..len];
        data = &data[len..];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| bad(offset, "record not newline-terminated"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad(offset, "record without '='"))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        let num = |v: &[u8]| parse_u64(v).ok_or_else(|| bad(offset, "bad numeric value"));
        match key {
            b"path" => pax.path = Some(value.to_vec()),
            b"linkpath" => pax.linkpath = Some(value.to_vec()),
            b"size" => pax.size = Some(num(value)?),
            b"uid" => pax.uid = Some(num(value)?),
            b"gid" => pax.gid = Some(num(value)?),
            b"mtime" => {
                pax.mtime = Some(parse_time(value).ok_or_else(|| bad(offset, "bad mtime"))?)
            }
            _ => {
                if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                } else if let Some(k) = key.strip_prefix(b"GNU.sparse.") {
                    pax.sparse.record(k, value).map_err(|r| bad(offset, r))?;
                }
            }
        }
    }
    Ok(pax)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time(b"1"), Some((1, 0)));
        assert_eq!(parse_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_time(b"1."), Some((1, 0)));
        assert_eq!(parse_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_time(b"-3"), Some((-3, 0)));
        assert_eq!(parse_time(b""), None);
        assert_eq!(parse_time(b"1.x"), None);
        assert_eq!(parse_time(b"99999999999999999999"), None);
    }

    #[test]
    fn records() {
        let p = parse(b"11 path=ab\n15 uid=4294967\n", 0).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"ab"[..]));
        assert_eq!(p.uid, Some(4294967));
        assert!(parse(b"12 path=ab\n", 0).is_err());
        assert!(parse(b"3 path=ab\n", 0).is_err());
        assert!(parse(b"x path=ab\n", 0).is_err());
        assert!(parse(b"99999999999999999999999 a=b\n", 0).is_err());
        assert!(parse(b"8 size=\n", 0).is_err());
        // Value may contain '=', '\n' and NUL: the length delimits it.
        let p = parse(b"24 SCHILY.xattr.a=x=\n\0y\n", 0).unwrap();
        assert_eq!(p.xattrs, vec![(b"a".to_vec(), b"x=\n\0y".to_vec())]);
        assert!(parse(b"20 GNU.sparse.map=1\n", 0).unwrap().sparse.any);
        assert!(parse(b"25 GNU.sparse.numbytes=1\n", 0).is_err());
    }
}
