//! The per-image daemon as `clipctl` runs it: [`StackSpec`] (what the
//! daemon serves, the stack part of its [`DaemonSpec`]), [`mount_request`]
//! (what `clipctl mount --cid` asks `mount` for) and [`run_daemon`] (the
//! `__daemon --spec` entry point).

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};

use super::{ImageStack, NodeError, Provenance, SourceChoice, Tuning};
use crate::cache::ContentReader;
use crate::format::Index;
use crate::metrics::Metrics;
use crate::mount::{self, DaemonConfig, MountRequest};

/// What a daemon serves: where the blobs come from and how.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StackSpec {
    /// The blob source.
    pub source: SourceChoice,
    /// The serving stack's knobs.
    pub tuning: Tuning,
    /// Where the index and the startup profile came from (logged at start,
    /// shown by `clipctl ps`).
    pub provenance: Provenance,
}

/// The spec of a `clipctl` daemon (`<image_dir>/daemon.json`).
pub type DaemonSpec = mount::DaemonSpec<StackSpec>;

/// The request `clipctl mount --cid` makes: container `cid` of the index
/// at `clip`, under `run_dir` and `node_dir`, started (if the image has no
/// daemon yet) as `current_exe __daemon --spec <image_dir>/daemon.json`.
pub fn mount_request(
    cid: String,
    clip: PathBuf,
    run_dir: PathBuf,
    node_dir: PathBuf,
    stack: StackSpec,
) -> MountRequest<StackSpec> {
    MountRequest {
        run_dir,
        node_dir,
        stack,
        ..MountRequest::new(cid, clip)
    }
}

/// [`mount_request`] for an archive prepared by
/// [`super::prepare_archive`]: its own run dir and daemon, keyed by the
/// archive's data digest.
pub fn archive_mount_request(
    cid: String,
    archive: super::PreparedArchive,
    run_dir: PathBuf,
    node_dir: PathBuf,
    stack: StackSpec,
) -> MountRequest<StackSpec> {
    MountRequest {
        image_key: Some(archive.image_key),
        ..mount_request(cid, archive.prepared.clip, run_dir, node_dir, stack)
    }
}

/// Runs the daemon of `spec` in this process until its mount goes away
/// (see [`mount::run_daemon`]), then saves the startup profile. With
/// [`mount::StartMode::Takeover`] it takes the live mount over from the
/// image's running daemon (`clipctl daemon restart`); a daemon that hands
/// its mount to a successor leaves the profile to it.
pub fn run_daemon(spec: DaemonSpec, start: mount::StartMode) -> Result<(), NodeError> {
    let StackSpec {
        source,
        tuning,
        provenance,
    } = spec.stack.clone();
    tracing::info!(
        index = %provenance.index,
        profile_pulled = ?provenance.profile_pulled.map(|d| d.to_string()),
        "where the index and the startup profile came from"
    );
    let metrics = Arc::new(Metrics::new());
    // The stack, kept to save a profile still being recorded at unmount.
    let slot: Arc<OnceLock<ImageStack>> = Arc::default();
    let (s, m, t) = (slot.clone(), metrics.clone(), tuning.clone());
    let content: mount::ContentFactory = Box::new(move |index: &Arc<Index>| {
        let stack = ImageStack::build(index.clone(), &source, &t, m.clone())?;
        let cache = stack.cache().clone();
        let _ = s.set(stack);
        Ok(cache as Arc<dyn ContentReader>)
    });
    let config = DaemonConfig {
        clip_path: spec.clip_path.clone(),
        image_dir: spec.image_dir.clone(),
        content,
        serve: tuning.serve_options(),
        fs: tuning.fs_config(),
        metrics,
        start,
    };
    let served = mount::run_daemon(config)?;
    if served == mount::DaemonExit::Unmounted {
        if let Some(stack) = slot.get() {
            stack.finish();
        }
    }
    Ok(())
}
