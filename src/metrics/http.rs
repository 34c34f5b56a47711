//! The HTTP endpoint of `clipctl metrics --serve`, on hyper (HTTP/1.1 with
//! keep-alive): `GET`/`HEAD` of `/metrics` (the caller's render function,
//! per scrape, on a blocking thread), `/healthz` (`ok`), 404 elsewhere, 405
//! for other methods. Bounded so that a hostile or broken client cannot
//! tie it up ([`ServeLimits`]): at most `max_connections` at once (one more
//! is answered 503 and closed), request heads over `max_header_bytes`
//! answered 431, a head not complete within `header_timeout` (a client that
//! connects and sends nothing, or trickles; also an idle keep-alive
//! connection) closes the connection, and no connection lives longer than
//! `max_connection_age`. No TLS: it is meant for loopback scrapes.

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{MetricsError, PROMETHEUS_CONTENT_TYPE};

/// The renderer called once per `/metrics` scrape: the body, or an error
/// message (served as 500).
pub type RenderFn = dyn Fn() -> Result<String, String> + Send + Sync;

/// How much one client may hold of the endpoint.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; more are answered 503 (default 16).
    pub max_connections: usize,
    /// Bytes of request line and headers; more are answered 431 (default 8 KiB).
    pub max_header_bytes: usize,
    /// Time to receive a whole request head, counted from the connection's
    /// start or the previous response (default 10 s).
    pub header_timeout: Duration,
    /// A connection is closed after this long, gracefully between
    /// requests (default 60 s): a client that never reads its response
    /// cannot hold a connection slot forever.
    pub max_connection_age: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            max_connections: 16,
            max_header_bytes: 8 << 10,
            header_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(60),
        }
    }
}

/// The answer to a connection over the limit (the request is not read).
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 21\r\nRetry-After: 1\r\nConnection: close\r\n\r\ntoo many connections\n";

/// A bound, not yet serving, HTTP endpoint.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    limits: ServeLimits,
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) with the default limits; a
    /// port in use is an error naming the address.
    pub fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(MetricsServer {
            listener,
            limits: ServeLimits::default(),
        })
    }

    /// Serves with `limits` instead of the defaults.
    pub fn with_limits(mut self, limits: ServeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until the process ends (returns only if the runtime cannot
    /// start). `render` produces the `/metrics` body.
    pub fn run(self, render: Arc<RenderFn>) -> Result<Infallible, MetricsError> {
        let limits = self.limits;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // Renders run on blocking threads, one per connection at most.
            .max_blocking_threads(limits.max_connections.max(1))
            .thread_name("clip-metrics-http")
            .build()
            .map_err(MetricsError::Serve)?;
        self.listener
            .set_nonblocking(true)
            .map_err(MetricsError::Serve)?;
        let _guard = runtime.enter();
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(MetricsError::Serve)?;
        runtime.block_on(accept_loop(listener, render, limits))
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    render: Arc<RenderFn>,
    limits: ServeLimits,
) -> Result<Infallible, MetricsError> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                tokio::spawn(serve_connection(conn, render.clone(), limits.clone(), slot));
            }
            Err(_) => {
                tokio::spawn(refuse(conn));
            }
        }
    }
}

/// Serves one connection while it holds `_slot`.
async fn serve_connection(
    conn: TcpStream,
    render: Arc<RenderFn>,
    limits: ServeLimits,
    _slot: OwnedSemaphorePermit,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(64)
        .title_case_headers(true);
    let service = service_fn(move |req| answer(req, render.clone()));
    let conn = http.serve_connection(TokioIo::new(conn), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "metrics endpoint: connection ended");
            }
        }
        _ = tokio::time::sleep(limits.max_connection_age) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.header_timeout, conn).await;
        }
    }
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut conn: TcpStream) {
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        conn.write_all(BUSY).await?;
        conn.shutdown().await?;
        // Read what the client sent so that closing does not reset the
        // connection before it reads the answer.
        let mut sink = [0u8; 4096];
        while conn.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

async fn answer(
    req: Request<Incoming>,
    render: Arc<RenderFn>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    Ok(match req.uri().path() {
        "/metrics" => match tokio::task::spawn_blocking(move || render()).await {
            Ok(Ok(body)) => {
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static(PROMETHEUS_CONTENT_TYPE),
                );
                r
            }
            Ok(Err(msg)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n")),
            Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("render: {e}\n")),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics or /healthz\n".into(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}
