//! OCI 1.1 artifacts that refer to an image: the manifest clip writes for a
//! `.clip` index or a startup profile (image-spec "artifact guidance": an
//! `artifactType`, the empty config, one layer, a `subject`), the
//! descriptors a referrers listing holds, and the checks a pulled
//! artifact's manifest must pass before its blob is downloaded. Pure: the
//! HTTP side is `referrers.rs`. Media types and annotations are specified
//! in docs/format.md ("Published artifacts").

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::manifest::MEDIA_TYPE_OCI_MANIFEST;
use super::OciError;
use crate::digest::Digest;

/// Media type of the empty config blob `{}` of an artifact manifest.
pub const MEDIA_TYPE_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// The empty config blob.
pub(crate) const EMPTY_JSON: &[u8] = b"{}";
/// When the artifact was made (RFC 3339, UTC); the newest valid one wins.
pub const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// The file name of a layer (the convention `oras pull` follows).
pub const ANNOTATION_TITLE: &str = "org.opencontainers.image.title";

/// The image an artifact refers to: its manifest's descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The manifest's media type.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
}

impl Subject {
    /// The descriptor of the manifest `raw`: its `mediaType` field (an OCI
    /// manifest when absent), digest and size.
    pub fn of_manifest(raw: &[u8]) -> Subject {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct MediaType {
            #[serde(default)]
            media_type: Option<String>,
        }
        let media_type = serde_json::from_slice::<MediaType>(raw)
            .ok()
            .and_then(|m| m.media_type)
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| MEDIA_TYPE_OCI_MANIFEST.to_string());
        Subject {
            media_type,
            digest: Digest::of(raw),
            size: raw.len() as u64,
        }
    }
}

/// An artifact to attach to an image: one file and what describes it.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The manifest's `artifactType`, also the media type of its one layer.
    pub artifact_type: String,
    /// The file.
    pub data: Vec<u8>,
    /// The file's name ([`ANNOTATION_TITLE`] of the layer).
    pub title: String,
    /// The manifest's annotations; [`ANNOTATION_CREATED`] is added (now)
    /// when absent.
    pub annotations: BTreeMap<String, String>,
}

/// One artifact attached to an image, as a referrers listing names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Referrer {
    /// Digest of the artifact's manifest.
    pub digest: Digest,
    /// Size of that manifest.
    pub size: u64,
    /// Its `artifactType` (empty when the listing does not say).
    pub artifact_type: String,
    /// Its annotations (registries copy the manifest's into the listing).
    pub annotations: BTreeMap<String, String>,
}

impl Referrer {
    /// [`ANNOTATION_CREATED`], if present and RFC 3339.
    pub fn created(&self) -> Option<SystemTime> {
        let s = self.annotations.get(ANNOTATION_CREATED)?;
        humantime::parse_rfc3339_weak(s).ok()
    }
}

/// Newest first by [`Referrer::created`]; without a timestamp, later in the
/// listing counts as newer (the tag schema appends).
pub fn newest_first(list: &mut [Referrer]) {
    let keyed: Vec<(Option<SystemTime>, usize)> = list
        .iter()
        .enumerate()
        .map(|(i, r)| (r.created(), i))
        .collect();
    let mut order: Vec<usize> = (0..list.len()).collect();
    order.sort_by(|&a, &b| keyed[b].cmp(&keyed[a]));
    let sorted: Vec<Referrer> = order.iter().map(|&i| list[i].clone()).collect();
    list.clone_from_slice(&sorted);
}

/// How a registry keeps the list of an image's referrers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReferrersVia {
    /// The OCI 1.1 referrers API (`GET /v2/<name>/referrers/<digest>`).
    Api,
    /// The fallback: an image index tagged `sha256-<hex>` of the subject.
    TagSchema,
}

/// The tag under which the referrers tag schema keeps `subject`'s list.
pub(crate) fn fallback_tag(subject: &Digest) -> String {
    format!("sha256-{}", subject.hex())
}

