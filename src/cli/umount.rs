//! `clipctl umount`: removes a container's rootfs (a rootfs still in use
//! is detached and drains: see `mount::detach_container`).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::mount;

/// Arguments of `clipctl umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Container id given to `mount --cid`.
    #[arg(long)]
    pub cid: String,
    /// Run-time state directory.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// Runs `clipctl umount`.
pub fn run(args: UmountArgs) -> Result<()> {
    let out = mount::detach_container(&args.cid, &args.run_dir).map_err(super::coded)?;
    if !out.still_used_by.is_empty() {
        let pids: Vec<String> = out.still_used_by.iter().map(u32::to_string).collect();
        eprintln!(
            "clipctl: the rootfs of {} is still in use by pid {}: it is unmounted from the run dir, \
             but its upper dir and the image daemon stay until those processes exit; \
             `clipctl umount --cid {}` or `clipctl gc` then finishes",
            args.cid,
            pids.join(", "),
            args.cid
        );
    }
    if out.daemon_was_dead {
        eprintln!("clipctl: the image daemon had died; cleaned up its mount");
    }
    Ok(())
}
