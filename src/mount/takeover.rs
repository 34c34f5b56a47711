//! Restarting an image daemon without breaking its containers: a successor
//! process takes the FUSE connection over (the `/dev/fuse` fd survives, the
//! mount is never touched), like nydus's `--upgrade` takeover. Protocol,
//! over the image's `control.sock` (docs/takeover.md has the whole story):
//!
//! 1. `clipctl daemon restart` ([`restart_daemon`]) starts `clipctl __daemon
//!    --spec <image_dir>/daemon.json --takeover` from its own binary (a new
//!    binary installed first makes this an upgrade). The successor opens the
//!    index and builds its content reader first, then sends `takeover`.
//! 2. The previous daemon ([`hand_over`]) stops reading `/dev/fuse` (its
//!    workers finish the request they hold), waits until every READ handed
//!    to its pool is answered, and replies `state {json}` with the fd
//!    attached (`SCM_RIGHTS`). The JSON carries the kernel's INIT request
//!    byte for byte; the successor replays it into its own fuse-backend-rs
//!    `Server` so both negotiated the same thing. Requests the kernel sends
//!    meanwhile wait in `/dev/fuse`.
//! 3. The successor writes `daemon.pid`, renames its control socket over the
//!    old one, starts its workers on the fd and sends `ready`. Only then
//!    does the previous daemon exit, without unmounting. If anything fails
//!    before `ready` (the successor errs, crashes or says nothing for
//!    [`READY_TIMEOUT`]), the previous daemon writes its pid file and
//!    socket back and serves again: a failed restart never breaks the mount.
//!
//! Only a mount served over `/dev/fuse` is handed over: the ring
//! registration of FUSE over io_uring belongs to the process that made it
//! and is not taken over (the restart is refused with a clear error).
//!
//! Neighbours: `daemon.rs` runs both sides, `session.rs`/`transport/`
//! pause, resume and adopt the connection, `spawn.rs` starts the process.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};

use super::container::{images_dir, lock_image};
use super::control::control_request;
use super::daemon::{LOG_FILE, SOCK_FILE, TRANSPORT_FILE};
use super::process::{read_pid_file, DaemonProcess, DAEMON_VERB};
use super::session::MountHandle;
use super::spawn::{log_tail, spawn_exec, Launcher};
use super::spec::SPEC_FILE;
use super::MountError;

/// Version of the `state` message; a successor refuses any other.
pub(super) const TAKEOVER_VERSION: u32 = 1;

/// How long the previous daemon waits for `ready` after sending the fd.
/// The successor has done its slow work (index, content reader) before it
/// asked, so this only covers a few file writes and thread starts.
pub(super) const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest `state` line accepted (the INIT request is ~100 bytes).
const MAX_STATE_LINE: usize = 64 * 1024;

/// The argument that makes `__daemon` a successor.
pub(super) const TAKEOVER_ARG: &str = "--takeover";

/// What the previous daemon hands over with the fd.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TakeoverState {
    /// [`TAKEOVER_VERSION`].
    pub(super) version: u32,
    /// The previous daemon's pid.
    pub(super) pid: u32,
    /// The transport that served the mount (`dev`; `uring` is refused).
    pub(super) transport: String,
    /// The kernel's FUSE_INIT request as received.
    pub(super) init_request: Vec<u8>,
}

/// How a [`hand_over`] ended.
#[derive(Debug)]
pub(super) enum HandOver {
    /// The successor serves; this daemon must exit without unmounting.
    Done,
    /// Refused before anything stopped (e.g. an io_uring mount).
    Refused(String),
    /// The successor failed after this daemon stopped; it serves again
    /// (the caller rewrites its pid file and control socket).
    Resumed(String),
}

