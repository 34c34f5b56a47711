//! Container bookkeeping on top of the per-image daemons: attach (start or
//! reuse the image's daemon, add an overlay), detach (remove the overlay;
//! the last container stops the daemon), list; each container's record
//! (`container.json`) and its states. What a detach does with a rootfs
//! still in use, and the repair of what a killed clipctl left, are in
//! `lifecycle.rs`.

use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::daemon::CONTAINERS_FILE;
use super::lifecycle::{self, Released};
use super::mountinfo::{mount_identity, MountIdentity};
use super::process::{read_pid_file, DaemonProcess};
use super::spawn::Launcher;
use super::spec::StackPart;
use super::{is_mounted, mount_overlay, validate_cid, MountError};
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

/// Where a container is in its life (the `state` of its record).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum State {
    /// Claimed by an attach still running (or killed before it finished).
    Attaching,
    /// Mounted and in the image's `containers` list.
    #[default]
    Attached,
    /// A detach is running (or was killed before it finished).
    Detaching,
    /// Unmounted here, but processes still use the overlay: its upper and
    /// work dirs and the image daemon stay until they are gone.
    Draining,
}

impl State {
    fn name(self) -> &'static str {
        match self {
            State::Attaching => "attaching",
            State::Attached => "attached",
            State::Detaching => "detaching",
            State::Draining => "draining",
        }
    }
}

/// The clipctl process working on a record (pid and start time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Owner {
    pid: u32,
    start: u64,
}

impl Owner {
    fn this() -> Self {
        let (pid, start) = super::process::this_process();
        Owner { pid, start }
    }
}

/// `<run_dir>/<cid>/container.json`: what detach and repair need. Written
/// (state `attaching`) before anything is mounted, so that a clipctl
/// killed at any step leaves a record naming what to undo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) cid: String,
    pub(super) image: String,
    pub(super) clip_path: PathBuf,
    pub(super) rootfs: PathBuf,
    pub(super) node_container_dir: PathBuf,
    pub(super) created_unix: u64,
    #[serde(default)]
    pub(super) state: State,
    /// The clipctl attaching or detaching it (none once attached).
    #[serde(default)]
    pub(super) owner: Option<Owner>,
    /// The overlay, once mounted (to find its users after it is detached).
    #[serde(default)]
    pub(super) overlay: Option<MountIdentity>,
}

pub(super) const RECORD_FILE: &str = "container.json";

impl Record {
    /// Whether the clipctl named as owner still runs.
    pub(super) fn owner_alive(&self) -> bool {
        self.owner
            .is_some_and(|o| super::process::alive_with_start(o.pid, o.start))
    }

    /// Whether this process owns it.
    pub(super) fn owned_here(&self) -> bool {
        self.owner == Some(Owner::this())
    }

    /// Marks it as worked on by this process in `state`.
    pub(super) fn take(&mut self, state: State) {
        self.state = state;
        self.owner = Some(Owner::this());
    }

