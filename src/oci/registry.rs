//! [`RegistrySource`]: a blocking facade over the async [`Client`], owning
//! its own tokio runtime. `read_at` is one `Range` GET; `open` streams a blob
//! through a bounded channel and resumes with `Range` after a failure.

use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Buf, Bytes};
use hyper::header;
use hyper::{StatusCode, Uri};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

use super::client::{self, Client, Failure};
use super::headers;
use super::manifest::{self, Descriptor, DocumentStore, MANIFEST_ACCEPT};
use super::{ImageRef, OciError, Platform, RegistryOptions, ResolvedImage, MAX_DOCUMENT_BYTES};
use crate::digest::Digest;
use crate::source::{BlobSource, RemoteKind, SourceError};

/// Chunks buffered between the download task and a reader of `open()`.
const STREAM_CHANNEL_DEPTH: usize = 16;

/// Blobs of one repository on a registry, over HTTP(S).
///
/// Cheap to share across threads (`&self` everywhere); requests from
/// different threads run concurrently over a keep-alive connection pool.
/// Must not be used from inside a tokio runtime: it blocks.
pub struct RegistrySource {
    image: ImageRef,
    platform: Platform,
    client: Arc<Client>,
    runtime: Arc<Runtime>,
}

impl fmt::Debug for RegistrySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrySource")
            .field("image", &self.image.to_string())
            .field("platform", &self.platform.to_string())
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

fn in_runtime_error() -> OciError {
    OciError::Setup("blocking registry call made from inside a tokio runtime".into())
}

/// Outcome of a ranged read.
enum Ranged {
    Read(usize),
    OutOfRange(u64),
}

impl RegistrySource {
    /// Builds the client and its two-worker runtime for `image`. Makes no
    /// request yet.
    pub fn connect(image: &ImageRef, opts: &RegistryOptions) -> Result<Self, OciError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clip-oci")
            .enable_all()
            .build()
            .map_err(|e| OciError::Setup(format!("tokio runtime: {e}")))?;
        let client = Client::new(&image.registry, &image.repository, opts)?;
        Ok(RegistrySource {
            image: image.clone(),
            platform: opts.platform.clone().unwrap_or_else(Platform::host),
            client: Arc::new(client),
            runtime: Arc::new(runtime),
        })
    }

    /// The image this source was connected for.
    pub fn image(&self) -> &ImageRef {
        &self.image
    }

    /// The HTTP client (for the other files of `oci`).
    pub(super) fn client(&self) -> &Client {
        &self.client
    }

    /// Runs `f` on the source's runtime; fails inside a runtime.
    pub(super) fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, OciError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(in_runtime_error());
        }
        Ok(self.runtime.block_on(f))
    }

    /// Fetches the manifest (following an index to the selected platform)
    /// and config, verifying the manifest digest (against the pinned digest
    /// or `Docker-Content-Digest`) and the config digest.
    pub fn resolve(&self) -> Result<ResolvedImage, OciError> {
        let reference = self.image.reference();
        let (raw, media_type, header_digest) =
            self.block_on(get_manifest(&self.client, &reference))??;
        let actual = Digest::of(&raw);
        if let Some(pinned) = self.image.digest {
            if actual != pinned {
                return Err(OciError::DigestMismatch {
                    what: format!("manifest {}", self.image),
                    expected: pinned,
                    actual,
                });
            }
        }
        if let Some(h) = header_digest {
            // Only sha256 is understood; other algorithms are not checked.
            if let Ok(expected) = h.parse::<Digest>() {
                if expected != actual {
                    return Err(OciError::DigestMismatch {
                        what: format!("manifest {} (Docker-Content-Digest)", self.image),
                        expected,
                        actual,
                    });
                }
            }
        }
        manifest::resolve_document(self, raw, media_type, &self.platform)
    }

    fn blob_url(&self, digest: &Digest) -> Result<Uri, OciError> {
        self.client.v2_url(&format!("blobs/{digest}"))
    }
}

