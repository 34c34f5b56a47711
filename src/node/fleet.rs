//! The fleet learns once: before a mount indexes an image by itself it looks
//! in the image's registry for a published index ([`IndexPolicy`]), and a
//! node without a startup profile of the image looks for a published one
//! ([`prepare_mount`]). One referrers listing serves both. Everything pulled
//! is verified against the image it is for (digests by `oci`; here: the
//! index must describe this manifest, its layers and diff_ids, a profile
//! must name this manifest and its layers); a refused artifact is logged
//! with its reason and skipped, the next newest is tried. [`Provenance`]
//! says where a mount's index and profile came from (daemon log, `clipctl
//! ps`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::profile::{check_profile_fits, node_profile_path};
use super::publish::{ARTIFACT_TYPE_INDEX, ARTIFACT_TYPE_PROFILE};
use super::source::{connect, resolve_remote, RemoteImage};
use super::NodeError;
use crate::digest::Digest;
use crate::format::{write_index_file, AccessProfile, ImageMeta, Index};
use crate::index::{IndexOptions, Progress};
use crate::oci::{
    newest_first, Platform, Referrer, ReferrersVia, RegistryOptions, RegistrySource, ResolvedImage,
};

/// Largest published profile downloaded (the profile file limit).
const MAX_PROFILE_ARTIFACT: u64 = 16 << 20;
/// A published index may be this much larger than a quarter of the image's
/// compressed size (real ones are 1–3 % of it).
const INDEX_ARTIFACT_SLACK: u64 = 64 << 20;
/// Published artifacts of one kind tried before giving up (each refused
/// one costs a few round trips).
const MAX_TRIES: usize = 4;

/// Where a mount of an image reference gets its index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexPolicy {
    /// The node's own, else a published one, else build one.
    #[default]
    Auto,
    /// The node's own, else a published one; never build.
    Pull,
    /// The node's own, else build one; never look in the registry.
    Build,
}

impl std::str::FromStr for IndexPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(IndexPolicy::Auto),
            "pull" => Ok(IndexPolicy::Pull),
            "build" => Ok(IndexPolicy::Build),
            _ => Err(format!("{s:?}: want auto, pull or build")),
        }
    }
}

/// Where a mount's index came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum IndexOrigin {
    /// Given by the user (`--clip`).
    Given {
        /// The file.
        path: PathBuf,
    },
    /// Built on this node (now, or by an earlier mount).
    Built,
    /// Published in the registry (pulled now, or by an earlier mount).
    Pulled {
        /// Digest of the artifact's manifest.
        artifact: Digest,
    },
    /// Embedded in a `.clip` archive, which also holds the data.
    Archive {
        /// The archive: a path or `s3://BUCKET/KEY`.
        location: String,
    },
}

impl std::fmt::Display for IndexOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexOrigin::Given { path } => write!(f, "given ({})", path.display()),
            IndexOrigin::Built => f.write_str("built on this node"),
            IndexOrigin::Pulled { artifact } => write!(f, "pulled (artifact {artifact})"),
            IndexOrigin::Archive { location } => write!(f, "archive ({location})"),
        }
    }
}

/// Where a mount's index and startup profile came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// The index.
    pub index: IndexOrigin,
    /// The published profile this mount pulled (artifact digest), if any.
    pub profile_pulled: Option<Digest>,
}

impl Default for Provenance {
    fn default() -> Self {
        Provenance {
            index: IndexOrigin::Built,
            profile_pulled: None,
        }
    }
}

/// What `clipctl mount` asks for, before any daemon is started.
#[derive(Debug, Clone)]
pub struct MountPlan<'a> {
    /// The node dir (`indexes/`, `profiles/`).
    pub node_dir: &'a Path,
    /// An index given by the user (then `image` is only where blobs are).
    pub clip: Option<&'a Path>,
    /// The image reference.
    pub image: Option<&'a str>,
    /// Platform of a multi-platform image.
    pub platform: Option<&'a Platform>,
    /// Registries allowed over plain HTTP.
    pub insecure: &'a [String],
    /// Where the index comes from when `clip` is not given.
    pub index: IndexPolicy,
    /// Look for a published startup profile when the node has none of the
    /// image (the `--profile auto` case).
    pub profile: bool,
}

