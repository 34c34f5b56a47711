//! S3 and S3-compatible object stores, through the `object_store` crate
//! (SigV4, range GETs, multipart uploads, retries, web identity): objects
//! named `s3://BUCKET/KEY`, read by range ([`S3Object`], an
//! [`ObjectRead`]) and written front-last by multipart upload
//! ([`S3Writer`], an [`ObjectWrite`]).
//!
//! A SOURCE module like `oci`: depends on `object` and `source` only, owns
//! its tokio runtime and exposes a blocking API. `config` resolves the
//! endpoint (`--s3-endpoint`, `AWS_ENDPOINT_URL`), region and credentials
//! (environment, profile files) as the AWS tools do; a custom endpoint is
//! addressed path-style.

mod config;
mod writer;

use std::fmt;
use std::ops::Range;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig};
use tokio::runtime::Runtime;

pub use writer::S3Writer;

use crate::object::ObjectRead;
use crate::source::{RemoteKind, SourceError};

/// Bytes fetched by the first GET of an object: an archive's header and,
/// usually, its whole index, so opening it costs one request.
const HEAD_READ: u64 = 256 << 10;

/// Why an S3 operation failed. Messages are one line.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Not an `s3://BUCKET/KEY` URL.
    #[error("invalid S3 URL {0:?} (expected s3://BUCKET/KEY)")]
    InvalidUrl(String),
    /// The client could not be configured.
    #[error("S3 configuration: {0}")]
    Config(String),
    /// No credentials anywhere in the chain.
    #[error("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials (AWS_PROFILE); AWS_EC2_METADATA_DISABLED=false uses an EC2 instance role")]
    NoCredentials,
    /// The bucket does not exist.
    #[error("{url}: no such bucket")]
    NoSuchBucket {
        /// The object.
        url: String,
    },
    /// The key does not exist.
    #[error("{url}: no such key")]
    NoSuchKey {
        /// The object.
        url: String,
    },
    /// The store refused the credentials or the access.
    #[error("{url}: access denied (check the S3 credentials): {detail}")]
    AccessDenied {
        /// The object.
        url: String,
        /// The store's answer.
        detail: String,
    },
    /// The endpoint could not be reached.
    #[error("{url}: cannot reach the S3 endpoint {endpoint}: {detail}")]
    Unreachable {
        /// The object.
        url: String,
        /// The endpoint.
        endpoint: String,
        /// Why.
        detail: String,
    },
    /// Any other failure of a request.
    #[error("{url}: {detail}")]
    Request {
        /// The object.
        url: String,
        /// What happened.
        detail: String,
    },
}

impl From<S3Error> for SourceError {
    fn from(e: S3Error) -> Self {
        let kind = match &e {
            S3Error::NoSuchBucket { .. } | S3Error::NoSuchKey { .. } => RemoteKind::NotFound,
            S3Error::NoCredentials | S3Error::AccessDenied { .. } => RemoteKind::Unauthorized,
            S3Error::Unreachable { .. } => RemoteKind::Unreachable,
            S3Error::Request { .. } => RemoteKind::Transient,
            S3Error::InvalidUrl(_) | S3Error::Config(_) => RemoteKind::Permanent,
        };
        SourceError::remote(kind, e)
    }
}

/// An object's address: `s3://BUCKET/KEY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// Bucket name.
    pub bucket: String,
    /// Object key.
    pub key: String,
}

impl S3Url {
    /// Whether `s` names an S3 object (rather than a local path).
    pub fn is_s3(s: &str) -> bool {
        s.starts_with("s3://")
    }
}

impl FromStr for S3Url {
    type Err = S3Error;

