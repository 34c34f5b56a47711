//! Reading `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

/// Undoes the octal escapes (`\040` …) of mountinfo fields.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// (mount point, fs type) of every mount, in mount order.
fn mounts() -> Vec<(PathBuf, String)> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mp = left.split(' ').nth(4)?;
            let fstype = right.split(' ').next()?;
            Some((unescape(mp), fstype.to_string()))
        })
        .collect()
}

/// Normalises `path` without touching a possibly dead FUSE mount: the
/// parent is canonicalised, the last component kept.
fn normal(path: &Path) -> PathBuf {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

/// The filesystem type of the topmost mount at exactly `path`, if any.
pub fn mount_fstype(path: &Path) -> Option<String> {
    let want = normal(path);
    mounts()
        .into_iter()
        .rev()
        .find(|(mp, _)| *mp == want)
        .map(|(_, t)| t)
}

/// Whether something is mounted at exactly `path`.
pub fn is_mounted(path: &Path) -> bool {
    mount_fstype(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape(r"/run/a\040b"), PathBuf::from("/run/a b"));
        assert_eq!(unescape(r"/x\134y"), PathBuf::from("/x\\y"));
        assert_eq!(unescape(r"/plain"), PathBuf::from("/plain"));
    }

    #[test]
    fn root_is_mounted() {
        assert!(is_mounted(Path::new("/")));
        assert!(mount_fstype(Path::new("/proc")).as_deref() == Some("proc"));
    }
}