/// A mount made ready: its index, where things came from, where the blobs
/// are read from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The `.clip` index.
    pub clip: PathBuf,
    /// Where the index and the profile came from.
    pub provenance: Provenance,
    /// The registry reference the blobs are read from (pinned by digest
    /// for an image reference), unless where the index says.
    pub source_image: Option<String>,
}

/// Prepares a mount: with `clip`, only a published profile is looked for
/// (when `image` names a registry); else the image is resolved, and its
/// index is the node's (`<node-dir>/indexes/<manifest-hex>.clip`), a
/// published one or one built now, as `plan.index` says.
pub fn prepare_mount(plan: &MountPlan<'_>) -> Result<Prepared, NodeError> {
    if let Some(clip) = plan.clip {
        let mut provenance = Provenance {
            index: IndexOrigin::Given {
                path: clip.to_path_buf(),
            },
            profile_pulled: None,
        };
        if let (true, Some(reference)) = (plan.profile, plan.image) {
            let index = Index::open(clip).map_err(|source| NodeError::OpenIndex {
                path: clip.to_path_buf(),
                source,
            })?;
            if let Some(manifest) = index.meta().manifest_digest {
                let layers = (0..index.layer_count())
                    .map(|i| index.layer(i).map(|l| l.digest()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(NodeError::IndexRecord)?;
                let opts = RegistryOptions {
                    insecure_registries: plan.insecure.to_vec(),
                    ..Default::default()
                };
                let (_, source) = connect(reference, &opts)?;
                let remote = Remote::new(&source, reference, manifest);
                provenance.profile_pulled = remote.profile(plan.node_dir, &layers, None)?;
            }
        }
        return Ok(Prepared {
            clip: clip.to_path_buf(),
            provenance,
            source_image: plan.image.map(str::to_string),
        });
    }
    let reference = plan.image.ok_or(NodeError::NoImage)?;
    let RemoteImage {
        source,
        image,
        pinned,
    } = resolve_remote(reference, plan.insecure, plan.platform)?;
    let remote = Remote::new(&source, reference, image.manifest_digest);
    let dir = plan.node_dir.join("indexes");
    std::fs::create_dir_all(&dir).map_err(NodeError::io("creating", &dir))?;
    let path = dir.join(format!("{}.clip", image.manifest_digest.hex()));
    let mut listing = None;
    let index = if Index::open(&path).is_ok() {
        read_origin(&path)
    } else {
        let pulled = match plan.index {
            IndexPolicy::Build => None,
            policy => {
                let list = remote.list(policy == IndexPolicy::Pull)?;
                let pulled = remote.index(&image, &list, &path, policy == IndexPolicy::Pull)?;
                listing = Some(list);
                pulled
            }
        };
        let origin = match pulled {
            Some(artifact) => IndexOrigin::Pulled { artifact },
            None => {
                let meta = ImageMeta {
                    reference: Some(reference.to_string()),
                    pinned_reference: Some(pinned.clone()),
                    ..Default::default()
                };
                build(&image, &source, meta, reference, &path)?;
                IndexOrigin::Built
            }
        };
        write_origin(&path, &origin);
        origin
    };
    let profile_pulled = if plan.profile {
        let layers: Vec<Digest> = image.layers.iter().map(|l| l.digest).collect();
        remote.profile(plan.node_dir, &layers, listing)?
    } else {
        None
    };
    Ok(Prepared {
        clip: path,
        provenance: Provenance {
            index,
            profile_pulled,
        },
        source_image: Some(pinned),
    })
}

/// What is published for the image `reference` names: its manifest digest,
/// the artifacts attached to it (newest first) and how the registry lists
/// them.
pub fn published(
    reference: &str,
    insecure: &[String],
    platform: Option<&Platform>,
) -> Result<(Digest, Vec<Referrer>, ReferrersVia), NodeError> {
    let RemoteImage { source, image, .. } = resolve_remote(reference, insecure, platform)?;
    let (mut list, via) = source
        .referrers(&image.manifest_digest, None)
        .map_err(|source| NodeError::Pull {
            reference: reference.to_string(),
            source,
        })?;
    newest_first(&mut list);
    Ok((image.manifest_digest, list, via))
}

/// Builds the index of `image` into `path`.
fn build(
    image: &ResolvedImage,
    source: &RegistrySource,
    meta: ImageMeta,
    reference: &str,
    path: &Path,
) -> Result<(), NodeError> {
    let data = crate::index::build(
        image,
        source,
        meta,
        &IndexOptions::default(),
        &Progress::default(),
    )
    .map_err(|source| NodeError::Indexing {
        reference: reference.to_string(),
        source: Box::new(source),
    })?;
    write_index_file(&data, path, Default::default()).map_err(|source| NodeError::WriteIndex {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(())
}

/// `<index>.origin.json` beside a node's index: how it got there.
fn origin_path(index: &Path) -> PathBuf {
    index.with_extension("origin.json")
}

/// The recorded origin of a node's index (built, when not recorded).
fn read_origin(index: &Path) -> IndexOrigin {
    std::fs::read(origin_path(index))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(IndexOrigin::Built)
}

fn write_origin(index: &Path, origin: &IndexOrigin) {
    let path = origin_path(index);
    // Best effort: without it a pulled index later reads as built.
    let json = serde_json::to_vec(origin).unwrap_or_default();
    if let Err(e) = write_atomic(&path, &json) {
        tracing::warn!(path = %path.display(), error = %e, "cannot record where the index came from");
    }
}

/// Writes `data` to `path` through a temporary file in the same directory.
fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".pull-").tempfile_in(dir)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// The published artifacts of one image in its registry.
struct Remote<'a> {
    source: &'a RegistrySource,
    reference: &'a str,
    manifest: Digest,
}

impl<'a> Remote<'a> {
    fn new(source: &'a RegistrySource, reference: &'a str, manifest: Digest) -> Self {
        Remote {
            source,
            reference,
            manifest,
        }
    }

    fn pull_error(&self, source: crate::oci::OciError) -> NodeError {
        NodeError::Pull {
            reference: self.reference.to_string(),
            source,
        }
    }

    /// Everything attached to the image. A failure is an error when
    /// `required`, else a warning and an empty list.
    fn list(&self, required: bool) -> Result<Vec<Referrer>, NodeError> {
        match self.source.referrers(&self.manifest, None) {
            Ok((list, via)) => {
                tracing::debug!(count = list.len(), ?via, "published artifacts");
                Ok(list)
            }
            Err(e) if required => Err(self.pull_error(e)),
            Err(e) => {
                tracing::warn!(
                    "cannot list what is published for the image: {}",
                    self.pull_error(e)
                );
                Ok(Vec::new())
            }
        }
    }

    /// The newest `artifact_type` artifacts of `list`, at most [`MAX_TRIES`].
    fn candidates(list: &[Referrer], artifact_type: &str) -> Vec<Referrer> {
        let mut c: Vec<Referrer> = list
            .iter()
            .filter(|r| r.artifact_type == artifact_type)
            .cloned()
            .collect();
        newest_first(&mut c);
        c.truncate(MAX_TRIES);
        c
    }

    /// Pulls the newest published index of `image` that passes the checks
    /// into `path`. Refused ones are logged and skipped; with none left,
    /// `required` makes that an error naming the last refusal.
    fn index(
        &self,
        image: &ResolvedImage,
        list: &[Referrer],
        path: &Path,
        required: bool,
    ) -> Result<Option<Digest>, NodeError> {
        let mut why = "nothing of type ".to_string() + ARTIFACT_TYPE_INDEX + " is attached";
        for r in Self::candidates(list, ARTIFACT_TYPE_INDEX) {
            match self.fetch_index(&r, image) {
                Ok(data) => {
                    write_atomic(path, &data).map_err(NodeError::io("writing", path))?;
                    tracing::info!(artifact = %r.digest, bytes = data.len(), "pulled the published index");
                    return Ok(Some(r.digest));
                }
                Err(e) => {
                    tracing::warn!("{e}; ignoring it");
                    why = e.to_string();
                }
            }
        }
        if required {
            return Err(NodeError::NoPublishedIndex {
                reference: self.reference.to_string(),
                why,
            });
        }
        Ok(None)
    }

    fn fetch_index(&self, r: &Referrer, image: &ResolvedImage) -> Result<Vec<u8>, NodeError> {
        let compressed: u64 = image.layers.iter().map(|l| l.size).sum();
        let max = INDEX_ARTIFACT_SLACK.saturating_add(compressed / 4);
        let pulled = self
            .source
            .fetch_artifact(r, ARTIFACT_TYPE_INDEX, &self.manifest, max)
            .map_err(|e| self.pull_error(e))?;
        let refused = |reason: String| NodeError::Refused {
            artifact: r.digest,
            reason,
        };
        let index = Index::from_bytes(pulled.data.clone())
            .map_err(|e| refused(format!("not a usable index: {e}")))?;
        index_matches(&index, image).map_err(refused)?;
        Ok(pulled.data)
    }

    /// When the node has no profile of the image: pulls the newest
    /// published one that passes the checks into the node's profile file
    /// (from `list`, else a new listing). Never an error: without one the
    /// mount records its own.
    fn profile(
        &self,
        node_dir: &Path,
        layers: &[Digest],
        list: Option<Vec<Referrer>>,
    ) -> Result<Option<Digest>, NodeError> {
        let dest = node_profile_path(node_dir, &self.manifest)?;
        if dest.exists() {
            return Ok(None);
        }
        let list = match list {
            Some(l) => l,
            None => self.list(false)?,
        };
        for r in Self::candidates(&list, ARTIFACT_TYPE_PROFILE) {
            match self.fetch_profile(&r, layers) {
                Ok(p) => match p.save(&dest) {
                    Ok(()) => {
                        tracing::info!(artifact = %r.digest, ranges = p.ranges.len(), bytes = p.bytes(), "pulled a published startup profile");
                        return Ok(Some(r.digest));
                    }
                    Err(e) => {
                        tracing::warn!("cannot keep the published startup profile: {e}");
                        return Ok(None);
                    }
                },
                Err(e) => tracing::warn!("{e}; ignoring it"),
            }
        }
        Ok(None)
    }

    fn fetch_profile(&self, r: &Referrer, layers: &[Digest]) -> Result<AccessProfile, NodeError> {
        let pulled = self
            .source
            .fetch_artifact(
                r,
                ARTIFACT_TYPE_PROFILE,
                &self.manifest,
                MAX_PROFILE_ARTIFACT,
            )
            .map_err(|e| self.pull_error(e))?;
        let refused = |reason: String| NodeError::Refused {
            artifact: r.digest,
            reason,
        };
        let p = AccessProfile::from_json(&pulled.data)
            .map_err(|e| refused(format!("not a clip access profile: {e}")))?;
        if p.manifest.is_none() {
            return Err(refused("the profile names no image".into()));
        }
        check_profile_fits(&p, self.manifest, layers).map_err(|e| refused(e.to_string()))?;
        Ok(p)
    }
}

/// Whether `index` describes `image`: its manifest, and every layer's blob
/// digest, size and diff_id, in order.
fn index_matches(index: &Index, image: &ResolvedImage) -> Result<(), String> {
    let meta = index.meta();
    if meta.manifest_digest != Some(image.manifest_digest) {
        return Err(format!(
            "it describes image {}, not {}",
            meta.manifest_digest
                .map_or("(unnamed)".to_string(), |d| d.to_string()),
            image.manifest_digest
        ));
    }
    if index.layer_count() as usize != image.layers.len() {
        return Err(format!(
            "it has {} layers, the image {}",
            index.layer_count(),
            image.layers.len()
        ));
    }
    for (i, (layer, diff_id)) in image.layers.iter().zip(&image.diff_ids).enumerate() {
        let l = index.layer(i as u32).map_err(|e| e.to_string())?;
        if l.digest() != layer.digest
            || l.diff_id() != *diff_id
            || l.compressed_size() != layer.size
        {
            return Err(format!(
                "its layer {i} is {} (diff_id {}, {} bytes), the image's is {} (diff_id {diff_id}, {} bytes)",
                l.digest(),
                l.diff_id(),
                l.compressed_size(),
                layer.digest,
                layer.size
            ));
        }
    }
    Ok(())
}
