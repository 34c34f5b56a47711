//! `clipctl profile`: startup profiles in the registry. `push` publishes
//! one for the other nodes; `ls` lists the indexes and profiles published
//! for an image.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};

use crate::mount;
use crate::node::{self, ANNOTATION_NODE, ANNOTATION_PROFILE_BYTES};
use crate::oci::ANNOTATION_CREATED;

use super::index::via;
use super::util::parse_platform;

/// Arguments of `clipctl profile`.
#[derive(Debug, Args)]
pub struct ProfileArgs {
    #[command(subcommand)]
    command: ProfileCommand,
}

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// Publish a startup profile, attached to the image in its registry
    /// (needs push access); a node without a profile of the image pulls it.
    Push(PushArgs),
    /// List the indexes and startup profiles published for an image, newest first.
    Ls(LsArgs),
}

/// The image and how to reach its registry.
#[derive(Debug, Args)]
struct ImageArgs {
    /// Image reference in a registry.
    #[arg(long)]
    image: String,
    /// Platform of a multi-platform image, e.g. linux/arm64.
    #[arg(long)]
    platform: Option<String>,
    /// Registry host[:port] allowed over plain HTTP (loopback always is). Repeatable.
    #[arg(long = "insecure-registry")]
    insecure_registry: Vec<String>,
}

#[derive(Debug, Args)]
struct PushArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// The profile file (default: the node's profile of the image,
    /// <node-dir>/profiles/<manifest>.json).
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Node state (where the node's profiles are).
    #[arg(long, default_value = mount::DEFAULT_NODE_DIR)]
    node_dir: PathBuf,
}

#[derive(Debug, Args)]
struct LsArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `clipctl profile`.
pub fn run(args: ProfileArgs) -> Result<()> {
    match args.command {
        ProfileCommand::Push(a) => {
            let platform = parse_platform(a.image.platform.as_deref())?;
            let (attached, path) = node::push_profile(
                &a.image.image,
                &a.image.insecure_registry,
                platform.as_ref(),
                &a.node_dir,
                a.from.as_deref(),
            )?;
            println!(
                "published {} as artifact {} ({})",
                path.display(),
                attached.digest,
                via(attached.via)
            );
        }
        ProfileCommand::Ls(a) => {
            let platform = parse_platform(a.image.platform.as_deref())?;
            let (manifest, list, how) = node::published(
                &a.image.image,
                &a.image.insecure_registry,
                platform.as_ref(),
            )?;
            if a.json {
                let v = serde_json::json!({
                    "manifest": manifest, "via": how, "artifacts": list,
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("image {manifest}, listed by the {}", via(how));
            println!(
                "{:<8} {:<25} {:<12} {:<16} ARTIFACT",
                "KIND", "CREATED", "BYTES", "NODE"
            );
            for r in list {
                let kind = match r.artifact_type.as_str() {
                    node::ARTIFACT_TYPE_INDEX => "index",
                    node::ARTIFACT_TYPE_PROFILE => "profile",
                    _ => "other",
                };
                let note = |k: &str| r.annotations.get(k).map_or("-", String::as_str);
                println!(
                    "{:<8} {:<25} {:<12} {:<16} {}",
                    kind,
                    note(ANNOTATION_CREATED),
                    note(ANNOTATION_PROFILE_BYTES),
                    note(ANNOTATION_NODE),
                    r.digest
                );
            }
        }
    }
    Ok(())
}
