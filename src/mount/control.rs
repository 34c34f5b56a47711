//! The daemon's control socket: one request line, one reply line.
//!
//! | request    | reply                                           |
//! |------------|-------------------------------------------------|
//! | `ping`     | `pong`                                          |
//! | `stats`    | one JSON object (see [`super::StatsFn`])        |
//! | `shutdown` | `ok`, then the daemon unmounts and exits        |
//! | `takeover` | a successor daemon asks for the FUSE connection |
//! |            | (see `super::takeover`): `state {json}` with    |
//! |            | the `/dev/fuse` fd attached, or `error …`       |
//! | other      | `error unknown command`                         |
//!
//! Bounded: a request line longer than [`MAX_LINE`] gets `error line too
//! long` and the connection is closed; at most [`MAX_CONNECTIONS`] are
//! served at once (one more gets `error busy`); a client that sends
//! nothing (or does not read) for [`IO_TIMEOUT`] is dropped, so a silent
//! client never ties up the daemon.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::MountError;

/// Longest request line served (the commands are a few bytes).
pub const MAX_LINE: usize = 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Idle limit of a connection, reading and writing.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReply(pub String);

/// Sends `cmd` to the control socket at `sock` and returns the reply line.
pub fn control_request(
    sock: &Path,
    cmd: &str,
    timeout: Duration,
) -> Result<ControlReply, MountError> {
    let err = |message: String| MountError::Control {
        path: sock.to_path_buf(),
        message,
    };
    let mut s = UnixStream::connect(sock).map_err(|e| err(format!("connect: {e}")))?;
    s.set_read_timeout(Some(timeout)).ok();
    s.set_write_timeout(Some(timeout)).ok();
    // A server that refuses at once (`error busy`) may answer and close
    // before the request is sent: its reply is still read.
    let sent = s.write_all(format!("{cmd}\n").as_bytes());
    let mut line = String::new();
    let received = BufReader::new(&s).read_line(&mut line);
    if line.is_empty() {
        return Err(match (sent, received) {
            (Err(e), _) => err(format!("send: {e}")),
            (_, Err(e)) => err(format!("receive: {e}")),
            _ => err("connection closed without a reply".into()),
        });
    }
    Ok(ControlReply(line.trim_end().to_string()))
}

/// What the server does with each command.
pub(super) trait Handler: Send + Sync + 'static {
    fn stats(&self) -> String;
    fn shutdown(&self);
    /// A successor asks for the FUSE connection; the handler owns the
    /// connection from here (it answers on it).
    fn takeover(&self, mut conn: UnixStream) {
        let _ = conn.write_all(b"error takeover not supported\n");
    }
}

/// Binds `sock` (mode 0600) and serves it on a background thread.
pub(super) fn listen(
    sock: &Path,
    handler: std::sync::Arc<dyn Handler>,
) -> Result<PathBuf, MountError> {
    let _ = std::fs::remove_file(sock);
    let listener = UnixListener::bind(sock).map_err(MountError::io("bind control socket", sock))?;
    std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
        .map_err(MountError::io("chmod control socket", sock))?;
    serve_listener(listener, sock, handler)?;
    Ok(sock.to_path_buf())
}

/// [`listen`] without a moment where `sock` is missing or names nobody:
/// binds a socket beside it and renames it over `sock` (a takeover: the
/// successor's socket replaces the previous daemon's, whose listener keeps
/// running unreachable until that process exits).
pub(super) fn listen_replacing(
    sock: &Path,
    handler: std::sync::Arc<dyn Handler>,
) -> Result<(), MountError> {
    // Short: a unix socket path is at most 107 bytes.
    let tmp = sock.with_file_name(format!(".c{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(MountError::io("bind control socket", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(MountError::io("chmod control socket", &tmp))?;
    std::fs::rename(&tmp, sock).map_err(MountError::io("rename control socket", sock))?;
    serve_listener(listener, sock, handler)
}

fn serve_listener(
    listener: UnixListener,
    sock: &Path,
    handler: std::sync::Arc<dyn Handler>,
) -> Result<(), MountError> {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("clip-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                conn.set_write_timeout(Some(IO_TIMEOUT)).ok();
                if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::SeqCst);
                    let _ = conn.write_all(b"error busy\n");
                    continue;
                }
                let (h, a) = (handler.clone(), active.clone());
                // One short-lived thread per connection (at most
                // MAX_CONNECTIONS): requests are rare.
                let spawned = std::thread::Builder::new()
                    .name("clip-control-conn".into())
                    .spawn(move || {
                        serve_conn(conn, &*h);
                        a.fetch_sub(1, Ordering::SeqCst);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })
        .map_err(MountError::io("spawn control thread", sock))?;
    Ok(())
}

fn serve_conn(conn: UnixStream, h: &dyn Handler) {
    conn.set_read_timeout(Some(IO_TIMEOUT)).ok();
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut w = conn;
    let mut line = Vec::new();
    loop {
        line.clear();
        // One byte over the limit tells a long line from a full one.
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        if line.len() > MAX_LINE {
            let _ = w.write_all(b"error line too long\n");
            return;
        }
        let reply = match std::str::from_utf8(&line).unwrap_or("").trim() {
            "ping" => "pong".to_string(),
            "stats" => h.stats(),
            "shutdown" => {
                let _ = w.write_all(b"ok\n");
                h.shutdown();
                return;
            }
            "takeover" => {
                h.takeover(w);
                return;
            }
            _ => "error unknown command".to_string(),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl Handler for Quiet {
        fn stats(&self) -> String {
            "{}".into()
        }
        fn shutdown(&self) {}
    }

    #[test]
    fn silent_clients_long_lines_and_floods_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("control.sock");
        listen(&sock, Arc::new(Quiet)).unwrap();
        // Clients that connect and never send hold every slot...
        let silent: Vec<UnixStream> = (0..MAX_CONNECTIONS)
            .map(|_| UnixStream::connect(&sock).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        // ...so one more is told so at once, not queued.
        let busy = control_request(&sock, "ping", Duration::from_secs(5)).unwrap();
        assert_eq!(busy.0, "error busy");
        drop(silent);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            control_request(&sock, "ping", Duration::from_secs(5))
                .unwrap()
                .0,
            "pong"
        );
        // A line over the limit is refused and the connection closed.
        let long = "x".repeat(MAX_LINE * 4);
        let r = control_request(&sock, &long, Duration::from_secs(5)).unwrap();
        assert_eq!(r.0, "error line too long");
        assert_eq!(
            control_request(&sock, "stats", Duration::from_secs(5))
                .unwrap()
                .0,
            "{}"
        );
    }
}
