//! The HTTP layer: one keep-alive hyper client per registry, request
//! exchange with auth and redirects, stall-bounded body reads, and the retry
//! loop. Everything here is async and runs on the source's runtime.

use std::error::Error as StdError;
use std::fmt;
use std::net::IpAddr;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;

use super::auth::{self, Credentials};
pub(crate) use super::call::Call;
use super::headers::{content_length, retry_after};
use super::{OciError, RegistryOptions};

const USER_AGENT: &str = concat!("clip/", env!("CARGO_PKG_VERSION"));
const MAX_REDIRECTS: usize = 5;
const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// The longest `Retry-After` honoured; a longer one gives up at once
/// (nobody waits minutes for a file read).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The slowest average a body may keep up once the stall timeout has
/// passed: below it a registry that trickles bytes (never stalling) would
/// hold a fetch, and every reader waiting on it, for hours.
pub(crate) const MIN_RATE: u64 = 4 << 10;

/// A response body being read, with what [`Client::next_chunk`] needs to
/// bound it: when it started and how much came.
pub(crate) struct Body {
    inner: Incoming,
    start: Instant,
    bytes: u64,
}

impl Body {
    /// The body of `resp`, starting now.
    pub fn of(resp: Response<Incoming>) -> Body {
        Body {
            inner: resp.into_body(),
            start: Instant::now(),
            bytes: 0,
        }
    }
}

/// A failed attempt: worth retrying or not.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Transient: connect error, reset, stall, 5xx, short body.
    Retry(OciError),
    /// Transient, and the server said when to come back (`Retry-After`
    /// on a 429 or 503).
    RetryAfter(OciError, Duration),
    /// Permanent: 404, auth refused, malformed data, …
    Fatal(OciError),
}

impl Failure {
    /// The error, and how long to wait before attempt `attempt + 1`:
    /// backoff, or the server's `Retry-After` up to [`MAX_RETRY_AFTER`];
    /// `None` when no retry makes sense.
    pub fn pause(self, attempt: u32) -> (OciError, Option<Duration>) {
        match self {
            Failure::Retry(e) => (e, Some(backoff(attempt))),
            Failure::RetryAfter(e, after) if after <= MAX_RETRY_AFTER => {
                (e, Some(after.max(backoff(attempt))))
            }
            Failure::RetryAfter(e, _) | Failure::Fatal(e) => (e, None),
        }
    }
}

impl From<OciError> for Failure {
    fn from(e: OciError) -> Self {
        Failure::Fatal(e)
    }
}

type Http = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The HTTP client for one repository on one registry.
pub(crate) struct Client {
    http: Http,
    registry: String,
    scheme: &'static str,
    repository: String,
    timeout: Duration,
    retries: u32,
    insecure: Vec<String>,
    observer: Option<super::RequestObserver>,
    /// The `Authorization` value for registry requests (Bearer or Basic).
    auth: RwLock<Option<HeaderValue>>,
    /// Stored credentials, looked up on the first 401.
    creds: tokio::sync::OnceCell<Option<Credentials>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("registry", &self.registry)
            .field("scheme", &self.scheme)
            .field("repository", &self.repository)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish_non_exhaustive()
    }
}

/// `host[:port]` → host without brackets or port.
pub(crate) fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// Whether `authority` is a loopback host.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let h = host_of(authority);
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A URL for messages: no query string (presigned URLs carry secrets there).
pub(crate) fn show(uri: &Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("?"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    )
}

/// An error and its sources on one line.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(2))
}

/// Why the TLS handshake refused the server (its certificate), if that is
/// what `e` is. hyper-rustls wraps rustls' error in an `io::Error` twice,
/// and an `io::Error`'s `source` skips what it wraps: follow `get_ref`.
fn tls_refusal(e: &(dyn StdError + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        match err.downcast_ref::<rustls::Error>() {
            Some(
                t @ rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            ) => {
                return Some(format!(
                    "{t} (a private CA: point SSL_CERT_FILE at a bundle holding it)"
                ))
            }
            Some(t @ (rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_))) => {
                return Some(t.to_string())
            }
            _ => {}
        }
        cur = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
            None => err.source(),
        };
    }
    None
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

