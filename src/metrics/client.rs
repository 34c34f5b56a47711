//! Finds mount daemons under the run dir and asks each for a [`Snapshot`]
//! over its control socket. Mirrors the layout `mount` writes:
//! `<run_dir>/images/<manifest-hex>/{control.sock,containers}`.
//!
//! Every socket operation has a deadline: a dead daemon (stale socket), a
//! wedged accept loop or a daemon that never answers is an error, never a hang.

use std::io::{ErrorKind as IoKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{MetricsError, Snapshot};

/// Control socket file name inside an image dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Container list file name inside an image dir (one cid per line).
const CONTAINERS_FILE: &str = "containers";
/// Per-daemon deadline used by `clipctl metrics`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// A stats reply larger than this is refused (a snapshot is a few tens of KiB).
const MAX_REPLY: usize = 16 << 20;

/// One image dir with a control socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonEntry {
    /// The manifest digest hex (the image dir's name).
    pub manifest_hex: String,
    /// `<run_dir>/images/<hex>/control.sock`.
    pub socket: PathBuf,
    /// Containers using the image, from the `containers` file.
    pub cids: Vec<String>,
}

impl DaemonEntry {
    /// `sha256:<hex>`.
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.manifest_hex)
    }
}

/// A daemon and what it answered.
#[derive(Debug)]
pub struct DaemonReport {
    /// Which daemon.
    pub entry: DaemonEntry,
    /// Its snapshot (labels' `cids` replaced by the `containers` file, and
    /// empty `digest` filled from the dir name), or why there is none.
    pub result: Result<Snapshot, MetricsError>,
}