impl DocumentStore for RegistrySource {
    fn fetch_manifest(&self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>), OciError> {
        let digest = manifest::desc_digest(d)?;
        let (raw, t, _) = self.block_on(get_manifest(&self.client, &digest.to_string()))??;
        Ok((raw, t))
    }

    fn fetch_config(&self, d: &Descriptor) -> Result<Vec<u8>, OciError> {
        let digest = manifest::desc_digest(d)?;
        self.fetch_blob(&digest, &format!("config {digest}"), MAX_DOCUMENT_BYTES)
    }
}

impl RegistrySource {
    /// GETs a whole blob of at most `limit` bytes (`what` names it in
    /// errors). The caller verifies the digest.
    pub(super) fn fetch_blob(
        &self,
        digest: &Digest,
        what: &str,
        limit: u64,
    ) -> Result<Vec<u8>, OciError> {
        let url = self.blob_url(digest)?;
        let client = &self.client;
        self.block_on(client.retry(async || {
            let resp = client.exchange(&url, None, None).await?;
            match resp.status() {
                StatusCode::OK => client.read_capped(resp, &url, what, limit).await,
                StatusCode::NOT_FOUND => Err(Failure::Fatal(OciError::BlobNotFound {
                    digest: *digest,
                    repository: format!("{}/{}", client.registry(), client.repository()),
                })),
                _ => Err(Failure::Fatal(client.status_error(resp, &url).await)),
            }
        }))?
    }
}

/// GETs a manifest by tag or digest: bytes, Content-Type, Docker-Content-Digest.
pub(super) async fn get_manifest(
    client: &Client,
    reference: &str,
) -> Result<(Vec<u8>, Option<String>, Option<String>), OciError> {
    let url = client.v2_url(&format!("manifests/{reference}"))?;
    client
        .retry(async || {
            let resp = client.exchange(&url, Some(MANIFEST_ACCEPT), None).await?;
            match resp.status() {
                StatusCode::OK => {
                    let h = resp.headers();
                    let get = |n: header::HeaderName| {
                        h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string)
                    };
                    let ct = get(header::CONTENT_TYPE);
                    let dcd = get(header::HeaderName::from_static("docker-content-digest"));
                    let raw = client
                        .read_capped(resp, &url, "manifest", MAX_DOCUMENT_BYTES)
                        .await?;
                    Ok((raw, ct, dcd))
                }
                StatusCode::NOT_FOUND => {
                    let e = client.status_error(resp, &url).await;
                    let detail = match &e {
                        OciError::Http { detail, .. } if !detail.is_empty() => {
                            format!(" ({detail})")
                        }
                        _ => String::new(),
                    };
                    Err(Failure::Fatal(OciError::NotFound {
                        what: format!(
                            "manifest {}/{}:{reference}{detail}",
                            client.registry(),
                            client.repository()
                        ),
                    }))
                }
                _ => Err(Failure::Fatal(client.status_error(resp, &url).await)),
            }
        })
        .await
}