/// The previous daemon's side: stops serving, sends the connection and
/// waits for `ready`; on any failure serves again.
pub(super) fn hand_over(handle: &mut MountHandle, mut conn: UnixStream) -> HandOver {
    let started = Instant::now();
    // Whether the fd may have reached the successor.
    let mut gave_fd = false;
    let sent = match handle.pause() {
        Err(e) => {
            if !handle.workers_finished() {
                let _ = conn.write_all(format!("error {e}\n").as_bytes());
                return HandOver::Refused(e.to_string());
            }
            // Stopped half way: serve again.
            Err(e.to_string())
        }
        Ok((fd, init_request)) => {
            let state = TakeoverState {
                version: TAKEOVER_VERSION,
                pid: std::process::id(),
                transport: "dev".into(),
                init_request,
            };
            tracing::info!(
                paused_ms = started.elapsed().as_millis() as u64,
                "FUSE requests paused; handing the connection over"
            );
            gave_fd = true;
            send_state(&conn, &state, fd).map_err(|e| format!("sending the connection: {e}"))
        }
    };
    let outcome = sent.and_then(|()| {
        conn.set_read_timeout(Some(READY_TIMEOUT)).ok();
        let mut line = String::new();
        std::io::BufReader::new(&conn)
            .take(1024)
            .read_line(&mut line)
            .map_err(|e| format!("waiting for the successor's ready: {e}"))?;
        match line.trim() {
            "ready" => Ok(()),
            "" => Err("the successor closed the connection before it was ready".into()),
            other => Err(format!("the successor said {other:?}")),
        }
    });
    match outcome {
        Ok(()) => {
            tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "the successor serves the mount; exiting without unmounting"
            );
            HandOver::Done
        }
        Err(why) => {
            tracing::warn!(reason = %why, "takeover failed; serving again");
            if let Err(e) = handle.resume(gave_fd) {
                tracing::error!(error = %e, "cannot serve again after a failed takeover");
            }
            HandOver::Resumed(why)
        }
    }
}

/// Sends `state {json}\n` with `fd` attached.
fn send_state(conn: &UnixStream, state: &TakeoverState, fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let json = serde_json::to_string(state).map_err(std::io::Error::other)?;
    let line = format!("state {json}\n");
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("control buffer too small"));
    }
    let bytes = line.as_bytes();
    let n = rustix::net::sendmsg(
        conn,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    // The fd went with the first byte; the rest is plain data.
    (&*conn).write_all(&bytes[n..])
}

/// The successor's side of step 1: connects to `sock`, asks for the
/// connection, and receives the state and the fd (waiting up to `wait`,
/// which must cover the previous daemon's drain of in-flight READs).
pub(super) fn request_connection(
    sock: &Path,
    wait: Duration,
) -> Result<(UnixStream, TakeoverState, OwnedFd), String> {
    let mut conn =
        UnixStream::connect(sock).map_err(|e| format!("connect {}: {e}", sock.display()))?;
    conn.set_read_timeout(Some(wait)).ok();
    conn.set_write_timeout(Some(wait)).ok();
    conn.write_all(b"takeover\n")
        .map_err(|e| format!("send takeover: {e}"))?;
    let mut buf = vec![0u8; MAX_STATE_LINE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &conn,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| format!("receive the state: {e}"))?;
    let mut fd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            for f in fds {
                fd.get_or_insert(f);
            }
        }
    }
    let mut len = got.bytes;
    while len > 0 && !buf[..len].contains(&b'\n') && len < buf.len() {
        let n = (&conn)
            .read(&mut buf[len..])
            .map_err(|e| format!("receive the state: {e}"))?;
        if n == 0 {
            break;
        }
        len += n;
    }
    let line = std::str::from_utf8(&buf[..len]).unwrap_or("").trim_end();
    if line.is_empty() {
        return Err("the daemon closed the connection without an answer".into());
    }
    if let Some(why) = line.strip_prefix("error ") {
        return Err(format!("the daemon refused: {why}"));
    }
    let Some(json) = line.strip_prefix("state ") else {
        return Err(format!("unexpected answer {line:?}"));
    };
    let state: TakeoverState =
        serde_json::from_str(json).map_err(|e| format!("bad state message: {e}"))?;
    if state.version != TAKEOVER_VERSION {
        return Err(format!(
            "state version {} (this clipctl reads {TAKEOVER_VERSION})",
            state.version
        ));
    }
    if state.transport != "dev" {
        return Err(format!(
            "transport {:?} cannot be taken over",
            state.transport
        ));
    }
    let fd = fd.ok_or("no /dev/fuse fd came with the state")?;
    Ok((conn, state, fd))
}

/// The environment a successor runs with: the previous daemon's (what the
/// `clipctl mount` that started it had: registry auth files, CA bundles,
/// proxies), plus this process's test hooks (`CLIP_TEST_*`).
fn successor_env(old_pid: u32) -> Vec<(OsString, OsString)> {
    let raw = std::fs::read(format!("/proc/{old_pid}/environ")).unwrap_or_default();
    let mut env: Vec<(OsString, OsString)> = raw
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let eq = kv.iter().position(|&b| b == b'=')?;
            let (k, v) = (&kv[..eq], &kv[eq + 1..]);
            Some((
                OsStr::from_bytes(k).to_owned(),
                OsStr::from_bytes(v).to_owned(),
            ))
        })
        .filter(|(k, _)| !k.as_bytes().starts_with(b"CLIP_TEST_"))
        .collect();
    env.extend(std::env::vars_os().filter(|(k, _)| k.as_bytes().starts_with(b"CLIP_TEST_")));
    env
}

