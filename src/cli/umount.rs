//! `clipctl umount`: removes a container's rootfs.

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
    if out.daemon_was_dead {
        eprintln!("clipctl: the image daemon had died; cleaned up its mount");
    }
    Ok(())
}