impl Client {
    /// A client for `registry`/`repository`. Needs no runtime context.
    pub fn new(registry: &str, repository: &str, opts: &RegistryOptions) -> Result<Self, OciError> {
        let allowed = |a: &str| {
            is_loopback(a)
                || opts
                    .insecure_registries
                    .iter()
                    .any(|r| r == a || r == host_of(a))
        };
        let scheme = if allowed(registry) { "http" } else { "https" };
        let provider = rustls::crypto::ring::default_provider();
        let builder = match hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no system root certificates; HTTPS will fail");
                let cfg = rustls::ClientConfig::builder_with_provider(
                    rustls::crypto::ring::default_provider().into(),
                )
                .with_safe_default_protocol_versions()
                .map_err(|e| OciError::Setup(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(cfg)
            }
        };
        let connector = builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(32)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        Ok(Client {
            http,
            registry: registry.to_string(),
            scheme,
            repository: repository.to_string(),
            timeout: opts.timeout,
            retries: opts.retries,
            insecure: opts.insecure_registries.clone(),
            observer: opts.observer.clone(),
            auth: RwLock::new(None),
            creds: tokio::sync::OnceCell::new(),
        })
    }

    /// The registry `host[:port]`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// `…/v2/<repository>/<tail>`.
    pub fn v2_url(&self, tail: &str) -> Result<Uri, OciError> {
        let s = format!(
            "{}://{}/v2/{}/{}",
            self.scheme, self.registry, self.repository, tail
        );
        s.parse().map_err(|_| OciError::BadReference {
            input: format!("{}/{}", self.registry, self.repository),
            reason: "does not form a valid URL".into(),
        })
    }

    fn http_allowed(&self, authority: &str) -> bool {
        is_loopback(authority)
            || self
                .insecure
                .iter()
                .any(|r| r == authority || r == host_of(authority))
    }

    fn is_registry(&self, uri: &Uri) -> bool {
        uri.scheme_str() == Some(self.scheme)
            && uri
                .authority()
                .is_some_and(|a| a.as_str().eq_ignore_ascii_case(&self.registry))
    }

    fn no_creds_hint(&self) -> String {
        format!(
            "no credentials for {}; run `docker login {}` (or set REGISTRY_AUTH_FILE)",
            self.registry, self.registry
        )
    }

    async fn credentials(&self) -> Result<Option<Credentials>, OciError> {
        let registry = self.registry.clone();
        self.creds
            .get_or_try_init(|| async move {
                tokio::task::spawn_blocking(move || auth::lookup(&registry))
                    .await
                    .map_err(|e| OciError::Setup(format!("credential lookup: {e}")))?
            })
            .await
            .cloned()
    }

    fn set_auth(&self, value: String) -> Result<(), OciError> {
        let mut v = HeaderValue::from_str(&value).map_err(|_| OciError::Unauthorized {
            registry: self.registry.clone(),
            hint: "token or credentials contain characters not allowed in a header".into(),
        })?;
        v.set_sensitive(true);
        if let Ok(mut g) = self.auth.write() {
            *g = Some(v);
        }
        Ok(())
    }

    fn current_auth(&self) -> Option<HeaderValue> {
        self.auth.read().ok().and_then(|g| g.clone())
    }

    /// Sends one GET, following redirects and answering one auth challenge.
    /// 5xx/429 and transport errors are [`Failure::Retry`]; any other status
    /// is returned for the caller to interpret.
    pub async fn exchange(
        &self,
        url: &Uri,
        accept: Option<&str>,
        range: Option<&str>,
    ) -> Result<Response<Incoming>, Failure> {
        self.call(url, &Call::get(accept, range)).await
    }

