//! A registry fault injector for live mounts: an HTTP proxy in front of the
//! real test registry whose fault can be switched while a mount reads
//! through it (blackhole, 1 byte/s trickle, reset, a status such as 503,
//! 429 with `Retry-After`, a redirect loop), for a number of requests or
//! until switched back, and an optional Bearer token flow (an in-process
//! token service whose tokens expire after a number of requests, on this
//! host or another). One request per connection (`Connection: close`), so
//! the fault in force when a request arrives is the one it gets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it to the registry.
    Forward,
    /// Accept it and answer nothing until the fault changes (a network
    /// partition: when it heals the request goes through).
    Blackhole,
    /// Forward it, and send the answer's head at once, its body at 1 byte
    /// per second (it never stalls).
    Trickle,
    /// Reset the connection (RST) without an answer.
    Reset,
    /// Answer with this status and an empty body.
    Status(u16),
    /// Answer 429 with `Retry-After: <secs>`.
    TooManyRequests(u64),
    /// Answer 307 to the same URL.
    RedirectLoop,
}

/// The Bearer token flow the proxy asks for.
#[derive(Debug)]
struct Auth {
    /// `http://host:port/token` of the token service.
    realm: String,
    /// Requests a token is good for.
    lifetime: usize,
    /// The token now valid (`tok-<n>`) and requests made with it.
    current: Mutex<(usize, usize)>,
    /// The `Authorization` header of every token request (None: none sent).
    token_requests: Mutex<Vec<Option<String>>>,
    /// Registry requests refused with 401.
    challenges: AtomicUsize,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    /// The fault, and how many more requests get it (None: until changed).
    fault: Mutex<(Fault, Option<usize>)>,
    auth: Option<Auth>,
    /// Requests seen, and when each answer of status 429 was sent.
    requests: AtomicUsize,
    throttled_at: Mutex<Vec<Instant>>,
    arrivals: Mutex<Vec<Instant>>,
    stop: AtomicBool,
}

/// A running proxy (stops accepting when dropped).
#[derive(Debug)]
pub struct FaultProxy {
    host: String,
    token_host: Option<String>,
    shared: Arc<Shared>,
}

fn listen(ip: &str) -> (TcpListener, String) {
    let l = TcpListener::bind((ip, 0)).unwrap();
    let host = l.local_addr().unwrap().to_string();
    (l, host)
}

fn serve(listener: TcpListener, shared: Arc<Shared>, handle: fn(TcpStream, &Shared)) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(conn) = conn else { continue };
            let s = shared.clone();
            std::thread::spawn(move || handle(conn, &s));
        }
    });
}

impl FaultProxy {
    /// A proxy to `upstream` (`host:port`) that forwards everything.
    pub fn start(upstream: &str) -> FaultProxy {
        Self::launch(upstream, None)
    }

    /// The same, asking for Bearer tokens from a token service listening
    /// on `realm_ip` (e.g. `127.0.0.2`: another host); each token is good
    /// for `lifetime` registry requests.
    pub fn with_tokens(upstream: &str, realm_ip: &str, lifetime: usize) -> FaultProxy {
        Self::launch(upstream, Some((realm_ip, lifetime)))
    }

    fn launch(upstream: &str, tokens: Option<(&str, usize)>) -> FaultProxy {
        let (listener, host) = listen("127.0.0.1");
        let token_listener = tokens.map(|(ip, lifetime)| (listen(ip), lifetime));
        let shared = Arc::new(Shared {
            upstream: upstream.to_string(),
            fault: Mutex::new((Fault::Forward, None)),
            auth: token_listener.as_ref().map(|((_, h), lifetime)| Auth {
                realm: format!("http://{h}/token"),
                lifetime: *lifetime,
                current: Mutex::new((0, 0)),
                token_requests: Mutex::new(Vec::new()),
                challenges: AtomicUsize::new(0),
            }),
            requests: AtomicUsize::new(0),
            throttled_at: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        serve(listener, shared.clone(), |c, s| {
            let _ = registry_request(c, s);
        });
        let token_host = token_listener.map(|((l, h), _)| {
            serve(l, shared.clone(), |c, s| {
                let _ = token_request(c, s);
            });
            h
        });
        FaultProxy {
            host,
            token_host,
            shared,
        }
    }

    /// `127.0.0.1:port` of the proxy.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// From now on every request gets `fault`.
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = (fault, None);
    }

    /// The next `n` requests get `fault`, the ones after are forwarded.
    pub fn set_for(&self, fault: Fault, n: usize) {
        *self.shared.fault.lock().unwrap() = (fault, Some(n));
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// When each request arrived.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.shared.arrivals.lock().unwrap().clone()
    }

    /// When each 429 was answered.
    pub fn throttled_at(&self) -> Vec<Instant> {
        self.shared.throttled_at.lock().unwrap().clone()
    }

    /// The `Authorization` header of every token request so far.
    pub fn token_requests(&self) -> Vec<Option<String>> {
        match &self.shared.auth {
            Some(a) => a.token_requests.lock().unwrap().clone(),
            None => Vec::new(),
        }
    }

    /// Registry requests refused with 401 so far.
    pub fn challenges(&self) -> usize {
        self.shared
            .auth
            .as_ref()
            .map_or(0, |a| a.challenges.load(Ordering::SeqCst))
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.set(Fault::Reset);
        // Wake the accept loops so they see the flag.
        let _ = TcpStream::connect(&self.host);
        if let Some(t) = &self.token_host {
            let _ = TcpStream::connect(t);
        }
    }
}

/// The request line and header lines of one request (its body is read and
/// dropped: a registry GET has none).
fn read_head(conn: &TcpStream) -> std::io::Result<Vec<String>> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(Vec::new());
        }
        if line == "\r\n" || line == "\n" {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    let len: usize = header(&lines, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    std::io::copy(&mut reader.take(len as u64), &mut std::io::sink())?;
    Ok(lines)
}

fn header<'a>(lines: &'a [String], name: &str) -> Option<&'a str> {
    lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn answer(mut conn: &TcpStream, status: &str, extra: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        conn,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    conn.write_all(body)?;
    conn.flush()
}

