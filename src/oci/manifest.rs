//! Manifest, index and config documents, and the source-independent
//! resolution walk (index → platform manifest → config) with digest checks.
//!
//! Own serde types rather than `oci-spec`: they accept OCI and Docker schema2
//! documents alike, ignore unknown fields, and keep every failure a typed
//! [`OciError`] instead of a builder/validation error.

use std::collections::HashMap;

use serde::Deserialize;

use super::{LayerDesc, OciError, Platform, ResolvedImage};
use crate::digest::Digest;

/// OCI image manifest media type.
pub const MEDIA_TYPE_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const MEDIA_TYPE_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest (schema 2) media type.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list media type.
pub const MEDIA_TYPE_DOCKER_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";

/// The `Accept` header for manifest GETs: all four supported types.
pub(crate) const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

/// The annotation naming a manifest's tag in a layout's `index.json`.
pub(crate) const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Nesting limit for index → index → … chains.
const MAX_DEPTH: usize = 4;

/// A content descriptor (only the fields used here).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default)]
    pub platform: Option<PlatformJson>,
    #[serde(default)]
    pub annotations: Option<HashMap<String, String>>,
}

/// The `platform` object of an index entry or the platform fields of a config.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PlatformJson {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl PlatformJson {
    fn to_platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone().filter(|v| !v.is_empty()),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// Minimal view for sniffing a document's kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
}

fn bad(reason: impl Into<String>) -> OciError {
    OciError::BadManifest {
        reason: reason.into(),
    }
}

/// Parses a descriptor's digest.
pub(crate) fn desc_digest(d: &Descriptor) -> Result<Digest, OciError> {
    d.digest
        .parse()
        .map_err(|e| bad(format!("descriptor digest: {e}")))
}

/// Checks `data` against a descriptor's digest and (if given) size.
pub(crate) fn verify(what: &str, d: &Descriptor, data: &[u8]) -> Result<Digest, OciError> {
    let expected = desc_digest(d)?;
    let actual = Digest::of(data);
    if actual != expected {
        return Err(OciError::DigestMismatch {
            what: what.to_string(),
            expected,
            actual,
        });
    }
    if d.size > 0 && d.size as u64 != data.len() as u64 {
        return Err(bad(format!(
            "{what} is {} bytes but its descriptor says {}",
            data.len(),
            d.size
        )));
    }
    Ok(actual)
}

/// Parses an index document.
pub(crate) fn parse_index(raw: &[u8]) -> Result<Index, OciError> {
    serde_json::from_slice(raw).map_err(|e| bad(format!("index: {e}")))
}

/// What kind of document this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Index,
    Manifest,
}

/// Classifies a manifest document by its declared media type (from the
/// transport or the JSON), falling back to its shape.
pub(crate) fn classify(raw: &[u8], transport_type: Option<&str>) -> Result<Kind, OciError> {
    let sniff: Sniff =
        serde_json::from_slice(raw).map_err(|e| bad(format!("not a JSON manifest: {e}")))?;
    let by_type = |t: &str| match t {
        MEDIA_TYPE_OCI_INDEX | MEDIA_TYPE_DOCKER_LIST => Some(Ok(Kind::Index)),
        MEDIA_TYPE_OCI_MANIFEST | MEDIA_TYPE_DOCKER_MANIFEST => Some(Ok(Kind::Manifest)),
        "application/json" | "text/plain" | "application/octet-stream" | "" => None,
        other => Some(Err(OciError::UnsupportedMediaType {
            media_type: other.chars().take(200).collect(),
        })),
    };
    if let Some(k) = sniff.media_type.as_deref().and_then(by_type) {
        return k;
    }
    if let Some(k) = transport_type
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .and_then(by_type)
    {
        return k;
    }
    if sniff.schema_version == Some(1) {
        return Err(OciError::UnsupportedMediaType {
            media_type: "application/vnd.docker.distribution.manifest.v1+json".into(),
        });
    }
    match (sniff.manifests.is_some(), sniff.layers.is_some()) {
        (true, false) => Ok(Kind::Index),
        (false, true) => Ok(Kind::Manifest),
        _ => Err(bad("neither an index nor a manifest")),
    }
}

