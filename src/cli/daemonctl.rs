//! `clipctl daemon restart`: replaces an image's daemon with a new process
//! of this clipctl binary while its containers keep reading (the FUSE
//! connection is handed over, never unmounted; docs/takeover.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::mount::{self, Launcher};

/// Arguments of `clipctl daemon`.
#[derive(Debug, Args)]
pub struct DaemonCtlArgs {
    #[command(subcommand)]
    command: DaemonCommand,
}

#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Restart (or, after installing a new clipctl, upgrade) an image's
    /// daemon without breaking its containers.
    Restart(RestartArgs),
}

#[derive(Debug, Args)]
struct RestartArgs {
    /// The image: its key as `clipctl ps` shows it (a unique prefix is
    /// enough), or its image dir.
    #[arg(long)]
    image: String,
    /// Run-time state directory.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,
    /// Seconds to wait for the new daemon to serve.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `clipctl daemon …`.
pub fn run(args: DaemonCtlArgs) -> Result<()> {
    let DaemonCommand::Restart(a) = args.command;
    let launcher: Launcher<()> = Launcher::default();
    let r = mount::restart_daemon(
        &a.run_dir,
        &a.image,
        &launcher,
        Duration::from_secs(a.timeout),
    )
    .map_err(super::coded)?;
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "image_dir": r.image_dir,
                "old_pid": r.old_pid,
                "new_pid": r.new_pid,
                "elapsed_ms": r.elapsed.as_secs_f64() * 1e3,
            })
        );
    } else {
        println!(
            "restarted {}: pid {} -> {} in {:.0} ms",
            r.image_dir.display(),
            r.old_pid,
            r.new_pid,
            r.elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
