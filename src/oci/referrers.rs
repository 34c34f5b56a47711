//! Publishing to a registry and reading what was published: blob uploads
//! (HEAD skips a blob that is there; POST then one PUT, or PATCH chunks for
//! big blobs), manifest PUTs, and the referrers of an image: the OCI 1.1
//! referrers API, or on registries without it (distribution 2.8) the
//! referrers tag schema, an image index tagged `sha256-<hex>` of the
//! subject that each writer reads, extends and writes back.

use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderName};
use hyper::{Method, StatusCode, Uri};
use serde_json::Value;

use super::artifact::{
    self, fallback_tag, Artifact, ArtifactLayer, Desc, Referrer, ReferrersVia, Subject, EMPTY_JSON,
};
use super::client::{Call, Client, Failure};
use super::headers::next_link;
use super::manifest::{MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST};
use super::registry::get_manifest;
use super::{OciError, RegistrySource, MAX_DOCUMENT_BYTES};
use crate::digest::Digest;

/// PATCH chunk size of a large upload: blobs up to twice this size go in
/// one PUT, larger ones in chunks, so no request body is unbounded.
const UPLOAD_CHUNK: usize = 16 << 20;
/// Pages of a referrers listing followed (`Link: <…>; rel="next"`).
const MAX_PAGES: usize = 16;
/// Read-extend-write rounds of the tag schema before giving up on a
/// registry whose index keeps changing under us.
const TAG_SCHEMA_ROUNDS: u32 = 5;

/// The `OCI-Subject` header a registry sets when it processed a pushed
/// manifest's `subject` (it keeps the referrers list itself).
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");

/// What [`RegistrySource::attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Digest of the artifact manifest.
    pub digest: Digest,
    /// Where the registry lists it.
    pub via: ReferrersVia,
}

/// An artifact downloaded by [`RegistrySource::fetch_artifact`], digests
/// verified.
#[derive(Debug, Clone)]
pub struct PulledArtifact {
    /// Digest of its manifest.
    pub digest: Digest,
    /// The manifest's annotations.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// The file (the manifest's one layer).
    pub data: Vec<u8>,
}

impl RegistrySource {
    /// The artifacts attached to the manifest `subject` in this repository
    /// (of `artifact_type` only, if given), in the registry's order, and
    /// how the registry keeps the list. A registry without the referrers
    /// API (404) is read through the tag schema; no list at all is empty.
    pub fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<(Vec<Referrer>, ReferrersVia), OciError> {
        let client = self.client();
        let (descs, via) = self.block_on(async {
            match list_api(client, subject, artifact_type).await? {
                Some(d) => Ok((d, ReferrersVia::Api)),
                None => {
                    let doc = read_tag_schema(client, subject).await?;
                    let descs = doc.map(|(doc, _)| entries(&doc)).unwrap_or_default();
                    Ok::<_, OciError>((descs, ReferrersVia::TagSchema))
                }
            }
        })??;
        let list = descs
            .into_iter()
            .filter_map(|d| {
                Some(Referrer {
                    digest: d.digest.parse().ok()?,
                    size: u64::try_from(d.size).ok()?,
                    artifact_type: d.artifact_type.unwrap_or_default(),
                    annotations: d.annotations,
                })
            })
            .filter(|r| artifact_type.is_none_or(|t| r.artifact_type == t))
            .collect();
        Ok((list, via))
    }

