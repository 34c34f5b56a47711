//! `clipctl mount`: arguments into a [`node`] request; prints the rootfs.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::format::Index;
use crate::mount;
use crate::node::{
    self, DiskTier, IndexPolicy, MountPlan, Prepared, ProfileMode, SourceChoice, StackSpec, Tuning,
    DEFAULT_READ_AHEAD_KB,
};

use super::util::{parse_platform, parse_size};

/// Arguments of `clipctl mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Image reference; its index is the node's, a published one or one
    /// built now (see --index), unless --clip is given.
    #[arg(long)]
    pub image: Option<String>,
    /// Where the index of --image comes from: `auto` the node's, else one
    /// published in the registry (`clipctl index --push`), else built on
    /// this node; `pull` never builds; `build` never looks in the registry.
    #[arg(long, default_value = "auto", value_name = "auto|pull|build")]
    pub index: IndexPolicy,
    /// Container id: mount an overlay rootfs at <run-dir>/<cid>/rootfs and print its path.
    #[arg(long, conflicts_with = "mount_point")]
    pub cid: Option<String>,
    /// An existing .clip index of the image. With --image or --layout, blobs
    /// are read from there instead of where the image was indexed.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// OCI layout DIR[:TAG] holding the image's blobs (with --clip).
    #[arg(long, requires = "clip", conflicts_with = "image")]
    pub layout: Option<String>,
    /// Mount only the read-only merged tree here, in the foreground (until `umount DIR`).
    #[arg(long)]
    pub mount_point: Option<PathBuf>,
    /// Run-time state: mounts, daemons, sockets.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// Node state: container upper/work dirs and indexes made by `mount --image`.
    #[arg(long, default_value = mount::DEFAULT_NODE_DIR)]
    pub node_dir: PathBuf,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Kernel read-ahead for the FUSE mount, in KiB (0: kernel default, 128).
    #[arg(long, default_value_t = DEFAULT_READ_AHEAD_KB)]
    pub read_ahead_kb: u32,
    /// Registry host[:port] allowed over plain HTTP (loopback always is). Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// Platform of a multi-platform image, e.g. linux/arm64.
    #[arg(long)]
    pub platform: Option<String>,
    /// Background threads prefetching a large file's data when it is first
    /// read (default 0: off; 4 pays off when registry round trips are long).
    #[arg(long)]
    pub prefetch_threads: Option<usize>,
    /// Smallest file (KiB) whose first read starts a prefetch of the whole
    /// file (default 256).
    #[arg(long)]
    pub prefetch_min_kb: Option<u64>,
    /// Startup access profile. `auto`: <node-dir>/profiles/<manifest>.json
    /// is replayed (its ranges fetched ahead, in parallel) when it exists,
    /// else the profile embedded in the index (`clipctl index --profile`);
    /// either way this mount records its reads and saves them there when
    /// there was no profile or the workload no longer matches it. A PATH:
    /// replayed if it exists (it must be for this image), else recorded
    /// into. `off`: none of this. Applies when the mount starts the image's
    /// daemon.
    #[arg(long, default_value = "auto", value_name = "auto|off|PATH")]
    pub profile: String,
    /// Seconds from the first read during which reads are recorded into a
    /// new profile (what there is is also saved at unmount).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub profile_window: u64,
    /// Threads fetching a profile's ranges.
    #[arg(long, default_value_t = 4)]
    pub profile_threads: usize,
    /// Publish the profile this mount records (`--profile auto`, when the
    /// replace rules save one) to the image's registry, for the other nodes
    /// (needs push access; without it one line is logged). Off by default:
    /// a mount only reads unless asked to write to a shared registry.
    #[arg(long)]
    pub profile_push: bool,
    /// Budget of the node's on-disk chunk cache (<node-dir>/chunks, shared
    /// by every image, kept across daemon restarts), e.g. 4G; 0 turns it off.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub disk_cache: String,
}

/// Runs `clipctl mount`.
pub fn run(args: MountArgs) -> Result<()> {
    // Before any work (indexing, opening the index) a bad cid would waste.
    if let Some(cid) = &args.cid {
        mount::validate_cid(cid)?;
    }
    if args.clip.is_none() && args.image.is_none() {
        bail!("give --image REF or --clip FILE");
    }
    if args.profile_push && args.profile != "auto" {
        bail!(
            "--profile-push publishes what --profile auto records; it cannot go with --profile {}",
            args.profile
        );
    }
    let platform = parse_platform(args.platform.as_deref())?;
    let prepared = node::prepare_mount(&MountPlan {
        node_dir: &args.node_dir,
        clip: args.clip.as_deref(),
        image: args.image.as_deref(),
        platform: platform.as_ref(),
        insecure: &args.insecure_registry,
        index: args.index,
        profile: args.profile == "auto",
    })?;
    let clip = prepared.clip.clone();
    let stack = stack_spec(&args, prepared)?;
    if let Some(mnt) = &args.mount_point {
        let served = node::mount_at(&clip, mnt, &stack.source, &stack.tuning)
            .with_context(|| format!("mounting at {}", mnt.display()))?;
        eprintln!(
            "clipctl: serving {} at {} (unmount with `umount {}`)",
            clip.display(),
            mnt.display(),
            mnt.display()
        );
        served.wait();
        return Ok(());
    }
    let cid = args
        .cid
        .clone()
        .context("give --cid ID (a container rootfs) or --mount-point DIR")?;
    let req = node::mount_request(
        cid,
        clip,
        args.run_dir.clone(),
        args.node_dir.clone(),
        stack,
    );
    let rootfs = mount::attach_container(&req).map_err(super::coded)?;
    println!("{}", rootfs.display());
    Ok(())
}

/// The source, tuning and provenance of a prepared mount.
fn stack_spec(args: &MountArgs, prepared: Prepared) -> Result<StackSpec> {
    let clip = &prepared.clip;
    let source = SourceChoice {
        image: prepared.source_image,
        layout: args.layout.clone(),
        insecure: args.insecure_registry.clone(),
    };
    let profile = if args.profile == "off" {
        ProfileMode::Off
    } else {
        let index = Index::open(clip).with_context(|| format!("opening {}", clip.display()))?;
        ProfileMode::resolve(&args.profile, &args.node_dir, &index)?
    };
    let budget = parse_size(&args.disk_cache).context("--disk-cache")?;
    let tuning = Tuning {
        threads: args.threads.max(1),
        read_ahead_kb: args.read_ahead_kb,
        prefetch_threads: args.prefetch_threads,
        prefetch_min_kb: args.prefetch_min_kb,
        profile,
        profile_window_secs: args.profile_window,
        profile_threads: args.profile_threads.max(1),
        profile_push: args.profile_push,
        disk_cache: DiskTier::in_node(&args.node_dir, budget).context("--node-dir")?,
    };
    Ok(StackSpec {
        source,
        tuning,
        provenance: prepared.provenance,
    })
}