/// Image dirs under `run_dir` that have a control socket, sorted by hex.
/// A missing run dir or `images` dir means no daemons (an empty list).
pub fn discover(run_dir: &Path) -> Result<Vec<DaemonEntry>, MetricsError> {
    let images = run_dir.join("images");
    let rd = match std::fs::read_dir(&images) {
        Ok(rd) => rd,
        Err(e) if e.kind() == IoKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(MetricsError::Io {
                what: "read run dir",
                path: images,
                source,
            })
        }
    };
    let mut out = Vec::new();
    for ent in rd.flatten() {
        let dir = ent.path();
        let socket = dir.join(CONTROL_SOCKET);
        if !dir.is_dir() || std::fs::symlink_metadata(&socket).is_err() {
            continue;
        }
        let cids = std::fs::read_to_string(dir.join(CONTAINERS_FILE))
            .map(|s| {
                s.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        out.push(DaemonEntry {
            manifest_hex: ent.file_name().to_string_lossy().into_owned(),
            socket,
            cids,
        });
    }
    out.sort_by(|a, b| a.manifest_hex.cmp(&b.manifest_hex));
    Ok(out)
}

/// Queries the daemons concurrently (one scoped thread each), so dead
/// daemons cost one `timeout` in total, not one each. Reports keep the
/// order of `entries`.
pub fn collect(entries: &[DaemonEntry], timeout: Duration) -> Vec<DaemonReport> {
    let one = |e: &DaemonEntry| DaemonReport {
        entry: e.clone(),
        result: query_daemon(&e.socket, timeout).map(|mut s| {
            s.labels.cids = e.cids.clone();
            if s.labels.digest.is_empty() {
                s.labels.digest = e.digest();
            }
            s
        }),
    };
    std::thread::scope(|sc| {
        let handles: Vec<_> = entries.iter().map(|e| sc.spawn(move || one(e))).collect();
        handles
            .into_iter()
            .zip(entries)
            .map(|(h, e)| {
                h.join().unwrap_or_else(|_| DaemonReport {
                    entry: e.clone(),
                    result: Err(MetricsError::Protocol(format!(
                        "{}: query thread panicked",
                        e.socket.display()
                    ))),
                })
            })
            .collect()
    })
}

/// One Prometheus scrape of every daemon under `run_dir`: answering daemons
/// get their series, silent ones `clip_daemon_up{digest=...} 0`. No daemons
/// is an empty (valid) exposition, not an error.
pub fn prometheus_scrape(run_dir: &Path, timeout: Duration) -> Result<String, MetricsError> {
    let reports = collect(&discover(run_dir)?, timeout);
    let mut ok = Vec::new();
    let mut down = Vec::new();
    for r in reports {
        match r.result {
            Ok(s) => ok.push(s),
            Err(e) => {
                // Reported as `clip_daemon_up{digest} 0`; a log line per scrape would spam.
                tracing::debug!(digest = %r.entry.digest(), error = %e, "metrics scrape: daemon not answering");
                down.push(r.entry.digest());
            }
        }
    }
    super::render_prometheus(&ok, &down)
}

/// Sends `stats` to the control socket at `socket` and parses the reply;
/// connecting, sending and receiving together take at most about `timeout`.
pub fn query_daemon(socket: &Path, timeout: Duration) -> Result<Snapshot, MetricsError> {
    let deadline = Instant::now() + timeout;
    let tmo = |what| MetricsError::Timeout {
        path: socket.to_path_buf(),
        timeout,
        what,
    };
    let io = |what, source| MetricsError::Io {
        what,
        path: socket.to_path_buf(),
        source,
    };
    let mut s = connect(socket, timeout)?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| io("set timeout on", e))?;
    match s.write_all(b"stats\n") {
        Ok(()) => {}
        Err(e) if is_timeout(&e) => return Err(tmo("sending request")),
        Err(e) => return Err(io("send to", e)),
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(tmo("waiting for reply"));
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| io("set timeout on", e))?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                reply.extend_from_slice(&buf[..n]);
                if reply.contains(&b'\n') {
                    break;
                }
                if reply.len() > MAX_REPLY {
                    return Err(MetricsError::Protocol(format!(
                        "stats reply from {} exceeds {MAX_REPLY} bytes",
                        socket.display()
                    )));
                }
            }
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(e) if is_timeout(&e) => return Err(tmo("waiting for reply")),
            Err(e) => return Err(io("receive from", e)),
        }
    }
    let end = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or(reply.len());
    let line = String::from_utf8_lossy(&reply[..end]);
    let line = line.trim();
    if line.is_empty() {
        return Err(MetricsError::Protocol(format!(
            "{}: connection closed without a reply",
            socket.display()
        )));
    }
    if let Some(msg) = line.strip_prefix("error") {
        return Err(MetricsError::Protocol(format!(
            "{}: daemon answered: error{msg}",
            socket.display()
        )));
    }
    Snapshot::from_stats_reply(line)
        .map_err(|e| MetricsError::Protocol(format!("{}: {e}", socket.display())))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), IoKind::WouldBlock | IoKind::TimedOut)
}

/// `UnixStream::connect` has no timeout and blocks while the listener's
/// backlog is full (a wedged daemon), so connect on a helper thread and stop
/// waiting at the deadline; the thread ends when the kernel gives up.
fn connect(socket: &Path, timeout: Duration) -> Result<UnixStream, MetricsError> {
    let (tx, rx) = mpsc::sync_channel(1);
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("clip-metrics-connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(&path));
        })
        .map_err(|source| MetricsError::Io {
            what: "spawn connect thread for",
            path: socket.to_path_buf(),
            source,
        })?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source))
            if matches!(source.kind(), IoKind::NotFound | IoKind::ConnectionRefused) =>
        {
            Err(MetricsError::NotRunning {
                path: socket.to_path_buf(),
                source,
            })
        }
        Ok(Err(source)) => Err(MetricsError::Io {
            what: "connect to",
            path: socket.to_path_buf(),
            source,
        }),
        Err(_) => Err(MetricsError::Timeout {
            path: socket.to_path_buf(),
            timeout,
            what: "connecting",
        }),
    }
}
