//! Archives as mounts: [`ArchiveLocation`] (where a `.clip` archive is, a
//! local file or `s3://BUCKET/KEY`, and how to reach S3), opened into an
//! [`Archive`] whose data section is the blob source of the mount
//! ([`SourceChoice::archive`](super::SourceChoice)), and [`prepare_archive`],
//! which saves the archive's embedded index on the node so that the mount,
//! its daemon, `ps`, `metrics` and `umount` treat it as any index.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::profile::node_profile_path;
use super::{IndexOrigin, NodeError, Prepared, ProfileMode, Provenance};
use crate::archive::Archive;
use crate::digest::Digest;
use crate::format::Index;
use crate::object::{FileObject, ObjectRead};
use crate::s3::{S3Client, S3Options, S3Url};
use crate::source::{BlobSource, SourceError};

/// Where an archive is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ArchiveLocation {
    /// An absolute path, or `s3://BUCKET/KEY`.
    pub location: String,
    /// Endpoint of an S3-compatible store (`--s3-endpoint`); `None`: from
    /// the environment or the AWS profile, else AWS. Credentials always come
    /// from the environment or the profile files, never from here.
    pub s3_endpoint: Option<String>,
}

impl ArchiveLocation {
    /// A location as the user gave it: a local path is made absolute (a
    /// daemon runs in `/`).
    pub fn new(location: &str, s3_endpoint: Option<String>) -> Result<Self, NodeError> {
        let location = if S3Url::is_s3(location) {
            location.to_string()
        } else {
            std::path::absolute(location)
                .map_err(NodeError::io("resolving", location))?
                .display()
                .to_string()
        };
        Ok(ArchiveLocation {
            location,
            s3_endpoint,
        })
    }

    /// Opens the object for range reads (for S3: one GET of its head).
    pub fn open_object(&self) -> Result<Arc<dyn ObjectRead>, SourceError> {
        open_object(&self.location, self.s3_endpoint.as_deref())
    }

    /// Opens and checks the archive.
    pub fn open(&self) -> Result<Archive, NodeError> {
        let err = |source| NodeError::Archive {
            location: self.location.clone(),
            source,
        };
        let object = self.open_object().map_err(NodeError::ArchiveObject)?;
        Archive::open(object).map_err(err)
    }
}

/// Opens `location` (a local path or `s3://BUCKET/KEY`) for range reads,
/// S3 at `s3_endpoint` (else the environment's).
pub fn open_object(
    location: &str,
    s3_endpoint: Option<&str>,
) -> Result<Arc<dyn ObjectRead>, SourceError> {
    if S3Url::is_s3(location) {
        Ok(Arc::new(s3_client(location, s3_endpoint)?.open()?))
    } else {
        Ok(Arc::new(FileObject::open(Path::new(location))?))
    }
}

/// A client for the S3 object `location`, at `s3_endpoint` (else the
/// environment's).
pub fn s3_client(location: &str, s3_endpoint: Option<&str>) -> Result<S3Client, SourceError> {
    let url: S3Url = location.parse()?;
    let opts = S3Options {
        endpoint: s3_endpoint.map(str::to_string),
        keys: None,
    };
    Ok(S3Client::connect(&url, &opts)?)
}

/// The digest of an archive's data section, as its index records it: what
/// names the archive on the node (its saved index, its run dir, its
/// startup profile).
fn data_digest(index: &Index) -> Result<Digest, NodeError> {
    Ok(index.layer(0).map_err(NodeError::IndexRecord)?.digest())
}

/// A mount of an archive made ready: its index saved on the node, and the
/// key of its run dir and daemon.
#[derive(Debug, Clone)]
pub struct PreparedArchive {
    /// The saved index and its provenance; no registry is involved.
    pub prepared: Prepared,
    /// The image key of the mount (hex of the data digest): an archive
    /// made from an image never shares the image's daemon.
    pub image_key: String,
}

/// Opens the archive at `location` (checking its header and embedded
/// index) and saves that index, byte for byte, as
/// `<node_dir>/archives/<data-hex>.clip` (written through a temp file and
/// a rename; kept if already there and equal).
pub fn prepare_archive(
    node_dir: &Path,
    location: &ArchiveLocation,
) -> Result<PreparedArchive, NodeError> {
    let archive = location.open()?;
    let digest = data_digest(archive.index())?;
    let range = archive.index_range();
    let mut bytes = vec![0u8; (range.end - range.start) as usize];
    // Inside the head read of `open`: no second request.
    archive
        .object()
        .read_exact_at(range.start, &mut bytes)
        .map_err(|e| NodeError::Archive {
            location: location.location.clone(),
            source: e.into(),
        })?;
    let dir = node_dir.join("archives");
    std::fs::create_dir_all(&dir).map_err(NodeError::io("creating", &dir))?;
    let clip = std::path::absolute(dir.join(format!("{}.clip", digest.hex())))
        .map_err(NodeError::io("resolving", &dir))?;
    if std::fs::read(&clip).ok().as_deref() != Some(&bytes[..]) {
        save(&dir, &clip, &bytes)?;
    }
    Ok(PreparedArchive {
        prepared: Prepared {
            clip,
            provenance: Provenance {
                index: IndexOrigin::Archive {
                    location: location.location.clone(),
                },
                profile_pulled: None,
            },
            source_image: None,
        },
        image_key: digest.hex(),
    })
}

fn save(dir: &Path, clip: &PathBuf, bytes: &[u8]) -> Result<(), NodeError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".archive-index-")
        .tempfile_in(dir)
        .map_err(NodeError::io("creating a temp file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(NodeError::io("writing", tmp.path().to_path_buf()))?;
    tmp.persist(clip)
        .map_err(|e| NodeError::io("renaming to", clip.clone())(e.error))?;
    Ok(())
}

/// The startup-profile mode of an archive mount: `auto` keeps the node's
/// profile under the data digest (never the manifest digest of the image
/// the archive was made from: its ranges are of other blobs); other
/// settings as for images.
pub fn archive_profile(
    setting: &str,
    node_dir: &Path,
    index: &Index,
) -> Result<ProfileMode, NodeError> {
    match setting {
        "auto" => Ok(ProfileMode::Auto(node_profile_path(
            node_dir,
            &data_digest(index)?,
        )?)),
        other => ProfileMode::resolve(other, node_dir, index),
    }
}

/// The blob source of a mount of `index` from the archive at `location`:
/// its data section, by range reads. Fails when the archive there is no
/// longer the one `index` was saved from.
pub(super) fn archive_source(
    index: &Index,
    location: &ArchiveLocation,
) -> Result<Arc<dyn BlobSource>, NodeError> {
    let archive = location.open()?;
    let (found, wanted) = (data_digest(archive.index())?, data_digest(index)?);
    if found != wanted {
        return Err(NodeError::ArchiveChanged {
            location: location.location.clone(),
            found,
            wanted,
        });
    }
    let source = archive.blob_source().map_err(|source| NodeError::Archive {
        location: location.location.clone(),
        source,
    })?;
    Ok(Arc::new(source))
}
