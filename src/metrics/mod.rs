//! Latency histograms and counters for one mount daemon, their snapshots, and
//! the tools to read them back (control-socket client, renderers, a tiny
//! Prometheus endpoint).
//!
//! A leaf module: it depends on std and external crates only (hdrhistogram,
//! serde, fuse-backend-rs for the hook trait). Upstream, `mount` creates one
//! [`Metrics`] per daemon and shares it by `Arc` with `fuse` (through
//! [`FuseMetricsHook`] and [`OpTimer`]), `cache` and the fetcher; downstream,
//! `cli` (`clipctl metrics`) queries daemons with [`collect`] and renders with
//! [`render_text`], [`render_json`] and [`render_prometheus`]. No globals: the
//! only static is the thread → shard round-robin counter.
//!
//! # Recording
//!
//! Latencies are recorded in nanoseconds into HdrHistograms with 3
//! significant digits (values below 16 ns share a bucket, values above one
//! hour are clamped), sharded per thread behind uncontended mutexes; counters
//! are per-shard relaxed atomics. A record costs tens of nanoseconds.
//!
//! # Snapshot JSON schema (version 1)
//!
//! `Metrics::snapshot(labels)` serializes (serde) to one JSON object. Fields
//! are only ever added; a consumer must ignore unknown fields, and every
//! field has a default when missing. Times are microseconds (`*_us`, float),
//! byte counts are bytes, counts are integers.
//!
//! ```text
//! {
//!   "schema_version": 1,
//!   "labels": { "image": "docker.io/library/alpine:3.19",
//!               "digest": "sha256:<hex>", "cids": ["c1", "c2"] },
//!   "uptime_seconds": 12.5,                 // since Metrics::new
//!   "fuse_transport": "uring",              // "dev" (/dev/fuse), "uring" (FUSE over
//!                                           // io_uring), "" unknown; merged: "dev,uring"
//!   "read_amplification": 0.42,             // bytes_fetched / bytes_served, null if nothing served
//!   "counters": {
//!     "bytes_served": 0, "bytes_fetched": 0, "fetch_count": 0, "inflate_bytes": 0,
//!     "cache_hits": 0, "cache_misses": 0, "cache_evictions": 0,
//!     "cache_bytes": 0,                     // gauge: bytes currently cached
//!     "rss_bytes": 0, "rss_anon_bytes": 0,  // gauges: the daemon's VmRSS and RssAnon
//!     "retries": 0, "network_blocked_ns_total": 0,
//!     "prefetch_bytes": 0,                  // of bytes_fetched: fetched ahead of readers
//!     "disk_hits": 0,                       // chunks from the node's disk cache
//!     "chunk_hits": 0, "chunk_misses": 0,   // per chunk (cache_hits/misses: per read)
//!     "shared_fills": 0,                    // misses served by another reader's fill
//!     "decoder_starts": 0, "decoder_resumes": 0,
//!     "prefetch_jobs": 0, "prefetch_errors": 0,
//!     "fuse_reads": 0, "fuse_read_bytes": 0, "fuse_read_errors": 0, "fuse_lookups": 0,
//!     "disk_damaged": 0, "disk_writes": 0, "disk_write_drops": 0, "disk_evictions": 0,
//!     "disk_errors": 0,                     // disk cache I/O errors (served from the network)
//!     "critical_path_gets": 0               // of fetch_count: GETs a reader waited for (its
//!                                           // own, or a prefetch thread's on a span the
//!                                           // reader then queued on; each counted once)
//!   },
//!   "errors": { "fetch": 0, "digest_mismatch": 0, "inflate": 0, "fuse_eio": 0,
//!               "timeout": 0, "other": 0 },
//!   "http_status": { "206": 10, "0": 1 },   // registry responses by status, every request and
//!                                           // retry; "0" = no response (reset, timeout)
//!   "fuse_ops": { "lookup": H, "getattr": H, "readdir": H, "readdirplus": H, "read": H,
//!                 "readlink": H, "getxattr": H, "listxattr": H, "open": H,
//!                 "statfs": H, "other": H },
//!   "fuse_op_errors": { "lookup": 0, ... },   // same keys as fuse_ops
//!   "timings": { "range_get": H, "inflate": H, "cache_hit": H, "cache_miss": H,
//!                "blocked_on_network": H }
//! }
//! H = { "count": 3, "sum_us": 30.0, "mean_us": 10.0, "p50_us": 10.0, "p90_us": 12.0,
//!       "p99_us": 12.0, "max_us": 12.0,
//!       "hdr": "<base64 of the HdrHistogram V2 encoding, nanoseconds; \"\" if count is 0>" }
//! ```
//!
//! Quantiles of a merge are recomputed from the decoded `hdr` histograms
//! ([`Snapshot::merged`]), so node-wide percentiles are exact to 3 digits.
//!
//! # Daemon control socket
//!
//! `<run_dir>/images/<manifest-hex>/control.sock` answers the line `stats`
//! with one JSON line: a snapshot, or an object with the snapshot under
//! `metrics` ([`Snapshot::from_stats_reply`] accepts both).

