//! The streaming reader: header blocks in, [`Entry`] records out.

use std::collections::BTreeMap;
use std::io::{self, Read};

use super::header::{self, BLOCK};
use super::pax::{self, Pax};
use super::sparse::{self, Dialect, Map1, MAX_EXT_BLOCKS};
use super::{Entry, EntryKind, TarError, MAX_META_SIZE};

/// Size of the scratch buffer used to skip file data.
const SKIP_BUF: usize = 64 * 1024;

/// A reader that knows its stream position.
struct Counting<R> {
    inner: R,
    pos: u64,
    scratch: Vec<u8>,
}

impl<R: Read> Counting<R> {
    /// Reads until `buf` is full or EOF; returns the number of bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize, TarError> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => {
                    // A misbehaving reader may claim more than it was given.
                    let k = k.min(buf.len() - n);
                    n += k;
                    self.pos = self.pos.saturating_add(k as u64);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(TarError::Io {
                        offset: self.pos,
                        source,
                    })
                }
            }
        }
        Ok(n)
    }

    /// Reads one block; `None` on a clean EOF before its first byte.
    fn read_block(&mut self) -> Result<Option<[u8; 512]>, TarError> {
        let mut block = [0u8; 512];
        let n = self.read_full(&mut block)?;
        match n {
            0 => Ok(None),
            512 => Ok(Some(block)),
            _ => Err(TarError::Truncated {
                offset: self.pos,
                needed: (512 - n) as u64,
            }),
        }
    }

    /// Discards exactly `n` bytes.
    fn skip(&mut self, mut n: u64) -> Result<(), TarError> {
        while n > 0 {
            let want = usize::try_from(n).map_or(SKIP_BUF, |n| n.min(SKIP_BUF));
            let mut scratch = std::mem::take(&mut self.scratch);
            scratch.resize(SKIP_BUF, 0);
            let got = self.read_full(&mut scratch[..want]);
            self.scratch = scratch;
            let got = got?;
            if got == 0 {
                return Err(TarError::Truncated {
                    offset: self.pos,
                    needed: n,
                });
            }
            n -= got as u64;
        }
        Ok(())
    }

    /// Reads to EOF, discarding.
    fn drain(&mut self) -> Result<(), TarError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(SKIP_BUF, 0);
        let res = loop {
            match self.read_full(&mut scratch) {
                Ok(0) => break Ok(()),
                Ok(_) => {}
                Err(e) => break Err(e),
            }
        };
        self.scratch = scratch;
        res
    }

    /// Reads a whole extension member's data (`size` bytes plus padding),
    /// refusing sizes over [`MAX_META_SIZE`].
    fn read_meta(
        &mut self,
        size: u64,
        header_offset: u64,
        what: &'static str,
    ) -> Result<Vec<u8>, TarError> {
        if size > MAX_META_SIZE {
            return Err(TarError::MetaTooLarge {
                offset: header_offset,
                what,
                size,
                limit: MAX_META_SIZE,
            });
        }
        // size <= 1 MiB: fits usize.
        let mut data = vec![0u8; size as usize];
        let n = self.read_full(&mut data)?;
        if n < data.len() {
            return Err(TarError::Truncated {
                offset: self.pos,
                needed: (data.len() - n) as u64,
            });
        }
        self.skip(padding(size))?;
        Ok(data)
    }
}