    /// Sends `call` like [`Client::exchange`] sends a GET. A 303 redirect
    /// turns it into a GET without a body, as browsers do.
    pub async fn call(&self, url: &Uri, call: &Call<'_>) -> Result<Response<Incoming>, Failure> {
        let mut url = url.clone();
        let mut call = call.clone();
        let mut authed = false;
        let mut hops = 0;
        loop {
            let same = self.is_registry(&url);
            let sent = if same { self.current_auth() } else { None };
            let mut b = Request::builder()
                .method(call.method.clone())
                .uri(url.clone())
                .header(header::USER_AGENT, USER_AGENT);
            if let Some(a) = call.accept {
                b = b.header(header::ACCEPT, a);
            }
            if let Some(r) = call.range {
                b = b.header(header::RANGE, r);
            }
            for (k, v) in &call.headers {
                b = b.header(k, v.as_str());
            }
            if let Some(v) = &sent {
                b = b.header(header::AUTHORIZATION, v.clone());
            }
            let req = b.body(Full::new(call.body.clone())).map_err(|e| {
                Failure::Fatal(OciError::Protocol {
                    url: show(&url),
                    reason: format!("cannot build request: {e}"),
                })
            })?;
            let resp = self.send(req, &url).await?;
            let status = resp.status();
            match status {
                StatusCode::UNAUTHORIZED if same => {
                    let headers = resp.headers().clone();
                    self.drain(resp).await;
                    if authed {
                        let access = if call.writes() { "push" } else { "pull" };
                        let hint = match self.creds.get() {
                            Some(Some(_)) => format!(
                                "credentials for {} were rejected or lack {access} access to {}",
                                self.registry, self.repository
                            ),
                            _ => self.no_creds_hint(),
                        };
                        return Err(Failure::Fatal(OciError::Unauthorized {
                            registry: self.registry.clone(),
                            hint,
                        }));
                    }
                    self.authenticate(&headers, sent).await?;
                    authed = true;
                }
                StatusCode::MOVED_PERMANENTLY
                | StatusCode::FOUND
                | StatusCode::SEE_OTHER
                | StatusCode::TEMPORARY_REDIRECT
                | StatusCode::PERMANENT_REDIRECT => {
                    hops += 1;
                    let next = self.location(&url, resp.headers())?;
                    self.drain(resp).await;
                    if hops > MAX_REDIRECTS {
                        return Err(Failure::Fatal(OciError::Protocol {
                            url: show(&url),
                            reason: format!("more than {MAX_REDIRECTS} redirects"),
                        }));
                    }
                    if status == StatusCode::SEE_OTHER && call.method != Method::HEAD {
                        call = Call::get(call.accept, call.range);
                    }
                    tracing::debug!(from = %show(&url), to = %show(&next), "following redirect");
                    url = next;
                }
                s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                    let after = retry_after(resp.headers());
                    let e = self.status_error(resp, &url).await;
                    return Err(match after {
                        Some(wait) => Failure::RetryAfter(e, wait),
                        None => Failure::Retry(e),
                    });
                }
                _ => return Ok(resp),
            }
        }
    }

    async fn send(
        &self,
        req: Request<Full<Bytes>>,
        url: &Uri,
    ) -> Result<Response<Incoming>, Failure> {
        let host = url.authority().map(|a| a.to_string()).unwrap_or_default();
        let sent = tokio::time::timeout(self.timeout, self.http.request(req)).await;
        self.observe(match &sent {
            Ok(Ok(resp)) => super::RequestEvent::Status(resp.status().as_u16()),
            _ => super::RequestEvent::NoResponse,
        });
        match sent {
            Err(_) => Err(Failure::Retry(OciError::Timeout {
                url: show(url),
                after: self.timeout,
            })),
            Ok(Err(e)) => {
                let msg = chain(&e);
                if let Some(reason) = tls_refusal(&e) {
                    // A certificate does not get better by asking again.
                    return Err(Failure::Fatal(OciError::Tls { host, reason }));
                }
                let err = if e.is_connect() && msg.contains("dns error") {
                    OciError::UnknownRegistry { host, err: msg }
                } else if e.is_connect() {
                    OciError::Connect { host, err: msg }
                } else {
                    OciError::Protocol {
                        url: show(url),
                        reason: msg,
                    }
                };
                Err(Failure::Retry(err))
            }
            Ok(Ok(r)) => Ok(r),
        }
    }

    /// The URL a response's `Location` names (a redirect, an upload
    /// session), absolute or relative to `from`; plain HTTP only where
    /// allowed.
    pub fn location(&self, from: &Uri, headers: &HeaderMap) -> Result<Uri, Failure> {
        let loc = headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Failure::Fatal(OciError::Protocol {
                    url: show(from),
                    reason: "response without a usable Location".into(),
                })
            })?;
        self.resolve(from, loc)
    }

    /// `loc` (absolute, or an absolute path) relative to `from`; plain
    /// HTTP only where allowed.
    pub fn resolve(&self, from: &Uri, loc: &str) -> Result<Uri, Failure> {
        let bad = |reason: &str| {
            Failure::Fatal(OciError::Protocol {
                url: show(from),
                reason: reason.to_string(),
            })
        };
        let target = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else if loc.starts_with('/') && !loc.starts_with("//") {
            format!(
                "{}://{}{}",
                from.scheme_str().unwrap_or("https"),
                from.authority().map(|a| a.as_str()).unwrap_or(""),
                loc
            )
        } else {
            return Err(bad("a relative Location is not supported"));
        };
        let uri: Uri = target.parse().map_err(|_| bad("Location is not a URL"))?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        if uri.scheme_str() == Some("http") && !self.http_allowed(authority) {
            return Err(Failure::Fatal(OciError::InsecureNotAllowed {
                host: authority.to_string(),
            }));
        }
        Ok(uri)
    }

    async fn authenticate(
        &self,
        headers: &HeaderMap,
        sent: Option<HeaderValue>,
    ) -> Result<(), Failure> {
        // Another request may have refreshed the token meanwhile.
        let cur = self.current_auth();
        if cur.is_some() && cur != sent {
            return Ok(());
        }
        let challenges: Vec<auth::Challenge> = headers
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(auth::parse_challenges)
            .collect();
        let creds = self.credentials().await?;
        let unauthorized = |hint: String| {
            Failure::Fatal(OciError::Unauthorized {
                registry: self.registry.clone(),
                hint,
            })
        };
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c
                .params
                .get("realm")
                .ok_or_else(|| unauthorized("Bearer challenge without a realm".into()))?;
            let scope = c
                .params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
            let token = self
                .fetch_token(
                    realm,
                    c.params.get("service").map(String::as_str),
                    &scope,
                    creds.as_ref(),
                )
                .await?;
            self.set_auth(format!("Bearer {token}"))?;
            Ok(())
        } else if challenges.iter().any(|c| c.scheme == "basic") {
            match creds {
                Some(c) => Ok(self.set_auth(c.basic_header())?),
                None => Err(unauthorized(self.no_creds_hint())),
            }
        } else {
            Err(unauthorized(
                "the registry sent no Bearer or Basic WWW-Authenticate challenge".into(),
            ))
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: Option<&Credentials>,
    ) -> Result<String, Failure> {
        let unauthorized = |hint: String| {
            Failure::Fatal(OciError::Unauthorized {
                registry: self.registry.clone(),
                hint,
            })
        };
        let mut s = realm.to_string();
        s.push(if s.contains('?') { '&' } else { '?' });
        if let Some(svc) = service {
            s.push_str(&format!("service={}&", auth::query_escape(svc)));
        }
        s.push_str(&format!("scope={}", auth::query_escape(scope)));
        let uri: Uri = s
            .parse()
            .map_err(|_| unauthorized("the token realm is not a URL".into()))?;
        let authority = uri
            .authority()
            .map(|a| a.as_str())
            .unwrap_or("")
            .to_string();
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.http_allowed(&authority) => {}
            _ => {
                return Err(Failure::Fatal(OciError::InsecureNotAllowed {
                    host: authority,
                }))
            }
        }
        let mut b = Request::get(uri.clone()).header(header::USER_AGENT, USER_AGENT);
        let creds = creds.filter(|_| {
            let ok = auth::realm_gets_credentials(&self.registry, &authority);
            if !ok {
                tracing::warn!(
                    registry = %self.registry,
                    realm = %authority,
                    "the token realm is on another host; asking it for a token without the stored credentials"
                );
            }
            ok
        });
        if let Some(c) = creds {
            let mut v = HeaderValue::from_str(&c.basic_header())
                .map_err(|_| unauthorized("credentials contain invalid characters".into()))?;
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        let req = b.body(Full::new(Bytes::new())).map_err(|e| {
            Failure::Fatal(OciError::Protocol {
                url: show(&uri),
                reason: e.to_string(),
            })
        })?;
        let resp = self.send(req, &uri).await?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            self.drain(resp).await;
            let hint = match creds {
                Some(_) => format!(
                    "the token service rejected the credentials for {}",
                    self.registry
                ),
                None => self.no_creds_hint(),
            };
            return Err(unauthorized(hint));
        }
        if status.is_server_error() {
            return Err(Failure::Retry(self.status_error(resp, &uri).await));
        }
        if status != StatusCode::OK {
            return Err(Failure::Fatal(self.status_error(resp, &uri).await));
        }
        let body = self
            .read_capped(resp, &uri, "token response", MAX_TOKEN_BYTES)
            .await?;
        let reply: TokenReply = serde_json::from_slice(&body).map_err(|_| {
            unauthorized("the token service answered something that is not token JSON".into())
        })?;
        reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| unauthorized("the token service answered without a token".into()))
    }

    /// The next non-empty body chunk, or `None` at the end. A stall longer
    /// than the timeout, or a body still slower than [`MIN_RATE`] on
    /// average once the timeout has passed (a trickle that never stalls),
    /// is a retryable error.
    pub async fn next_chunk(&self, body: &mut Body, url: &Uri) -> Result<Option<Bytes>, Failure> {
        loop {
            match tokio::time::timeout(self.timeout, body.inner.frame()).await {
                Err(_) => {
                    return Err(Failure::Retry(OciError::Timeout {
                        url: show(url),
                        after: self.timeout,
                    }))
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(Failure::Retry(OciError::Protocol {
                        url: show(url),
                        reason: format!("body: {}", chain(&e)),
                    }))
                }
                Ok(Some(Ok(frame))) => {
                    if let Ok(d) = frame.into_data() {
                        if !d.is_empty() {
                            body.bytes += d.len() as u64;
                            let elapsed = body.start.elapsed();
                            if elapsed > self.timeout
                                && (body.bytes as f64) < MIN_RATE as f64 * elapsed.as_secs_f64()
                            {
                                return Err(Failure::Retry(OciError::TooSlow {
                                    url: show(url),
                                    bytes: body.bytes,
                                    elapsed,
                                }));
                            }
                            return Ok(Some(d));
                        }
                    }
                }
            }
        }
    }

    /// Reads a whole body of at most `limit` bytes.
    pub async fn read_capped(
        &self,
        resp: Response<Incoming>,
        url: &Uri,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, Failure> {
        let too_large = || {
            Failure::Fatal(OciError::TooLarge {
                what: format!("{what} from {}", show(url)),
                limit,
            })
        };
        let declared = content_length(resp.headers());
        if declared.is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut out = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
        let mut body = Body::of(resp);
        while let Some(chunk) = self.next_chunk(&mut body, url).await? {
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// An [`OciError::Http`] for an unexpected response, with the start of
    /// its body as detail.
    pub async fn status_error(&self, resp: Response<Incoming>, url: &Uri) -> OciError {
        let status = resp.status().as_u16();
        let mut detail = String::new();
        let mut body = resp.into_body();
        let read = async {
            let mut buf = Vec::new();
            while buf.len() < 4096 {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            buf.extend_from_slice(&d);
                        }
                    }
                    _ => break,
                }
            }
            buf
        };
        if let Ok(buf) = tokio::time::timeout(self.timeout.min(Duration::from_secs(2)), read).await
        {
            detail = String::from_utf8_lossy(&buf)
                .chars()
                .filter(|c| !c.is_control())
                .take(300)
                .collect();
        }
        OciError::Http {
            status,
            url: show(url),
            detail,
        }
    }

    /// Reads and drops a small body so the connection can be reused.
    pub async fn drain(&self, resp: Response<Incoming>) {
        if content_length(resp.headers()).is_some_and(|n| n > 65536) {
            return;
        }
        let mut body = resp.into_body();
        let _ = tokio::time::timeout(Duration::from_secs(1).min(self.timeout), async {
            while let Some(Ok(_)) = body.frame().await {}
        })
        .await;
    }

    /// Runs `op` until it succeeds, fails fatally, or retries run out
    /// (`retries` extra attempts, exponential backoff or the server's
    /// `Retry-After` up to [`MAX_RETRY_AFTER`], overall deadline of
    /// `timeout × (retries + 1)`; a wait that would pass it gives up now).
    pub async fn retry<T>(
        &self,
        mut op: impl AsyncFnMut() -> Result<T, Failure>,
    ) -> Result<T, OciError> {
        let start = Instant::now();
        let budget = self.timeout.saturating_mul(self.retries.saturating_add(1));
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(f) => {
                    let (e, wait) = f.pause(attempt);
                    let Some(wait) = wait else { return Err(e) };
                    if attempt >= self.retries || start.elapsed().saturating_add(wait) > budget {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, attempt, "retrying");
                    self.observe(super::RequestEvent::Retry);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    /// Retry count.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Reports `event` to the observer, if any.
    pub fn observe(&self, event: super::RequestEvent) {
        if let Some(o) = &self.observer {
            (o.0)(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_backoff() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("127.3.4.5"));
        assert!(is_loopback("localhost:80"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("example.com:5000"));
        assert!(!is_loopback("10.0.0.1"));
        assert!(backoff(40) <= Duration::from_secs(2));
    }
}
