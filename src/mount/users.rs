//! Who still uses an overlay that was unmounted from this namespace: a
//! lazily detached mount lives on while a process has a file, its working
//! directory or its root in it, and a copy of it lives in every mount
//! namespace made while it was mounted (runc makes one per container and
//! pivots into it). Scanned from `/proc`, like `fuser -m`: each mount
//! namespace's mountinfo for the overlay's superblock device, and each
//! process's fds, cwd, root and exe for the mount's id (`mnt_id` of
//! fdinfo; cwd, root and exe are opened `O_PATH`, which never calls into
//! the filesystem).

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use super::mountinfo::{parse_line, MountIdentity};

/// `mnt_id` of an fdinfo file's text.
fn mnt_id_of(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The mount id of what `link` (a `/proc/<pid>/{cwd,root,exe}` link) names.
fn mnt_id_of_link(link: &Path) -> Option<u64> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(link)
        .ok()?;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", f.as_raw_fd())).ok()?;
    mnt_id_of(&text)
}

/// Whether process `pid` has a file, cwd, root or exe on mount `mount_id`.
fn holds_files_on(pid: &str, mount_id: u64) -> bool {
    let base = Path::new("/proc").join(pid);
    if ["cwd", "root", "exe"]
        .iter()
        .any(|l| mnt_id_of_link(&base.join(l)) == Some(mount_id))
    {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(base.join("fdinfo")) else {
        return false;
    };
    fds.filter_map(Result::ok).any(|e| {
        std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| mnt_id_of(&t))
            == Some(mount_id)
    })
}

/// Whether the mountinfo of `pid` (its namespace) holds a mount of the
/// overlay's superblock.
fn namespace_holds(pid: &str, id: &MountIdentity) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|text| {
            text.lines()
                .filter_map(parse_line)
                .any(|(m, _)| m.dev == id.dev && m.fstype == id.fstype)
        })
        .unwrap_or(false)
}

/// Whether process `pid` uses the overlay `id` (`namespaces` caches the
/// answer per mount namespace).
fn uses(pid: &str, id: &MountIdentity, namespaces: &mut HashMap<PathBuf, bool>) -> bool {
    let ns = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).unwrap_or_default();
    let in_ns = *namespaces
        .entry(ns)
        .or_insert_with(|| namespace_holds(pid, id));
    in_ns || holds_files_on(pid, id.mount_id)
}

/// How long one process's `/proc` files may take: a process wedged in the
/// kernel (e.g. in the middle of an exec) blocks readers of its `/proc`
/// files; it is passed over, with a warning, rather than hang the caller.
const PER_PROCESS: Duration = Duration::from_secs(1);

/// The pids still using the overlay `id` (empty: nothing does). Call it
/// after unmounting it from this namespace; this process is never listed.
pub(super) fn overlay_users(id: &MountIdentity) -> Vec<u32> {
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut todo: VecDeque<String> = procs
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|p| p.bytes().all(|b| b.is_ascii_digit()) && *p != me)
        .collect();
    let mut users = Vec::new();
    // One scanning thread at a time; when it is stuck on a process, that
    // process is passed over and a new thread takes the rest.
    while !todo.is_empty() {
        let (tx, rx) = mpsc::channel();
        let (batch, id2) = (todo.clone(), id.clone());
        let spawned = std::thread::Builder::new()
            .name("clip-users-scan".into())
            .spawn(move || {
                let mut namespaces = HashMap::new();
                for pid in batch {
                    let used = uses(&pid, &id2, &mut namespaces);
                    if tx.send(used).is_err() {
                        return;
                    }
                }
            });
        if spawned.is_err() {
            break;
        }
        loop {
            match rx.recv_timeout(PER_PROCESS) {
                Ok(used) => {
                    let pid = todo.pop_front().unwrap_or_default();
                    if used {
                        users.extend(pid.parse::<u32>().ok());
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let pid = todo.pop_front().unwrap_or_default();
                    tracing::warn!(pid, "its /proc files do not answer; not counted as a user");
                    break;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // Ended early (a panic): pass over where it stopped.
                    todo.pop_front();
                    break;
                }
            }
        }
    }
    users.sort_unstable();
    users
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mnt_id() {
        assert_eq!(
            mnt_id_of("pos:\t0\nflags:\t02\nmnt_id:\t27\nino:\t5\n"),
            Some(27)
        );
        assert_eq!(mnt_id_of("pos:\t0\n"), None);
        // This process's cwd is on some mount.
        assert!(mnt_id_of_link(Path::new("/proc/self/cwd")).is_some());
    }
}
