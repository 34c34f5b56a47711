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
        .filter_map(parse_line)
        .map(|(id, mp)| (mp, id.fstype))
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

/// What names one mount: its id in this namespace (what `/proc/<pid>/fdinfo`
/// shows as `mnt_id` for files opened through it) and its superblock's
/// device (`major:minor`, the same in every namespace holding a copy).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MountIdentity {
    /// Field 1 of mountinfo.
    pub mount_id: u64,
    /// Field 3 of mountinfo.
    pub dev: String,
    /// The filesystem type.
    pub fstype: String,
}

/// Parses one mountinfo line: (identity, mount point).
pub(super) fn parse_line(line: &str) -> Option<(MountIdentity, PathBuf)> {
    let (left, right) = line.split_once(" - ")?;
    let mut f = left.split(' ');
    let mount_id = f.next()?.parse().ok()?;
    let dev = f.nth(1)?.to_string();
    let mp = unescape(f.nth(1)?);
    let fstype = right.split(' ').next()?.to_string();
    Some((
        MountIdentity {
            mount_id,
            dev,
            fstype,
        },
        mp,
    ))
}

/// The identity of the topmost mount at exactly `path`, if any.
pub fn mount_identity(path: &Path) -> Option<MountIdentity> {
    let want = normal(path);
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let all: Vec<_> = text.lines().filter_map(parse_line).collect();
    all.into_iter()
        .rev()
        .find(|(_, mp)| *mp == want)
        .map(|(id, _)| id)
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
    fn parses_a_line() {
        let line =
            r"36 35 98:0 /mnt1 /mnt/a\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        let (id, mp) = parse_line(line).unwrap();
        assert_eq!(id.mount_id, 36);
        assert_eq!(id.dev, "98:0");
        assert_eq!(id.fstype, "ext3");
        assert_eq!(mp, PathBuf::from("/mnt/a b"));
        assert_eq!(mount_identity(Path::new("/proc")).unwrap().fstype, "proc");
    }

    #[test]
    fn root_is_mounted() {
        assert!(is_mounted(Path::new("/")));
        assert!(mount_fstype(Path::new("/proc")).as_deref() == Some("proc"));
    }
}