/// What [`restart_daemon`] did.
#[derive(Debug, Clone)]
pub struct Restarted {
    /// The image dir.
    pub image_dir: PathBuf,
    /// The daemon that was replaced.
    pub old_pid: u32,
    /// The daemon serving now.
    pub new_pid: u32,
    /// From starting the successor to the previous daemon's exit.
    pub elapsed: Duration,
}

/// The image `image` names: the image dir itself (holding a daemon spec,
/// `<run_dir>/images/<key>`, whose run dir then wins over `run_dir`), a key
/// under `<run_dir>/images/`, or a unique prefix of one (as `clipctl ps`
/// shows it). Returns the run dir, the image dir and the key.
fn resolve_image(run_dir: &Path, image: &str) -> Result<(PathBuf, PathBuf, String), MountError> {
    let given = Path::new(image);
    if given.join(SPEC_FILE).is_file() {
        let dir = given
            .canonicalize()
            .map_err(MountError::io("resolve", given))?;
        let key = dir.file_name().and_then(|n| n.to_str()).map(str::to_string);
        let images = dir
            .parent()
            .filter(|p| p.file_name() == Some("images".as_ref()));
        let (Some(key), Some(run)) = (key, images.and_then(Path::parent)) else {
            return Err(MountError::UnknownImage(image.into()));
        };
        return Ok((run.to_path_buf(), dir.clone(), key));
    }
    if image.is_empty() || !image.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(MountError::UnknownImage(image.into()));
    }
    let dir = images_dir(run_dir);
    let keys: Vec<String> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join(SPEC_FILE).is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|k| k.starts_with(image))
                .collect()
        })
        .unwrap_or_default();
    match keys.as_slice() {
        [key] => Ok((run_dir.to_path_buf(), dir.join(key), key.clone())),
        _ => Err(MountError::UnknownImage(image.into())),
    }
}

