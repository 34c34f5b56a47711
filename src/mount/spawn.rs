//! Starting the per-image daemon detached from the caller, and waiting until
//! it is ready. `setsid` in `pre_exec` is the one unsafe block here.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::control::control_request;
use super::daemon::{LOG_FILE, SOCK_FILE};
use super::spec::{DaemonSpec, StackPart};
use super::MountError;

/// The glibc tunable that moves `rep movsb` out of the 128 KiB – 4 MiB copy
/// range. On this machine's CPU a `memcpy` whose source and destination
/// differ in alignment mod 64 is ~10x slower with `rep movsb`, and the FUSE
/// reply buffer puts read data at +16; the daemon gets this unless the
/// caller already set `GLIBC_TUNABLES`.
pub const GLIBC_TUNABLES: &str = "glibc.cpu.x86_rep_movsb_threshold=4194304";

/// How the daemon process is started; `S` is the spec's stack part.
pub enum Launcher<S> {
    /// Runs `exe <args…> --spec <image_dir>/daemon.json` (the saved
    /// [`DaemonSpec`]), detached (new session), stdio to `daemon.log`, with
    /// extra environment.
    Exec {
        /// The executable (default: the current one).
        exe: PathBuf,
        /// Arguments before the daemon's own (default: `["__daemon"]`).
        args: Vec<OsString>,
        /// Extra environment variables.
        env: Vec<(OsString, OsString)>,
    },
    /// Runs the daemon on a thread of this process (tests, embedding).
    InProcess(Arc<dyn Fn(DaemonSpec<S>) + Send + Sync>),
}

impl<S> Clone for Launcher<S> {
    fn clone(&self) -> Self {
        match self {
            Launcher::Exec { exe, args, env } => Launcher::Exec {
                exe: exe.clone(),
                args: args.clone(),
                env: env.clone(),
            },
            Launcher::InProcess(f) => Launcher::InProcess(f.clone()),
        }
    }
}

impl<S> std::fmt::Debug for Launcher<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launcher::Exec { exe, args, env } => f
                .debug_struct("Exec")
                .field("exe", exe)
                .field("args", args)
                .field("env", env)
                .finish(),
            Launcher::InProcess(_) => f.write_str("InProcess"),
        }
    }
}

impl<S> Default for Launcher<S> {
    /// `current_exe __daemon --spec <path>`: the CLI reads the spec and
    /// runs `node::run_daemon`.
    fn default() -> Self {
        Launcher::Exec {
            exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
            args: vec!["__daemon".into()],
            env: Vec::new(),
        }
    }
}

/// The last `n` lines of a log file.
pub(super) fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Runs `exe <pre…> --spec <spec_path> <extra…>` detached (a new session),
/// stdin from /dev/null, stdout and stderr appended to `log`, with `env`
/// (and [`GLIBC_TUNABLES`] unless the caller set it) over this process's
/// environment, or over `base` instead when given.
pub(super) fn spawn_exec(
    exe: &Path,
    pre: &[OsString],
    env: &[(OsString, OsString)],
    base: Option<&[(OsString, OsString)]>,
    spec_path: &Path,
    extra: &[&str],
    log: &Path,
) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.args(pre)
        .arg("--spec")
        .arg(spec_path)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/");
    if let Some(base) = base {
        cmd.env_clear().envs(base.iter().map(|(k, v)| (k, v)));
    }
    if std::env::var_os("GLIBC_TUNABLES").is_none() {
        cmd.env("GLIBC_TUNABLES", GLIBC_TUNABLES);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs in the forked child before exec and
    // only calls setsid(2), which is async-signal-safe; it touches no
    // memory of the parent. A new session detaches the daemon from
    // the caller's terminal and process group (no SIGHUP/SIGINT).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Writes `spec` to `<image_dir>/daemon.json`, starts the daemon for it and
/// waits (up to `timeout`) until its mount shows in `/proc/self/mountinfo`
/// and its control socket answers `ping`.
pub fn start_daemon<S: StackPart>(
    spec: &DaemonSpec<S>,
    launcher: &Launcher<S>,
    timeout: Duration,
) -> Result<(), MountError> {
    let dir = &spec.image_dir;
    super::layout::create_private(dir)?;
    let log = dir.join(LOG_FILE);
    let failed = |reason: String| MountError::DaemonFailed {
        reason,
        log: log.clone(),
        log_tail: log_tail(&log, 20),
    };
    // Kept for the daemon's whole life, whichever launcher runs it: enough
    // to start the same daemon again.
    let spec_path = spec.save()?;
    let mut child = None;
    match launcher {
        Launcher::Exec { exe, args, env } => {
            let c = spawn_exec(exe, args, env, None, &spec_path, &[], &log)
                .map_err(|e| failed(format!("spawn {}: {e}", exe.display())))?;
            child = Some(c);
        }
        Launcher::InProcess(f) => {
            let (f, a) = (f.clone(), spec.clone());
            std::thread::Builder::new()
                .name("clip-daemon".into())
                .spawn(move || f(a))
                .map_err(|e| failed(format!("spawn thread: {e}")))?;
        }
    }
    let mnt = spec.mnt();
    let sock = dir.join(SOCK_FILE);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                return Err(failed(format!("daemon exited with {status}")));
            }
        }
        if super::is_mounted(&mnt)
            && control_request(&sock, "ping", Duration::from_secs(2)).is_ok_and(|r| r.0 == "pong")
        {
            break;
        }
        if Instant::now() > deadline {
            if let Some(c) = child.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            return Err(failed(format!("not ready after {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(mut c) = child {
        // Reap it when it exits so it never lingers as a zombie of a
        // long-lived caller (the CLI exits first; then init adopts it).
        let _ = std::thread::Builder::new()
            .name("clip-daemon-reaper".into())
            .spawn(move || c.wait());
    }
    Ok(())
}
