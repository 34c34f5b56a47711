//! `clipctl mount`: arguments into a [`node`] request; prints the rootfs.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::format::Index;
use crate::mount::{self, FuseTransport};
use crate::node::{
    self, ArchiveLocation, DiskTier, IndexPolicy, MountPlan, Prepared, ProfileMode, SourceChoice,
    StackSpec, Tuning, DEFAULT_READ_AHEAD_KB,
};

use super::archive_io::S3Args;
use super::util::{parse_duration, parse_platform, parse_size, warm_config};

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
    /// A .clip archive to mount: a file, or s3://BUCKET/KEY. Its embedded
    /// index is read with one range read of its head and saved on the node;
    /// file data is fetched lazily, by range, through the same cache.
    #[arg(long, value_name = "F.clip|s3://BUCKET/KEY", conflicts_with_all = ["image", "clip", "layout"])]
    pub archive: Option<String>,
    #[command(flatten)]
    pub s3: S3Args,
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
    /// Threads reading /dev/fuse (over io_uring, one thread per CPU queue
    /// serves the requests and these take only INIT, INTERRUPT and FORGET).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Kernel read-ahead for the FUSE mount, in KiB (0: kernel default, 128).
    #[arg(long, default_value_t = DEFAULT_READ_AHEAD_KB)]
    pub read_ahead_kb: u32,
    /// How FUSE requests reach the daemon: `uring` (FUSE over io_uring,
    /// Linux 6.14+), `dev` (/dev/fuse read/write), `auto` (io_uring when the
    /// kernel has it, switching the fuse module parameter enable_uring on
    /// if needed, else /dev/fuse). Applies when the mount starts the
    /// image's daemon.
    #[arg(long, default_value = "auto", value_name = "auto|uring|dev")]
    pub fuse_transport: FuseTransport,
    /// Deadline of a READ waiting for bytes from the registry: after it the
    /// reader gets EIO (the fetch goes on and fills the cache). E.g. 30s,
    /// 500ms, 2m.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub read_timeout: Duration,
    /// Registry host[:port] allowed over plain HTTP (loopback always is). Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// Platform of a multi-platform image, e.g. linux/arm64.
    #[arg(long)]
    pub platform: Option<String>,
    /// Background threads fetching ahead of readers (first-start warming,
    /// prefetch hints); 0 turns fetching ahead off.
    #[arg(long)]
    pub prefetch_threads: Option<usize>,
    /// First-start warming, for mounts that replay no startup profile: the
    /// files every container start reads and the image's entry program at
    /// mount; a file's first read fetches the rest of it, the libraries an
    /// ELF file loads (from the index's hints) and, once two small files (or
    /// one Python module) of a directory were read, the directory's other
    /// small files. `on`, `off`,
    /// or `on` with changes: `whole-max=16M,dir-budget=8M,dir-trigger=2,
    /// small-max=128K,deps=on,budget=256M`.
    #[arg(long, default_value = "on", value_name = "on|off|KEY=VALUE,...")]
    pub warm: String,
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
    /// Budget of the node's on-disk chunk store (<node-dir>/store, mapped,
    /// shared by every image, kept across daemon restarts; docs/store.md),
    /// e.g. 4G; 0 turns it off.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub disk_cache: String,
    /// Anonymous memory for chunks: those in flight and those the disk
    /// store could not take. `auto`: 16M with a disk cache, 512M without.
    #[arg(long, default_value = "auto", value_name = "SIZE|auto")]
    pub memory_cache: String,
}

