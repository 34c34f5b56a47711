//! A fault-injecting HTTP proxy in front of the real test registry: one
//! request per connection (it answers `Connection: close`, so every request
//! of a client arrives on its own connection and is seen here), writes
//! refused with 401 like a registry that lets anonymous users pull but not
//! push, and one blob's bytes changed in transit (a tampered artifact).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Answer every request but GET and HEAD with 401 and a Basic challenge.
    pub refuse_writes: bool,
    /// Flip one byte in the middle of GET responses for this blob
    /// (`sha256:…`).
    pub corrupt_blob: Option<String>,
}

/// A running proxy (stops accepting when dropped).
#[derive(Debug)]
pub struct Proxy {
    host: String,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Proxies to `upstream` (`host:port`) with `faults`.
    pub fn start(upstream: &str, faults: Faults) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (up, f, s) = (upstream.to_string(), Arc::new(faults), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (up, f) = (up.clone(), f.clone());
                std::thread::spawn(move || {
                    let _ = one_request(conn, &up, &f);
                });
            }
        });
        Proxy { host, stop }
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.host);
    }
}

fn one_request(client: TcpStream, upstream: &str, faults: &Faults) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    let Some(request_line) = lines.first().cloned() else {
        return Ok(());
    };
    let method = request_line.split(' ').next().unwrap_or("").to_string();
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    let len: usize = lines
        .iter()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let mut out = client;
    if faults.refuse_writes && method != "GET" && method != "HEAD" {
        let msg = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#;
        write!(
            out,
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"proxy\"\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            msg.len()
        )?;
        out.write_all(msg)?;
        return out.flush();
    }
    let mut up = TcpStream::connect(upstream)?;
    let mut head = String::new();
    for l in &lines {
        let name = l.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("host") {
            continue;
        }
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Host: {upstream}\r\nConnection: close\r\n\r\n"));
    up.write_all(head.as_bytes())?;
    up.write_all(&body)?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = super::fault_proxy::head_len(&resp);
    let (rhead, rbody) = resp.split_at_mut(split);
    let corrupt = faults
        .corrupt_blob
        .as_ref()
        .is_some_and(|d| method == "GET" && path.ends_with(&format!("/blobs/{d}")));
    if corrupt && !rbody.is_empty() {
        let mid = rbody.len() / 2;
        rbody[mid] ^= 0xff;
    }
    let rhead = String::from_utf8_lossy(rhead);
    let mut new_head = String::new();
    for l in rhead.split("\r\n").filter(|l| !l.is_empty()) {
        if !l.to_ascii_lowercase().starts_with("connection:") {
            new_head.push_str(l);
            new_head.push_str("\r\n");
        }
    }
    new_head.push_str("Connection: close\r\n\r\n");
    out.write_all(new_head.as_bytes())?;
    out.write_all(rbody)?;
    out.flush()
}
