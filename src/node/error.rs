//! [`NodeError`]: why a node operation failed, with the failing module's
//! own error kept as the source.

use std::path::PathBuf;

use crate::archive::ArchiveError;
use crate::digest::Digest;
use crate::format::{FormatError, ProfileError};
use crate::fuse::FsError;
use crate::index::IndexError;
use crate::mount::MountError;
use crate::oci::OciError;
use crate::source::SourceError;

/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The index file could not be opened.
    #[error("opening {}: {source}", path.display())]
    OpenIndex {
        /// The `.clip` file.
        path: PathBuf,
        /// The error.
        source: FormatError,
    },
    /// A record of an opened index could not be read.
    #[error("index: {0}")]
    IndexRecord(#[source] FormatError),
    /// An image reference does not parse.
    #[error("invalid image reference {reference:?}: {source}")]
    BadReference {
        /// The reference as given.
        reference: String,
        /// The parse error.
        source: OciError,
    },
    /// An OCI layout could not be opened.
    #[error("OCI layout {layout}: {source}")]
    Layout {
        /// `DIR[:TAG]` as given.
        layout: String,
        /// The error.
        source: OciError,
    },
    /// A layout holds another image than the index describes.
    #[error("OCI layout {layout} holds image {found}, but the index describes {wanted}")]
    LayoutMismatch {
        /// `DIR[:TAG]` as given.
        layout: String,
        /// The layout's manifest digest.
        found: Digest,
        /// The index's manifest digest.
        wanted: Digest,
    },
    /// Neither an image reference nor an OCI layout was given.
    #[error("neither an image reference nor an OCI layout was given")]
    NoImage,
    /// The index records no place its blobs can be read from.
    #[error("the index names neither a registry reference nor an OCI layout")]
    NoSource,
    /// The registry client could not be set up.
    #[error("registry for {reference}: {source}")]
    Registry {
        /// The image reference.
        reference: String,
        /// The error.
        source: OciError,
    },
    /// The image could not be resolved to a manifest.
    #[error("resolving {reference}: {source}")]
    Resolve {
        /// The image reference.
        reference: String,
        /// The error.
        source: OciError,
    },
    /// The first layer could not be read: the source is unusable.
    #[error("cannot read layer {digest} of the image: {source}")]
    Probe {
        /// The layer blob.
        digest: Digest,
        /// The error.
        source: SourceError,
    },
    /// Indexing an image failed.
    #[error("indexing {reference}: {source}")]
    Indexing {
        /// The image reference.
        reference: String,
        /// The error.
        source: Box<IndexError>,
    },
    /// An index could not be written.
    #[error("writing {}: {source}", path.display())]
    WriteIndex {
        /// The `.clip` file.
        path: PathBuf,
        /// The error.
        source: FormatError,
    },
    /// A startup profile could not be read.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// A startup profile belongs to another image.
    #[error("profile {} was recorded for image {recorded}, not {image}", path.display())]
    ProfileImage {
        /// The profile file.
        path: PathBuf,
        /// The image it names.
        recorded: Digest,
        /// The image being mounted.
        image: Digest,
    },
    /// A profile does not fit the image.
    #[error("the profile does not fit the image: {reason}")]
    ProfileFit {
        /// Why.
        reason: String,
    },
    /// Listing or pulling what is published for an image failed.
    #[error("pulling from {reference}: {source}")]
    Pull {
        /// The image reference.
        reference: String,
        /// The error.
        source: OciError,
    },
    /// A published artifact is not for this image or not what it says.
    #[error("artifact {artifact} refused: {reason}")]
    Refused {
        /// Digest of the artifact's manifest.
        artifact: Digest,
        /// What is wrong with it.
        reason: String,
    },
    /// `--index pull` found no usable published index.
    #[error("no usable index of {reference} is published ({why}); use --index auto or build to index it on this node")]
    NoPublishedIndex {
        /// The image reference.
        reference: String,
        /// Why not: nothing attached, or the last refusal.
        why: String,
    },
    /// Publishing an index or a profile failed.
    #[error("publishing to {reference}: {source}")]
    Publish {
        /// The image reference.
        reference: String,
        /// The error.
        source: OciError,
    },
    /// `profile push` without `--from` on a node that has no profile.
    #[error("this node has no startup profile of the image ({}); record one with `clipctl mount` or give --from FILE", path.display())]
    NoProfile {
        /// Where the node's profile would be.
        path: PathBuf,
    },
    /// What is to be published does not name the image it is for.
    #[error("the index or profile names no image manifest (or not the one it holds) to attach to")]
    NoSubject,
    /// A file or thread operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// An archive could not be opened or read.
    #[error("{location}: {source}")]
    Archive {
        /// The archive: a path or `s3://BUCKET/KEY`.
        location: String,
        /// The error.
        source: ArchiveError,
    },
    /// An archive's object could not be opened (the error names it).
    #[error(transparent)]
    ArchiveObject(SourceError),
    /// The archive behind a mount is not the one it was mounted from.
    #[error("{location} has changed since it was mounted (data {found}, the mount serves {wanted}); mount it again")]
    ArchiveChanged {
        /// The archive.
        location: String,
        /// Digest of its data section now.
        found: Digest,
        /// Digest of the data section the mount's index describes.
        wanted: Digest,
    },
    /// Mounting, the daemon or its spec.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// The filesystem could not be built.
    #[error("filesystem: {0}")]
    Fs(#[source] Box<FsError>),
}

impl NodeError {
    pub(super) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| NodeError::Io { what, path, source }
    }
}
