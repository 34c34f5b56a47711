//! The lifecycle rules of containers and image daemons:
//!
//! - a daemon is reused when it answers `ping` (retried with patience), and
//!   is treated as dead only when its process is gone (checked through a
//!   pidfd, [`DaemonProcess`]) or its mount is dead (`ENOTCONN`); a daemon
//!   that is alive but slow while it has containers is never killed: the
//!   attach fails with [`MountError::DaemonUnresponsive`] instead;
//! - [`release`] undoes a container whatever state its record is in: the
//!   overlay is unmounted (lazily when busy), and if any process still uses
//!   it, nothing is deleted: the record turns `draining` and its upper and
//!   work dirs and the image daemon stay until a later release finds no
//!   user;
//! - [`repair`] (run by `mount`, `umount`, `ps` and `gc`) releases records
//!   whose clipctl was killed mid-attach or mid-detach, finishes draining
//!   containers, removes stale claims and stops daemons no record uses.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use super::container::{
    ignore_missing, images_dir, is_holder, read_containers, read_record, records, try_lock_image,
    write_containers, MountRequest, Record, State, CLAIM_PREFIX,
};
use super::control::control_request;
use super::daemon::SOCK_FILE;
use super::mountinfo::mount_identity;
use super::process::DaemonProcess;
use super::spawn::start_daemon;
use super::spec::{DaemonSpec, StackPart};
use super::sys::abort_fuse_connection;
use super::users::overlay_users;
use super::{is_mounted, unmount, MountError};

/// Pings of a daemon that did not answer the first one, and the wait of
/// each: a daemon busy for up to this long (e.g. a loaded machine, a
/// blocked control thread) is still reused.
const PING_RETRIES: u32 = 3;
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// What [`release`] did.
#[derive(Debug, Default)]
pub(super) struct Released {
    /// Processes still using the overlay (non-empty: draining).
    pub(super) still_used_by: Vec<u32>,
    /// The image's daemon was stopped (its last container went).
    pub(super) daemon_stopped: bool,
    /// It was already dead.
    pub(super) daemon_was_dead: bool,
}

/// How an image's daemon is doing.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    Serving,
    /// Its process is gone, or its mount is gone or dead.
    Dead,
    /// Alive with a live mount, but it does not answer.
    Unresponsive(u32),
}

fn pong(image_dir: &Path, timeout: Duration) -> bool {
    control_request(&image_dir.join(SOCK_FILE), "ping", timeout).is_ok_and(|r| r.0 == "pong")
}

/// Whether the FUSE mount at `mnt` is dead (`ENOTCONN`, `ECONNABORTED`).
/// The stat runs on a thread: on a live but stuck daemon it could wait a
/// long time, and a stuck stat says "not dead".
fn mount_is_dead(mnt: &Path) -> bool {
    let (tx, rx) = mpsc::channel();
    let path = mnt.to_path_buf();
    let spawned = std::thread::Builder::new()
        .name("clip-mount-probe".into())
        .spawn(move || {
            let _ = tx.send(
                std::fs::metadata(&path)
                    .err()
                    .and_then(|e| e.raw_os_error()),
            );
        });
    if spawned.is_err() {
        return false;
    }
    matches!(
        rx.recv_timeout(Duration::from_secs(2)),
        Ok(Some(libc::ENOTCONN | libc::ECONNABORTED))
    )
}

fn health(image_dir: &Path) -> Health {
    let mnt = image_dir.join("mnt");
    if is_mounted(&mnt) && pong(image_dir, PING_TIMEOUT) {
        return Health::Serving;
    }
    let Some(daemon) = DaemonProcess::find(image_dir) else {
        return Health::Dead;
    };
    if !is_mounted(&mnt) || mount_is_dead(&mnt) {
        return Health::Dead;
    }
    for _ in 0..PING_RETRIES {
        if pong(image_dir, PING_TIMEOUT) {
            return Health::Serving;
        }
        if daemon.exited_within(Duration::ZERO) {
            return Health::Dead;
        }
    }
    Health::Unresponsive(daemon.pid())
}

