//! `clipctl mount`, `umount`, `ps` and the hidden `__daemon` entry point.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cache::{CacheConfig, ContentCache, ContentReader};
use crate::format::{ImageMeta, Index};
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::{Labels, Metrics};
use crate::mount::{self, DaemonArgs, DaemonConfig, MountError, MountRequest, ServeOptions};
use crate::oci::{open_layout, ImageRef, RegistryOptions, RegistrySource};
use crate::source::BlobSource;

use super::{CodedError, EXIT_NOT_FOUND};

/// Default kernel read-ahead of a mount (KiB).
const DEFAULT_READ_AHEAD_KB: u32 = 4096;

/// Arguments of `clipctl mount`.
#[derive(Debug, Args)]
pub struct MountArgs {
    /// Image reference; indexed first unless --clip is given (an index made
    /// earlier for the same manifest digest is reused).
    #[arg(long)]
    pub image: Option<String>,
    /// Container id: mount an overlay rootfs at <run-dir>/<cid>/rootfs and print its path.
    #[arg(long, conflicts_with = "mount_point")]
    pub cid: Option<String>,
    /// An existing .clip index of the image.
    #[arg(long)]
    pub clip: Option<PathBuf>,
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
}

/// Arguments of `clipctl umount`.
#[derive(Debug, Args)]
pub struct UmountArgs {
    /// Container id given to `mount --cid`.
    #[arg(long)]
    pub cid: String,
    /// Run-time state directory.
    #[arg(long, default_value = mount::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
}

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

/// Arguments of the hidden `__daemon` verb (written by `mount`).
#[derive(Debug, Args)]
pub struct DaemonCliArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// Where the blobs of an indexed image come from: the registry it was
/// indexed from (pinned by digest), else its OCI layout.
pub fn open_source(meta: &ImageMeta, insecure: &[String]) -> Result<Arc<dyn BlobSource>> {
    if let Some(r) = meta.pinned_reference.as_ref().or(meta.reference.as_ref()) {
        let image: ImageRef = r
            .parse()
            .with_context(|| format!("index names an invalid reference {r:?}"))?;
        let opts = RegistryOptions {
            insecure_registries: insecure.to_vec(),
            ..Default::default()
        };
        let src =
            RegistrySource::connect(&image, &opts).with_context(|| format!("registry for {r}"))?;
        return Ok(Arc::new(src));
    }
    if let Some(spec) = &meta.layout {
        let (_, src) = open_layout(spec, None).with_context(|| format!("OCI layout {spec}"))?;
        return Ok(Arc::new(src));
    }
    bail!("the index names neither a registry reference nor an OCI layout")
}

/// The content reader of a mount: the chunk cache over the image's source.
fn content_for(
    index: Arc<Index>,
    insecure: &[String],
    metrics: Option<Arc<Metrics>>,
) -> Result<Arc<dyn ContentReader>> {
    let source = open_source(index.meta(), insecure)?;
    let cache = ContentCache::new(index, source, CacheConfig::default());
    Ok(match metrics {
        Some(m) => Arc::new(cache.with_metrics(m)),
        None => Arc::new(cache),
    })
}

