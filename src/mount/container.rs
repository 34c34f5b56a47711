//! Container bookkeeping on top of the per-image daemons: attach (start or
//! reuse the image's daemon, add an overlay), detach (remove the overlay;
//! the last container stops the daemon), list.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::control::control_request;
use super::daemon::{CONTAINERS_FILE, PID_FILE, SOCK_FILE};
use super::spawn::{start_daemon, Launcher};
use super::spec::{DaemonSpec, StackPart};
use super::{is_mounted, mount_overlay, unmount, validate_cid, MountError};
use crate::format::Index;

/// What the CLI asks for in `clipctl mount`; `S` is what a newly started
/// daemon serves (the [`DaemonSpec`]'s stack part).
#[derive(Debug, Clone)]
pub struct MountRequest<S> {
    /// Container id.
    pub cid: String,
    /// The image's `.clip` index.
    pub clip_path: PathBuf,
    /// Base of the run-time state (default `/run/clip`).
    pub run_dir: PathBuf,
    /// Base of the writable layers (default `/var/lib/clip`).
    pub node_dir: PathBuf,
    /// How to start the daemon.
    pub launcher: Launcher<S>,
    /// How long to wait for a new daemon to be ready.
    pub ready_timeout: Duration,
    /// What a newly started daemon serves (a running one is reused as is).
    pub stack: S,
    /// Names the image's run dir and daemon instead of the index's manifest
    /// digest (hex digits, truncated to 24): for content that must not share
    /// a daemon with the image it was made from (an archive of an image).
    pub image_key: Option<String>,
}

impl<S: Default> MountRequest<S> {
    /// A request with the default dirs, the default launcher
    /// (`current_exe __daemon --spec …`) and a default stack.
    pub fn new(cid: impl Into<String>, clip_path: impl Into<PathBuf>) -> Self {
        MountRequest {
            cid: cid.into(),
            clip_path: clip_path.into(),
            run_dir: super::DEFAULT_RUN_DIR.into(),
            node_dir: super::DEFAULT_NODE_DIR.into(),
            launcher: Launcher::default(),
            ready_timeout: Duration::from_secs(60),
            stack: S::default(),
            image_key: None,
        }
    }
}

/// `<run_dir>/<cid>/container.json`: what detach needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    cid: String,
    image: String,
    clip_path: PathBuf,
    rootfs: PathBuf,
    node_container_dir: PathBuf,
    created_unix: u64,
}

/// One attached container, for `clipctl ps`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Container id.
    pub cid: String,
    /// Image key (manifest digest hex).
    pub image: String,
    /// The `.clip` index.
    pub clip_path: PathBuf,
    /// The overlay rootfs.
    pub rootfs: PathBuf,
    /// The image's run dir (holds the daemon's spec and log).
    pub image_dir: PathBuf,
    /// Whether the overlay is mounted.
    pub mounted: bool,
    /// The image daemon's pid, if its pid file exists.
    pub daemon_pid: Option<u32>,
    /// Whether that process is alive.
    pub daemon_alive: bool,
    /// The FUSE transport the daemon serves with (`dev`, `uring`), if known.
    pub fuse_transport: Option<String>,
}

/// What [`detach_container`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachOutcome {
    /// Container id.
    pub cid: String,
    /// Image key, if the container record was readable.
    pub image: Option<String>,
    /// This was the image's last container and its daemon was stopped.
    pub daemon_stopped: bool,
    /// The daemon had died; its dead FUSE mount was lazily unmounted.
    pub daemon_was_dead: bool,
}

/// Hex digits of the manifest digest that name an image's run dir: 96 bits
/// keep names unique while `<run>/images/<key>/control.sock` stays well
/// under the 108-byte limit of a unix socket path.
pub(super) const IMAGE_KEY_LEN: usize = 24;

fn image_key(index: &Index, clip_path: &Path) -> String {
    let mut key = match index.meta().manifest_digest {
        Some(d) => d.hex(),
        None => {
            let p = clip_path
                .canonicalize()
                .unwrap_or_else(|_| clip_path.to_path_buf());
            crate::Digest::of(p.as_os_str().as_encoded_bytes()).hex()
        }
    };
    key.truncate(IMAGE_KEY_LEN);
    key
}