    /// Writes it to `<dir>/container.json` through a temp file and a rename.
    pub(super) fn save(&self, dir: &Path) -> Result<(), MountError> {
        let path = dir.join(RECORD_FILE);
        let json = serde_json::to_vec_pretty(self).map_err(|source| MountError::Json {
            path: path.clone(),
            source,
        })?;
        let tmp = dir.join(format!("{RECORD_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(MountError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(MountError::io("rename", &path))
    }
}

/// The record in `cdir`, if readable.
pub(super) fn read_record(cdir: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(cdir.join(RECORD_FILE)).ok()?).ok()
}

/// Puts `rec` in place as `<run_dir>/<cid>/container.json` in one step: it
/// is written in a private `.claim-<pid>-<cid>` dir renamed to `<cid>`
/// (`RENAME_NOREPLACE`), so a container dir never exists without its
/// record and two attaches of one cid cannot both win.
fn claim(run_dir: &Path, rec: &Record) -> Result<PathBuf, MountError> {
    let cdir = run_dir.join(&rec.cid);
    let tmp = run_dir.join(format!("{CLAIM_PREFIX}{}-{}", std::process::id(), rec.cid));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::DirBuilder::new()
        .mode(super::layout::DIR_MODE)
        .create(&tmp)
        .map_err(MountError::io("create", &tmp))?;
    let res = rec.save(&tmp).and_then(|()| {
        super::sys::rename_noreplace(&tmp, &cdir).map_err(|e| match e.raw_os_error() {
            Some(libc::EEXIST | libc::ENOTEMPTY) => MountError::CidInUse(rec.cid.clone()),
            _ => MountError::io("rename", &cdir)(e),
        })
    });
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res.map(|()| cdir)
}

/// Name prefix of a claim being written (see [`claim`]).
pub(super) const CLAIM_PREFIX: &str = ".claim-";

/// Test hook: `CLIP_TEST_CRASH_AT=<point>` aborts the process at that point
/// of attach (`after-record`, `after-daemon`, `after-overlay`,
/// `after-containers`) or detach (`detach-after-unmount`,
/// `detach-after-upper`) or of a successor daemon's takeover
/// (`takeover-before-connect`, `takeover-after-fd`, `takeover-before-serve`,
/// `takeover-before-ready`: 2 s after it started serving),
/// without unwinding or cleanup, as a SIGKILL would
/// stop it; the crash tests check that the next command repairs the rest.
pub(super) fn crash_point(point: &str) {
    if std::env::var_os("CLIP_TEST_CRASH_AT").is_some_and(|v| v == point) {
        eprintln!("clipctl: CLIP_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
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
    /// `attaching`, `attached`, `detaching` or `draining` (unmounted, still
    /// in use by processes; see `clipctl umount`).
    pub state: String,
    /// Whether the overlay is mounted.
    pub mounted: bool,
    /// The image daemon's pid, if its pid file exists.
    pub daemon_pid: Option<u32>,
    /// Whether that process is alive (and is the image's daemon).
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
    /// Processes still using the rootfs (non-empty: the container is
    /// draining: unmounted from the run dir, its upper and work dirs and
    /// the image daemon kept until they exit; a later `umount` or `gc`
    /// finishes).
    pub still_used_by: Vec<u32>,
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

pub(super) fn images_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("images")
}

fn open_image_lock(run_dir: &Path, image: &str) -> Result<File, MountError> {
    let dir = images_dir(run_dir);
    super::layout::create_private(&dir)?;
    let path = dir.join(format!("{image}.lock"));
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(MountError::io("open", &path))
}

/// Holds the per-image flock until dropped.
pub(super) fn lock_image(run_dir: &Path, image: &str) -> Result<File, MountError> {
    let f = open_image_lock(run_dir, image)?;
    f.lock()
        .map_err(MountError::io("lock", images_dir(run_dir).join(image)))?;
    Ok(f)
}

/// The per-image flock if no one else holds it (repair skips busy images).
pub(super) fn try_lock_image(run_dir: &Path, image: &str) -> Option<File> {
    let f = open_image_lock(run_dir, image).ok()?;
    f.try_lock().ok()?;
    Some(f)
}

pub(super) fn read_containers(image_dir: &Path) -> Vec<String> {
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

pub(super) fn write_containers(image_dir: &Path, cids: &[String]) -> Result<(), MountError> {
    let path = image_dir.join(CONTAINERS_FILE);
    let tmp = image_dir.join(format!("{CONTAINERS_FILE}.tmp"));
    let body: String = cids.iter().map(|c| format!("{c}\n")).collect();
    std::fs::write(&tmp, body).map_err(MountError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(MountError::io("rename", &path))
}

pub(super) fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Attaches container `req.cid`: starts (or reuses) the image's daemon and
/// mounts an overlay over its FUSE mount; returns the rootfs path.
///
/// Crash-safe: the record (state `attaching`, naming this process) is in
/// place before anything is started or mounted, and turns `attached` last;
/// whatever a killed attach leaves is undone by the next `mount`, `umount`,
/// `ps` or `gc` ([`lifecycle::repair`]). A failed attach undoes itself.
pub fn attach_container<S: StackPart>(req: &MountRequest<S>) -> Result<PathBuf, MountError> {
    validate_cid(&req.cid)?;
    super::check_privileges()?;
    let run_dir = super::layout::prepare_run_dir(&req.run_dir)?;
    let node_dir = super::layout::prepare_node_dir(&req.node_dir)?;
    lifecycle::repair(&run_dir);
    if run_dir.join(&req.cid).exists() {
        return Err(MountError::CidInUse(req.cid.clone()));
    }
    let image = image_key_of(req)?;
    let _lock = lock_image(&run_dir, &image)?;
    let mut rec = Record {
        cid: req.cid.clone(),
        image: image.clone(),
        clip_path: req.clip_path.clone(),
        rootfs: run_dir.join(&req.cid).join("rootfs"),
        node_container_dir: node_dir.join("containers").join(&req.cid),
        created_unix: now_unix(),
        state: State::Attaching,
        owner: Some(Owner::this()),
        overlay: None,
    };
    let cdir = claim(&run_dir, &rec)?;
    crash_point("after-record");
    let image_dir = images_dir(&run_dir).join(&image);
    let res = attach_locked(req, &mut rec, &image_dir, &cdir);
    if let Err(e) = &res {
        tracing::warn!(cid = %req.cid, error = %e, "attach failed; undoing it");
        if let Err(e) = lifecycle::release(&run_dir, &mut rec) {
            tracing::warn!(cid = %req.cid, error = %e, "undoing the attach");
        }
    }
    res
}

fn attach_locked<S: StackPart>(
    req: &MountRequest<S>,
    rec: &mut Record,
    image_dir: &Path,
    cdir: &Path,
) -> Result<PathBuf, MountError> {
    lifecycle::ensure_daemon(req, image_dir)?;
    crash_point("after-daemon");
    let node_cdir = &rec.node_container_dir;
    let (upper, work, rootfs) = (
        node_cdir.join("upper"),
        node_cdir.join("work"),
        rec.rootfs.clone(),
    );
    super::layout::create_private(node_cdir)?;
    super::layout::create_private(&rootfs)?;
    // 0755: the upper dir's root is the container's `/` (a 0700 one would
    // shut every non-root container user out); node_cdir keeps host users out.
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).map_err(MountError::io("create", d))?;
    }
    if is_mounted(&rootfs) {
        return Err(MountError::MountBusy(rootfs));
    }
    mount_overlay(&image_dir.join("mnt"), &upper, &work, &rootfs)?;
    crash_point("after-overlay");
    rec.overlay = mount_identity(&rootfs);
    let mut cids = read_containers(image_dir);
    cids.push(req.cid.clone());
    write_containers(image_dir, &cids)?;
    crash_point("after-containers");
    rec.state = State::Attached;
    rec.owner = None;
    rec.save(cdir)?;
    Ok(rootfs)
}

/// Detaches container `cid`: unmounts its overlay and removes its dirs;
/// with the image's last container, stops the daemon (or cleans up after a
/// dead one) and removes the image dir.
///
/// A rootfs still in use (a process with a file, cwd or root in it, as the
/// processes of a running runc container have, in their namespace) is
/// detached lazily and nothing is deleted under it: the container turns
/// `draining` ([`DetachOutcome::still_used_by`] names the processes), its
/// upper and work dirs and the image daemon stay, and a later `umount` or
/// `gc` finishes once they are gone. Re-running it after a partial detach
/// finishes the job; a cid that left no trace is [`MountError::UnknownCid`].
pub fn detach_container(cid: &str, run_dir: &Path) -> Result<DetachOutcome, MountError> {
    validate_cid(cid)?;
    let run_dir = run_dir
        .canonicalize()
        .unwrap_or_else(|_| run_dir.to_path_buf());
    let cdir = run_dir.join(cid);
    if !cdir.exists() {
        lifecycle::repair(&run_dir);
        return Err(MountError::UnknownCid(cid.to_string()));
    }
    let Some(mut rec) = read_record(&cdir) else {
        // No record (a clipctl from before records were claimed whole).
        lifecycle::remove_unrecorded(&cdir)?;
        return Ok(DetachOutcome {
            cid: cid.to_string(),
            image: None,
            daemon_stopped: false,
            daemon_was_dead: false,
            still_used_by: Vec::new(),
        });
    };
    let lock = lock_image(&run_dir, &rec.image)?;
    // Re-read under the lock: an attach or detach may have moved it on.
    rec = read_record(&cdir).ok_or_else(|| MountError::UnknownCid(cid.to_string()))?;
    if matches!(rec.state, State::Attaching | State::Detaching)
        && rec.owner_alive()
        && !rec.owned_here()
    {
        return Err(MountError::CidBusy {
            cid: cid.to_string(),
            pid: rec.owner.map_or(0, |o| o.pid),
        });
    }
    if rec.state != State::Draining {
        rec.take(State::Detaching);
        rec.save(&cdir)?;
    }
    let Released {
        still_used_by,
        daemon_stopped,
        daemon_was_dead,
    } = lifecycle::release(&run_dir, &mut rec)?;
    drop(lock);
    lifecycle::repair(&run_dir);
    Ok(DetachOutcome {
        cid: cid.to_string(),
        image: Some(rec.image),
        daemon_stopped,
        daemon_was_dead,
        still_used_by,
    })
}

/// An image daemon held by [`hold_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldImage {
    /// Image key: its dir is `<run-dir>/images/<key>`.
    pub image: String,
    /// The image's shared read-only FUSE mount, a lower dir for overlays.
    pub mnt: PathBuf,
}

/// Whether an entry of an image's `containers` list is a [`hold_image`]
/// holder rather than a container id (cids never hold a `:`).
pub(super) fn is_holder(name: &str) -> bool {
    name.contains(':')
}

/// Holds the image daemon of `req.clip_path` for the holder `req.cid`
/// (a name with a `:`, so it never clashes with a container id) without
/// mounting an overlay: for callers that mount overlays themselves, like
/// containerd over the snapshotter. Starts the daemon, or restarts a dead
/// one; holding again is a no-op. A holder counts like a container (repair
/// keeps it: it has no record to lose): [`release_image`] of the last one
/// stops the daemon. `req.node_dir` is not used.
pub fn hold_image<S: StackPart>(req: &MountRequest<S>) -> Result<HeldImage, MountError> {
    if !is_holder(&req.cid) || req.cid.contains(['\n', '/']) {
        return Err(MountError::InvalidCid(req.cid.clone()));
    }
    super::check_privileges()?;
    let run_dir = super::layout::prepare_run_dir(&req.run_dir)?;
    let image = image_key_of(req)?;
    let _lock = lock_image(&run_dir, &image)?;
    let image_dir = images_dir(&run_dir).join(&image);
    let res = lifecycle::ensure_daemon(req, &image_dir).and_then(|()| {
        let mut holders = read_containers(&image_dir);
        if !holders.contains(&req.cid) {
            holders.push(req.cid.clone());
            write_containers(&image_dir, &holders)?;
        }
        Ok(image_dir.join("mnt"))
    });
    match res {
        Ok(mnt) => Ok(HeldImage { image, mnt }),
        Err(e) => {
            if read_containers(&image_dir).is_empty() && image_dir.exists() {
                let _ = lifecycle::stop_image(&image_dir);
            }
            Err(e)
        }
    }
}

/// Drops `holder`'s hold on image `image` (a [`HeldImage::image`]); the
/// last user (holder or container) stops the daemon and removes the image
/// dir. Returns whether it did; releasing a holder that holds nothing is a
/// no-op.
pub fn release_image(run_dir: &Path, image: &str, holder: &str) -> Result<bool, MountError> {
    let _lock = lock_image(run_dir, image)?;
    let image_dir = images_dir(run_dir).join(image);
    let mut holders = read_containers(&image_dir);
    holders.retain(|c| c != holder);
    if holders.is_empty() {
        if image_dir.exists() {
            lifecycle::stop_image(&image_dir)?;
            return Ok(true);
        }
    } else {
        write_containers(&image_dir, &holders)?;
    }
    Ok(false)
}

/// Every container record under `run_dir`, with its dir, sorted by cid.
pub(super) fn records(run_dir: &Path) -> Vec<(PathBuf, Record)> {
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Record)> = rd
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "images")
        .filter_map(|e| read_record(&e.path()).map(|r| (e.path(), r)))
        .collect();
    out.sort_by(|a, b| a.1.cid.cmp(&b.1.cid));
    out
}

/// Every container under `run_dir`, sorted by cid (after repairing what a
/// killed clipctl left, best effort).
pub fn list(run_dir: &Path) -> Vec<ContainerInfo> {
    lifecycle::repair(run_dir);
    records(run_dir)
        .into_iter()
        .map(|(_, r)| {
            let image_dir = images_dir(run_dir).join(&r.image);
            let transport = std::fs::read_to_string(image_dir.join(super::daemon::TRANSPORT_FILE));
            ContainerInfo {
                fuse_transport: transport.ok().map(|t| t.trim().to_string()),
                state: r.state.name().to_string(),
                mounted: is_mounted(&r.rootfs),
                daemon_alive: DaemonProcess::find(&image_dir).is_some(),
                daemon_pid: read_pid_file(&image_dir).map(|(pid, _)| pid),
                image_dir,
                cid: r.cid,
                image: r.image,
                clip_path: r.clip_path,
                rootfs: r.rootfs,
            }
        })
        .collect()
}