/// Finds or builds the index of `--image`: `<node_dir>/indexes/<digest>.clip`.
fn index_for_image(args: &MountArgs, reference: &str) -> Result<PathBuf> {
    let opened = super::index::open_image(
        Some(reference),
        None,
        args.platform.as_deref(),
        &args.insecure_registry,
    )?;
    let dir = args.node_dir.join("indexes");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.clip", opened.image.manifest_digest.hex()));
    if Index::open(&path).is_ok() {
        return Ok(path);
    }
    let data = crate::index::build(
        &opened.image,
        opened.source.as_ref(),
        opened.meta,
        &crate::index::IndexOptions::default(),
        &crate::index::Progress::default(),
    )
    .with_context(|| format!("indexing {reference}"))?;
    crate::format::write_index_file(&data, &path, Default::default())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Runs `clipctl mount`.
pub fn run_mount(args: MountArgs) -> Result<()> {
    let clip = match (&args.clip, &args.image) {
        (Some(c), _) => c.clone(),
        (None, Some(r)) => index_for_image(&args, r)?,
        (None, None) => bail!("give --image REF or --clip FILE"),
    };
    if let Some(mnt) = &args.mount_point {
        let index =
            Arc::new(Index::open(&clip).with_context(|| format!("opening {}", clip.display()))?);
        let content = content_for(index.clone(), &args.insecure_registry, None)?;
        let fs = ClipFs::new(index, content, FsConfig::default())?;
        let opts = ServeOptions {
            threads: args.threads.max(1),
            read_ahead_kb: (args.read_ahead_kb > 0).then_some(args.read_ahead_kb),
            ..Default::default()
        };
        let handle = mount::serve_with(mnt, fs, &opts)
            .with_context(|| format!("mounting at {}", mnt.display()))?;
        eprintln!(
            "clipctl: serving {} at {} (unmount with `umount {}`)",
            clip.display(),
            mnt.display(),
            mnt.display()
        );
        handle.wait();
        return Ok(());
    }
    let cid = args
        .cid
        .clone()
        .context("give --cid ID (a container rootfs) or --mount-point DIR")?;
    let mut req = MountRequest::new(cid, clip);
    req.run_dir = args.run_dir.clone();
    req.node_dir = args.node_dir.clone();
    req.threads = args.threads.max(1);
    req.read_ahead_kb = args.read_ahead_kb;
    if let mount::Launcher::Exec { args: a, .. } = &mut req.launcher {
        for host in &args.insecure_registry {
            a.push("--insecure-registry".into());
            a.push(host.into());
        }
    }
    let rootfs = mount::attach_container(&req).map_err(coded)?;
    println!("{}", rootfs.display());
    Ok(())
}

/// Maps "no such container" to its documented exit code.
fn coded(e: MountError) -> anyhow::Error {
    match e {
        MountError::UnknownCid(_) => CodedError {
            code: EXIT_NOT_FOUND,
            message: e.to_string(),
        }
        .into(),
        other => other.into(),
    }
}

/// Runs `clipctl umount`.
pub fn run_umount(args: UmountArgs) -> Result<()> {
    let out = mount::detach_container(&args.cid, &args.run_dir).map_err(coded)?;
    if out.daemon_was_dead {
        eprintln!("clipctl: the image daemon had died; cleaned up its mount");
    }
    Ok(())
}

/// Runs `clipctl ps`.
pub fn run_ps(args: PsArgs) -> Result<()> {
    let list = mount::list(&args.run_dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<14} {:<8} {:<7} ROOTFS",
        "CID", "IMAGE", "PID", "STATE"
    );
    for c in list {
        let state = match (c.mounted, c.daemon_alive) {
            (true, true) => "running",
            (_, false) => "dead",
            (false, true) => "unmounted",
        };
        println!(
            "{:<24} {:<14} {:<8} {:<7} {}",
            c.cid,
            &c.image[..c.image.len().min(12)],
            c.daemon_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            state,
            c.rootfs.display()
        );
    }
    Ok(())
}

/// Runs the per-image daemon (`clipctl __daemon [--insecure-registry H]… <DaemonArgs>`).
pub fn run_daemon(args: DaemonCliArgs) -> Result<()> {
    let mut insecure = Vec::new();
    let mut rest = Vec::new();
    let mut it = args.args.into_iter();
    while let Some(a) = it.next() {
        if a == "--insecure-registry" {
            let host = it.next().context("--insecure-registry needs a value")?;
            insecure.push(host.to_string_lossy().into_owned());
        } else {
            rest.push(a);
        }
    }
    let dargs = DaemonArgs::parse(rest)?;
    let metrics = Arc::new(Metrics::new());
    // Filled in once the daemon has opened the index.
    let labels: Arc<OnceLock<Labels>> = Arc::default();
    let containers_file = dargs.image_dir.join("containers");
    let (m, l) = (metrics.clone(), labels.clone());
    let stats: mount::StatsFn = Arc::new(move || {
        let mut labels = l.get().cloned().unwrap_or_default();
        labels.cids = std::fs::read_to_string(&containers_file)
            .unwrap_or_default()
            .lines()
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect();
        serde_json::to_value(m.snapshot(labels)).unwrap_or_default()
    });
    let m = metrics.clone();
    let config = DaemonConfig {
        args: dargs,
        content: Box::new(move |index: &Arc<Index>| {
            let meta = index.meta();
            let _ = labels.set(Labels {
                image: meta
                    .reference
                    .clone()
                    .or_else(|| meta.layout.clone())
                    .unwrap_or_default(),
                digest: meta
                    .manifest_digest
                    .map(|d| d.to_string())
                    .unwrap_or_default(),
                cids: Vec::new(),
            });
            content_for(index.clone(), &insecure, Some(m.clone()))
                .map_err(|e| MountError::Fs(format!("{e:#}")))
        }),
        stats: Some(stats),
        fs: FsConfig::default(),
        metrics: Some(metrics),
    };
    mount::run_daemon(config)?;
    Ok(())
}
