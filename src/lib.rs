//! clip: a lazy-loading, read-only filesystem for OCI container images.
//!
//! Data flows one way: a [`source::BlobSource`] (registry or OCI layout, see
//! [`oci`]) feeds [`index`], which streams every layer once through [`gzip`]
//! (zran checkpoints) and [`tar`], merges the layers and writes a metadata-only
//! `.clip` file ([`format`], spec in `docs/format.md`). At mount time [`cache`]
//! serves `(layer, uncompressed range)` reads by fetching only the compressed
//! bytes it needs and inflating from the nearest checkpoint; [`fuse`] exposes
//! the merged tree to the kernel and [`mount`] runs the daemon, the FUSE
//! session and the per-container overlays. [`node`] assembles them the way
//! `clipctl` does (blob source, serving stack from one tuning, startup
//! profiles, the daemon's spec), for the CLI and for embedders alike.
//! [`metrics`] records latencies and counters on every hop. [`cli`] is the
//! only place that prints or uses `anyhow`.

pub mod archive;
pub mod cache;
pub mod cli;
pub mod digest;
pub mod format;
pub mod fuse;
#[cfg(test)]
mod fuzz_regressions;
pub mod gzip;
pub mod index;
pub mod metrics;
pub mod mount;
pub mod node;
pub mod object;
pub mod oci;
pub mod s3;
pub mod snapshotter;
pub mod source;
mod sync;
pub mod tar;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod zstd_limits;

pub use digest::Digest;
pub use source::BlobSource;
