//! OCI image layout directories: `DIR[:TAG]` → `index.json` → manifest,
//! blobs read from `DIR/blobs/sha256/<hex>`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::manifest::{self, Descriptor, DocumentStore, ANNOTATION_REF_NAME};
use super::{OciError, Platform, ResolvedImage, MAX_DOCUMENT_BYTES};
use crate::digest::Digest;
use crate::source::{BlobSource, SourceError};

/// Blobs of an OCI image layout directory.
#[derive(Debug, Clone)]
pub struct LayoutSource {
    dir: PathBuf,
}

impl LayoutSource {
    /// A source over the layout at `dir` (no checks).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LayoutSource { dir: dir.into() }
    }

    /// The layout directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where blob `digest` lives.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir.join("blobs/sha256").join(digest.hex())
    }

    fn open_blob(&self, digest: &Digest) -> Result<File, SourceError> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => SourceError::NotFound { digest: *digest },
            _ => SourceError::Io {
                context: format!("opening {}", path.display()),
                source: e,
            },
        })
    }

    fn layout_err(path: &Path, reason: impl Into<String>) -> OciError {
        OciError::Layout {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// Reads a whole small file, capped at [`MAX_DOCUMENT_BYTES`].
    fn read_small(path: &Path) -> Result<Vec<u8>, OciError> {
        let f = File::open(path).map_err(|e| Self::layout_err(path, e.to_string()))?;
        let mut out = Vec::new();
        f.take(MAX_DOCUMENT_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Self::layout_err(path, e.to_string()))?;
        if out.len() as u64 > MAX_DOCUMENT_BYTES {
            return Err(OciError::TooLarge {
                what: path.display().to_string(),
                limit: MAX_DOCUMENT_BYTES,
            });
        }
        Ok(out)
    }

    fn read_verified(&self, d: &Descriptor) -> Result<Vec<u8>, OciError> {
        let digest = manifest::desc_digest(d)?;
        let path = self.blob_path(&digest);
        let raw = Self::read_small(&path)?;
        manifest::verify(&path.display().to_string(), d, &raw).map_err(|e| match e {
            OciError::DigestMismatch { .. } | OciError::BadManifest { .. } => {
                Self::layout_err(&path, e.to_string())
            }
            other => other,
        })?;
        Ok(raw)
    }
}

impl DocumentStore for LayoutSource {
    fn fetch_manifest(&self, d: &Descriptor) -> Result<(Vec<u8>, Option<String>), OciError> {
        Ok((self.read_verified(d)?, Some(d.media_type.clone())))
    }

    fn fetch_config(&self, d: &Descriptor) -> Result<Vec<u8>, OciError> {
        self.read_verified(d)
    }
}

impl BlobSource for LayoutSource {
    fn read_at(&self, digest: &Digest, offset: u64, buf: &mut [u8]) -> Result<usize, SourceError> {
        let f = self.open_blob(digest)?;
        let io_err = |e: io::Error| SourceError::Io {
            context: format!("reading {}", self.blob_path(digest).display()),
            source: e,
        };
        let len = f.metadata().map_err(io_err)?.len();
        if offset > len {
            return Err(SourceError::OutOfRange {
                digest: *digest,
                offset,
                len,
            });
        }
        let mut done = 0;
        while done < buf.len() {
            match f.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        Ok(done)
    }

    fn open(&self, digest: &Digest) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(io::BufReader::with_capacity(
            1 << 20,
            self.open_blob(digest)?,
        )))
    }
}

/// Splits `DIR[:TAG]`; a spec naming an existing directory is all `DIR`.
fn split_spec(spec: &str) -> (&str, Option<&str>) {
    if Path::new(spec).is_dir() {
        return (spec, None);
    }
    match spec.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
            (dir, Some(tag).filter(|t| !t.is_empty()))
        }
        _ => (spec, None),
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_REF_NAME))
        .map(String::as_str)
}

/// Opens the OCI layout `DIR[:TAG]` and resolves the image tagged `TAG`
/// (annotation `org.opencontainers.image.ref.name`; default `latest`, or the
/// only manifest if there is just one), selecting `platform` (default: the
/// host's) from a nested index. Manifest and config digests are verified.
pub fn open_layout(
    spec: &str,
    platform: Option<&Platform>,
) -> Result<(ResolvedImage, LayoutSource), OciError> {
    let (dir, tag) = split_spec(spec);
    let dir = Path::new(dir);
    let layout_file = dir.join("oci-layout");
    let raw = LayoutSource::read_small(&layout_file)?;
    let v: serde_json::Value = serde_json::from_slice(&raw)
        .map_err(|e| LayoutSource::layout_err(&layout_file, format!("not JSON: {e}")))?;
    if v.get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(LayoutSource::layout_err(
            &layout_file,
            "missing imageLayoutVersion",
        ));
    }
    let index_path = dir.join("index.json");
    let raw = LayoutSource::read_small(&index_path)?;
    let index = manifest::parse_index(&raw)
        .map_err(|e| LayoutSource::layout_err(&index_path, e.to_string()))?;
    let chosen = match tag {
        Some(t) => index.manifests.iter().find(|d| ref_name(d) == Some(t)),
        None => index
            .manifests
            .iter()
            .find(|d| ref_name(d) == Some("latest"))
            .or(if index.manifests.len() == 1 {
                index.manifests.first()
            } else {
                None
            }),
    };
    let Some(desc) = chosen else {
        let tags: Vec<&str> = index.manifests.iter().filter_map(ref_name).collect();
        return Err(OciError::NotFound {
            what: format!(
                "tag {} in {} (tags: {})",
                tag.unwrap_or("latest"),
                index_path.display(),
                if tags.is_empty() {
                    "none".to_string()
                } else {
                    tags.join(", ")
                }
            ),
        });
    };
    let source = LayoutSource::new(dir);
    let (raw, media_type) = source.fetch_manifest(desc)?;
    let want = platform.cloned().unwrap_or_else(Platform::host);
    let resolved = manifest::resolve_document(&source, raw, media_type, &want)?;
    Ok((resolved, source))
}
