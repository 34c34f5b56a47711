//! The crate-wide error: a roll-up of every module's error type, for
//! callers that drive several modules (the CLI, embedders). Each module
//! keeps its own typed error; this only wraps them with `#[from]`.

use crate::archive::ArchiveError;
use crate::cache::CacheError;
use crate::format::FormatError;
use crate::fuse::FsError;
use crate::gzip::GzipError;
use crate::index::{IndexError, MergeError};
use crate::metrics::MetricsError;
use crate::mount::MountError;
use crate::oci::OciError;
use crate::s3::S3Error;
use crate::source::SourceError;
use crate::tar::TarError;

/// Any error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A blob source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Registry or OCI layout.
    #[error(transparent)]
    Oci(#[from] OciError),
    /// The index file.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Seekable gzip.
    #[error(transparent)]
    Gzip(#[from] GzipError),
    /// Tar parsing.
    #[error(transparent)]
    Tar(#[from] TarError),
    /// Layer merge.
    #[error(transparent)]
    Merge(#[from] MergeError),
    /// Building an index.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Serving layer bytes.
    #[error(transparent)]
    Cache(#[from] CacheError),
    /// The FUSE filesystem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Mounts, daemons, overlays.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Metrics collection and rendering.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// Archives: create, open, extract.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// S3 object storage.
    #[error(transparent)]
    S3(#[from] S3Error),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