/// Restarts the daemon of `image` (see [`resolve_image`]) under `run_dir`:
/// starts a successor from `launcher` (its `Exec` form; the successor gets
/// [`TAKEOVER_ARG`]) and waits up to `timeout` until it serves and the
/// previous daemon has exited. Holds the image lock meanwhile, so no
/// attach, detach or repair of the image runs alongside. On failure the
/// previous daemon still serves.
pub fn restart_daemon<S>(
    run_dir: &Path,
    image: &str,
    launcher: &Launcher<S>,
    timeout: Duration,
) -> Result<Restarted, MountError> {
    let (run_dir, image_dir, key) = resolve_image(run_dir, image)?;
    let fail = |message: String| MountError::Takeover {
        image_dir: image_dir.clone(),
        message,
    };
    let Launcher::Exec { exe, args, env } = launcher else {
        return Err(fail("an in-process daemon cannot be restarted".into()));
    };
    let _lock = lock_image(&run_dir, &key)?;
    let old = DaemonProcess::find(&image_dir)
        .ok_or_else(|| fail("no live daemon serves this image".into()))?;
    let transport = std::fs::read_to_string(image_dir.join(TRANSPORT_FILE)).unwrap_or_default();
    if transport.trim() == "uring" {
        return Err(fail(
            "this mount is served over FUSE io_uring, whose ring registration cannot be handed \
             to another process; restart needs a mount with --fuse-transport dev"
                .into(),
        ));
    }
    let log = image_dir.join(LOG_FILE);
    let started = Instant::now();
    let spec_path = image_dir.join(SPEC_FILE);
    debug_assert!(args.iter().any(|a| a == DAEMON_VERB));
    let base = successor_env(old.pid());
    let mut child = spawn_exec(
        exe,
        args,
        env,
        Some(&base),
        &spec_path,
        &[TAKEOVER_ARG],
        &log,
    )
    .map_err(|e| fail(format!("spawn {}: {e}", exe.display())))?;
    let new_pid = child.id();
    let sock = image_dir.join(SOCK_FILE);
    let deadline = started + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            // The previous daemon may still be taking its pid file and socket
            // back: report (and release the image lock) once it has, so no
            // `ps` or repair sees the image without its daemon.
            let state = if previous_serves_again(old.pid(), &image_dir, &sock) {
                "still serves"
            } else {
                "did not answer again within 35 s"
            };
            return Err(fail(format!(
                "the successor exited with {status}; the previous daemon (pid {}) {state}\n\
                 --- tail of {} ---\n{}",
                old.pid(),
                log.display(),
                log_tail(&log, 12)
            )));
        }
        if old.exited_within(Duration::ZERO)
            && read_pid_file(&image_dir).is_some_and(|(pid, _)| pid == new_pid)
            && control_request(&sock, "ping", Duration::from_secs(2)).is_ok_and(|r| r.0 == "pong")
        {
            break;
        }
        if Instant::now() > deadline {
            // Killing it before `ready` makes the previous daemon serve again.
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!(
                "the successor was not serving after {timeout:?}; it was killed\n--- tail of {} ---\n{}",
                log.display(),
                log_tail(&log, 12)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Reaped when it exits, should the caller live that long.
    let _ = std::thread::Builder::new()
        .name("clip-daemon-reaper".into())
        .spawn(move || child.wait());
    Ok(Restarted {
        image_dir,
        old_pid: old.pid(),
        new_pid,
        elapsed: started.elapsed(),
    })
}

/// Waits until the previous daemon (`pid`) names itself in `daemon.pid`
/// again and answers `ping` (it does so on its own once a successor is
/// gone, at worst after [`READY_TIMEOUT`]).
fn previous_serves_again(pid: u32, image_dir: &Path, sock: &Path) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT + Duration::from_secs(5);
    while Instant::now() < deadline {
        if read_pid_file(image_dir).is_some_and(|(p, _)| p == pid)
            && control_request(sock, "ping", Duration::from_secs(2)).is_ok_and(|r| r.0 == "pong")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::net::UnixListener;

    /// A fake previous daemon on `sock`: answers one `takeover` with
    /// `reply` (the state and `file`'s fd, or an error line).
    fn fake_daemon(sock: &Path, reply: Result<TakeoverState, &'static str>, file: std::fs::File) {
        let listener = UnixListener::bind(sock).unwrap();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            std::io::BufReader::new(&conn).read_line(&mut line).unwrap();
            assert_eq!(line, "takeover\n");
            match reply {
                Ok(state) => send_state(&conn, &state, file.as_fd()).unwrap(),
                Err(e) => conn.write_all(format!("error {e}\n").as_bytes()).unwrap(),
            }
            // Wait for the client to hang up.
            let _ = conn.read(&mut [0u8; 16]);
        });
    }

    fn state(init: usize) -> TakeoverState {
        TakeoverState {
            version: TAKEOVER_VERSION,
            pid: 42,
            transport: "dev".into(),
            init_request: (0..init).map(|i| i as u8).collect(),
        }
    }

    #[test]
    fn the_fd_and_the_state_arrive_together() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("control.sock");
        let file = std::fs::File::create(tmp.path().join("stand-in")).unwrap();
        let ino = file.metadata().unwrap().ino();
        // An INIT far longer than a real one: the line spans several reads.
        fake_daemon(&sock, Ok(state(10_000)), file);
        let (_conn, got, fd) = request_connection(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(got.pid, 42);
        assert_eq!(got.init_request, state(10_000).init_request);
        let received = std::fs::File::from(fd);
        assert_eq!(
            received.metadata().unwrap().ino(),
            ino,
            "the same open file"
        );
    }

    #[test]
    fn a_refusal_and_a_wrong_version_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let file = || std::fs::File::open("/dev/null").unwrap();
        let sock = tmp.path().join("a.sock");
        fake_daemon(&sock, Err("io_uring mounts are not handed over"), file());
        let e = request_connection(&sock, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("refused: io_uring"), "{e}");
        let sock = tmp.path().join("b.sock");
        let mut future = state(8);
        future.version = TAKEOVER_VERSION + 1;
        fake_daemon(&sock, Ok(future), file());
        let e = request_connection(&sock, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("state version"), "{e}");
        let sock = tmp.path().join("c.sock");
        let e = request_connection(&sock, Duration::from_secs(5)).unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }

    #[test]
    fn images_are_named_by_key_prefix_or_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path();
        for key in ["abc123", "abd456"] {
            let dir = images_dir(run).join(key);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(SPEC_FILE), "{}").unwrap();
        }
        let key = |s: &str| resolve_image(run, s).map(|(_, _, k)| k);
        assert_eq!(key("abc").unwrap(), "abc123");
        assert_eq!(key("abd456").unwrap(), "abd456");
        assert!(
            matches!(key("ab"), Err(MountError::UnknownImage(_))),
            "ambiguous"
        );
        assert!(matches!(key("ff"), Err(MountError::UnknownImage(_))));
        assert!(matches!(key("../x"), Err(MountError::UnknownImage(_))));
        let dir = images_dir(run).join("abd456");
        let (r, d, k) = resolve_image(Path::new("/elsewhere"), dir.to_str().unwrap()).unwrap();
        assert_eq!(k, "abd456");
        assert_eq!(d, dir.canonicalize().unwrap());
        assert_eq!(r, run.canonicalize().unwrap(), "the dir's own run dir");
    }
}
