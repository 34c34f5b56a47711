//! The run dir and the node dir, and their modes. Both are root's and
//! 0700, and so is every dir `mount` makes in them (`images/`,
//! `images/<key>/`, `<cid>/`, `containers/<cid>/`): no other host user can
//! reach a rootfs, an image's FUSE mount or a container's upper dir, so an
//! image's setuid-root file cannot be run, nor its 0600 files read, from
//! the host. A run or node dir that already exists is brought back to
//! 0700 when root owns it, and refused when another user does (that user
//! could swap what is inside).
//!
//! runc runs as root and passes 0700 dirs by its capabilities; a runtime
//! that reached the rootfs as another uid (rootless, or a user namespace
//! without an id-mapped mount) would need traverse (0711) dirs, which this
//! layout does not offer: a mount needs root anyway.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::MountError;

/// Mode of every dir of the run and node trees.
pub(super) const DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents, 0755 like `mkdir -p`) with mode
/// 0700, or brings an existing root-owned one back to 0700; refuses one
/// owned by another user. Returns its canonical path.
pub(super) fn private_dir(dir: &Path) -> Result<PathBuf, MountError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(MountError::io("create", parent))?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(MountError::io("create", dir)(e)),
    }
    let md = std::fs::symlink_metadata(dir).map_err(MountError::io("stat", dir))?;
    if !md.is_dir() {
        return Err(MountError::UnsafeDir {
            path: dir.to_path_buf(),
            why: "not a directory".into(),
        });
    }
    if md.uid() != 0 {
        return Err(MountError::UnsafeDir {
            path: dir.to_path_buf(),
            why: format!("owned by uid {}, not root", md.uid()),
        });
    }
    if md.mode() & 0o7777 != DIR_MODE {
        tracing::info!(dir = %dir.display(), mode = format!("{:o}", md.mode() & 0o7777), "setting mode 0700");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(MountError::io("chmod", dir))?;
    }
    dir.canonicalize().map_err(MountError::io("resolve", dir))
}

/// `mkdir -p` with mode 0700 for every dir it makes.
pub(super) fn create_private(dir: &Path) -> Result<(), MountError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(MountError::io("create", dir))
}

/// The run dir, private ([`private_dir`]), with its `images/` dir.
pub(super) fn prepare_run_dir(run_dir: &Path) -> Result<PathBuf, MountError> {
    let run_dir = private_dir(run_dir)?;
    private_dir(&run_dir.join("images"))?;
    Ok(run_dir)
}

/// The node dir, private ([`private_dir`]), with its `containers/` dir.
pub(super) fn prepare_node_dir(node_dir: &Path) -> Result<PathBuf, MountError> {
    let node_dir = private_dir(node_dir)?;
    private_dir(&node_dir.join("containers"))?;
    Ok(node_dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_made_and_kept_0700() {
        if super::super::tests::skip_unless_privileged() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let run = tmp.path().join("a/run");
        let got = prepare_run_dir(&run).unwrap();
        for d in [&got, &got.join("images")] {
            assert_eq!(std::fs::metadata(d).unwrap().mode() & 0o7777, 0o700);
        }
        // An existing dir with a wider mode is narrowed again.
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare_run_dir(&run).unwrap();
        assert_eq!(std::fs::metadata(&run).unwrap().mode() & 0o7777, 0o700);
        // One owned by another user is refused.
        let node = tmp.path().join("node");
        std::fs::create_dir(&node).unwrap();
        std::os::unix::fs::chown(&node, Some(65534), None).unwrap();
        let e = prepare_node_dir(&node).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        // A file is refused.
        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(prepare_run_dir(&file).is_err());
    }
}
