//! The startup-profile policy: which profile a mount replays, where its
//! recording goes, and when the recording replaces the profile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::publish::{publish_recording, PublishTarget};
use super::NodeError;
use crate::cache::ContentCache;
use crate::digest::Digest;
use crate::format::{AccessProfile, Index, ProfileError};

/// How often the recording timer looks at the window.
const TIMER_TICK: Duration = Duration::from_millis(500);

/// What a mount does with a startup access profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProfileMode {
    /// Neither replay nor record.
    #[default]
    Off,
    /// The node's own profile of the image: replayed if present (a damaged
    /// one is replaced), else the index's embedded one; recorded again and
    /// replaced when the workload changed.
    Auto(PathBuf),
    /// A profile file given by the user: replayed if present (it must be
    /// valid and for this image), else recorded into.
    File(PathBuf),
}

impl ProfileMode {
    /// Resolves a `--profile` setting (`auto`, `off` or a path) for
    /// `index` on node dir `node_dir`. A given profile file that exists is
    /// checked here, so a bad one fails the mount even when the image's
    /// daemon is already running (and ignores it).
    pub fn resolve(setting: &str, node_dir: &Path, index: &Index) -> Result<Self, NodeError> {
        let manifest = index.meta().manifest_digest;
        Ok(match setting {
            "off" => ProfileMode::Off,
            "auto" => match manifest {
                Some(d) => ProfileMode::Auto(node_profile_path(node_dir, &d)?),
                // No manifest digest to key a node-wide profile by.
                None => {
                    tracing::info!("the index names no manifest digest: no startup profile");
                    ProfileMode::Off
                }
            },
            path => {
                let path = std::path::absolute(path).map_err(NodeError::io("resolving", path))?;
                if path.exists() {
                    check_image(&AccessProfile::load(&path)?, &path, manifest)?;
                }
                ProfileMode::File(path)
            }
        })
    }

    fn path(&self) -> Option<&Path> {
        match self {
            ProfileMode::Off => None,
            ProfileMode::Auto(p) | ProfileMode::File(p) => Some(p),
        }
    }
}

/// The node's profile of image `manifest`:
/// `<node_dir>/profiles/<manifest-hex>.json`, absolute.
pub(super) fn node_profile_path(node_dir: &Path, manifest: &Digest) -> Result<PathBuf, NodeError> {
    let dir = node_dir.join("profiles");
    let dir = std::path::absolute(&dir).map_err(NodeError::io("resolving", dir))?;
    Ok(dir.join(format!("{}.json", manifest.hex())))
}

/// Whether profile `p` fits image `manifest` with blobs `layers`: it was
/// recorded on it (when it says) and names at least one of its layers.
pub fn check_profile_fits(
    p: &AccessProfile,
    manifest: Digest,
    layers: &[Digest],
) -> Result<(), NodeError> {
    if let Some(recorded) = p.manifest.filter(|&m| m != manifest) {
        return Err(NodeError::ProfileFit {
            reason: format!("it was recorded for image {recorded}, not {manifest}"),
        });
    }
    if !p.ranges.iter().any(|r| layers.contains(&r.layer)) {
        return Err(NodeError::ProfileFit {
            reason: "it names none of the image's layers".into(),
        });
    }
    Ok(())
}

/// Fails if `p` names an image other than `manifest`.
fn check_image(p: &AccessProfile, path: &Path, manifest: Option<Digest>) -> Result<(), NodeError> {
    match (p.manifest, manifest) {
        (Some(recorded), Some(image)) if recorded != image => Err(NodeError::ProfileImage {
            path: path.to_path_buf(),
            recorded,
            image,
        }),
        _ => Ok(()),
    }
}

/// A mount's recording: where it goes when its window closes or the mount
/// ends, what it may replace, and where it is published.
#[derive(Debug, Clone)]
pub(super) struct ProfileSession {
    path: PathBuf,
    /// The profile this mount replayed: the recording replaces it only if
    /// the workload no longer matches it.
    replayed: Option<Arc<AccessProfile>>,
    /// Where a saved recording is published (`--profile-push`).
    publish: Option<Arc<PublishTarget>>,
}

