//! An in-process fake registry for tests: a tiny HTTP/1.1 server on
//! 127.0.0.1:0 (one OS thread per connection, keep-alive) whose behaviour is
//! a closure, plus a distribution-2.8-like handler with fault injection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::digest::Digest;

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// The body (by `Content-Length`).
    pub body: Vec<u8>,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the fake does with a request.
#[derive(Debug)]
pub(crate) enum Reply {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Close the connection without answering.
    Reset,
    /// Send the headers and only the first `send` body bytes, then close.
    Truncated {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        send: usize,
    },
    /// Send headers, then nothing for this long, then close.
    Stall(Duration),
    /// Send nothing at all for this long, then close.
    StallHeaders(Duration),
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Reply {
        Reply::Response {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn header(mut self, k: &str, v: &str) -> Reply {
        if let Reply::Response { headers, .. } | Reply::Truncated { headers, .. } = &mut self {
            headers.push((k.to_string(), v.to_string()));
        }
        self
    }
}

pub(crate) type Handler = Arc<dyn Fn(&Req) -> Reply + Send + Sync>;

/// A running fake server.
#[derive(Debug)]
pub(crate) struct FakeServer {
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<Req>>>,
    /// Connections accepted so far.
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeServer {
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }
}

pub(crate) fn serve(handler: Handler) -> FakeServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let conns2 = connections.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            conns2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let handler = handler.clone();
            let log = log2.clone();
            std::thread::spawn(move || {
                let _ = serve_conn(conn, &*handler, &log);
            });
        }
    });
    FakeServer {
        addr,
        log,
        connections,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        412 => "Precondition Failed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn head(status: u16, headers: &[(String, String)], len: usize) -> Vec<u8> {
    let mut s = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\n",
        reason(status)
    );
    for (k, v) in headers {
        s.push_str(&format!("{k}: {v}\r\n"));
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn serve_conn(
    conn: TcpStream,
    handler: &dyn Fn(&Req) -> Reply,
    log: &Mutex<Vec<Req>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let method = line.split_whitespace().next().unwrap_or("GET").to_string();
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let len: usize = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        std::io::Read::read_exact(&mut reader, &mut body)?;
        let req = Req {
            method,
            path,
            headers,
            body,
        };
        log.lock().unwrap().push(req.clone());
        match handler(&req) {
            Reply::Response {
                status,
                headers,
                body,
            } => {
                w.write_all(&head(status, &headers, body.len()))?;
                w.write_all(&body)?;
                w.flush()?;
            }
            Reply::Reset => return Ok(()),
            Reply::Truncated {
                status,
                headers,
                body,
                send,
            } => {
                w.write_all(&head(status, &headers, body.len()))?;
                w.write_all(&body[..send.min(body.len())])?;
                w.flush()?;
                return Ok(());
            }
            Reply::Stall(d) => {
                w.write_all(&head(200, &[], 10))?;
                w.flush()?;
                std::thread::sleep(d);
                return Ok(());
            }
            Reply::StallHeaders(d) => {
                std::thread::sleep(d);
                return Ok(());
            }
        }
    }
}

/// Auth the fake registry demands.
#[derive(Debug, Clone)]
pub(crate) enum FakeAuth {
    None,
    Basic {
        user: String,
        pass: String,
    },
    /// Bearer via `/token`; `creds` demands Basic creds at the token endpoint.
    Bearer {
        token: String,
        creds: Option<(String, String)>,
    },
}

/// A distribution-like registry for one repository.
#[derive(Debug, Clone)]
pub(crate) struct FakeRegistry {
    pub repo: String,
    /// reference (tag or digest string) → (media type, bytes)
    pub manifests: HashMap<String, (String, Vec<u8>)>,
    pub blobs: HashMap<Digest, Vec<u8>>,
    pub auth: FakeAuth,
}