/// A descriptor as written in an artifact manifest or a referrers index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Desc {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An artifact manifest (the fields clip writes and checks).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    schema_version: u32,
    #[serde(default)]
    media_type: String,
    #[serde(default)]
    artifact_type: Option<String>,
    config: Desc,
    layers: Vec<Desc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<Desc>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
}

/// `now` as RFC 3339 UTC, milliseconds precision.
pub fn rfc3339_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// The manifest of `artifact` attached to `subject`, its layer being the
/// blob `layer` (the caller uploads it and the empty config).
pub(crate) fn manifest_json(subject: &Subject, artifact: &Artifact, layer: &Digest) -> Vec<u8> {
    let mut annotations = artifact.annotations.clone();
    annotations
        .entry(ANNOTATION_CREATED.to_string())
        .or_insert_with(rfc3339_now);
    let m = ArtifactManifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
        artifact_type: Some(artifact.artifact_type.clone()),
        config: Desc {
            media_type: MEDIA_TYPE_EMPTY.to_string(),
            digest: Digest::of(EMPTY_JSON).to_string(),
            size: EMPTY_JSON.len() as i64,
            artifact_type: None,
            // base64 of `{}`: readers need not fetch it.
            data: Some("e30=".to_string()),
            annotations: BTreeMap::new(),
        },
        layers: vec![Desc {
            media_type: artifact.artifact_type.clone(),
            digest: layer.to_string(),
            size: artifact.data.len() as i64,
            artifact_type: None,
            data: None,
            annotations: BTreeMap::from([(ANNOTATION_TITLE.to_string(), artifact.title.clone())]),
        }],
        subject: Some(Desc {
            media_type: subject.media_type.clone(),
            digest: subject.digest.to_string(),
            size: subject.size as i64,
            artifact_type: None,
            data: None,
            annotations: BTreeMap::new(),
        }),
        annotations,
    };
    // Plain strings, numbers and maps: serializing cannot fail.
    serde_json::to_vec(&m).unwrap_or_default()
}

/// The descriptor of an artifact manifest in a referrers index.
pub(crate) fn referrer_desc(raw: &[u8]) -> Result<Desc, OciError> {
    let m: ArtifactManifest = serde_json::from_slice(raw).map_err(|e| OciError::BadManifest {
        reason: format!("artifact manifest: {e}"),
    })?;
    Ok(Desc {
        media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
        digest: Digest::of(raw).to_string(),
        size: raw.len() as i64,
        artifact_type: m.artifact_type.or(Some(m.config.media_type)),
        data: None,
        annotations: m.annotations,
    })
}

/// The one layer of a checked artifact manifest.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactLayer {
    pub digest: Digest,
    pub size: u64,
    pub annotations: BTreeMap<String, String>,
}

