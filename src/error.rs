//! The crate-wide error: a roll-up of every module's error type.
use crate::source::SourceError;

/// Any error the library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A blob source failed.
    #[error(transparent)]
    Source(#[from] SourceError),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
