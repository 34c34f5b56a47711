//! The hidden `__daemon` verb: the per-image daemon `mount` starts.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::node::{self, DaemonSpec};

/// Arguments of the hidden `__daemon` verb (written by `mount`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The daemon's spec, `<image_dir>/daemon.json`.
    #[arg(long)]
    pub spec: PathBuf,
}

/// Runs the daemon of `--spec` until its mount goes away.
pub fn run(args: DaemonArgs) -> Result<()> {
    node::run_daemon(DaemonSpec::load(&args.spec)?)?;
    Ok(())
}