/// Checks a pulled artifact manifest (digest `digest`, already verified):
/// an OCI manifest of `artifact_type` whose subject is `subject`, with one
/// layer of that media type no larger than `max` bytes.
pub(crate) fn check_manifest(
    digest: &Digest,
    raw: &[u8],
    artifact_type: &str,
    subject: &Digest,
    max: u64,
) -> Result<ArtifactLayer, OciError> {
    let refuse = |reason: String| OciError::Artifact {
        digest: *digest,
        reason,
    };
    let m: ArtifactManifest =
        serde_json::from_slice(raw).map_err(|e| refuse(format!("not an OCI manifest: {e}")))?;
    if m.schema_version != 2 || m.media_type != MEDIA_TYPE_OCI_MANIFEST {
        return Err(refuse(format!(
            "schemaVersion {} mediaType {:?} (want 2, {MEDIA_TYPE_OCI_MANIFEST})",
            m.schema_version, m.media_type
        )));
    }
    let found = m.artifact_type.as_deref().unwrap_or(&m.config.media_type);
    if found != artifact_type {
        return Err(refuse(format!(
            "artifactType {found:?}, want {artifact_type:?}"
        )));
    }
    let named = m.subject.as_ref().map(|s| s.digest.as_str());
    if named != Some(subject.to_string().as_str()) {
        return Err(refuse(format!(
            "its subject is {}, not the image {subject}",
            named.unwrap_or("missing")
        )));
    }
    let [layer] = m.layers.as_slice() else {
        return Err(refuse(format!("{} layers, want 1", m.layers.len())));
    };
    if layer.media_type != artifact_type {
        return Err(refuse(format!(
            "layer media type {:?}, want {artifact_type:?}",
            layer.media_type
        )));
    }
    let layer_digest: Digest = layer
        .digest
        .parse()
        .map_err(|e| refuse(format!("layer digest: {e}")))?;
    if layer.size < 0 {
        return Err(refuse("negative layer size".into()));
    }
    if layer.size as u64 > max {
        return Err(OciError::TooLarge {
            what: format!("the {artifact_type} blob of artifact {digest}"),
            limit: max,
        });
    }
    Ok(ArtifactLayer {
        digest: layer_digest,
        size: layer.size as u64,
        annotations: m.annotations,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact() -> Artifact {
        Artifact {
            artifact_type: "application/vnd.clip.profile.v1+json".into(),
            data: b"{\"version\":1}".to_vec(),
            title: "profile.json".into(),
            annotations: BTreeMap::from([("k".to_string(), "v".to_string())]),
        }
    }

    #[test]
    fn manifest_round_trip_and_checks() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#;
        let subject = Subject::of_manifest(image);
        assert_eq!(
            subject.media_type,
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        let a = artifact();
        let layer = Digest::of(&a.data);
        let raw = manifest_json(&subject, &a, &layer);
        let d = Digest::of(&raw);
        let ok = check_manifest(&d, &raw, &a.artifact_type, &subject.digest, 1 << 20).unwrap();
        assert_eq!((ok.digest, ok.size), (layer, a.data.len() as u64));
        assert_eq!(ok.annotations["k"], "v");
        assert!(ok.annotations.contains_key(ANNOTATION_CREATED));
        let desc = referrer_desc(&raw).unwrap();
        assert_eq!(
            desc.artifact_type.as_deref(),
            Some(a.artifact_type.as_str())
        );
        assert_eq!(desc.digest, d.to_string());
        // Another image, another type, too large: each refused by name.
        let other = Digest::of(b"other");
        let e = check_manifest(&d, &raw, &a.artifact_type, &other, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not the image"), "{e}");
        let e = check_manifest(&d, &raw, "application/x", &subject.digest, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("artifactType"), "{e}");
        let e = check_manifest(&d, &raw, &a.artifact_type, &subject.digest, 4).unwrap_err();
        assert!(matches!(e, OciError::TooLarge { .. }), "{e}");
        let e = check_manifest(&d, b"[]", &a.artifact_type, &subject.digest, 4).unwrap_err();
        assert!(e.to_string().contains("not an OCI manifest"), "{e}");
    }

    #[test]
    fn newest_first_by_created_then_position() {
        let r = |t: Option<&str>, n: u8| Referrer {
            digest: Digest::of(&[n]),
            size: 1,
            artifact_type: String::new(),
            annotations: t
                .map(|t| BTreeMap::from([(ANNOTATION_CREATED.to_string(), t.to_string())]))
                .unwrap_or_default(),
        };
        let mut list = vec![
            r(Some("2026-01-02T00:00:00Z"), 0),
            r(None, 1),
            r(Some("2026-03-01T10:00:00Z"), 2),
            r(Some("garbage"), 3),
            r(Some("2025-12-31T23:59:59Z"), 4),
        ];
        newest_first(&mut list);
        let order: Vec<Digest> = list.iter().map(|r| r.digest).collect();
        let want: Vec<Digest> = [2u8, 0, 4, 3, 1]
            .iter()
            .map(|n| Digest::of(&[*n]))
            .collect();
        assert_eq!(order, want);
        assert!(rfc3339_now().ends_with('Z'));
    }
}