impl ProfileSession {
    /// Starts `mode` on `cache`: replays the node's (or the index's)
    /// profile if there is one, and records what readers touch for
    /// `window` from the first read (a timer thread saves it then; the
    /// unmount saves what there is, and publishes it to `publish`). A
    /// profile file given by the user is replayed, never overwritten: no
    /// session then.
    pub(super) fn start(
        cache: &Arc<ContentCache>,
        mode: &ProfileMode,
        window: Duration,
        threads: usize,
        publish: Option<PublishTarget>,
    ) -> Result<Option<Self>, NodeError> {
        let Some(path) = mode.path() else {
            return Ok(None);
        };
        let explicit = matches!(mode, ProfileMode::File(_));
        let manifest = cache.index().meta().manifest_digest;
        let loaded = AccessProfile::load(path)
            .map_err(NodeError::from)
            .and_then(|p| check_image(&p, path, manifest).map(|()| p));
        let replayed = match loaded {
            Ok(p) => Some((p, path.display().to_string())),
            Err(e) if is_not_found(&e) => match (explicit, cache.index().profile()) {
                // The node has none yet: the one shipped in the index, if any.
                (false, Some(p)) => Some((p.clone(), "the index".to_string())),
                _ => None,
            },
            Err(e) if explicit => return Err(e),
            Err(e) => {
                tracing::warn!("{e}; recording a new profile");
                None
            }
        };
        if let Some((p, from)) = &replayed {
            let jobs = cache.replay(p, threads);
            tracing::info!(
                from,
                ranges = p.ranges.len(),
                bytes = p.bytes(),
                jobs,
                "replaying the startup profile"
            );
            if explicit {
                return Ok(None);
            }
        }
        let session = ProfileSession {
            path: path.to_path_buf(),
            replayed: replayed.map(|(p, _)| Arc::new(p)),
            publish: publish.map(Arc::new),
        };
        cache.start_recording();
        tracing::info!(profile = %path.display(), ?window, "recording the startup reads");
        let (weak, timer) = (Arc::downgrade(cache), session.clone());
        std::thread::Builder::new()
            .name("clip-profile".into())
            .spawn(move || loop {
                std::thread::sleep(TIMER_TICK);
                let Some(cache) = weak.upgrade() else { return };
                if !cache.is_recording() {
                    return;
                }
                if cache
                    .recording_since()
                    .is_some_and(|t| t.elapsed() >= window)
                {
                    timer.save(&cache);
                    return;
                }
            })
            .map_err(NodeError::io("starting the profile timer for", path))?;
        Ok(Some(session))
    }

    /// Saves the recording, if one is running and noted anything (an empty
    /// profile would stop every later mount from recording a useful one).
    /// After a replay, only when the workload changed: less than 90 % of
    /// what was read is in the replayed profile, or the replayed profile is
    /// more than twice what was read. A saved recording is published when
    /// the session has a target.
    pub(super) fn save(&self, cache: &ContentCache) {
        let Some(p) = cache.finish_recording() else {
            return;
        };
        if p.ranges.is_empty() {
            return;
        }
        let read = p.bytes();
        if let Some(old) = &self.replayed {
            let covered = p.overlap_bytes(old);
            if still_fits(covered, read, old.bytes()) {
                tracing::info!(
                    covered,
                    read,
                    "the replayed profile still fits the workload"
                );
                return;
            }
            tracing::info!(
                covered,
                read,
                replayed = old.bytes(),
                "the workload changed; replacing the startup profile"
            );
        }
        match p.save(&self.path) {
            Ok(()) => tracing::info!(
                profile = %self.path.display(),
                ranges = p.ranges.len(),
                bytes = read,
                "saved the startup profile"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot save the startup profile"),
        }
        if let Some(target) = &self.publish {
            publish_recording(target, cache.index().meta().manifest.as_bytes(), &p);
        }
    }
}

/// The replace rule: a replayed profile of `replayed` bytes still fits a
/// mount that read `read` bytes, `covered` of them in the profile, when at
/// least 90 % was covered and the profile is at most twice what was read.
fn still_fits(covered: u64, read: u64, replayed: u64) -> bool {
    covered.saturating_mul(10) >= read.saturating_mul(9) && replayed <= read.saturating_mul(2)
}

fn is_not_found(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Profile(ProfileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
    )
}

#[cfg(test)]
mod tests {
    use super::still_fits;

    #[test]
    fn replace_rule() {
        // 90 % covered, profile no bigger than twice the reads: keep.
        assert!(still_fits(90, 100, 200));
        // Under 90 % covered: replace.
        assert!(!still_fits(89, 100, 100));
        // Profile over twice what was read: replace.
        assert!(!still_fits(100, 100, 201));
    }
}