/// One ranged GET into `buf`.
async fn read_range(
    client: &Client,
    url: &Uri,
    digest: &Digest,
    offset: u64,
    buf: &mut [u8],
) -> Result<Ranged, Failure> {
    let len = buf.len() as u64;
    let end = offset.saturating_add(len - 1);
    let range = format!("bytes={offset}-{end}");
    let resp = client.exchange(url, None, Some(&range)).await?;
    let protocol = |reason: String| OciError::Protocol {
        url: client::show(url),
        reason,
    };
    let status = resp.status();
    let content_range = resp
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(headers::parse_content_range);
    match status {
        StatusCode::PARTIAL_CONTENT => {
            let cr = content_range.flatten().ok_or_else(|| {
                Failure::Fatal(protocol("206 without a valid Content-Range".into()))
            })?;
            let (first, last) = (cr.first.unwrap_or(u64::MAX), cr.last.unwrap_or(0));
            if first != offset || last > end {
                return Err(Failure::Fatal(protocol(format!(
                    "asked for bytes {offset}-{end}, got Content-Range {first}-{last}"
                ))));
            }
            let want = (last - first + 1) as usize;
            let mut got = 0usize;
            let mut body = client::Body::of(resp);
            while let Some(chunk) = client.next_chunk(&mut body, url).await? {
                if got + chunk.len() > want {
                    return Err(Failure::Fatal(protocol(format!(
                        "206 body longer than its Content-Range ({want} bytes)"
                    ))));
                }
                buf[got..got + chunk.len()].copy_from_slice(&chunk);
                got += chunk.len();
            }
            if got < want {
                return Err(Failure::Retry(protocol(format!(
                    "short body: {got} of {want} bytes"
                ))));
            }
            Ok(Ranged::Read(got))
        }
        StatusCode::OK => {
            // The server ignored Range: skip to the offset in the full body.
            tracing::debug!(url = %client::show(url), "server ignored Range; skipping");
            let total = headers::content_length(resp.headers());
            let mut pos = 0u64;
            let mut got = 0usize;
            let mut body = client::Body::of(resp);
            while got < buf.len() {
                let Some(chunk) = client.next_chunk(&mut body, url).await? else {
                    break;
                };
                let start = offset.saturating_sub(pos).min(chunk.len() as u64) as usize;
                pos += chunk.len() as u64;
                let data = &chunk[start..];
                let n = data.len().min(buf.len() - got);
                buf[got..got + n].copy_from_slice(&data[..n]);
                got += n;
            }
            if got == 0 && pos < offset {
                return Ok(Ranged::OutOfRange(total.unwrap_or(pos)));
            }
            if got < buf.len() && total.is_some_and(|t| pos < t) {
                return Err(Failure::Retry(protocol("short body".into())));
            }
            Ok(Ranged::Read(got))
        }
        StatusCode::RANGE_NOT_SATISFIABLE => {
            let total = content_range.flatten().and_then(|c| c.total);
            match total {
                Some(t) if t == offset => Ok(Ranged::Read(0)),
                Some(t) => Ok(Ranged::OutOfRange(t)),
                None => Ok(Ranged::OutOfRange(0)),
            }
        }
        StatusCode::NOT_FOUND => Err(Failure::Fatal(OciError::BlobNotFound {
            digest: *digest,
            repository: format!("{}/{}", client.registry(), client.repository()),
        })),
        _ => Err(Failure::Fatal(client.status_error(resp, url).await)),
    }
}

impl BlobSource for RegistrySource {
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let url = self.blob_url(digest)?;
        let client = &self.client;
        let out = self.block_on(
            client.retry(async || read_range(client, &url, digest, offset, buf).await),
        )??;
        match out {
            Ranged::Read(n) => Ok(n),
            Ranged::OutOfRange(len) => Err(SourceError::OutOfRange {
                digest: *digest,
                offset,
                len,
            }),
        }
    }

    /// `connections` concurrent one-byte GETs of `digest`: HTTP/1.1 opens a
    /// connection per request in flight, and the pool keeps them for the
    /// reads that follow.
    fn warm_up(&self, digest: &Digest, connections: usize) {
        let Ok(url) = self.blob_url(digest) else {
            return;
        };
        let client = self.client.clone();
        let digest = *digest;
        // The tasks are spawned inside the runtime: a JoinSet needs its context.
        let _ = self.block_on(async move {
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..connections {
                let (client, url) = (client.clone(), url.clone());
                set.spawn(async move {
                    let mut byte = [0u8; 1];
                    read_range(&client, &url, &digest, 0, &mut byte).await
                });
            }
            set.join_all().await
        });
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(in_runtime_error().into());
        }
        let url = self.blob_url(digest)?;
        let (tx, mut rx) = mpsc::channel(STREAM_CHANNEL_DEPTH);
        self.runtime
            .spawn(stream_task(self.client.clone(), url, *digest, tx));
        match rx.blocking_recv() {
            Some(Msg::Started) => Ok(Box::new(BlobStream {
                rx,
                cur: Bytes::new(),
                done: false,
                failed: None,
                _runtime: self.runtime.clone(),
            })),
            Some(Msg::Failed(e)) => Err(e.into()),
            _ => Err(SourceError::remote(
                RemoteKind::Transient,
                format!("download of blob {digest} ended before it started"),
            )),
        }
    }
}

