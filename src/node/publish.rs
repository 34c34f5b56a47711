//! Publishing: a `.clip` index or a startup profile becomes an OCI artifact
//! attached to the image's manifest in the image's own repository
//! (`clipctl index --push`, `clipctl profile push`, and a daemon's
//! `--profile-push`), so every node of a fleet finds it. The artifact and
//! annotation names are specified in docs/format.md ("Published
//! artifacts"). Only the index or profile is uploaded, never image bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::profile::{check_profile_fits, node_profile_path};
use super::source::{connect, resolve_remote, RemoteImage};
use super::NodeError;
use crate::digest::Digest;
use crate::format::{AccessProfile, Index, FORMAT_MAJOR, FORMAT_MINOR, PROFILE_VERSION};
use crate::oci::{Artifact, Attached, Platform, RegistryOptions, RegistrySource, Subject};

/// `artifactType` (and layer media type) of a published `.clip` index; the
/// version is the format's major.
pub const ARTIFACT_TYPE_INDEX: &str = "application/vnd.clip.index.v2";
/// `artifactType` (and layer media type) of a published startup profile.
pub const ARTIFACT_TYPE_PROFILE: &str = "application/vnd.clip.profile.v1+json";
/// Annotation: `major.minor` of the published index's format.
pub const ANNOTATION_INDEX_VERSION: &str = "dev.clip.index.version";
/// Annotation: the program that wrote the published index.
pub const ANNOTATION_WRITER: &str = "dev.clip.writer";
/// Annotation: the published profile's format version.
pub const ANNOTATION_PROFILE_VERSION: &str = "dev.clip.profile.version";
/// Annotation: how many ranges the published profile holds.
pub const ANNOTATION_PROFILE_RANGES: &str = "dev.clip.profile.ranges";
/// Annotation: uncompressed bytes the published profile covers.
pub const ANNOTATION_PROFILE_BYTES: &str = "dev.clip.profile.bytes";
/// Annotation: the recording window of the published profile (seconds).
pub const ANNOTATION_PROFILE_WINDOW: &str = "dev.clip.profile.window-secs";
/// Annotation: the host name of the node that published.
pub const ANNOTATION_NODE: &str = "dev.clip.node";

/// A daemon's publishing client gives up sooner than a mount's reads: a
/// profile that cannot be published stays on the node, and the daemon
/// must not linger at unmount.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a daemon publishes the profiles it records (`--profile-push`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishTarget {
    /// The image in its registry (the blobs' source; pinned by digest).
    pub reference: String,
    /// Registries allowed over plain HTTP.
    pub insecure: Vec<String>,
}

fn options(insecure: &[String]) -> RegistryOptions {
    RegistryOptions {
        insecure_registries: insecure.to_vec(),
        ..Default::default()
    }
}

/// Uploads the index at `clip` to `reference`'s repository, attached to
/// the image it describes (which must be the image `reference` names
/// there: the caller indexed it from there).
pub fn publish_index(
    reference: &str,
    insecure: &[String],
    clip: &Path,
) -> Result<Attached, NodeError> {
    let bytes = std::fs::read(clip).map_err(NodeError::io("reading", clip))?;
    let index = Index::from_bytes(bytes.clone()).map_err(|source| NodeError::OpenIndex {
        path: clip.to_path_buf(),
        source,
    })?;
    let meta = index.meta();
    let subject = subject_of(meta.manifest.as_bytes(), meta.manifest_digest)?;
    let annotations = BTreeMap::from([
        (
            ANNOTATION_INDEX_VERSION.to_string(),
            format!("{FORMAT_MAJOR}.{FORMAT_MINOR}"),
        ),
        (ANNOTATION_WRITER.to_string(), meta.writer.clone()),
    ]);
    let artifact = Artifact {
        artifact_type: ARTIFACT_TYPE_INDEX.to_string(),
        data: bytes,
        title: "image.clip".to_string(),
        annotations,
    };
    let (_, source) = connect(reference, &options(insecure))?;
    attach(&source, reference, &subject, artifact)
}

