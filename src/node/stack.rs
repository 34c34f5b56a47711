//! [`ImageStack`]: an image's serving stack (blob source, chunk cache with
//! its disk tier and prefetch threads, startup-profile session) built from
//! one [`Tuning`], and [`mount_at`], which serves it at a directory.

use std::path::Path;
use std::sync::Arc;

use super::profile::ProfileSession;
use super::publish::PublishTarget;
use super::{open_source, NodeError, ProfileMode, SourceChoice, Tuning};
use crate::cache::{ContentCache, DiskCache};
use crate::format::Index;
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::Metrics;
use crate::mount::MountHandle;
use crate::oci::{RequestEvent, RequestObserver};

/// An image's chunk cache over its blob source, with its prefetch threads
/// running and its startup profile being replayed or recorded.
#[derive(Debug)]
pub struct ImageStack {
    cache: Arc<ContentCache>,
    fs: FsConfig,
    metrics: Arc<Metrics>,
    profile: Option<ProfileSession>,
}

impl ImageStack {
    /// Opens the image's blob source ([`open_source`]), builds the cache
    /// (and the node's disk tier, best effort) recording into `metrics`,
    /// starts the prefetch threads and the profile session.
    pub fn build(
        index: Arc<Index>,
        choice: &SourceChoice,
        tuning: &Tuning,
        metrics: Arc<Metrics>,
    ) -> Result<Self, NodeError> {
        // Registry responses by status and retries, into the mount's metrics.
        let m = metrics.clone();
        let observer = RequestObserver(Arc::new(move |event| match event {
            RequestEvent::Status(status) => m.count_http_status(status),
            RequestEvent::NoResponse => m.count_http_status(0),
            RequestEvent::Retry => m.count_retry(),
        }));
        let source = open_source(&index, choice, Some(observer))?;
        let mut cache =
            ContentCache::new(index, source, tuning.cache_config()).with_metrics(metrics.clone());
        if let Some(tier) = &tuning.disk_cache {
            match DiskCache::open(&tier.dir, tier.budget, metrics.clone()) {
                Ok(disk) => cache = cache.with_disk(Arc::new(disk)),
                // Best effort: the mount works without it (counted).
                Err(e) => {
                    metrics.count(crate::metrics::Counter::DiskErrors, 1);
                    tracing::warn!(dir = %tier.dir.display(), error = %e, "no disk cache")
                }
            }
        }
        let cache = Arc::new(cache);
        cache.start_prefetch();
        let profile = ProfileSession::start(
            &cache,
            &tuning.profile,
            tuning.profile_window(),
            tuning.profile_threads,
            publish_target(cache.index(), choice, tuning),
        )?;
        Ok(ImageStack {
            cache,
            fs: tuning.fs_config(),
            metrics,
            profile,
        })
    }

    /// The chunk cache (the filesystem's content reader).
    pub fn cache(&self) -> &Arc<ContentCache> {
        &self.cache
    }

    /// Where the stack records.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The filesystem over the cache, counting into the stack's metrics.
    pub fn filesystem(&self) -> Result<ClipFs, NodeError> {
        let fs = ClipFs::new(
            self.cache.index().clone(),
            self.cache.clone(),
            self.fs.clone(),
        )
        .map_err(|e| NodeError::Fs(Box::new(e)))?;
        fs.warm_start();
        Ok(fs.with_metrics(self.metrics.clone()))
    }

    /// Ends the profile session: saves the recording by the replace rules
    /// (a no-op when the window's timer already did, or there is none).
    pub fn finish(&self) {
        if let Some(p) = &self.profile {
            p.save(&self.cache);
        }
    }
}

/// Where `--profile-push` publishes: the registry the blobs come from.
fn publish_target(index: &Index, choice: &SourceChoice, tuning: &Tuning) -> Option<PublishTarget> {
    if !tuning.profile_push || !matches!(tuning.profile, ProfileMode::Auto(_)) {
        return None;
    }
    if choice.archive.is_some() {
        tracing::warn!("--profile-push: an archive has no registry; profiles stay on this node");
        return None;
    }
    let meta = index.meta();
    let reference = choice.image.clone().or_else(|| {
        meta.pinned_reference
            .clone()
            .filter(|_| choice.layout.is_none())
    });
    if reference.is_none() {
        tracing::warn!(
            "--profile-push: the image is not read from a registry; profiles stay on this node"
        );
    }
    Some(PublishTarget {
        reference: reference?,
        insecure: choice.insecure.clone(),
    })
}

/// An image served at a directory by this process ([`mount_at`]).
#[derive(Debug)]
pub struct ForegroundMount {
    stack: ImageStack,
    handle: MountHandle,
}

impl ForegroundMount {
    /// The serving stack.
    pub fn stack(&self) -> &ImageStack {
        &self.stack
    }

    /// The FUSE transport serving it.
    pub fn transport(&self) -> Option<crate::mount::TransportKind> {
        self.handle.transport()
    }

    /// Blocks until the directory is unmounted from outside (`umount`),
    /// then saves the profile.
    pub fn wait(self) {
        self.handle.wait();
        self.stack.finish();
    }
}

/// Mounts the read-only tree of the index at `clip` on `mountpoint`, served
/// by this process with the same stack a daemon builds (its own metrics,
/// no control socket).
pub fn mount_at(
    clip: &Path,
    mountpoint: &Path,
    choice: &SourceChoice,
    tuning: &Tuning,
) -> Result<ForegroundMount, NodeError> {
    let index = Arc::new(Index::open(clip).map_err(|source| NodeError::OpenIndex {
        path: clip.to_path_buf(),
        source,
    })?);
    let stack = ImageStack::build(index, choice, tuning, Arc::new(Metrics::new()))?;
    let handle =
        crate::mount::serve_with(mountpoint, stack.filesystem()?, &tuning.serve_options())?;
    Ok(ForegroundMount { stack, handle })
}