/// The image key of a request: its `image_key` if set, else the index's.
fn image_key_of<S>(req: &MountRequest<S>) -> Result<String, MountError> {
    match &req.image_key {
        Some(k) if !k.is_empty() && k.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(k[..k.len().min(IMAGE_KEY_LEN)].to_ascii_lowercase())
        }
        Some(k) => Err(MountError::InvalidImageKey(k.clone())),
        None => {
            let index = Index::open(&req.clip_path).map_err(|source| MountError::Index {
                path: req.clip_path.clone(),
                source,
            })?;
            Ok(image_key(&index, &req.clip_path))
        }
    }
}

fn images_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("images")
}

/// Holds the per-image flock until dropped.
fn lock_image(run_dir: &Path, image: &str) -> Result<File, MountError> {
    let dir = images_dir(run_dir);
    std::fs::create_dir_all(&dir).map_err(MountError::io("create", &dir))?;
    let path = dir.join(format!("{image}.lock"));
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(MountError::io("open", &path))?;
    f.lock().map_err(MountError::io("lock", &path))?;
    Ok(f)
}

fn pid_of(image_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(image_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Alive and not a zombie.
fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, r)| r.trim_start().chars().next())
            .is_some_and(|st| st != 'Z' && st != 'X'),
        Err(_) => false,
    }
}

fn daemon_answers(image_dir: &Path) -> bool {
    control_request(&image_dir.join(SOCK_FILE), "ping", Duration::from_secs(2))
        .is_ok_and(|r| r.0 == "pong")
}

fn read_containers(image_dir: &Path) -> Vec<String> {
    read_cids(&image_dir.join(CONTAINERS_FILE))
}

