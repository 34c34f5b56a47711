//! Where an image's blobs come from: [`SourceChoice`] and [`open_source`]
//! for an indexed image, [`open_image`] for one that is not indexed yet.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::archive::archive_source;
use super::{ArchiveLocation, NodeError};
use crate::format::{ImageMeta, Index};
use crate::oci::{
    open_layout, ImageRef, Platform, RegistryOptions, RegistrySource, RequestObserver,
    ResolvedImage,
};
use crate::source::BlobSource;

/// Where a mount reads blobs from, when not from where the image was indexed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SourceChoice {
    /// Another registry reference holding the same blobs (a mirror, a copy).
    pub image: Option<String>,
    /// An OCI layout `DIR[:TAG]` holding the same image (e.g. moved since
    /// indexing).
    pub layout: Option<String>,
    /// Registries (`host[:port]`) allowed over plain HTTP.
    pub insecure: Vec<String>,
    /// A `.clip` archive whose data section holds the blobs (the index is
    /// the archive's own, saved by [`super::prepare_archive`]); wins over
    /// the fields above.
    pub archive: Option<ArchiveLocation>,
}

/// Opens the blobs of an indexed image: an archive's data section, else
/// the source chosen at mount time, else the registry it was indexed from (pinned by digest), else its OCI
/// layout. Probes the first layer so that an unreachable source fails the
/// mount instead of every later read. `observer` hears about every HTTP
/// exchange (metrics).
pub fn open_source(
    index: &Index,
    choice: &SourceChoice,
    observer: Option<RequestObserver>,
) -> Result<Arc<dyn BlobSource>, NodeError> {
    let meta = index.meta();
    let source: Arc<dyn BlobSource> = if let Some(archive) = &choice.archive {
        archive_source(index, archive)?
    } else if let Some(spec) = choice.layout.as_ref().or(
        // A layout recorded at indexing time, unless a registry is chosen.
        meta.layout
            .as_ref()
            .filter(|_| choice.image.is_none() && meta.reference.is_none()),
    ) {
        let (image, src) = open_layout(spec, None).map_err(|source| NodeError::Layout {
            layout: spec.clone(),
            source,
        })?;
        match meta.manifest_digest {
            Some(wanted) if wanted != image.manifest_digest => {
                return Err(NodeError::LayoutMismatch {
                    layout: spec.clone(),
                    found: image.manifest_digest,
                    wanted,
                })
            }
            _ => Arc::new(src),
        }
    } else {
        let r = choice
            .image
            .as_ref()
            .or(meta.pinned_reference.as_ref())
            .or(meta.reference.as_ref())
            .ok_or(NodeError::NoSource)?;
        let opts = RegistryOptions {
            insecure_registries: choice.insecure.clone(),
            observer,
            ..Default::default()
        };
        Arc::new(connect(r, &opts)?.1)
    };
    if index.layer_count() > 0 {
        let digest = index.layer(0).map_err(NodeError::IndexRecord)?.digest();
        let mut probe = [0u8; 1];
        source
            .read_at(&digest, 0, &mut probe)
            .map_err(|source| NodeError::Probe { digest, source })?;
        source.warm_up(&digest, WARM_CONNECTIONS);
    }
    Ok(source)
}

/// Connections opened when a mount starts: one per prefetch thread (6 by
/// default) and two for readers, so a first start's parallel fetches find
/// them open instead of paying a round trip each to connect.
const WARM_CONNECTIONS: usize = 8;

/// Parses `reference` and connects to its registry.
pub(super) fn connect(
    reference: &str,
    opts: &RegistryOptions,
) -> Result<(ImageRef, RegistrySource), NodeError> {
    let image: ImageRef = reference
        .parse()
        .map_err(|source| NodeError::BadReference {
            reference: reference.to_string(),
            source,
        })?;
    let source = RegistrySource::connect(&image, opts).map_err(|source| NodeError::Registry {
        reference: reference.to_string(),
        source,
    })?;
    Ok((image, source))
}

/// An image resolved in its registry, and the connection to it.
pub(super) struct RemoteImage {
    /// The registry connection (blobs, referrers, pushes).
    pub source: RegistrySource,
    /// Manifest, config, layers.
    pub image: ResolvedImage,
    /// `host/repo@sha256:…`.
    pub pinned: String,
}

/// Connects to `reference`'s registry (plain HTTP where `insecure`
/// allows) and resolves it for `platform` (the host's when `None`).
pub(super) fn resolve_remote(
    reference: &str,
    insecure: &[String],
    platform: Option<&Platform>,
) -> Result<RemoteImage, NodeError> {
    let opts = RegistryOptions {
        insecure_registries: insecure.to_vec(),
        platform: platform.cloned(),
        ..Default::default()
    };
    let (r, source) = connect(reference, &opts)?;
    let image = source.resolve().map_err(|source| NodeError::Resolve {
        reference: reference.to_string(),
        source,
    })?;
    let pinned = ImageRef {
        tag: None,
        digest: Some(image.manifest_digest),
        ..r
    }
    .to_string();
    Ok(RemoteImage {
        source,
        image,
        pinned,
    })
}

/// A resolved image, its blob source and where it came from.
pub struct OpenedImage {
    /// Manifest, config, layers.
    pub image: ResolvedImage,
    /// Serves the layer blobs.
    pub source: Box<dyn BlobSource>,
    /// Provenance for the index META.
    pub meta: ImageMeta,
}

impl std::fmt::Debug for OpenedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedImage")
            .field("manifest", &self.image.manifest_digest)
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// Resolves an image in a registry (`image`) or an OCI layout (`layout`,
/// which wins) into its manifest and a blob source, for indexing.
pub fn open_image(
    image: Option<&str>,
    layout: Option<&str>,
    platform: Option<&Platform>,
    insecure: &[String],
) -> Result<OpenedImage, NodeError> {
    if let Some(spec) = layout {
        let (image, source) = open_layout(spec, platform).map_err(|source| NodeError::Layout {
            layout: spec.to_string(),
            source,
        })?;
        let meta = ImageMeta {
            layout: Some(spec.to_string()),
            ..Default::default()
        };
        return Ok(OpenedImage {
            image,
            source: Box::new(source),
            meta,
        });
    }
    let reference = image.ok_or(NodeError::NoImage)?;
    let RemoteImage {
        source,
        image,
        pinned,
    } = resolve_remote(reference, insecure, platform)?;
    let meta = ImageMeta {
        reference: Some(reference.to_string()),
        pinned_reference: Some(pinned),
        ..Default::default()
    };
    Ok(OpenedImage {
        image,
        source: Box::new(source),
        meta,
    })
}
