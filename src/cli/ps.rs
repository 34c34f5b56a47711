//! `clipctl ps`: the attached containers, as a table or JSON, with where
//! each image's index and startup profile came from.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::mount::{self, ContainerInfo};
use crate::node::{DaemonSpec, IndexOrigin, Provenance};

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

/// Where the daemon of `c`'s image got its index and profile (from its
/// spec; `None` for a daemon started by an older clipctl).
fn provenance(c: &ContainerInfo) -> Option<Provenance> {
    DaemonSpec::load(&c.image_dir.join(mount::SPEC_FILE))
        .ok()
        .map(|s| s.stack.provenance)
}

/// Runs `clipctl ps`.
pub fn run(args: PsArgs) -> Result<()> {
    let list = mount::list(&args.run_dir);
    if args.json {
        let rows = list
            .iter()
            .map(|c| {
                let mut v = serde_json::to_value(c)?;
                v["provenance"] = serde_json::to_value(provenance(c))?;
                Ok(v)
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()?;
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<14} {:<8} {:<9} {:<9} {:<7} {:<7} ROOTFS",
        "CID", "IMAGE", "PID", "STATE", "TRANSPORT", "INDEX", "PROFILE"
    );
    for c in list {
        let state = match (c.state.as_str(), c.mounted, c.daemon_alive) {
            ("attached", true, true) => "running",
            ("attached", _, false) => "dead",
            ("attached", false, true) => "unmounted",
            (other, _, _) => other,
        };
        let p = provenance(&c);
        let index = match p.as_ref().map(|p| &p.index) {
            Some(IndexOrigin::Given { .. }) => "given",
            Some(IndexOrigin::Built) => "built",
            Some(IndexOrigin::Pulled { .. }) => "pulled",
            Some(IndexOrigin::Archive { .. }) => "archive",
            None => "-",
        };
        let profile = match p.and_then(|p| p.profile_pulled) {
            Some(_) => "pulled",
            None => "-",
        };
        println!(
            "{:<24} {:<14} {:<8} {:<9} {:<9} {:<7} {:<7} {}",
            c.cid,
            &c.image[..c.image.len().min(12)],
            c.daemon_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            state,
            c.fuse_transport.as_deref().unwrap_or("-"),
            index,
            profile,
            c.rootfs.display()
        );
    }
    Ok(())
}
