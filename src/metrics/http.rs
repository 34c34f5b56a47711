//! A deliberately tiny HTTP/1.1 server for `clipctl metrics --serve`:
//! `GET /metrics` (the caller's render function, per scrape), `GET /healthz`
//! (`ok`), 404 elsewhere, one short-lived thread per connection,
//! `Connection: close`. No keep-alive, no chunking, no TLS: it is meant for
//! loopback scrapes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use super::{MetricsError, PROMETHEUS_CONTENT_TYPE};

/// Longest request head accepted.
const MAX_HEAD: usize = 8 << 10;
/// A client that does not send its request in this time is dropped.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The renderer called once per `/metrics` scrape: the body, or an error
/// message (served as 500).
pub type RenderFn = dyn Fn() -> Result<String, String> + Send + Sync;

/// A bound, not yet serving, HTTP endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port); a port in use is an error naming the address.
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer { listener })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the process ends. `render` produces the `/metrics` body.
    pub fn run(self, render: Arc<RenderFn>) -> ! {
        loop {
            match self.listener.accept() {
                Ok((conn, _)) => {
                    let r = render.clone();
                    let spawned = std::thread::Builder::new()
                        .name("clip-metrics-http".into())
                        .spawn(move || handle(conn, &*r));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "metrics endpoint: cannot spawn connection thread");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    // EMFILE and friends: back off instead of spinning.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

fn handle(mut conn: TcpStream, render: &RenderFn) {
    let _ = conn.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = conn.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > MAX_HEAD {
            respond(
                &mut conn,
                "431 Request Header Fields Too Large",
                "text/plain",
                "request head too large\n",
                false,
            );
            return;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut parts = text.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        respond(
            &mut conn,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
            false,
        );
        return;
    }
    match path {
        "/metrics" => match render() {
            Ok(body) => respond(
                &mut conn,
                "200 OK",
                PROMETHEUS_CONTENT_TYPE,
                &body,
                head_only,
            ),
            Err(msg) => respond(
                &mut conn,
                "500 Internal Server Error",
                "text/plain",
                &format!("{msg}\n"),
                head_only,
            ),
        },
        "/healthz" => respond(&mut conn, "200 OK", "text/plain", "ok\n", head_only),
        _ => respond(
            &mut conn,
            "404 Not Found",
            "text/plain",
            "not found: try /metrics or /healthz\n",
            head_only,
        ),
    }
}

fn respond(conn: &mut TcpStream, status: &str, ctype: &str, body: &str, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    if !head_only {
        let _ = conn.write_all(body.as_bytes());
    }
    let _ = conn.flush();
}