    fn from_str(s: &str) -> Result<Self, S3Error> {
        let rest = s
            .strip_prefix("s3://")
            .ok_or_else(|| S3Error::InvalidUrl(s.into()))?;
        match rest.split_once('/') {
            Some((bucket, key)) if !bucket.is_empty() && !key.is_empty() && !key.ends_with('/') => {
                Ok(S3Url {
                    bucket: bucket.to_string(),
                    key: key.to_string(),
                })
            }
            _ => Err(S3Error::InvalidUrl(s.into())),
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// Settings beyond what the environment says.
#[derive(Debug, Clone, Default)]
pub struct S3Options {
    /// Endpoint URL of an S3-compatible store (`--s3-endpoint`); overrides
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL` and the profile's.
    pub endpoint: Option<String>,
    /// Access key id and secret to use instead of the credential chain
    /// (for embedders and tests; the CLI always uses the chain).
    pub keys: Option<(String, String)>,
}

/// A connection to one bucket; cheap to clone.
#[derive(Clone)]
pub struct S3Client {
    store: Arc<AmazonS3>,
    runtime: Arc<Runtime>,
    url: S3Url,
    endpoint: String,
}

impl fmt::Debug for S3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Client")
            .field("url", &self.url.to_string())
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Client {
    /// A client for the object `url`. Makes no request yet.
    pub fn connect(url: &S3Url, opts: &S3Options) -> Result<Self, S3Error> {
        let profile = config::load_profile();
        let mut resolved = config::resolve(opts.endpoint.as_deref(), &profile);
        if let Some((access_key, secret_key)) = opts.keys.clone() {
            resolved.credentials = Some(config::Credentials::Static(config::StaticKeys {
                access_key,
                secret_key,
                token: None,
            }));
        }
        let mut b = AmazonS3Builder::from_env()
            .with_bucket_name(&url.bucket)
            .with_region(&resolved.region)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        let endpoint = match &resolved.endpoint {
            Some(e) => {
                // S3-compatible stores: path-style, and plain HTTP when asked for.
                b = b
                    .with_endpoint(e)
                    .with_virtual_hosted_style_request(false)
                    .with_allow_http(e.starts_with("http://"));
                e.clone()
            }
            None => format!("https://s3.{}.amazonaws.com", resolved.region),
        };
        match resolved.credentials {
            Some(config::Credentials::Static(k)) => {
                b = b
                    .with_access_key_id(k.access_key)
                    .with_secret_access_key(k.secret_key);
                if let Some(t) = k.token {
                    b = b.with_token(t);
                }
            }
            Some(config::Credentials::Anonymous) => b = b.with_skip_signature(true),
            Some(config::Credentials::Provider) => {}
            None => return Err(S3Error::NoCredentials),
        }
        let store = b.build().map_err(|e| S3Error::Config(one_line(&e)))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("clip-s3")
            .enable_all()
            .build()
            .map_err(|e| S3Error::Config(format!("tokio runtime: {e}")))?;
        Ok(S3Client {
            store: Arc::new(store),
            runtime: Arc::new(runtime),
            url: url.clone(),
            endpoint,
        })
    }

    fn path(&self) -> StorePath {
        StorePath::from(self.url.key.as_str())
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> Result<F::Output, S3Error> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(S3Error::Config(
                "blocking S3 call made from inside a tokio runtime".into(),
            ));
        }
        Ok(self.runtime.block_on(f))
    }

    /// Turns an `object_store` error into a one-line [`S3Error`]. Some
    /// stores answer a missing bucket with `NoSuchKey`: a key that is not
    /// found costs one more request, a listing, to tell the two apart.
    fn error(&self, e: object_store::Error) -> S3Error {
        match classify(&self.url, &self.endpoint, e) {
            S3Error::NoSuchKey { url } => {
                let store = self.store.clone();
                let probe =
                    self.block_on(async move { store.list_with_delimiter(None).await.map(|_| ()) });
                match probe {
                    Ok(Err(e)) if one_line(&e).contains("NoSuchBucket") => {
                        S3Error::NoSuchBucket { url }
                    }
                    _ => S3Error::NoSuchKey { url },
                }
            }
            other => other,
        }
    }

    /// Opens the object for range reads: one GET of its first bytes, which
    /// also tells its length.
    pub fn open(&self) -> Result<S3Object, S3Error> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(0..HEAD_READ)),
            ..Default::default()
        };
        let path = self.path();
        let got = self.block_on(async {
            let r = self.store.get_opts(&path, opts).await?;
            let size = r.meta.size;
            Ok::<_, object_store::Error>((size, r.bytes().await?))
        })?;
        let (len, head) = match got {
            Ok(v) => v,
            // An empty object has no byte 0 to range over.
            Err(_) if self.is_empty_object() => (0, Bytes::new()),
            Err(e) => return Err(self.error(e)),
        };
        Ok(S3Object {
            client: self.clone(),
            len,
            head,
            requests: Arc::new(Mutex::new(Stats::default())),
        })
    }

    fn is_empty_object(&self) -> bool {
        let path = self.path();
        matches!(self.block_on(self.store.head(&path)), Ok(Ok(m)) if m.size == 0)
    }

    /// Starts writing the object; its first `front_len` bytes come last.
    pub fn writer(&self, front_len: u64) -> S3Writer {
        S3Writer::new(self.clone(), front_len)
    }

    /// The object's URL.
    pub fn url(&self) -> &S3Url {
        &self.url
    }
}

/// Short text of an error and its causes, on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn classify(url: &S3Url, endpoint: &str, e: object_store::Error) -> S3Error {
    let url_s = url.to_string();
    let detail = one_line(&e);
    tracing::debug!(url = %url_s, %detail, "S3 request failed");
    match e {
        object_store::Error::NotFound { .. } if detail.contains("NoSuchBucket") => {
            S3Error::NoSuchBucket { url: url_s }
        }
        object_store::Error::NotFound { .. } => S3Error::NoSuchKey { url: url_s },
        object_store::Error::PermissionDenied { .. }
        | object_store::Error::Unauthenticated { .. } => S3Error::AccessDenied {
            url: url_s,
            detail: short(&detail),
        },
        _ if detail.contains("error sending request")
            || detail.contains("connect")
            || detail.contains("dns error") =>
        {
            // The transport's own words, without the request line before them.
            let cause = detail
                .rsplit_once("HTTP error: ")
                .map_or(detail.as_str(), |(_, c)| c);
            S3Error::Unreachable {
                url: url_s,
                endpoint: endpoint.to_string(),
                detail: short(cause),
            }
        }
        _ => S3Error::Request {
            url: url_s,
            detail: short(&detail),
        },
    }
}

/// The store's XML error code and message when present, else the text cut short.
fn short(detail: &str) -> String {
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = detail.find(&open)? + open.len();
        let end = detail[start..].find("</")? + start;
        Some(detail[start..end].to_string())
    };
    match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => detail.chars().take(300).collect(),
    }
}

/// Requests made and bytes fetched through one [`S3Object`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// GET requests.
    pub gets: u64,
    /// Body bytes received.
    pub bytes: u64,
}

/// One S3 object, read by range. The first [`HEAD_READ`] bytes, fetched by
/// [`S3Client::open`], are served from memory.
#[derive(Debug, Clone)]
pub struct S3Object {
    client: S3Client,
    len: u64,
    head: Bytes,
    requests: Arc<Mutex<Stats>>,
}

impl S3Object {
    /// Requests made and bytes fetched so far, the opening GET included.
    pub fn stats(&self) -> Stats {
        let s = *self.requests.lock().unwrap_or_else(|p| p.into_inner());
        Stats {
            gets: s.gets + 1,
            bytes: s.bytes + self.head.len() as u64,
        }
    }

    fn get(&self, range: Range<u64>) -> Result<Bytes, S3Error> {
        let path = self.client.path();
        let store = self.client.store.clone();
        let got = self
            .client
            .block_on(async move { store.get_range(&path, range).await })?
            .map_err(|e| self.client.error(e))?;
        let mut s = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        s.gets += 1;
        s.bytes += got.len() as u64;
        Ok(got)
    }
}

impl ObjectRead for S3Object {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        if offset >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let end = self.len.min(offset.saturating_add(buf.len() as u64));
        if end <= self.head.len() as u64 {
            let src = &self.head[offset as usize..end as usize];
            buf[..src.len()].copy_from_slice(src);
            return Ok(src.len());
        }
        let got = self.get(offset..end)?;
        let n = got.len().min(buf.len());
        buf[..n].copy_from_slice(&got[..n]);
        Ok(n)
    }

    fn location(&self) -> String {
        self.client.url.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::{short, S3Url};

    #[test]
    fn urls() {
        let u: S3Url = "s3://b/dir/k.clip".parse().unwrap();
        assert_eq!((u.bucket.as_str(), u.key.as_str()), ("b", "dir/k.clip"));
        assert_eq!(u.to_string(), "s3://b/dir/k.clip");
        for bad in ["b/k", "s3://b", "s3:///k", "s3://b/", "s3://b/dir/"] {
            assert!(bad.parse::<S3Url>().is_err(), "{bad}");
        }
    }

    #[test]
    fn xml_errors_are_shortened() {
        let d = "Generic S3 error: <?xml?><Error><Code>NoSuchBucket</Code><Message>gone</Message></Error>";
        assert_eq!(short(d), "NoSuchBucket: gone");
    }
}
