//! `clipctl snapshotter`: containerd's remote snapshotter (a proxy plugin).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::mount::{self, FuseTransport};
use crate::node::{DiskTier, IndexPolicy, Tuning};
use crate::snapshotter::{self, SnapshotterConfig};

use super::util::{parse_size, warm_config};

/// Arguments of `clipctl snapshotter`.
#[derive(Debug, Args)]
pub struct SnapshotterArgs {
    /// The gRPC socket containerd's `proxy_plugins` entry names.
    #[arg(long, default_value = snapshotter::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// Metadata and the snapshots' upper/work dirs.
    #[arg(long, default_value = snapshotter::DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Run-time state of the image daemons (shared with `clipctl mount`).
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Node state: indexes, profiles, the chunk cache.
    #[arg(long, default_value = mount::DEFAULT_NODE_DIR)]
    pub node_dir: PathBuf,
    /// Where an image's index comes from (as `mount --index`).
    #[arg(long, default_value = "auto", value_name = "auto|pull|build")]
    pub index: IndexPolicy,
    /// Startup profiles: `auto` replays and records each image's node
    /// profile (as `mount --profile auto`), `off` none.
    #[arg(long, default_value = "auto", value_parser = ["auto", "off"])]
    pub profile: String,
    /// Budget of the node's on-disk chunk store; 0 turns it off.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub disk_cache: String,
    /// Anonymous memory for chunks of each image daemon (as `mount
    /// --memory-cache`): `auto` is 16M with a disk cache, 512M without.
    #[arg(long, default_value = "auto", value_name = "SIZE|auto")]
    pub memory_cache: String,
    /// FUSE transport of the image daemons (as `mount --fuse-transport`).
    #[arg(long, default_value = "auto", value_name = "auto|uring|dev")]
    pub fuse_transport: FuseTransport,
    /// First-start warming of the image daemons (as `mount --warm`): `on`,
    /// `off`, or `on` with changes (`whole-max=16M,dir-budget=8M,...`).
    #[arg(long, default_value = "on", value_name = "on|off|KEY=VALUE,...")]
    pub warm: String,
    /// Background threads of each image daemon fetching ahead of readers
    /// (warming, prefetch hints); 0 turns fetching ahead off.
    #[arg(long)]
    pub prefetch_threads: Option<usize>,
    /// Registry host[:port] allowed over plain HTTP (loopback always is).
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
}

/// Runs `clipctl snapshotter` until SIGINT or SIGTERM.
pub fn run(args: SnapshotterArgs) -> Result<()> {
    let budget = parse_size(&args.disk_cache).context("--disk-cache")?;
    let tuning = Tuning {
        disk_cache: DiskTier::in_node(&args.node_dir, budget).context("--node-dir")?,
        memory_cache: super::mount::memory_cache(&args.memory_cache)?,
        fuse_transport: args.fuse_transport,
        warm: warm_config(&args.warm)?,
        prefetch_threads: args.prefetch_threads,
        ..Tuning::default()
    };
    let cfg = SnapshotterConfig {
        root: args.root,
        run_dir: args.run_dir,
        node_dir: args.node_dir,
        insecure: args.insecure_registry,
        index: args.index,
        tuning,
        profile: args.profile == "auto",
    };
    snapshotter::serve(cfg, &args.address)?;
    Ok(())
}
