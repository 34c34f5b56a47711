//! [`DaemonSpec`]: everything a per-image daemon is started with, written
//! as `<image_dir>/daemon.json` by [`super::start_daemon`] and read back by
//! the daemon process (`clipctl __daemon --spec <path>`). The one encoder
//! is [`DaemonSpec::save`], the one decoder [`DaemonSpec::load`]; the file
//! stays after start so that a daemon can be started again from it.
//!
//! `mount` owns the paths; what the daemon serves and how (the blob source
//! and the tuning of its serving stack) is the `stack` part, a type chosen
//! by the caller (`node::StackSpec` for `clipctl`, `()` in tests) and
//! opaque here.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::MountError;

/// Version of the spec file; a daemon refuses any other.
pub const DAEMON_SPEC_VERSION: u32 = 1;

/// File name of the spec inside an image dir.
pub const SPEC_FILE: &str = "daemon.json";

/// What the stack part of a [`DaemonSpec`] must be: written as JSON, read
/// back, handed to a daemon thread.
pub trait StackPart: Serialize + DeserializeOwned + Clone + Send + 'static {}
impl<S: Serialize + DeserializeOwned + Clone + Send + 'static> StackPart for S {}

/// What a daemon process serves, and where.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSpec<S> {
    /// [`DAEMON_SPEC_VERSION`].
    pub version: u32,
    /// The `.clip` index to serve (absolute).
    pub clip_path: PathBuf,
    /// `<run_dir>/images/<key>`: holds mnt, daemon.pid, control.sock.
    pub image_dir: PathBuf,
    /// How the content is served (source, tuning); opaque to `mount`.
    pub stack: S,
}

impl<S: Serialize + DeserializeOwned> DaemonSpec<S> {
    /// A spec of the current version.
    pub fn new(clip_path: PathBuf, image_dir: PathBuf, stack: S) -> Self {
        DaemonSpec {
            version: DAEMON_SPEC_VERSION,
            clip_path,
            image_dir,
            stack,
        }
    }

    /// Where [`DaemonSpec::save`] writes it: `<image_dir>/daemon.json`.
    pub fn path(&self) -> PathBuf {
        self.image_dir.join(SPEC_FILE)
    }

    /// The image's shared FUSE mount point.
    pub fn mnt(&self) -> PathBuf {
        self.image_dir.join("mnt")
    }

    /// Writes the spec to [`DaemonSpec::path`] (mode 0600, through a temp
    /// file and a rename, so a reader never sees half of it); returns the
    /// path.
    pub fn save(&self) -> Result<PathBuf, MountError> {
        let path = self.path();
        let json = serde_json::to_vec_pretty(self).map_err(|source| MountError::Json {
            path: path.clone(),
            source,
        })?;
        let tmp = self.image_dir.join(format!("{SPEC_FILE}.tmp"));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(MountError::io("create", &tmp))?;
        f.write_all(&json)
            .and_then(|()| f.sync_all())
            .map_err(MountError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(MountError::io("rename", &path))?;
        Ok(path)
    }

    /// Reads a spec written by [`DaemonSpec::save`].
    pub fn load(path: &Path) -> Result<Self, MountError> {
        let bytes = std::fs::read(path).map_err(MountError::io("read", path))?;
        // The version first, so a spec from another clipctl gets a clear error.
        #[derive(Deserialize)]
        struct Version {
            version: u32,
        }
        let bad = |source| MountError::BadSpec {
            path: path.to_path_buf(),
            source,
        };
        let Version { version } = serde_json::from_slice(&bytes).map_err(bad)?;
        if version != DAEMON_SPEC_VERSION {
            return Err(MountError::SpecVersion {
                path: path.to_path_buf(),
                found: version,
                supported: DAEMON_SPEC_VERSION,
            });
        }
        serde_json::from_slice(&bytes).map_err(bad)
    }
}