    /// Uploads `artifact` (its file and the empty config, unless the
    /// registry has them) and its manifest, attached to `subject`. When the
    /// registry does not confirm it processed the subject (`OCI-Subject`),
    /// the artifact is added to the tag schema index of `subject`.
    pub fn attach(&self, subject: &Subject, artifact: Artifact) -> Result<Attached, OciError> {
        let client = self.client();
        let layer = Digest::of(&artifact.data);
        let raw = Bytes::from(artifact::manifest_json(subject, &artifact, &layer));
        let digest = Digest::of(&raw);
        let data = Bytes::from(artifact.data);
        self.block_on(async {
            upload_blob(client, Bytes::from_static(EMPTY_JSON), UPLOAD_CHUNK).await?;
            upload_blob(client, data, UPLOAD_CHUNK).await?;
            let put = client
                .retry(async || {
                    put_manifest(
                        client,
                        &digest.to_string(),
                        MEDIA_TYPE_OCI_MANIFEST,
                        &raw,
                        None,
                    )
                    .await
                })
                .await?;
            let processed =
                matches!(put, Put::Stored { subject: Some(s) } if s == subject.digest.to_string());
            if processed {
                return Ok(Attached {
                    digest,
                    via: ReferrersVia::Api,
                });
            }
            add_to_tag_schema(client, &subject.digest, artifact::referrer_desc(&raw)?).await?;
            Ok(Attached {
                digest,
                via: ReferrersVia::TagSchema,
            })
        })?
    }