/// Messages from the download task to a [`BlobStream`].
enum Msg {
    /// The first response arrived; data follows.
    Started,
    Data(Bytes),
    Done,
    Failed(OciError),
}

async fn stream_task(client: Arc<Client>, url: Uri, digest: Digest, tx: mpsc::Sender<Msg>) {
    let mut received = 0u64;
    let mut started = false;
    let mut attempt = 0u32;
    loop {
        let before = received;
        match stream_once(&client, &url, &digest, &mut received, &mut started, &tx).await {
            Ok(()) => {
                let _ = tx.send(Msg::Done).await;
                return;
            }
            Err(f) => {
                if tx.is_closed() {
                    return;
                }
                if received > before {
                    attempt = 0;
                }
                let (e, wait) = f.pause(attempt);
                let Some(wait) = wait.filter(|_| attempt < client.retries()) else {
                    let _ = tx.send(Msg::Failed(e)).await;
                    return;
                };
                tracing::debug!(error = %e, received, "blob stream failed; resuming");
                client.observe(crate::oci::RequestEvent::Retry);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

async fn stream_once(
    client: &Client,
    url: &Uri,
    digest: &Digest,
    received: &mut u64,
    started: &mut bool,
    tx: &mpsc::Sender<Msg>,
) -> Result<(), Failure> {
    let closed = || Failure::Fatal(OciError::Setup("reader dropped".into()));
    let range = (*received > 0).then(|| format!("bytes={received}-"));
    let resp = client.exchange(url, None, range.as_deref()).await?;
    let mut skip = match resp.status() {
        StatusCode::OK => *received,
        StatusCode::PARTIAL_CONTENT if *received > 0 => {
            let first = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(headers::parse_content_range)
                .and_then(|c| c.first);
            if first != Some(*received) {
                return Err(Failure::Fatal(OciError::Protocol {
                    url: client::show(url),
                    reason: format!("resume at {received} got Content-Range starting at {first:?}"),
                }));
            }
            0
        }
        StatusCode::RANGE_NOT_SATISFIABLE if *received > 0 => return Ok(()),
        StatusCode::NOT_FOUND => {
            return Err(Failure::Fatal(OciError::BlobNotFound {
                digest: *digest,
                repository: format!("{}/{}", client.registry(), client.repository()),
            }))
        }
        _ => return Err(Failure::Fatal(client.status_error(resp, url).await)),
    };
    if !*started {
        tx.send(Msg::Started).await.map_err(|_| closed())?;
        *started = true;
    }
    let mut body = client::Body::of(resp);
    while let Some(mut chunk) = client.next_chunk(&mut body, url).await? {
        if skip > 0 {
            let s = skip.min(chunk.len() as u64) as usize;
            chunk.advance(s);
            skip -= s as u64;
            if chunk.is_empty() {
                continue;
            }
        }
        *received += chunk.len() as u64;
        tx.send(Msg::Data(chunk)).await.map_err(|_| closed())?;
    }
    Ok(())
}

/// The `Read` half of `RegistrySource::open`.
struct BlobStream {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    done: bool,
    /// Set once the download failed; every later read fails too.
    failed: Option<String>,
    /// Keeps the runtime (and so the download task) alive.
    _runtime: Arc<Runtime>,
}

impl fmt::Debug for BlobStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobStream")
            .field("buffered", &self.cur.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Read for BlobStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.cur.is_empty() {
            if let Some(msg) = &self.failed {
                return Err(io::Error::other(msg.clone()));
            }
            if self.done {
                return Ok(0);
            }
            if tokio::runtime::Handle::try_current().is_ok() {
                return Err(io::Error::other(in_runtime_error()));
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::Done) => self.done = true,
                Some(Msg::Started) => {}
                Some(Msg::Failed(e)) => {
                    let msg = e.to_string();
                    self.failed = Some(msg.clone());
                    return Err(io::Error::other(msg));
                }
                None => {
                    let msg = "blob download stopped unexpectedly".to_string();
                    self.failed = Some(msg.clone());
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, msg));
                }
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}
