//! Who still uses an overlay that was unmounted from this namespace: a
//! lazily detached mount lives on while a process has a file, its working
//! directory or its root in it, and a container's processes (runc pivots
//! them into a copy of the mount in their own namespace) have their root
//! on it. Scanned from `/proc`, like `fuser -m`: each process's fds, cwd,
//! root and exe by the mount's id (`mnt_id` of fdinfo; cwd, root and exe
//! are opened `O_PATH`, which never calls into the filesystem), and its
//! root and cwd by the overlay's device (the same in every namespace, so a
//! container's copy counts). A namespace that merely holds a copy, with
//! no process in it, does not count: nothing can be deleted under anyone
//! there.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::mountinfo::MountIdentity;

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

/// The device of what `link` (a `/proc/<pid>/{cwd,root}` link) names.
fn dev_of_link(link: &Path) -> Option<u64> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(link)
        .ok()?;
    Some(f.metadata().ok()?.dev())
}

/// `major:minor` as a device number.
fn parse_dev(dev: &str) -> Option<u64> {
    let (major, minor) = dev.split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Whether process `pid` has its root or cwd on device `dev` (a container
/// in its own namespace, on its copy of the mount).
fn root_or_cwd_on(pid: &str, dev: u64) -> bool {
    ["root", "cwd"]
        .iter()
        .any(|l| dev_of_link(&Path::new("/proc").join(pid).join(l)) == Some(dev))
}

/// Whether process `pid` uses the overlay `id`.
fn uses(pid: &str, id: &MountIdentity) -> bool {
    holds_files_on(pid, id.mount_id) || parse_dev(&id.dev).is_some_and(|d| root_or_cwd_on(pid, d))
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
                for pid in batch {
                    let used = uses(&pid, &id2);
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
        assert_eq!(parse_dev("0:42"), Some(libc::makedev(0, 42)));
        let root = std::fs::metadata("/").unwrap().dev();
        assert_eq!(dev_of_link(Path::new("/proc/self/root")), Some(root));
    }
}