/// Picks the entry of `index` for `want`.
pub(crate) fn select_platform<'a>(
    index: &'a Index,
    want: &Platform,
) -> Result<&'a Descriptor, OciError> {
    let mut available = Vec::new();
    for d in &index.manifests {
        // Attestation manifests (buildkit) carry platform unknown/unknown.
        match &d.platform {
            Some(p) => {
                let p = p.to_platform();
                if want.matches(&p) {
                    return Ok(d);
                }
                available.push(p.to_string());
            }
            None => available.push(format!("(none: {})", d.digest)),
        }
    }
    Err(OciError::NoMatchingPlatform {
        wanted: want.to_string(),
        available,
    })
}

/// Where the resolution walk gets documents from.
pub(crate) trait DocumentStore {
    /// Fetches a manifest or index by descriptor (by digest); returns its
    /// bytes and the media type the transport reported. Size-capped.
    fn fetch_manifest(&self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>), OciError>;
    /// Fetches a config blob by descriptor. Size-capped.
    fn fetch_config(&self, d: &Descriptor) -> Result<Vec<u8>, OciError>;
}

/// Walks from a fetched top-level document (already digest-checked by the
/// caller) to a resolved single-platform image.
pub(crate) fn resolve_document(
    store: &dyn DocumentStore,
    mut raw: Vec<u8>,
    mut transport_type: Option<String>,
    want: &Platform,
) -> Result<ResolvedImage, OciError> {
    let mut index_platform: Option<Platform> = None;
    for _ in 0..MAX_DEPTH {
        match classify(&raw, transport_type.as_deref())? {
            Kind::Manifest => {
                let r = build(store, raw, index_platform)?;
                if let Ok(p) = r.platform.parse::<Platform>() {
                    if !want.matches(&p) {
                        tracing::warn!(wanted = %want, image = %r.platform, "image platform differs from the wanted one");
                    }
                }
                return Ok(r);
            }
            Kind::Index => {
                let index = parse_index(&raw)?;
                let d = select_platform(&index, want)?.clone();
                index_platform = d.platform.as_ref().map(PlatformJson::to_platform);
                let (next, t) = store.fetch_manifest(&d)?;
                verify(&format!("manifest {}", d.digest), &d, &next)?;
                raw = next;
                transport_type = t.or_else(|| Some(d.media_type.clone()));
            }
        }
    }
    Err(bad(format!("index nesting deeper than {MAX_DEPTH}")))
}

fn build(
    store: &dyn DocumentStore,
    raw: Vec<u8>,
    index_platform: Option<Platform>,
) -> Result<ResolvedImage, OciError> {
    let m: Manifest = serde_json::from_slice(&raw).map_err(|e| bad(format!("manifest: {e}")))?;
    if m.schema_version != 2 {
        return Err(bad(format!("schemaVersion {} (want 2)", m.schema_version)));
    }
    if let Some(t) = m.media_type.as_deref() {
        if t != MEDIA_TYPE_OCI_MANIFEST && t != MEDIA_TYPE_DOCKER_MANIFEST {
            return Err(OciError::UnsupportedMediaType {
                media_type: t.chars().take(200).collect(),
            });
        }
    }
    let layers = m
        .layers
        .iter()
        .map(|l| {
            if l.size < 0 {
                return Err(bad(format!("layer {} has negative size", l.digest)));
            }
            Ok(LayerDesc {
                digest: desc_digest(l)?,
                size: l.size as u64,
                media_type: l.media_type.clone(),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    desc_digest(&m.config)?;
    let config_raw = store.fetch_config(&m.config)?;
    verify(
        &format!("config {}", m.config.digest),
        &m.config,
        &config_raw,
    )?;
    let config: Config =
        serde_json::from_slice(&config_raw).map_err(|e| bad(format!("config: {e}")))?;
    let diff_ids = config
        .rootfs
        .diff_ids
        .iter()
        .map(|s| s.parse().map_err(|e| bad(format!("config diff_id: {e}"))))
        .collect::<Result<Vec<Digest>, _>>()?;
    if diff_ids.len() != layers.len() {
        return Err(bad(format!(
            "manifest has {} layers but config has {} diff_ids",
            layers.len(),
            diff_ids.len()
        )));
    }
    let platform = if !config.os.is_empty() && !config.architecture.is_empty() {
        Platform {
            os: config.os,
            architecture: config.architecture,
            variant: config.variant.filter(|v| !v.is_empty()),
        }
    } else if let Some(p) = index_platform {
        p
    } else {
        return Err(bad("config names no os/architecture"));
    };
    Ok(ResolvedImage {
        manifest_digest: Digest::of(&raw),
        manifest_raw: raw,
        config_raw,
        platform: platform.to_string(),
        layers,
        diff_ids,
    })
}
