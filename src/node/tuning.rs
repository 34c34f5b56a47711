//! [`Tuning`]: every knob of an image's serving stack in one value, the
//! one `clipctl mount` fills from its flags and a daemon reads back from
//! its spec.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ProfileMode;
use crate::cache::CacheConfig;
use crate::fuse::{FsConfig, WarmConfig};
use crate::mount::{FuseTransport, ServeOptions, TransportOptions, DEFAULT_READ_TIMEOUT};

/// Default kernel read-ahead of a mount (KiB). Measured on cold `import
/// numpy` (span 1 MiB): 128 KiB → 1.04 s, 20.6 MiB fetched; 512 KiB →
/// 0.93 s, 20.0 MiB; 4096 KiB → served bytes double for page faults of
/// mapped libraries. Sequential readers still get large requests.
pub const DEFAULT_READ_AHEAD_KB: u32 = 512;

/// Bytes of the anonymous memory tier when a disk cache holds the chunks
/// (chunks the store could not take, and those in flight): the daemon's
/// memory stays small, the page cache holds the rest.
pub const MEMORY_CACHE_WITH_DISK: u64 = 16 << 20;

/// The node's on-disk chunk store: a directory shared by every image and
/// kept across daemon restarts, and its budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskTier {
    /// The store directory (`<node-dir>/store`, docs/store.md).
    pub dir: PathBuf,
    /// Bytes it may hold.
    pub budget: u64,
}

impl DiskTier {
    /// The tier of node dir `node_dir` (made absolute) with `budget` bytes;
    /// `None` when the budget is 0 (off).
    pub fn in_node(node_dir: &Path, budget: u64) -> std::io::Result<Option<Self>> {
        if budget == 0 {
            return Ok(None);
        }
        Ok(Some(DiskTier {
            dir: std::path::absolute(node_dir.join("store"))?,
            budget,
        }))
    }
}

/// How an image is served (`None`: the built-in default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tuning {
    /// FUSE worker threads.
    pub threads: usize,
    /// Kernel read-ahead of the mount in KiB (0: the kernel's default).
    pub read_ahead_kb: u32,
    /// [`CacheConfig::prefetch_threads`].
    pub prefetch_threads: Option<usize>,
    /// First-start warming ([`FsConfig::warm`]; None: off).
    pub warm: Option<WarmConfig>,
    /// Startup access profile.
    pub profile: ProfileMode,
    /// Seconds from the first read during which reads are recorded into a
    /// new profile.
    pub profile_window_secs: u64,
    /// Threads replaying a profile.
    pub profile_threads: usize,
    /// Publish a recorded profile to the image's registry (`auto` profiles
    /// only, when the replace rules save one).
    pub profile_push: bool,
    /// The node's chunk store and its budget (None: off).
    pub disk_cache: Option<DiskTier>,
    /// Bytes of the anonymous memory tier (None: [`MEMORY_CACHE_WITH_DISK`]
    /// with a disk cache, [`CacheConfig::default`]'s 512 MiB without).
    pub memory_cache: Option<u64>,
    /// How FUSE requests reach the daemon.
    pub fuse_transport: FuseTransport,
    /// Deadline of a READ waiting on the network, in milliseconds.
    pub read_timeout_ms: u64,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            threads: 2,
            read_ahead_kb: DEFAULT_READ_AHEAD_KB,
            prefetch_threads: None,
            warm: Some(WarmConfig::default()),
            profile: ProfileMode::Off,
            profile_window_secs: 30,
            profile_threads: 4,
            profile_push: false,
            disk_cache: None,
            memory_cache: None,
            fuse_transport: FuseTransport::Auto,
            read_timeout_ms: DEFAULT_READ_TIMEOUT.as_millis() as u64,
        }
    }
}

impl Tuning {
    /// The recording window of a new profile.
    pub fn profile_window(&self) -> Duration {
        Duration::from_secs(self.profile_window_secs)
    }

    /// The chunk cache's configuration.
    pub fn cache_config(&self) -> CacheConfig {
        let mut c = CacheConfig::default();
        if let Some(n) = self.prefetch_threads {
            c.prefetch_threads = n;
        }
        c.memory_bytes = match (self.memory_cache, &self.disk_cache) {
            (Some(bytes), _) => bytes,
            (None, Some(_)) => MEMORY_CACHE_WITH_DISK,
            (None, None) => c.memory_bytes,
        };
        c
    }

    /// The filesystem's configuration.
    pub fn fs_config(&self) -> FsConfig {
        FsConfig {
            // Hints need threads to serve them.
            warm: self
                .warm
                .clone()
                .filter(|_| self.prefetch_threads != Some(0)),
            ..FsConfig::default()
        }
    }

    /// The FUSE session's options (no per-request latency hook: the
    /// daemon adds its own).
    pub fn serve_options(&self) -> ServeOptions {
        ServeOptions {
            threads: self.threads.max(1),
            read_ahead_kb: (self.read_ahead_kb > 0).then_some(self.read_ahead_kb),
            transport: TransportOptions {
                transport: self.fuse_transport,
                read_timeout: Duration::from_millis(self.read_timeout_ms.max(1)),
                ..TransportOptions::default()
            },
            ..ServeOptions::default()
        }
    }
}
