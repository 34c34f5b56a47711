//! The daemon's control socket: one request line, one reply line.
//!
//! | request    | reply                                           |
//! |------------|-------------------------------------------------|
//! | `ping`     | `pong`                                          |
//! | `stats`    | one JSON object (see [`super::StatsFn`])        |
//! | `shutdown` | `ok`, then the daemon unmounts and exits        |
//! | other      | `error unknown command`                         |

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::MountError;

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
    s.write_all(format!("{cmd}\n").as_bytes())
        .map_err(|e| err(format!("send: {e}")))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| err(format!("receive: {e}")))?;
    if line.is_empty() {
        return Err(err("connection closed without a reply".into()));
    }
    Ok(ControlReply(line.trim_end().to_string()))
}

/// What the server does with each command.
pub(super) trait Handler: Send + Sync + 'static {
    fn stats(&self) -> String;
    fn shutdown(&self);
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
    std::thread::Builder::new()
        .name("clip-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let h = handler.clone();
                // One short-lived thread per connection: requests are rare.
                let _ = std::thread::Builder::new()
                    .name("clip-control-conn".into())
                    .spawn(move || serve_conn(conn, &*h));
            }
        })
        .map_err(MountError::io("spawn control thread", sock))?;
    Ok(sock.to_path_buf())
}

fn serve_conn(conn: UnixStream, h: &dyn Handler) {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = conn;
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let reply = match line.trim() {
            "ping" => "pong".to_string(),
            "stats" => h.stats(),
            "shutdown" => {
                let _ = w.write_all(b"ok\n");
                h.shutdown();
                return;
            }
            _ => "error unknown command".to_string(),
        };
        if w.write_all(format!("{reply}\n").as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}
