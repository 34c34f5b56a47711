//! The per-image daemon's process, identified before anything is done to
//! it. A pid file alone can name an unrelated process that reused the pid,
//! so [`DaemonProcess::find`] opens a pidfd for the pid, then checks that
//! the process behind it is the daemon of this image dir: the start time
//! recorded in `daemon.pid` (field 22 of `/proc/<pid>/stat`) and a command
//! line naming `__daemon` and `--spec <image_dir>/daemon.json`; a signal 0
//! through the pidfd after those reads proves they were of that process.
//! Every signal afterwards goes through the same pidfd.

use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use super::daemon::PID_FILE;
use super::spec::SPEC_FILE;
use super::sys;

/// The verb a daemon's command line names.
pub(super) const DAEMON_VERB: &str = "__daemon";

/// A verified, live daemon process of one image dir.
#[derive(Debug)]
pub(super) struct DaemonProcess {
    pid: u32,
    pidfd: OwnedFd,
}

/// State letter and start time (clock ticks after boot) of `pid`.
fn stat_of(pid: u32) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = text.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is `state`; `starttime` is field 22.
    let start = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start))
}

/// This process's line for a pid file: `<pid> <start time>`.
fn pid_file_line() -> String {
    let pid = std::process::id();
    match stat_of(pid) {
        Some((_, start)) => format!("{pid} {start}\n"),
        None => format!("{pid}\n"),
    }
}

/// Names this process in `image_dir`'s pid file, through a temp file and a
/// rename: a reader (a `ps`, a repair, a restart waiting for its successor)
/// sees the previous daemon's line or this one, never an empty file.
pub(super) fn write_pid_file(image_dir: &Path) -> std::io::Result<()> {
    let path = image_dir.join(PID_FILE);
    let tmp = image_dir.join(format!(".{PID_FILE}.{}", std::process::id()));
    std::fs::write(&tmp, pid_file_line())?;
    std::fs::rename(&tmp, &path)
}

/// The pid (and start time, when recorded) in an image dir's pid file.
pub(super) fn read_pid_file(image_dir: &Path) -> Option<(u32, Option<u64>)> {
    let text = std::fs::read_to_string(image_dir.join(PID_FILE)).ok()?;
    let mut it = text.split_whitespace();
    let pid = it.next()?.parse().ok()?;
    Some((pid, it.next().and_then(|s| s.parse().ok())))
}

/// Whether `pid`'s command line is `… __daemon … --spec <image_dir>/daemon.json`.
fn runs_daemon_of(pid: u32, image_dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let want = image_dir.join(SPEC_FILE);
    let want_canon = want.canonicalize().ok();
    let names_spec = args.windows(2).any(|w| {
        if w[0] != b"--spec" {
            return false;
        }
        let given = Path::new(std::ffi::OsStr::from_bytes(w[1]));
        given == want || (want_canon.is_some() && given.canonicalize().ok() == want_canon)
    });
    names_spec && args.iter().any(|a| *a == DAEMON_VERB.as_bytes())
}

impl DaemonProcess {
    /// The live daemon named by `image_dir`'s pid file, if that process is
    /// this image's daemon (see the module doc); `None` when it is gone, a
    /// zombie, or another process that reused the pid. A daemon running in
    /// this very process (the in-process launcher) is found without the
    /// command-line check and is never signalled.
    pub(super) fn find(image_dir: &Path) -> Option<Self> {
        let (pid, recorded_start) = read_pid_file(image_dir)?;
        let pidfd = sys::pidfd_open(pid).ok()?;
        let (state, start) = stat_of(pid)?;
        if matches!(state, 'Z' | 'X') || recorded_start.is_some_and(|s| s != start) {
            return None;
        }
        if pid != std::process::id() && !runs_daemon_of(pid, image_dir) {
            tracing::warn!(pid, image_dir = %image_dir.display(), "pid file names another process; ignoring it");
            return None;
        }
        // Still alive after the reads: they were of the pidfd's process.
        sys::pidfd_send_signal(&pidfd, 0).ok()?;
        Some(DaemonProcess { pid, pidfd })
    }

    /// Its pid.
    pub(super) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has exited (waits up to `timeout`).
    pub(super) fn exited_within(&self, timeout: Duration) -> bool {
        sys::poll_readable(&self.pidfd, timeout).unwrap_or(true)
    }

    /// SIGKILLs it through its pidfd (never this process).
    pub(super) fn kill(&self) {
        if self.pid == std::process::id() {
            return;
        }
        tracing::warn!(pid = self.pid, "killing the image daemon");
        if let Err(e) = sys::pidfd_send_signal(&self.pidfd, libc::SIGKILL) {
            tracing::warn!(pid = self.pid, error = %e, "kill");
        }
    }
}

/// Whether `pid` is alive with start time `start` (the owner of a record).
pub(super) fn alive_with_start(pid: u32, start: u64) -> bool {
    stat_of(pid).is_some_and(|(state, s)| s == start && !matches!(state, 'Z' | 'X'))
}

/// This process's (pid, start time).
pub(super) fn this_process() -> (u32, u64) {
    let pid = std::process::id();
    (pid, stat_of(pid).map_or(0, |(_, s)| s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_wrong_start_time_is_not() {
        let (pid, start) = this_process();
        assert!(start > 0);
        assert!(alive_with_start(pid, start));
        assert!(!alive_with_start(pid, start + 1));
    }

    #[test]
    fn a_pid_file_naming_another_process_finds_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        // pid 1 is alive but is not a daemon of this dir.
        std::fs::write(tmp.path().join(PID_FILE), "1\n").unwrap();
        assert!(DaemonProcess::find(tmp.path()).is_none());
        // This process with a wrong start time: a reused pid.
        let (pid, start) = this_process();
        std::fs::write(tmp.path().join(PID_FILE), format!("{pid} {}\n", start + 7)).unwrap();
        assert!(DaemonProcess::find(tmp.path()).is_none());
        // This process with its start time: found (in-process daemon).
        write_pid_file(tmp.path()).unwrap();
        let p = DaemonProcess::find(tmp.path()).unwrap();
        assert_eq!(p.pid(), pid);
        assert!(!p.exited_within(Duration::ZERO));
    }
}