fn basic(user: &str, pass: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

fn json_error(status: u16, code: &str, msg: &str) -> Reply {
    Reply::new(
        status,
        format!(r#"{{"errors":[{{"code":"{code}","message":"{msg}"}}]}}"#),
    )
    .header("Content-Type", "application/json")
}

impl FakeRegistry {
    pub fn new(repo: &str) -> Self {
        FakeRegistry {
            repo: repo.to_string(),
            manifests: HashMap::new(),
            blobs: HashMap::new(),
            auth: FakeAuth::None,
        }
    }

    pub fn add_manifest(&mut self, tag: Option<&str>, media_type: &str, raw: Vec<u8>) -> Digest {
        let d = Digest::of(&raw);
        if let Some(t) = tag {
            self.manifests
                .insert(t.to_string(), (media_type.to_string(), raw.clone()));
        }
        self.manifests
            .insert(d.to_string(), (media_type.to_string(), raw));
        d
    }

    pub fn add_blob(&mut self, data: Vec<u8>) -> Digest {
        let d = Digest::of(&data);
        self.blobs.insert(d, data);
        d
    }

    /// Handles one request like distribution 2.8 would.
    pub fn handle(&self, req: &Req) -> Reply {
        let host = req.header("host").unwrap_or("127.0.0.1");
        if req.path.starts_with("/token") {
            return match &self.auth {
                FakeAuth::Bearer { token, creds } => {
                    if let Some((u, p)) = creds {
                        if req.header("authorization") != Some(basic(u, p).as_str()) {
                            return Reply::new(401, "");
                        }
                    }
                    Reply::new(200, format!(r#"{{"token":"{token}","expires_in":300}}"#))
                }
                _ => Reply::new(404, ""),
            };
        }
        let authz = req.header("authorization");
        match &self.auth {
            FakeAuth::None => {}
            FakeAuth::Basic { user, pass } => {
                if authz != Some(basic(user, pass).as_str()) {
                    return json_error(401, "UNAUTHORIZED", "authentication required")
                        .header("WWW-Authenticate", "Basic realm=\"fake\"");
                }
            }
            FakeAuth::Bearer { token, .. } => {
                if authz != Some(format!("Bearer {token}").as_str()) {
                    let chal = format!(
                        "Bearer realm=\"http://{host}/token\",service=\"fake\",scope=\"repository:{}:pull\"",
                        self.repo
                    );
                    return json_error(401, "UNAUTHORIZED", "authentication required")
                        .header("WWW-Authenticate", &chal);
                }
            }
        }
        if req.path == "/v2/" {
            return Reply::new(200, "{}");
        }
        let prefix = format!("/v2/{}/", self.repo);
        let Some(rest) = req.path.strip_prefix(&prefix) else {
            return json_error(404, "NAME_UNKNOWN", "repository name not known to registry");
        };
        if let Some(reference) = rest.strip_prefix("manifests/") {
            let Some((mt, raw)) = self.manifests.get(reference) else {
                return json_error(404, "MANIFEST_UNKNOWN", "manifest unknown");
            };
            let accept = req.header("accept").unwrap_or("");
            if !accept.contains(mt.as_str()) {
                return json_error(
                    404,
                    "MANIFEST_UNKNOWN",
                    "OCI manifest found, but accept header does not support OCI manifests",
                );
            }
            return Reply::new(200, raw.clone())
                .header("Content-Type", mt)
                .header("Docker-Content-Digest", &Digest::of(raw).to_string());
        }
        if let Some(d) = rest.strip_prefix("blobs/") {
            let Some(blob) = d.parse::<Digest>().ok().and_then(|d| self.blobs.get(&d)) else {
                return json_error(404, "BLOB_UNKNOWN", "blob unknown to registry");
            };
            return range_reply(req, blob);
        }
        json_error(404, "UNSUPPORTED", "not found")
    }
}

/// Serves `blob` honouring a single `Range: bytes=a-[b]`.
pub(crate) fn range_reply(req: &Req, blob: &[u8]) -> Reply {
    let len = blob.len() as u64;
    let Some(r) = req.header("range").and_then(|r| r.strip_prefix("bytes=")) else {
        return Reply::new(200, blob.to_vec()).header("Accept-Ranges", "bytes");
    };
    let (a, b) = r.split_once('-').unwrap_or((r, ""));
    let a: u64 = a.parse().unwrap_or(0);
    let b: u64 = b.parse().unwrap_or(u64::MAX).min(len.saturating_sub(1));
    if a >= len {
        return Reply::new(416, "").header("Content-Range", &format!("bytes */{len}"));
    }
    Reply::new(206, blob[a as usize..=b as usize].to_vec())
        .header("Content-Range", &format!("bytes {a}-{b}/{len}"))
}
