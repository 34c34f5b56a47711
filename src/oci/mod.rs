//! OCI images from registries and layout directories: the only HTTP code in
//! the crate.
//!
//! [`ImageRef`] parses `[registry/]repository[:tag][@digest]` with Docker Hub
//! defaults. [`RegistrySource::connect`] builds a keep-alive hyper + rustls
//! client (plain HTTP only for loopback hosts and
//! [`RegistryOptions::insecure_registries`]) on a private two-worker tokio
//! runtime and exposes a blocking API: [`RegistrySource::resolve`] follows an
//! index to the platform manifest and fetches the config, verifying every
//! digest; blob reads are `Range` GETs with retries, stall timeouts, redirect
//! following and Bearer/Basic auth (credentials from the usual
//! `auth.json`/`config.json` files and `docker-credential-*` helpers).
//! [`open_layout`] does the same for an OCI image layout directory and gives
//! a [`LayoutSource`]. Both sources implement [`crate::source::BlobSource`].
//! Manifests are parsed with small serde types (see `manifest.rs`) that accept
//! both OCI and Docker schema2 media types; layer media types are passed
//! through untouched. Credentials never reach logs or error messages.
//!
//! Publishing: [`RegistrySource::attach`] uploads an [`Artifact`] (one
//! file) as an OCI 1.1 artifact manifest whose subject is an image
//! manifest, [`RegistrySource::referrers`] lists what is attached (the
//! referrers API, or the `sha256-<hex>` tag schema on registries without
//! it) and [`RegistrySource::fetch_artifact`] downloads one after checking
//! its manifest and size, verifying every digest.

mod artifact;
mod auth;
mod call;
mod client;
mod headers;
mod layout;
mod manifest;
mod reference;
mod referrers;
mod registry;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod referrers_tests;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

use crate::digest::Digest;
use crate::source::{RemoteKind, SourceError};

pub use artifact::{
    newest_first, rfc3339_now, Artifact, Referrer, ReferrersVia, Subject, ANNOTATION_CREATED,
    ANNOTATION_TITLE, MEDIA_TYPE_EMPTY,
};
pub use layout::{open_layout, LayoutSource};
pub use manifest::{
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
};
pub use reference::{ImageRef, Platform};
pub use referrers::{Attached, PulledArtifact};
pub use registry::RegistrySource;

/// Largest manifest, index, config or token body accepted (8 MiB).
pub const MAX_DOCUMENT_BYTES: u64 = 8 << 20;

/// How to talk to a registry.
#[derive(Debug, Clone)]
pub struct RegistryOptions {
    /// Registries (`host` or `host:port`) that may be reached over plain
    /// HTTP. Loopback hosts (127.0.0.0/8, `localhost`, `[::1]`) always are.
    pub insecure_registries: Vec<String>,
    /// Platform to select from an image index; `None` means the host's.
    pub platform: Option<Platform>,
    /// Stall timeout: the longest wait for a connection, response headers or
    /// the next body chunk.
    pub timeout: Duration,
    /// How many times a failed request (connect error, reset, 5xx, stall,
    /// short body) is retried.
    pub retries: u32,
    /// Told about every HTTP exchange and retry (for metrics).
    pub observer: Option<RequestObserver>,
}

/// What the registry client reports about its HTTP traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestEvent {
    /// A response arrived with this status: every hop counts (redirects,
    /// auth challenges, attempts that are then retried).
    Status(u16),
    /// No response: connect error, reset, timeout.
    NoResponse,
    /// A failed attempt is being retried.
    Retry,
}

/// A callback for [`RequestEvent`]s; it runs on the client's I/O threads,
/// so it must be quick.
#[derive(Clone)]
pub struct RequestObserver(pub std::sync::Arc<dyn Fn(RequestEvent) + Send + Sync>);

impl std::fmt::Debug for RequestObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestObserver")
    }
}

impl Default for RegistryOptions {
    fn default() -> Self {
        RegistryOptions {
            insecure_registries: Vec::new(),
            platform: None,
            timeout: Duration::from_secs(30),
            retries: 3,
            observer: None,
        }
    }
}

/// One layer of a resolved image manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// Digest of the (compressed) layer blob.
    pub digest: Digest,
    /// Size of the blob in bytes, as the manifest states.
    pub size: u64,
    /// The layer media type, passed through from the manifest.
    pub media_type: String,
}

/// A single-platform image manifest and its config, digests verified.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Digest of `manifest_raw`.
    pub manifest_digest: Digest,
    /// The platform manifest bytes exactly as stored.
    pub manifest_raw: Vec<u8>,
    /// The config blob bytes exactly as stored.
    pub config_raw: Vec<u8>,
    /// `os/architecture[/variant]`, e.g. `linux/amd64`.
    pub platform: String,
    /// Layers, bottom first.
    pub layers: Vec<LayerDesc>,
    /// Uncompressed layer digests from the config (`rootfs.diff_ids`), one
    /// per layer.
    pub diff_ids: Vec<Digest>,
}