/// The cids listed in a `containers` file (none if it is missing).
pub(super) fn read_cids(containers_file: &Path) -> Vec<String> {
    std::fs::read_to_string(containers_file)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn write_containers(image_dir: &Path, cids: &[String]) -> Result<(), MountError> {
    let path = image_dir.join(CONTAINERS_FILE);
    let tmp = image_dir.join(format!("{CONTAINERS_FILE}.tmp"));
    let body: String = cids.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&tmp, body).map_err(MountError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(MountError::io("rename", &path))
}

/// Stops the image's daemon (politely via `shutdown`, else by cleaning up
/// after it), unmounts its FUSE mount and removes the image dir. Returns
/// whether the daemon was already dead.
fn stop_image(image_dir: &Path) -> Result<bool, MountError> {
    let mnt = image_dir.join("mnt");
    let pid = pid_of(image_dir);
    let mut was_dead = true;
    if control_request(
        &image_dir.join(SOCK_FILE),
        "shutdown",
        Duration::from_secs(5),
    )
    .is_ok_and(|r| r.0 == "ok")
    {
        was_dead = false;
        let deadline = Instant::now() + Duration::from_secs(10);
        while (is_mounted(&mnt) || pid.is_some_and(pid_alive)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if let Some(p) = pid.filter(|&p| pid_alive(p) && p != std::process::id()) {
        // Hung or deaf daemon: it no longer serves anyone.
        tracing::warn!(pid = p, "daemon did not exit; killing it");
        let _ = super::sys::kill(p as i32, libc::SIGKILL);
    }
    if is_mounted(&mnt) {
        // A killed daemon leaves an ENOTCONN mount; a lazy unmount clears it.
        unmount(&mnt, true)?;
    }
    std::fs::remove_dir_all(image_dir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", image_dir))?;
    Ok(was_dead)
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Attaches container `req.cid`: starts (or reuses) the image's daemon and
/// mounts an overlay over its FUSE mount; returns the rootfs path.
pub fn attach_container<S: StackPart>(req: &MountRequest<S>) -> Result<PathBuf, MountError> {
    validate_cid(&req.cid)?;
    super::check_privileges()?;
    let cdir = req.run_dir.join(&req.cid);
    if cdir.exists() {
        return Err(MountError::CidInUse(req.cid.clone()));
    }
    let image = image_key_of(req)?;
    let _lock = lock_image(&req.run_dir, &image)?;
    match std::fs::create_dir(&cdir) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            return Err(MountError::CidInUse(req.cid.clone()))
        }
        Err(e) => return Err(MountError::io("create", &cdir)(e)),
    }
    let image_dir = images_dir(&req.run_dir).join(&image);
    let node_cdir = req.node_dir.join("containers").join(&req.cid);
    let res = attach_locked(req, &image, &image_dir, &cdir, &node_cdir);
    if res.is_err() {
        let rootfs = cdir.join("rootfs");
        if is_mounted(&rootfs) {
            let _ = unmount(&rootfs, true);
        }
        let _ = std::fs::remove_dir_all(&cdir);
        let _ = std::fs::remove_dir_all(&node_cdir);
        if read_containers(&image_dir).is_empty() && image_dir.exists() {
            let _ = stop_image(&image_dir);
        }
    }
    res
}

/// Starts the image's daemon unless it is mounted and answers (stale
/// state of a dead one is cleaned up first); returns its FUSE mount.
/// Called under the image lock.
fn ensure_daemon<S: StackPart>(
    req: &MountRequest<S>,
    image_dir: &Path,
) -> Result<PathBuf, MountError> {
    let mnt = image_dir.join("mnt");
    if !(is_mounted(&mnt) && daemon_answers(image_dir)) {
        if image_dir.exists() {
            tracing::warn!(image_dir = %image_dir.display(), "stale image daemon state; cleaning up");
            stop_image(image_dir)?;
        }
        let spec = DaemonSpec::new(
            req.clip_path
                .canonicalize()
                .map_err(MountError::io("resolve", &req.clip_path))?,
            image_dir.to_path_buf(),
            req.stack.clone(),
        );
        start_daemon(&spec, &req.launcher, req.ready_timeout)?;
    }
    Ok(mnt)
}

fn attach_locked<S: StackPart>(
    req: &MountRequest<S>,
    image: &str,
    image_dir: &Path,
    cdir: &Path,
    node_cdir: &Path,
) -> Result<PathBuf, MountError> {
    let mnt = ensure_daemon(req, image_dir)?;
    let (upper, work, rootfs) = (
        node_cdir.join("upper"),
        node_cdir.join("work"),
        cdir.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d).map_err(MountError::io("create", d))?;
    }
    if is_mounted(&rootfs) {
        return Err(MountError::MountBusy(rootfs));
    }
    mount_overlay(&mnt, &upper, &work, &rootfs)?;
    let rec = Record {
        cid: req.cid.clone(),
        image: image.to_string(),
        clip_path: req.clip_path.clone(),
        rootfs: rootfs.clone(),
        node_container_dir: node_cdir.to_path_buf(),
        created_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    let rec_path = cdir.join("container.json");
    let json = serde_json::to_vec_pretty(&rec).map_err(|source| MountError::Json {
        path: rec_path.clone(),
        source,
    })?;
    std::fs::write(&rec_path, json).map_err(MountError::io("write", &rec_path))?;
    let mut cids = read_containers(image_dir);
    cids.push(req.cid.clone());
    write_containers(image_dir, &cids)?;
    Ok(rootfs)
}

fn read_record(cdir: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(cdir.join("container.json")).ok()?).ok()
}

/// Detaches container `cid`: unmounts its overlay and removes its dirs;
/// with the image's last container, stops the daemon (or cleans up after a
/// dead one) and removes the image dir. Re-running it after a partial
/// detach finishes the job; a cid that left no trace is
/// [`MountError::UnknownCid`].
pub fn detach_container(cid: &str, run_dir: &Path) -> Result<DetachOutcome, MountError> {
    validate_cid(cid)?;
    let cdir = run_dir.join(cid);
    if !cdir.exists() {
        return Err(MountError::UnknownCid(cid.to_string()));
    }
    let rec = read_record(&cdir);
    let rootfs = cdir.join("rootfs");
    if is_mounted(&rootfs) {
        match unmount(&rootfs, false) {
            Err(MountError::MountBusy(_)) => {
                tracing::warn!(rootfs = %rootfs.display(), "rootfs busy; detaching lazily");
                unmount(&rootfs, true)?;
            }
            other => other?,
        }
    }
    let mut out = DetachOutcome {
        cid: cid.to_string(),
        image: rec.as_ref().map(|r| r.image.clone()),
        daemon_stopped: false,
        daemon_was_dead: false,
    };
    if let Some(rec) = &rec {
        std::fs::remove_dir_all(&rec.node_container_dir)
            .or_else(ignore_missing)
            .map_err(MountError::io("remove", &rec.node_container_dir))?;
    }
    std::fs::remove_dir_all(&cdir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", &cdir))?;
    if let Some(rec) = rec {
        let released = release_image(run_dir, &rec.image, cid)?;
        out.daemon_stopped = released.daemon_stopped;
        out.daemon_was_dead = released.daemon_was_dead;
    }
    Ok(out)
}

/// An image daemon held by [`hold_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldImage {
    /// Image key: its dir is `<run-dir>/images/<key>`.
    pub image: String,
    /// The image's shared read-only FUSE mount, a lower dir for overlays.
    pub mnt: PathBuf,
}

/// What [`release_image`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Released {
    /// That was the image's last holder and its daemon was stopped.
    pub daemon_stopped: bool,
    /// The daemon had died; its dead FUSE mount was lazily unmounted.
    pub daemon_was_dead: bool,
}

/// Holds the image daemon of `req.clip_path` for the holder `req.cid`
/// (any name without a newline; names with a `:` never clash with a
/// container id) without mounting an overlay: for callers that mount
/// overlays themselves, like containerd over the snapshotter. Starts the
/// daemon, or restarts a dead one; holding again is a no-op. The holder
/// counts like a container: [`release_image`] of the last one stops the
/// daemon. `req.node_dir` is not used.
pub fn hold_image<S: StackPart>(req: &MountRequest<S>) -> Result<HeldImage, MountError> {
    if req.cid.is_empty() || req.cid.contains('\n') {
        return Err(MountError::InvalidCid(req.cid.clone()));
    }
    super::check_privileges()?;
    let image = image_key_of(req)?;
    let _lock = lock_image(&req.run_dir, &image)?;
    let image_dir = images_dir(&req.run_dir).join(&image);
    let mut holders = read_containers(&image_dir);
    let res = ensure_daemon(req, &image_dir).and_then(|mnt| {
        if !holders.contains(&req.cid) {
            holders.push(req.cid.clone());
            write_containers(&image_dir, &holders)?;
        }
        Ok(mnt)
    });
    match res {
        Ok(mnt) => Ok(HeldImage { image, mnt }),
        Err(e) => {
            if read_containers(&image_dir).is_empty() && image_dir.exists() {
                let _ = stop_image(&image_dir);
            }
            Err(e)
        }
    }
}

/// Drops `holder`'s hold on image `image` (a [`HeldImage::image`]); the
/// last holder stops the daemon and removes the image dir. Releasing a
/// holder that holds nothing is a no-op.
pub fn release_image(run_dir: &Path, image: &str, holder: &str) -> Result<Released, MountError> {
    let _lock = lock_image(run_dir, image)?;
    let image_dir = images_dir(run_dir).join(image);
    let mut holders = read_containers(&image_dir);
    holders.retain(|c| c != holder);
    let mut out = Released::default();
    if holders.is_empty() {
        if image_dir.exists() {
            out.daemon_was_dead = stop_image(&image_dir)?;
            out.daemon_stopped = true;
        }
    } else {
        write_containers(&image_dir, &holders)?;
    }
    Ok(out)
}

/// Every attached container under `run_dir`, sorted by cid.
pub fn list(run_dir: &Path) -> Vec<ContainerInfo> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut out: Vec<ContainerInfo> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "images")
        .filter_map(|e| read_record(&e.path()))
        .map(|r| {
            let image_dir = images_dir(run_dir).join(&r.image);
            let pid = pid_of(&image_dir);
            let transport = std::fs::read_to_string(image_dir.join(super::daemon::TRANSPORT_FILE));
            ContainerInfo {
                fuse_transport: transport.ok().map(|t| t.trim().to_string()),
                mounted: is_mounted(&r.rootfs),
                daemon_alive: pid.is_some_and(pid_alive),
                daemon_pid: pid,
                image_dir,
                cid: r.cid,
                image: r.image,
                clip_path: r.clip_path,
                rootfs: r.rootfs,
            }
        })
        .collect();
    out.sort_by(|a, b| a.cid.cmp(&b.cid));
    out
}
