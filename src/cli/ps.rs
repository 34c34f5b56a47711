//! `clipctl ps`: the attached containers, as a table or JSON.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::mount;

/// Arguments of `clipctl ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Run-time state directory.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `clipctl ps`.
pub fn run(args: PsArgs) -> Result<()> {
    let list = mount::list(&args.run_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<14} {:<8} {:<7} {:<9} ROOTFS",
        "CID", "IMAGE", "PID", "STATE", "TRANSPORT"
    );
    for c in list {
        let state = match (c.mounted, c.daemon_alive) {
            (true, true) => "running",
            (_, false) => "dead",
            (false, true) => "unmounted",
        };
        println!(
            "{:<24} {:<14} {:<8} {:<7} {:<9} {}",
            c.cid,
            &c.image[..c.image.len().min(12)],
            c.daemon_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            state,
            c.fuse_transport.as_deref().unwrap_or("-"),
            c.rootfs.display()
        );
    }
    Ok(())
}