/// Bytes of padding after `size` data bytes to reach a block boundary.
fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// Bytes up to the first NUL (GNU long names are NUL-terminated).
fn until_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(n) = v.iter().position(|&b| b == 0) {
        v.truncate(n);
    }
    v
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Normalises an archive path (see [`Entry::path`]).
fn normalise(raw: &[u8], offset: u64) -> Result<Vec<u8>, TarError> {
    let err = |reason| TarError::InvalidPath {
        path: lossy(raw),
        offset,
        reason,
    };
    if raw.contains(&0) {
        return Err(err("NUL byte in path"));
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(err("\"..\" component")),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(out)
}

/// Reads the extension blocks of an old-GNU sparse header `block` (at
/// stream `offset`); returns its `(offset, numbytes)` pairs and real size.
fn read_old_gnu_map<R: Read>(
    c: &mut Counting<R>,
    block: &[u8; 512],
    offset: u64,
    bad: &dyn Fn(&'static str) -> TarError,
) -> Result<(Vec<(u64, u64)>, u64), TarError> {
    let sparse::OldGnuHeader {
        mut pairs,
        real_size,
        extended: mut more,
    } = sparse::old_gnu_header(block).map_err(bad)?;
    let mut blocks = 0u64;
    while more {
        blocks += 1;
        if blocks > MAX_EXT_BLOCKS {
            return Err(TarError::MetaTooLarge {
                offset,
                what: "GNU sparse map",
                size: blocks * BLOCK,
                limit: MAX_META_SIZE,
            });
        }
        let ext = c.read_block()?.ok_or(TarError::Truncated {
            offset: c.pos,
            needed: BLOCK,
        })?;
        more = sparse::old_gnu_extension(&ext, &mut pairs).map_err(bad)?;
    }
    Ok((pairs, real_size))
}

/// Reads the PAX 1.0 sparse map that opens a member of `data_len` bytes
/// (header at stream `offset`); returns its pairs and its length in the
/// stream (whole blocks).
fn read_map_1_0<R: Read>(
    c: &mut Counting<R>,
    data_len: u64,
    offset: u64,
    bad: &dyn Fn(&'static str) -> TarError,
) -> Result<(Vec<(u64, u64)>, u64), TarError> {
    let mut map = Map1::default();
    loop {
        if map.len() >= MAX_META_SIZE {
            return Err(TarError::MetaTooLarge {
                offset,
                what: "PAX 1.0 sparse map",
                size: map.len() + BLOCK,
                limit: MAX_META_SIZE,
            });
        }
        if map.len() + BLOCK > data_len {
            return Err(bad("PAX 1.0 sparse map runs past the entry's data"));
        }
        let block = c.read_block()?.ok_or(TarError::Truncated {
            offset: c.pos,
            needed: BLOCK,
        })?;
        if let Some(pairs) = map.feed(&block).map_err(bad)? {
            return Ok((pairs, map.len()));
        }
    }
}

/// Extension headers seen since the last real entry.
#[derive(Default)]
struct Pending {
    pax: Option<Pax>,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.pax.is_none() && self.long_name.is_none() && self.long_link.is_none()
    }
}

/// Reads every entry of a tar stream, calling `f` for each, then drains the
/// reader to EOF (so a hashing reader underneath sees the whole stream).
/// Returns the total number of bytes read.
///
/// The archive ends at the first all-zero block or at a clean EOF on a block
/// boundary; whatever follows the end marker is read and discarded. Global
/// PAX headers (`g`) and volume labels (`V`) are skipped. Data of
/// header-only types (links, devices, fifos, directories) is not expected,
/// as in Go's `archive/tar`. Errors from `f` abort the read and are returned
/// unchanged.
pub fn read_entries<R: Read>(
    r: R,
    mut f: impl FnMut(Entry) -> Result<(), TarError>,
) -> Result<u64, TarError> {
    let mut c = Counting {
        inner: r,
        pos: 0,
        scratch: Vec::new(),
    };
    let mut pending = Pending::default();
    loop {
        let offset = c.pos;
        let block = match c.read_block()? {
            Some(b) if !header::is_zero_block(&b) => b,
            _ => {
                if !pending.is_empty() {
                    // Extension headers that describe nothing: the stream
                    // was cut after them.
                    return Err(TarError::Truncated {
                        offset,
                        needed: 512,
                    });
                }
                break;
            }
        };
        let h = header::parse(&block, offset)?;
        match h.typeflag {
            b'x' => {
                let data = c.read_meta(h.size, offset, "PAX header")?;
                pending.pax = Some(pax::parse(&data, offset)?);
                continue;
            }
            b'L' => {
                let data = c.read_meta(h.size, offset, "GNU long name")?;
                pending.long_name = Some(until_nul(data));
                continue;
            }
            b'K' => {
                let data = c.read_meta(h.size, offset, "GNU long link")?;
                pending.long_link = Some(until_nul(data));
                continue;
            }
            b'g' | b'V' => {
                let total = h
                    .size
                    .checked_add(padding(h.size))
                    .ok_or(TarError::BadNumber {
                        offset,
                        field: "size",
                    })?;
                c.skip(total)?;
                continue;
            }
            _ => {}
        }
        let ext = std::mem::take(&mut pending);
        let mut pax = ext.pax.unwrap_or_default();
        // PAX 0.1 and 1.0 keep the real name out of the ustar header.
        let sparse_name = pax.sparse.name.take();
        let raw_path = sparse_name.or(pax.path).or(ext.long_name).unwrap_or(h.name);
        let raw_link = pax.linkpath.or(ext.long_link).unwrap_or(h.linkname);
        // Bytes of member data following the header (or, for old-GNU sparse
        // files, following its extension blocks) in the stream.
        let size = pax.size.unwrap_or(h.size);
        let bad_sparse = |reason| TarError::BadSparse {
            path: lossy(&raw_path),
            offset,
            reason,
        };

        let kind = match h.typeflag {
            b'0' | 0 | b'7' if raw_path.ends_with(b"/") => EntryKind::Dir,
            b'0' | 0 | b'7' | b'S' => EntryKind::File,
            b'1' => EntryKind::Hardlink,
            b'2' => EntryKind::Symlink,
            b'3' => EntryKind::CharDev,
            b'4' => EntryKind::BlockDev,
            b'5' | b'D' => EntryKind::Dir,
            b'6' => EntryKind::Fifo,
            other => {
                return Err(TarError::UnsupportedType {
                    path: lossy(&raw_path),
                    offset,
                    typeflag: char::from(other),
                })
            }
        };
        let data_len = match h.typeflag {
            b'0' | 0 | b'7' | b'D' | b'S' => size,
            _ => 0,
        };
        let dialect = if h.typeflag == b'S' {
            Some(Dialect::OldGnu)
        } else {
            pax.sparse.dialect().map_err(bad_sparse)?
        };
        // Member data already read (a PAX 1.0 map).
        let mut consumed = 0u64;
        let (size, sparse) = match dialect {
            None => (size, None),
            Some(_) if kind != EntryKind::File => {
                return Err(bad_sparse("sparse entry is not a regular file"))
            }
            Some(dialect) => {
                let (pairs, real_size) = match dialect {
                    Dialect::OldGnu => read_old_gnu_map(&mut c, &block, offset, &bad_sparse)?,
                    Dialect::Pax0(pairs) => (
                        pairs,
                        pax.sparse
                            .size
                            .ok_or_else(|| bad_sparse("sparse file without GNU.sparse.size"))?,
                    ),
                    Dialect::Pax1 => {
                        let real_size = pax
                            .sparse
                            .size
                            .ok_or_else(|| bad_sparse("sparse file without GNU.sparse.realsize"))?;
                        let (pairs, map_len) = read_map_1_0(&mut c, data_len, offset, &bad_sparse)?;
                        consumed = map_len;
                        (pairs, real_size)
                    }
                };
                let segments = sparse::segments(&pairs, real_size, data_len - consumed, c.pos)
                    .map_err(bad_sparse)?;
                (real_size, Some(segments))
            }
        };

        let path = normalise(&raw_path, offset)?;
        if path.is_empty() && kind != EntryKind::Dir {
            return Err(TarError::InvalidPath {
                path: lossy(&raw_path),
                offset,
                reason: "empty path for a non-directory",
            });
        }
        let link_target = match kind {
            EntryKind::Hardlink => {
                let t = normalise(&raw_link, offset)?;
                if t.is_empty() {
                    return Err(TarError::InvalidPath {
                        path: lossy(&raw_path),
                        offset,
                        reason: "empty hard link target",
                    });
                }
                t
            }
            EntryKind::Symlink => {
                if raw_link.contains(&0) {
                    return Err(TarError::InvalidPath {
                        path: lossy(&raw_path),
                        offset,
                        reason: "NUL byte in symlink target",
                    });
                }
                raw_link
            }
            _ => Vec::new(),
        };
        let num =
            |v: u64, field| u32::try_from(v).map_err(|_| TarError::BadNumber { offset, field });
        let (mtime, mtime_nsec) = pax.mtime.unwrap_or((h.mtime, 0));
        let xattrs: BTreeMap<Vec<u8>, Vec<u8>> = pax.xattrs.into_iter().collect();
        let is_dev = matches!(kind, EntryKind::CharDev | EntryKind::BlockDev);
        let entry = Entry {
            path,
            kind,
            perm: (h.mode & 0o7777) as u32,
            uid: num(pax.uid.unwrap_or(h.uid), "uid")?,
            gid: num(pax.gid.unwrap_or(h.gid), "gid")?,
            mtime,
            mtime_nsec,
            size: if kind == EntryKind::File { size } else { 0 },
            data_offset: c.pos,
            sparse,
            link_target,
            rdev_major: if is_dev {
                num(h.devmajor, "devmajor")?
            } else {
                0
            },
            rdev_minor: if is_dev {
                num(h.devminor, "devminor")?
            } else {
                0
            },
            xattrs: xattrs.into_iter().collect(),
        };
        f(entry)?;
        let total =
            (data_len - consumed)
                .checked_add(padding(data_len))
                .ok_or(TarError::BadNumber {
                    offset,
                    field: "size",
                })?;
        c.skip(total)?;
    }
    c.drain()?;
    Ok(c.pos)
}