    /// Downloads the file of the artifact `r` after checking its manifest
    /// (its digest, an OCI manifest of `artifact_type` whose subject is
    /// `subject`, one layer of at most `max` bytes: a larger one is refused
    /// before any of it is downloaded); the file's digest is verified.
    pub fn fetch_artifact(
        &self,
        r: &Referrer,
        artifact_type: &str,
        subject: &Digest,
        max: u64,
    ) -> Result<PulledArtifact, OciError> {
        if r.size > MAX_DOCUMENT_BYTES {
            return Err(OciError::TooLarge {
                what: format!("artifact manifest {}", r.digest),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        let (raw, _, _) = self.block_on(get_manifest(self.client(), &r.digest.to_string()))??;
        let actual = Digest::of(&raw);
        if actual != r.digest {
            return Err(OciError::DigestMismatch {
                what: format!("artifact manifest {}", r.digest),
                expected: r.digest,
                actual,
            });
        }
        let ArtifactLayer {
            digest,
            size,
            annotations,
        } = artifact::check_manifest(&r.digest, &raw, artifact_type, subject, max)?;
        let what = format!("the blob of artifact {}", r.digest);
        let data = self.fetch_blob(&digest, &what, size)?;
        let got = Digest::of(&data);
        if got != digest || data.len() as u64 != size {
            return Err(OciError::DigestMismatch {
                what,
                expected: digest,
                actual: got,
            });
        }
        Ok(PulledArtifact {
            digest: r.digest,
            annotations,
            data,
        })
    }
}

/// The descriptors of an image index document (entries that do not parse
/// are skipped: they are not ours).
fn entries(doc: &Value) -> Vec<Desc> {
    doc.get("manifests")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| serde_json::from_value(v.clone()).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The referrers API's list (all pages), or `None` when the registry does
/// not have the API (404).
async fn list_api(
    client: &Client,
    subject: &Digest,
    artifact_type: Option<&str>,
) -> Result<Option<Vec<Desc>>, OciError> {
    let query = artifact_type
        .map(|t| format!("?artifactType={}", super::auth::query_escape(t)))
        .unwrap_or_default();
    let mut url = client.v2_url(&format!("referrers/{subject}{query}"))?;
    let mut out = Vec::new();
    for page in 0..MAX_PAGES {
        let (doc, next) = client
            .retry(async || {
                let resp = client
                    .call(&url, &Call::get(Some(MEDIA_TYPE_OCI_INDEX), None))
                    .await?;
                match resp.status() {
                    StatusCode::OK => {}
                    StatusCode::NOT_FOUND if page == 0 => {
                        client.drain(resp).await;
                        return Ok((None, None));
                    }
                    _ => return Err(Failure::Fatal(client.status_error(resp, &url).await)),
                }
                let next = next_link(resp.headers())
                    .map(|l| client.resolve(&url, &l))
                    .transpose()?;
                let raw = client
                    .read_capped(resp, &url, "referrers list", MAX_DOCUMENT_BYTES)
                    .await?;
                let doc: Value =
                    serde_json::from_slice(&raw).map_err(|e| OciError::BadManifest {
                        reason: format!("referrers list: {e}"),
                    })?;
                Ok((Some(doc), next))
            })
            .await?;
        let Some(doc) = doc else {
            return Ok(None);
        };
        out.extend(entries(&doc));
        match next {
            Some(n) => url = n,
            None => return Ok(Some(out)),
        }
    }
    tracing::warn!(pages = MAX_PAGES, "referrers list truncated");
    Ok(Some(out))
}

/// The tag schema index of `subject` and its digest (for `If-Match`), or
/// `None` when the tag does not exist.
async fn read_tag_schema(
    client: &Client,
    subject: &Digest,
) -> Result<Option<(Value, Digest)>, OciError> {
    let tag = fallback_tag(subject);
    let raw = match get_manifest(client, &tag).await {
        Ok((raw, _, _)) => raw,
        Err(OciError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    let doc: Value = serde_json::from_slice(&raw).map_err(|e| OciError::BadManifest {
        reason: format!("referrers index {tag}: {e}"),
    })?;
    if !doc.get("manifests").is_some_and(Value::is_array) {
        return Err(OciError::BadManifest {
            reason: format!("tag {tag} is not an image index"),
        });
    }
    Ok(Some((doc, Digest::of(&raw))))
}

fn lists(doc: &Value, digest: &str) -> bool {
    entries(doc).iter().any(|d| d.digest == digest)
}

/// Adds `desc` to the tag schema index of `subject`: read it, append,
/// write it back (conditionally, where the registry honours `If-Match`),
/// and read it back. A writer that replaced the index between our read
/// and our write (distribution 2.8 ignores `If-Match`) is noticed by the
/// read back, and the round starts again on the index that writer left.
async fn add_to_tag_schema(client: &Client, subject: &Digest, desc: Desc) -> Result<(), OciError> {
    let tag = fallback_tag(subject);
    let value = serde_json::to_value(&desc).map_err(|e| OciError::BadManifest {
        reason: e.to_string(),
    })?;
    for round in 0..TAG_SCHEMA_ROUNDS {
        let (mut doc, precondition) = match read_tag_schema(client, subject).await? {
            Some((doc, d)) => (doc, (header::IF_MATCH, format!("\"{d}\""))),
            None => (
                serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MEDIA_TYPE_OCI_INDEX,
                    "manifests": [],
                }),
                (header::IF_NONE_MATCH, "*".to_string()),
            ),
        };
        if lists(&doc, &desc.digest) {
            return Ok(());
        }
        if let Some(list) = doc.get_mut("manifests").and_then(Value::as_array_mut) {
            list.push(value.clone());
        }
        let body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        let put = client
            .retry(async || {
                put_manifest(
                    client,
                    &tag,
                    MEDIA_TYPE_OCI_INDEX,
                    &body,
                    Some(precondition.clone()),
                )
                .await
            })
            .await?;
        if put == Put::Conflict {
            tracing::debug!(tag, round, "referrers index changed under us; again");
        } else if read_tag_schema(client, subject)
            .await?
            .is_some_and(|(doc, _)| lists(&doc, &desc.digest))
        {
            return Ok(());
        } else {
            tracing::debug!(
                tag,
                round,
                "a concurrent writer replaced the referrers index; again"
            );
        }
        tokio::time::sleep(Duration::from_millis(50 << round)).await;
    }
    Err(OciError::Protocol {
        url: client.v2_url(&format!("manifests/{tag}"))?.to_string(),
        reason: format!(
            "the referrers index kept changing under us; gave up after {TAG_SCHEMA_ROUNDS} rounds"
        ),
    })
}

/// What a manifest PUT did.
#[derive(Debug, PartialEq, Eq)]
enum Put {
    /// Stored; `subject` is the `OCI-Subject` header, if sent.
    Stored { subject: Option<String> },
    /// A precondition failed (412): someone else wrote first.
    Conflict,
}

/// PUTs manifest `raw` of `media_type` at `reference` (a tag or its digest).
async fn put_manifest(
    client: &Client,
    reference: &str,
    media_type: &str,
    raw: &Bytes,
    precondition: Option<(HeaderName, String)>,
) -> Result<Put, Failure> {
    let url = client.v2_url(&format!("manifests/{reference}"))?;
    let mut call = Call::bare(Method::PUT).with_body(media_type, raw.clone());
    if let Some((k, v)) = precondition {
        call = call.with_header(k, v);
    }
    let resp = client.call(&url, &call).await?;
    match resp.status() {
        StatusCode::CREATED | StatusCode::OK => {
            let subject = resp
                .headers()
                .get(OCI_SUBJECT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            client.drain(resp).await;
            Ok(Put::Stored { subject })
        }
        StatusCode::PRECONDITION_FAILED => {
            client.drain(resp).await;
            Ok(Put::Conflict)
        }
        _ => Err(Failure::Fatal(push_error(client, resp, &url).await)),
    }
}

/// The error of a refused write: 401/403 say who may not push where.
async fn push_error(
    client: &Client,
    resp: hyper::Response<hyper::body::Incoming>,
    url: &Uri,
) -> OciError {
    let status = resp.status();
    let e = client.status_error(resp, url).await;
    match (status, &e) {
        (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN, OciError::Http { detail, .. }) => {
            OciError::Unauthorized {
                registry: client.registry().to_string(),
                hint: format!(
                    "no push access to {} ({status}{})",
                    client.repository(),
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(": {detail}")
                    }
                ),
            }
        }
        _ => e,
    }
}

/// Uploads `data` unless the repository has it (HEAD); returns its digest.
/// Blobs over twice `chunk` go in PATCH chunks of `chunk` bytes. A
/// transient failure starts the upload again.
pub(crate) async fn upload_blob(
    client: &Client,
    data: Bytes,
    chunk: usize,
) -> Result<Digest, OciError> {
    let digest = Digest::of(&data);
    let url = client.v2_url(&format!("blobs/{digest}"))?;
    let exists = client
        .retry(async || {
            let resp = client.call(&url, &Call::bare(Method::HEAD)).await?;
            match resp.status() {
                StatusCode::OK => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(Failure::Fatal(push_error(client, resp, &url).await)),
            }
        })
        .await?;
    if !exists {
        let chunk = if data.len() / 2 > chunk {
            chunk.max(1)
        } else {
            usize::MAX
        };
        client
            .retry(async || upload_once(client, &digest, &data, chunk).await)
            .await?;
    }
    Ok(digest)
}

/// One upload session: POST, PATCHes of `chunk` bytes while more than a
/// chunk is left, then the closing PUT with the digest (and the rest).
async fn upload_once(
    client: &Client,
    digest: &Digest,
    data: &Bytes,
    chunk: usize,
) -> Result<(), Failure> {
    let start = client.v2_url("blobs/uploads/")?;
    let resp = client.call(&start, &Call::bare(Method::POST)).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(Failure::Fatal(push_error(client, resp, &start).await));
    }
    let mut at = client.location(&start, resp.headers())?;
    client.drain(resp).await;
    let mut sent = 0usize;
    while data.len() - sent > chunk {
        let end = sent + chunk;
        let call = Call::bare(Method::PATCH)
            .with_body("application/octet-stream", data.slice(sent..end))
            .with_header(header::CONTENT_RANGE, format!("{sent}-{}", end - 1));
        let resp = client.call(&at, &call).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(Failure::Fatal(push_error(client, resp, &at).await));
        }
        let next = client.location(&at, resp.headers())?;
        client.drain(resp).await;
        at = next;
        sent = end;
    }
    let sep = if at.query().is_some() { '&' } else { '?' };
    let close = format!(
        "{at}{sep}digest={}",
        super::auth::query_escape(&digest.to_string())
    );
    let close: Uri = close.parse().map_err(|_| OciError::Protocol {
        url: super::client::show(&at),
        reason: "upload Location does not form a URL with the digest".into(),
    })?;
    let call = Call::bare(Method::PUT).with_body("application/octet-stream", data.slice(sent..));
    let resp = client.call(&close, &call).await?;
    match resp.status() {
        StatusCode::CREATED | StatusCode::NO_CONTENT | StatusCode::OK => {
            client.drain(resp).await;
            Ok(())
        }
        _ => Err(Failure::Fatal(push_error(client, resp, &close).await)),
    }
}