/// Why an image could not be resolved or read.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// The image reference does not parse.
    #[error("invalid image reference {input:?}: {reason}")]
    BadReference {
        /// The input (truncated).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The platform string does not parse.
    #[error("invalid platform {input:?}: {reason}")]
    BadPlatform {
        /// The input (truncated).
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry host cannot be resolved.
    #[error("unknown registry host {host}: {err}")]
    UnknownRegistry {
        /// `host[:port]`.
        host: String,
        /// The resolver's message.
        err: String,
    },
    /// No connection to the registry (refused, reset, TLS failure).
    #[error("cannot connect to {host}: {err}")]
    Connect {
        /// `host[:port]`.
        host: String,
        /// The underlying error.
        err: String,
    },
    /// A manifest, tag or repository does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A blob does not exist.
    #[error("blob {digest} not found in {repository}")]
    BlobNotFound {
        /// The blob.
        digest: Digest,
        /// Where it was looked for.
        repository: String,
    },
    /// The registry refused access.
    #[error("unauthorized at {registry}: {hint}")]
    Unauthorized {
        /// The registry.
        registry: String,
        /// What to do about it.
        hint: String,
    },
    /// A manifest, index or config is malformed or inconsistent.
    #[error("bad manifest: {reason}")]
    BadManifest {
        /// What is wrong.
        reason: String,
    },
    /// A manifest media type this crate cannot read (e.g. Docker schema1).
    #[error("unsupported manifest media type {media_type}")]
    UnsupportedMediaType {
        /// The media type.
        media_type: String,
    },
    /// No manifest in the index matches the wanted platform.
    #[error("no image for platform {wanted}; available: {}", .available.join(", "))]
    NoMatchingPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms the index offers.
        available: Vec<String>,
    },
    /// Plain HTTP to a host that is neither loopback nor listed as insecure.
    #[error("refusing plain HTTP to {host}: not loopback and not in insecure_registries")]
    InsecureNotAllowed {
        /// `host[:port]`.
        host: String,
    },
    /// An unexpected HTTP status.
    #[error("HTTP {status} from {url}{}", if .detail.is_empty() { String::new() } else { format!(": {}", .detail) })]
    Http {
        /// The status code.
        status: u16,
        /// The URL (without query string).
        url: String,
        /// The start of the registry's error body, if any.
        detail: String,
    },
    /// A response is malformed (bad `Content-Range`, broken body, …).
    #[error("bad response from {url}: {reason}")]
    Protocol {
        /// The URL (without query string).
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS handshake refused the server's certificate (unknown issuer,
    /// wrong name, expired, …): not retried.
    #[error("TLS with {host}: {reason}")]
    Tls {
        /// `host[:port]`.
        host: String,
        /// What rustls said.
        reason: String,
    },
    /// No progress for the stall timeout.
    #[error("no progress for {after:?} from {url}")]
    Timeout {
        /// The URL (without query string).
        url: String,
        /// The stall timeout.
        after: Duration,
    },
    /// A body kept coming, but slower than the client's floor once the
    /// stall timeout had passed (a trickle).
    #[error("{url} sends too slowly: {bytes} bytes in {elapsed:?}")]
    TooSlow {
        /// The URL (without query string).
        url: String,
        /// Bytes received.
        bytes: u64,
        /// Since the body started.
        elapsed: Duration,
    },
    /// A document is bigger than [`MAX_DOCUMENT_BYTES`].
    #[error("{what} is larger than the {limit}-byte limit")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// Content does not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was verified.
        what: String,
        /// The digest it should have.
        expected: Digest,
        /// The digest it has.
        actual: Digest,
    },
    /// An OCI layout directory is unusable.
    #[error("OCI layout {}: {reason}", .path.display())]
    Layout {
        /// The offending path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An artifact attached to an image is not what it should be.
    #[error("artifact {digest} refused: {reason}")]
    Artifact {
        /// The artifact manifest's digest.
        digest: Digest,
        /// What is wrong with it.
        reason: String,
    },
    /// Credentials could not be looked up (never contains secrets).
    #[error("credentials for {registry}: {reason}")]
    Credentials {
        /// The registry.
        registry: String,
        /// What failed.
        reason: String,
    },
    /// The HTTP runtime or client could not be set up.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
}

impl OciError {
    /// What kind of remote failure this is (for [`SourceError::Remote`]).
    pub fn remote_kind(&self) -> RemoteKind {
        match self {
            OciError::NotFound { .. } | OciError::BlobNotFound { .. } => RemoteKind::NotFound,
            OciError::Unauthorized { .. } | OciError::Credentials { .. } => {
                RemoteKind::Unauthorized
            }
            OciError::Timeout { .. } | OciError::TooSlow { .. } => RemoteKind::Timeout,
            OciError::UnknownRegistry { .. } | OciError::Connect { .. } | OciError::Tls { .. } => {
                RemoteKind::Unreachable
            }
            OciError::Http { status, .. } => match status {
                401 | 403 => RemoteKind::Unauthorized,
                404 => RemoteKind::NotFound,
                408 | 429 | 500..=599 => RemoteKind::Transient,
                _ => RemoteKind::Permanent,
            },
            // A broken or short body: retried, and still broken.
            OciError::Protocol { .. } => RemoteKind::Transient,
            _ => RemoteKind::Permanent,
        }
    }
}

impl From<OciError> for SourceError {
    fn from(e: OciError) -> Self {
        match e {
            OciError::BlobNotFound { digest, .. } => SourceError::NotFound { digest },
            other => SourceError::remote(other.remote_kind(), other),
        }
    }
}