/// Publishes a startup profile of the image `reference` names: the file
/// `from`, else the node's profile of that image. It must fit the image
/// (recorded on it, when it says, and naming its layers). Returns what was
/// attached and the file published.
pub fn push_profile(
    reference: &str,
    insecure: &[String],
    platform: Option<&Platform>,
    node_dir: &Path,
    from: Option<&Path>,
) -> Result<(Attached, PathBuf), NodeError> {
    let RemoteImage { source, image, .. } = resolve_remote(reference, insecure, platform)?;
    let path = match from {
        Some(p) => p.to_path_buf(),
        None => {
            let p = node_profile_path(node_dir, &image.manifest_digest)?;
            if !p.exists() {
                return Err(NodeError::NoProfile { path: p });
            }
            p
        }
    };
    let mut profile = AccessProfile::load(&path)?;
    let layers: Vec<Digest> = image.layers.iter().map(|l| l.digest).collect();
    check_profile_fits(&profile, image.manifest_digest, &layers)?;
    profile.manifest = Some(image.manifest_digest);
    let attached = publish_profile(&source, reference, &image.manifest_raw, &profile)?;
    Ok((attached, path))
}

/// Uploads `profile` to `source`'s repository, attached to the manifest
/// `manifest_raw` (the image it was recorded on).
pub(super) fn publish_profile(
    source: &RegistrySource,
    reference: &str,
    manifest_raw: &[u8],
    profile: &AccessProfile,
) -> Result<Attached, NodeError> {
    let subject = subject_of(manifest_raw, profile.manifest)?;
    let mut annotations = BTreeMap::from([
        (
            ANNOTATION_PROFILE_VERSION.to_string(),
            PROFILE_VERSION.to_string(),
        ),
        (
            ANNOTATION_PROFILE_RANGES.to_string(),
            profile.ranges.len().to_string(),
        ),
        (
            ANNOTATION_PROFILE_BYTES.to_string(),
            profile.bytes().to_string(),
        ),
        (
            ANNOTATION_PROFILE_WINDOW.to_string(),
            profile.window_secs.to_string(),
        ),
    ]);
    if let Some(host) = hostname() {
        annotations.insert(ANNOTATION_NODE.to_string(), host);
    }
    let artifact = Artifact {
        artifact_type: ARTIFACT_TYPE_PROFILE.to_string(),
        // Plain numbers and strings: serializing cannot fail.
        data: serde_json::to_vec(profile).unwrap_or_default(),
        title: "profile.json".to_string(),
        annotations,
    };
    attach(source, reference, &subject, artifact)
}

/// Publishes a daemon's recording of the image whose manifest is
/// `manifest_raw`. A node that may not push (or cannot reach the registry)
/// logs one line; the profile stays on the node either way.
pub(super) fn publish_recording(
    target: &PublishTarget,
    manifest_raw: &[u8],
    profile: &AccessProfile,
) {
    let opts = RegistryOptions {
        timeout: PUBLISH_TIMEOUT,
        retries: 1,
        ..options(&target.insecure)
    };
    let published = connect(&target.reference, &opts)
        .and_then(|(_, source)| publish_profile(&source, &target.reference, manifest_raw, profile));
    match published {
        Ok(a) => tracing::info!(
            artifact = %a.digest,
            via = ?a.via,
            reference = %target.reference,
            "published the startup profile"
        ),
        Err(e) => tracing::warn!("cannot publish the startup profile (it stays on this node): {e}"),
    }
}

fn attach(
    source: &RegistrySource,
    reference: &str,
    subject: &Subject,
    artifact: Artifact,
) -> Result<Attached, NodeError> {
    source
        .attach(subject, artifact)
        .map_err(|source| NodeError::Publish {
            reference: reference.to_string(),
            source,
        })
}

/// The subject descriptor of manifest `raw`, which must be `expected`.
fn subject_of(raw: &[u8], expected: Option<Digest>) -> Result<Subject, NodeError> {
    let subject = Subject::of_manifest(raw);
    match expected {
        Some(d) if d == subject.digest => Ok(subject),
        _ => Err(NodeError::NoSubject),
    }
}

/// This machine's host name, if it has one.
fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}