/// Runs `clipctl mount`.
pub fn run(args: MountArgs) -> Result<()> {
    // Before any work (indexing, opening the index) a bad cid would waste.
    if let Some(cid) = &args.cid {
        mount::validate_cid(cid)?;
    }
    if args.clip.is_none() && args.image.is_none() && args.archive.is_none() {
        bail!("give --image REF, --clip FILE or --archive F.clip|s3://BUCKET/KEY");
    }
    if args.profile_push && args.archive.is_some() {
        bail!("--profile-push publishes to an image's registry; an archive has none");
    }
    if args.profile_push && args.profile != "auto" {
        bail!(
            "--profile-push publishes what --profile auto records; it cannot go with --profile {}",
            args.profile
        );
    }
    let (prepared, archive) = match &args.archive {
        Some(location) => {
            let location = ArchiveLocation::new(location, args.s3.s3_endpoint.clone())?;
            let archive = node::prepare_archive(&args.node_dir, &location)?;
            (archive.prepared.clone(), Some((location, archive)))
        }
        None => {
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
            (prepared, None)
        }
    };
    let clip = prepared.clip.clone();
    let stack = stack_spec(&args, prepared, archive.as_ref().map(|a| a.0.clone()))?;
    if let Some(mnt) = &args.mount_point {
        let served = node::mount_at(&clip, mnt, &stack.source, &stack.tuning)
            .with_context(|| format!("mounting at {}", mnt.display()))?;
        eprintln!(
            "clipctl: serving {} at {} over {} (unmount with `umount {}`)",
            args.archive
                .clone()
                .unwrap_or_else(|| clip.display().to_string()),
            mnt.display(),
            served.transport().map_or("?", |t| t.name()),
            mnt.display()
        );
        served.wait();
        return Ok(());
    }
    let cid = args
        .cid
        .clone()
        .context("give --cid ID (a container rootfs) or --mount-point DIR")?;
    let (run_dir, node_dir) = (args.run_dir.clone(), args.node_dir.clone());
    let req = match archive {
        Some((_, archive)) => node::archive_mount_request(cid, archive, run_dir, node_dir, stack),
        None => node::mount_request(cid, clip, run_dir, node_dir, stack),
    };
    let rootfs = mount::attach_container(&req).map_err(super::coded)?;
    println!("{}", rootfs.display());
    Ok(())
}

/// The source, tuning and provenance of a prepared mount (of an archive
/// when `archive` is given).
fn stack_spec(
    args: &MountArgs,
    prepared: Prepared,
    archive: Option<ArchiveLocation>,
) -> Result<StackSpec> {
    let clip = &prepared.clip;
    let profile = if args.profile == "off" {
        ProfileMode::Off
    } else {
        let index = Index::open(clip).with_context(|| format!("opening {}", clip.display()))?;
        match &archive {
            Some(_) => node::archive_profile(&args.profile, &args.node_dir, &index)?,
            None => ProfileMode::resolve(&args.profile, &args.node_dir, &index)?,
        }
    };
    let source = SourceChoice {
        image: prepared.source_image,
        layout: args.layout.clone(),
        insecure: args.insecure_registry.clone(),
        archive,
    };
    let budget = parse_size(&args.disk_cache).context("--disk-cache")?;
    let tuning = Tuning {
        threads: args.threads.max(1),
        read_ahead_kb: args.read_ahead_kb,
        prefetch_threads: args.prefetch_threads,
        warm: warm_config(&args.warm)?,
        profile,
        profile_window_secs: args.profile_window,
        profile_threads: args.profile_threads.max(1),
        profile_push: args.profile_push,
        disk_cache: DiskTier::in_node(&args.node_dir, budget).context("--node-dir")?,
        memory_cache: memory_cache(&args.memory_cache)?,
        fuse_transport: args.fuse_transport,
        read_timeout_ms: args.read_timeout.as_millis().try_into().unwrap_or(u64::MAX),
    };
    Ok(StackSpec {
        source,
        tuning,
        provenance: prepared.provenance,
    })
}

/// `--memory-cache`: `auto` (None) or a size.
pub(crate) fn memory_cache(arg: &str) -> Result<Option<u64>> {
    if arg == "auto" {
        return Ok(None);
    }
    Ok(Some(parse_size(arg).context("--memory-cache")?))
}
