//! The hidden `__daemon` verb: the per-image daemon `mount` starts.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::mount::StartMode;
use crate::node::{self, DaemonSpec};

/// Arguments of the hidden `__daemon` verb (written by `mount`).
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The daemon's spec, `<image_dir>/daemon.json`.
    #[arg(long)]
    pub spec: PathBuf,
    /// Take the live mount over from the image's running daemon (started
    /// by `clipctl daemon restart`).
    #[arg(long)]
    pub takeover: bool,
}

/// Runs the daemon of `--spec` until its mount goes away.
pub fn run(args: DaemonArgs) -> Result<()> {
    let start = if args.takeover {
        StartMode::Takeover
    } else {
        StartMode::Mount
    };
    node::run_daemon(DaemonSpec::load(&args.spec)?, start)?;
    Ok(())
}