/// Closes `conn` with a RST instead of a FIN.
fn reset(conn: TcpStream) {
    let sock = socket2::Socket::from(conn);
    let _ = sock.set_linger(Some(Duration::ZERO));
}

/// The fault this request gets: a blackhole holds it until the fault
/// changes.
fn fault_now(shared: &Shared) -> Fault {
    loop {
        let fault = {
            let mut g = shared.fault.lock().unwrap();
            let (fault, left) = *g;
            match left {
                Some(0) => Fault::Forward,
                Some(n) if fault != Fault::Blackhole => {
                    g.1 = Some(n - 1);
                    fault
                }
                _ => fault,
            }
        };
        if fault != Fault::Blackhole || shared.stop.load(Ordering::SeqCst) {
            return fault;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn registry_request(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let lines = read_head(&conn)?;
    let Some(request_line) = lines.first() else {
        return Ok(());
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.arrivals.lock().unwrap().push(Instant::now());
    let path = request_line.split(' ').nth(1).unwrap_or("/").to_string();
    if let Some(auth) = &shared.auth {
        let valid = {
            let mut cur = auth.current.lock().unwrap();
            let ok = cur.0 > 0
                && header(&lines, "authorization") == Some(&format!("Bearer tok-{}", cur.0))
                && cur.1 < auth.lifetime;
            if ok {
                cur.1 += 1;
            }
            ok
        };
        if !valid {
            auth.challenges.fetch_add(1, Ordering::SeqCst);
            let challenge = format!(
                "WWW-Authenticate: Bearer realm=\"{}\",service=\"fault-proxy\"\r\n",
                auth.realm
            );
            return answer(&conn, "401 Unauthorized", &challenge, b"");
        }
    }
    match fault_now(shared) {
        Fault::Forward | Fault::Blackhole => {
            let resp = forward(&lines, &shared.upstream)?;
            (&conn).write_all(&resp)?;
            (&conn).flush()
        }
        Fault::Trickle => {
            let resp = forward(&lines, &shared.upstream)?;
            let split = head_len(&resp);
            (&conn).write_all(&resp[..split])?;
            for &b in &resp[split..] {
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                (&conn).write_all(&[b])?;
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(())
        }
        Fault::Reset => {
            reset(conn);
            Ok(())
        }
        Fault::Status(code) => answer(&conn, &format!("{code} Injected"), "", b""),
        Fault::TooManyRequests(secs) => {
            shared.throttled_at.lock().unwrap().push(Instant::now());
            let extra = format!("Retry-After: {secs}\r\n");
            answer(&conn, "429 Too Many Requests", &extra, b"")
        }
        Fault::RedirectLoop => {
            let host = header(&lines, "host").unwrap_or("127.0.0.1");
            let extra = format!("Location: http://{host}{path}\r\n");
            answer(&conn, "307 Temporary Redirect", &extra, b"")
        }
    }
}

/// The length of an HTTP answer's head, up to and with its blank line.
pub fn head_len(resp: &[u8]) -> usize {
    resp.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(resp.len(), |p| p + 4)
}

/// Sends the request to the registry (`Connection: close`) and returns its
/// whole answer, with `Connection: close`.
fn forward(lines: &[String], upstream: &str) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect(upstream)?;
    let mut head = String::new();
    for l in lines {
        let name = l.split(':').next().unwrap_or("").trim();
        if ["connection", "host", "authorization"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        head.push_str(l);
        head.push_str("\r\n");
    }
    head.push_str(&format!("Host: {upstream}\r\nConnection: close\r\n\r\n"));
    up.write_all(head.as_bytes())?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let split = head_len(&resp);
    let mut out = Vec::with_capacity(resp.len() + 24);
    for l in String::from_utf8_lossy(&resp[..split]).split("\r\n") {
        if !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:") {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&resp[split..]);
    Ok(out)
}

/// The token service: every GET gets a new token (the old one stops
/// working), and its `Authorization` header is recorded.
fn token_request(conn: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let lines = read_head(&conn)?;
    let Some(auth) = &shared.auth else {
        return Ok(());
    };
    if lines.is_empty() {
        return Ok(());
    }
    auth.token_requests
        .lock()
        .unwrap()
        .push(header(&lines, "authorization").map(str::to_string));
    let n = {
        let mut cur = auth.current.lock().unwrap();
        *cur = (cur.0 + 1, 0);
        cur.0
    };
    let body = format!("{{\"token\":\"tok-{n}\"}}");
    answer(
        &conn,
        "200 OK",
        "Content-Type: application/json\r\n",
        body.as_bytes(),
    )
}