mod client;
mod export;
mod hook;
mod http;
#[cfg(test)]
mod http_tests;
mod recorder;
mod snapshot;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use client::{
    collect, discover, prometheus_scrape, query_daemon, DaemonEntry, DaemonReport, CONTROL_SOCKET,
    DEFAULT_TIMEOUT,
};
pub use export::{
    human_bytes, render_json, render_prometheus, render_text, PROMETHEUS_CONTENT_TYPE,
};
pub use hook::{op_for_opcode, FuseMetricsHook};
pub use http::{MetricsServer, RenderFn, ServeLimits};
pub use recorder::{Counter, Metrics, OpTimer};
pub use snapshot::{Counters, HistSnapshot, Labels, Snapshot, Timings, SCHEMA_VERSION};

/// FUSE operations with their own latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `FUSE_LOOKUP`.
    Lookup,
    /// `FUSE_GETATTR`.
    Getattr,
    /// `FUSE_READDIR`.
    Readdir,
    /// `FUSE_READDIRPLUS`.
    Readdirplus,
    /// `FUSE_READ`.
    Read,
    /// `FUSE_READLINK`.
    Readlink,
    /// `FUSE_GETXATTR`.
    Getxattr,
    /// `FUSE_LISTXATTR`.
    Listxattr,
    /// `FUSE_OPEN`.
    Open,
    /// `FUSE_STATFS`.
    Statfs,
    /// Everything else (opendir, release, forget, init, ...).
    Other,
}

impl Op {
    /// Every op, in discriminant order.
    pub const ALL: [Op; 11] = [
        Op::Lookup,
        Op::Getattr,
        Op::Readdir,
        Op::Readdirplus,
        Op::Read,
        Op::Readlink,
        Op::Getxattr,
        Op::Listxattr,
        Op::Open,
        Op::Statfs,
        Op::Other,
    ];

    /// Stable lower-case name (JSON keys, Prometheus `op` label).
    pub fn name(self) -> &'static str {
        match self {
            Op::Lookup => "lookup",
            Op::Getattr => "getattr",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Read => "read",
            Op::Readlink => "readlink",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Open => "open",
            Op::Statfs => "statfs",
            Op::Other => "other",
        }
    }
}

/// Error categories counted by [`Metrics::count_error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A fetch from the blob source failed (after retries).
    Fetch,
    /// Inflated bytes did not match the index's digest.
    DigestMismatch,
    /// Inflating failed (corrupt stream, bad checkpoint).
    Inflate,
    /// A FUSE request was answered with `EIO`.
    FuseEio,
    /// A fetch, or a READ waiting for its bytes, hit its deadline.
    Timeout,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in discriminant order.
    pub const ALL: [ErrorKind; 6] = [
        ErrorKind::Fetch,
        ErrorKind::DigestMismatch,
        ErrorKind::Inflate,
        ErrorKind::FuseEio,
        ErrorKind::Timeout,
        ErrorKind::Other,
    ];

    /// Stable name (JSON key, Prometheus `kind` label).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Fetch => "fetch",
            ErrorKind::DigestMismatch => "digest_mismatch",
            ErrorKind::Inflate => "inflate",
            ErrorKind::FuseEio => "fuse_eio",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Other => "other",
        }
    }
}

/// Why metrics could not be read, merged or served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Nothing listens on the control socket (missing file, refused).
    #[error("daemon not running: control socket {}: {source}", path.display())]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// The daemon did not answer in time.
    #[error("daemon not answering: control socket {} gave no reply within {timeout:?} ({what})", path.display())]
    Timeout {
        /// The socket.
        path: PathBuf,
        /// The deadline.
        timeout: std::time::Duration,
        /// Which step timed out.
        what: &'static str,
    },
    /// I/O on a socket or the run dir failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon's reply was not a snapshot.
    #[error("{0}")]
    Protocol(String),
    /// An embedded histogram could not be decoded or merged.
    #[error("histogram: {0}")]
    Histogram(String),
    /// The HTTP endpoint could not listen.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The error.
        source: std::io::Error,
    },
    /// The HTTP endpoint's runtime could not start.
    #[error("cannot serve HTTP: {0}")]
    Serve(std::io::Error),
}
