//! Why a snapshot operation or an rpull failed, and the gRPC status each
//! error becomes (containerd maps the codes back to its errdefs: the
//! remote-snapshotter handshake rests on ALREADY_EXISTS).

use std::path::PathBuf;

use crate::mount::MountError;
use crate::node::NodeError;

/// Why a snapshotter or rpull operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotterError {
    /// No snapshot by that name.
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    /// A snapshot by that name exists (also the answer to the Prepare of a
    /// layer clip serves: "it is already there").
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    /// The operation does not fit the snapshot's state.
    #[error("snapshot {name:?}: {reason}")]
    Precondition {
        /// The snapshot.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// A request field is invalid.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The metadata file is not valid JSON of the expected shape.
    #[error("snapshotter metadata {}: {source}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A metadata file of another version.
    #[error("snapshotter metadata {}: version {found}, this clipctl reads version {supported}", path.display())]
    MetadataVersion {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Mounting an image (its daemon) failed.
    #[error(transparent)]
    Mount(#[from] MountError),
    /// Preparing an image (its index, its registry) failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The gRPC server or client failed.
    #[error("{what}: {message}")]
    Grpc {
        /// What was being done.
        what: String,
        /// The transport's or containerd's message.
        message: String,
    },
    /// A system call on a path failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl SnapshotterError {
    pub(super) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> SnapshotterError {
        let path = path.into();
        move |source| SnapshotterError::Io { op, path, source }
    }

    /// The gRPC status containerd reads this error as.
    pub fn status(&self) -> tonic::Status {
        let msg = self.to_string();
        match self {
            SnapshotterError::NotFound(_) => tonic::Status::not_found(msg),
            SnapshotterError::AlreadyExists(_) => tonic::Status::already_exists(msg),
            SnapshotterError::Precondition { .. } => tonic::Status::failed_precondition(msg),
            SnapshotterError::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}