/// Makes sure the image's daemon serves: reuses a live one, cleans up
/// after a dead one and starts a new one. Caller holds the image lock.
pub(super) fn ensure_daemon<S: StackPart>(
    req: &MountRequest<S>,
    image_dir: &Path,
) -> Result<(), MountError> {
    match health(image_dir) {
        Health::Serving => return Ok(()),
        Health::Unresponsive(pid) if !read_containers(image_dir).is_empty() => {
            return Err(MountError::DaemonUnresponsive {
                pid,
                image_dir: image_dir.to_path_buf(),
            });
        }
        _ => {}
    }
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
    start_daemon(&spec, &req.launcher, req.ready_timeout)
}

/// Stops the image's daemon (politely via `shutdown`, else SIGKILL through
/// its checked pidfd), unmounts its FUSE mount and removes the image dir.
/// Returns whether the daemon was already dead. Only for an image no
/// container uses.
pub(super) fn stop_image(image_dir: &Path) -> Result<bool, MountError> {
    let mnt = image_dir.join("mnt");
    let daemon = DaemonProcess::find(image_dir);
    let mut was_dead = true;
    if let Some(d) = &daemon {
        let in_process = d.pid() == std::process::id();
        let gone = || {
            if in_process {
                !is_mounted(&mnt)
            } else {
                d.exited_within(Duration::ZERO)
            }
        };
        if control_request(
            &image_dir.join(SOCK_FILE),
            "shutdown",
            Duration::from_secs(5),
        )
        .is_ok_and(|r| r.0 == "ok")
        {
            was_dead = false;
            for _ in 0..1000 {
                if gone() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !gone() {
            // Deaf or hung, and no container uses it.
            d.kill();
            d.exited_within(Duration::from_secs(5));
        }
    }
    if let Some(id) = mount_identity(&mnt).filter(|id| id.fstype.starts_with("fuse")) {
        // The daemon is gone: fail whatever still waits on its connection
        // (a reader must never hang on a mount nobody serves), then a lazy
        // unmount clears the ENOTCONN mount.
        if daemon
            .as_ref()
            .is_none_or(|d| d.pid() != std::process::id())
        {
            if let Err(e) = abort_fuse_connection(&id.dev) {
                tracing::debug!(error = %e, dev = %id.dev, "cannot abort the FUSE connection");
            }
        }
        unmount(&mnt, true)?;
    } else if is_mounted(&mnt) {
        unmount(&mnt, true)?;
    }
    std::fs::remove_dir_all(image_dir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", image_dir))?;
    Ok(was_dead)
}

/// Undoes container `rec` whatever its state; the caller holds the image
/// lock. Unmounts the overlay (lazily when busy); if processes still use
/// it, saves the record as `draining` and deletes nothing; else removes
/// the upper/work dirs and the record, takes the cid off the image's list
/// and, with the image's last container, stops its daemon.
pub(super) fn release(run_dir: &Path, rec: &mut Record) -> Result<Released, MountError> {
    let cdir = run_dir.join(&rec.cid);
    let rootfs = rec.rootfs.clone();
    if is_mounted(&rootfs) {
        rec.overlay = mount_identity(&rootfs).or(rec.overlay.take());
        match unmount(&rootfs, false) {
            Err(MountError::MountBusy(_)) => {
                tracing::warn!(rootfs = %rootfs.display(), "rootfs busy; detaching lazily");
                unmount(&rootfs, true)?;
            }
            other => other?,
        }
    }
    super::container::crash_point("detach-after-unmount");
    let users = rec.overlay.as_ref().map(overlay_users).unwrap_or_default();
    if !users.is_empty() {
        tracing::warn!(cid = %rec.cid, ?users, "rootfs still in use; keeping its upper dir and the daemon");
        rec.state = State::Draining;
        rec.owner = None;
        rec.save(&cdir)?;
        return Ok(Released {
            still_used_by: users,
            ..Released::default()
        });
    }
    let node_cdir = &rec.node_container_dir;
    std::fs::remove_dir_all(node_cdir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", node_cdir))?;
    super::container::crash_point("detach-after-upper");
    std::fs::remove_dir_all(&cdir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", &cdir))?;
    let image_dir = images_dir(run_dir).join(&rec.image);
    let mut out = Released::default();
    let mut cids = read_containers(&image_dir);
    cids.retain(|c| *c != rec.cid);
    if cids.is_empty() {
        if image_dir.exists() {
            out.daemon_was_dead = stop_image(&image_dir)?;
            out.daemon_stopped = true;
        }
    } else {
        write_containers(&image_dir, &cids)?;
    }
    Ok(out)
}

/// Removes a container dir that has no record (left by a clipctl from
/// before records were claimed whole): its rootfs is unmounted lazily.
pub(super) fn remove_unrecorded(cdir: &Path) -> Result<(), MountError> {
    let rootfs = cdir.join("rootfs");
    if is_mounted(&rootfs) {
        unmount(&rootfs, true)?;
    }
    std::fs::remove_dir_all(cdir)
        .or_else(ignore_missing)
        .map_err(MountError::io("remove", cdir))
}

/// Whether `rec` needs repair: a draining container, or one whose attach or
/// detach was killed.
fn needs_repair(rec: &Record) -> bool {
    match rec.state {
        State::Attached => false,
        State::Draining => true,
        State::Attaching | State::Detaching => !rec.owner_alive(),
    }
}

/// Repairs what killed clipctl processes left under `run_dir` and finishes
/// draining containers whose users are gone; returns one line per thing
/// done. Best effort (errors are logged); images another clipctl is
/// working on (their lock is held) are left for later.
pub fn repair(run_dir: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let Ok(rd) = std::fs::read_dir(run_dir) else {
        return done;
    };
    for e in rd.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(CLAIM_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
            let _ = std::fs::remove_dir_all(e.path());
            done.push(format!("removed the stale claim {name}"));
        }
    }
    for (cdir, rec) in records(run_dir) {
        if !needs_repair(&rec) {
            continue;
        }
        let Some(_lock) = try_lock_image(run_dir, &rec.image) else {
            continue;
        };
        let Some(mut rec) = read_record(&cdir).filter(needs_repair) else {
            continue;
        };
        let was = rec.state;
        match release(run_dir, &mut rec) {
            Ok(r) if !r.still_used_by.is_empty() => {
                if was != State::Draining {
                    done.push(format!(
                        "{}: was {was:?}, still in use by pids {:?}: draining",
                        rec.cid, r.still_used_by
                    ));
                }
            }
            Ok(_) => done.push(format!("{}: was {was:?}: removed", rec.cid)),
            Err(e) => tracing::warn!(cid = %rec.cid, error = %e, "repair"),
        }
    }
    repair_images(run_dir, &mut done);
    done
}

/// Stops the daemons of images no record or holder uses (an attach killed before its
/// record, a detach killed before updating the image's list) and drops
/// cids without a record from the lists.
fn repair_images(run_dir: &Path, done: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(images_dir(run_dir)) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        let image_dir = e.path();
        if !image_dir.is_dir() {
            continue;
        }
        let image = e.file_name().to_string_lossy().into_owned();
        let Some(_lock) = try_lock_image(run_dir, &image) else {
            continue;
        };
        let listed = read_containers(&image_dir);
        // Holders (`hold_image`) have no record: they stay until released.
        let used: Vec<String> = records(run_dir)
            .into_iter()
            .filter(|(_, r)| r.image == image)
            .map(|(_, r)| r.cid)
            .chain(listed.iter().filter(|c| is_holder(c)).cloned())
            .collect();
        if used.is_empty() {
            match stop_image(&image_dir) {
                Ok(_) => done.push(format!(
                    "image {image}: no container uses it: daemon stopped"
                )),
                Err(e) => tracing::warn!(image, error = %e, "repair"),
            }
            continue;
        }
        let kept: Vec<String> = listed
            .iter()
            .filter(|c| used.contains(c))
            .cloned()
            .collect();
        if kept.len() != listed.len() {
            let _ = write_containers(&image_dir, &kept);
            done.push(format!(
                "image {image}: dropped containers without a record"
            ));
        }
    }
}
