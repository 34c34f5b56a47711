//! `clipctl gc`: repairs what killed clipctl processes left in the run dir
//! and finishes draining containers (what `mount`, `umount` and `ps` also
//! do first), printing each thing done.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::mount;

/// Arguments of `clipctl gc`.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// Run-time state directory.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

/// Runs `clipctl gc`.
pub fn run(args: GcArgs) -> Result<()> {
    mount::check_privileges()?;
    for line in mount::repair(&args.run_dir) {
        println!("{line}");
    }
    Ok(())
}
