//! The limits of the `--serve` endpoint ([`super::http`]), against a real
//! server on loopback: a client that never finishes its request is closed
//! by the header timeout, connections over the limit get 503, an oversized
//! head 431, an unknown path 404, another method 405, and keep-alive works.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{MetricsServer, RenderFn, ServeLimits};

/// A server on a free loopback port with `limits`, rendering a fixed body.
fn serve(limits: ServeLimits) -> SocketAddr {
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .unwrap()
        .with_limits(limits);
    let addr = server.local_addr();
    let render: Arc<RenderFn> = Arc::new(|| Ok("clip_up 1\n".to_string()));
    std::thread::spawn(move || server.run(render));
    addr
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Sends `request` and reads until the server closes: the whole answer.
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect(addr);
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    // A reset after the answer (unread request bytes) still leaves it read.
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Reads from `s` until EOF; how long that took (panics after 10 s).
fn time_to_close(s: &mut TcpStream, t0: Instant) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("connection not closed: {e} (after {:?})", t0.elapsed()),
    }
    (t0.elapsed(), got)
}

fn short_timeout() -> ServeLimits {
    ServeLimits {
        header_timeout: Duration::from_millis(500),
        ..ServeLimits::default()
    }
}

#[test]
fn a_client_that_never_sends_is_closed_by_the_header_timeout() {
    let addr = serve(short_timeout());
    // Connects and sends nothing.
    let t0 = Instant::now();
    let mut idle = connect(addr);
    let (took, got) = time_to_close(&mut idle, t0);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    assert!(
        took >= Duration::from_millis(400),
        "closed too early: {took:?}"
    );
    // Trickles half a request line, then stalls (slowloris).
    let t0 = Instant::now();
    let mut slow = connect(addr);
    slow.write_all(b"GET /metr").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    slow.write_all(b"ics HTTP/1.1\r\nHost:").unwrap();
    let (took, _) = time_to_close(&mut slow, t0);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The server still answers.
    assert!(get(addr, "/healthz").starts_with("HTTP/1.1 200"));
}

#[test]
fn connections_over_the_limit_get_503_until_a_slot_frees() {
    let addr = serve(ServeLimits {
        max_connections: 2,
        header_timeout: Duration::from_secs(30),
        ..ServeLimits::default()
    });
    let held: Vec<_> = (0..2).map(|_| connect(addr)).collect();
    // Let the server accept both before the third arrives.
    std::thread::sleep(Duration::from_millis(300));
    let busy = get(addr, "/metrics");
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.ends_with("too many connections\n"), "{busy}");
    drop(held);
    let t0 = Instant::now();
    loop {
        let r = get(addr, "/metrics");
        if r.starts_with("HTTP/1.1 200") {
            assert!(r.ends_with("clip_up 1\n"), "{r}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "slots never freed: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_oversized_head_gets_431() {
    let addr = serve(ServeLimits::default());
    let big = "a".repeat(16 << 10);
    let r = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // Just under the limit is fine.
    let ok = "a".repeat(7 << 10);
    let r = exchange(
        addr,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Ok: {ok}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

#[test]
fn unknown_paths_get_404_and_other_methods_405() {
    let addr = serve(ServeLimits::default());
    let r = get(addr, "/nope");
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    assert!(r.ends_with("try /metrics or /healthz\n"), "{r}");
    let r = exchange(
        addr,
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    assert!(r.contains("Allow: GET, HEAD"), "{r}");
    // HEAD: the headers of the GET answer, no body.
    let r = exchange(
        addr,
        b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(r.ends_with("\r\n\r\n"), "{r}");
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let addr = serve(short_timeout());
    let mut s = connect(addr);
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    // Both answers, then the idle connection is closed by the timeout.
    let (_, got) = time_to_close(&mut s, Instant::now());
    let got = String::from_utf8_lossy(&got);
    assert_eq!(got.matches("HTTP/1.1 200 OK").count(), 2, "{got}");
    assert!(
        got.contains("ok\n") && got.ends_with("clip_up 1\n"),
        "{got}"
    );
}
