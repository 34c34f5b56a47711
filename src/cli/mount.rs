//! `clipctl mount`, `umount`, `ps` and the hidden `__daemon` entry point.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::cache::{CacheConfig, ContentCache, ContentReader, DiskCache};
use crate::format::{AccessProfile, Index, ProfileError};
use crate::fuse::{ClipFs, FsConfig};
use crate::metrics::Metrics;
use crate::mount::{self, DaemonArgs, DaemonConfig, MountError, MountRequest, ServeOptions};
use crate::oci::{
    open_layout, ImageRef, RegistryOptions, RegistrySource, RequestEvent, RequestObserver,
};
use crate::source::BlobSource;

use super::{CodedError, EXIT_NOT_FOUND};

/// Default kernel read-ahead of a mount (KiB). Measured on cold `import
/// numpy` (span 1 MiB): 128 KiB → 1.04 s, 20.6 MiB fetched; 512 KiB →
/// 0.93 s, 20.0 MiB; 4096 KiB → served bytes double for page faults of
/// mapped libraries. Sequential readers still get large requests.
const DEFAULT_READ_AHEAD_KB: u32 = 512;

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
    /// Budget of the node's on-disk chunk cache (<node-dir>/chunks, shared
    /// by every image, kept across daemon restarts), e.g. 4G; 0 turns it off.
    #[arg(long, default_value = "4G", value_name = "SIZE")]
    pub disk_cache: String,
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

/// Where a mount reads blobs from, when not from where the image was indexed.
#[derive(Debug, Clone, Default)]
pub struct SourceChoice {
    /// Another registry reference holding the same blobs (a mirror, a copy).
    pub image: Option<String>,
    /// An OCI layout holding the same image (e.g. moved since indexing).
    pub layout: Option<String>,
    /// Registries allowed over plain HTTP.
    pub insecure: Vec<String>,
}

impl SourceChoice {
    /// The extra `__daemon` arguments that carry this choice.
    fn to_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        for host in &self.insecure {
            a.extend(["--insecure-registry".into(), host.into()]);
        }
        if let Some(i) = &self.image {
            a.extend(["--source-image".into(), i.into()]);
        }
        if let Some(l) = &self.layout {
            a.extend(["--source-layout".into(), l.into()]);
        }
        a
    }
}

/// What a mount does with a startup access profile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ProfileMode {
    /// Neither replay nor record.
    #[default]
    Off,
    /// The node's own profile of the image: replayed if present (a damaged
    /// one is replaced), else recorded.
    Auto(PathBuf),
    /// A profile file given by the user: replayed if present (it must be
    /// valid and for this image), else recorded.
    File(PathBuf),
}

impl ProfileMode {
    /// Resolves `--profile` for the index at `clip`; a given profile file
    /// that exists is checked here, so a bad one fails the mount even when
    /// the image's daemon is already running (and ignores it).
    fn resolve(args: &MountArgs, clip: &Path) -> Result<Self> {
        if args.profile == "off" {
            return Ok(ProfileMode::Off);
        }
        let index = Index::open(clip).with_context(|| format!("opening {}", clip.display()))?;
        let manifest = index.meta().manifest_digest;
        Ok(match args.profile.as_str() {
            "auto" => {
                match manifest {
                    Some(d) => ProfileMode::Auto(
                        std::path::absolute(args.node_dir.join("profiles"))?
                            .join(format!("{}.json", d.hex())),
                    ),
                    // No manifest digest to key a node-wide profile by.
                    None => {
                        tracing::info!("the index names no manifest digest: no startup profile");
                        ProfileMode::Off
                    }
                }
            }
            path => {
                let path =
                    std::path::absolute(path).with_context(|| format!("--profile {path}"))?;
                if path.exists() {
                    check_profile_image(&AccessProfile::load(&path)?, &path, manifest)?;
                }
                ProfileMode::File(path)
            }
        })
    }

    fn path(&self) -> Option<&Path> {
        match self {
            ProfileMode::Off => None,
            ProfileMode::Auto(p) | ProfileMode::File(p) => Some(p),
        }
    }
}

/// Prefetch and profile knobs of a mount (`None`: the built-in default).
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// [`CacheConfig::prefetch_threads`].
    pub prefetch_threads: Option<usize>,
    /// [`FsConfig::prefetch_min`], in KiB.
    pub prefetch_min_kb: Option<u64>,
    /// Startup access profile.
    pub profile: ProfileMode,
    /// Recording window of a new profile.
    pub profile_window: Duration,
    /// Threads replaying a profile.
    pub profile_threads: usize,
    /// The node's chunk directory and its budget in bytes (None: off).
    pub disk_cache: Option<(PathBuf, u64)>,
}

impl Tuning {
    fn of(args: &MountArgs, profile: ProfileMode) -> Result<Self> {
        let budget = super::util::parse_size(&args.disk_cache).context("--disk-cache")?;
        let disk_cache = if budget == 0 {
            None
        } else {
            Some((std::path::absolute(args.node_dir.join("chunks"))?, budget))
        };
        Ok(Tuning {
            prefetch_threads: args.prefetch_threads,
            prefetch_min_kb: args.prefetch_min_kb,
            profile,
            profile_window: Duration::from_secs(args.profile_window),
            profile_threads: args.profile_threads.max(1),
            disk_cache,
        })
    }

    /// The extra `__daemon` arguments that carry these knobs.
    fn to_args(&self) -> Vec<OsString> {
        let mut a = Vec::new();
        if let Some(n) = self.prefetch_threads {
            a.extend(["--prefetch-threads".into(), n.to_string().into()]);
        }
        if let Some(kb) = self.prefetch_min_kb {
            a.extend(["--prefetch-min-kb".into(), kb.to_string().into()]);
        }
        match &self.profile {
            ProfileMode::Off => {}
            ProfileMode::Auto(p) => a.extend(["--profile-auto".into(), p.into()]),
            ProfileMode::File(p) => a.extend(["--profile".into(), p.into()]),
        }
        a.extend([
            "--profile-window".into(),
            self.profile_window.as_secs().to_string().into(),
            "--profile-threads".into(),
            self.profile_threads.to_string().into(),
        ]);
        if let Some((dir, budget)) = &self.disk_cache {
            a.extend([
                "--disk-cache-dir".into(),
                dir.into(),
                "--disk-cache-bytes".into(),
                budget.to_string().into(),
            ]);
        }
        a
    }

    fn cache_config(&self) -> CacheConfig {
        let mut c = CacheConfig::default();
        if let Some(n) = self.prefetch_threads {
            c.prefetch_threads = n;
        }
        c
    }

    fn fs_config(&self) -> FsConfig {
        let mut c = FsConfig::default();
        if let Some(kb) = self.prefetch_min_kb {
            c.prefetch_min = Some(kb.saturating_mul(1024));
        }
        if self.prefetch_threads == Some(0) {
            c.prefetch_min = None;
        }
        c
    }
}

/// Opens the blobs of an indexed image: the source chosen at mount time,
/// else the registry it was indexed from (pinned by digest), else its OCI
/// layout. Probes the first layer so that an unreachable source fails the
/// mount instead of every later read.
pub fn open_source(
    index: &Index,
    choice: &SourceChoice,
    observer: Option<RequestObserver>,
) -> Result<Arc<dyn BlobSource>> {
    let meta = index.meta();
    let source: Arc<dyn BlobSource> = if let Some(spec) = choice.layout.as_ref().or(
        // A layout recorded at indexing time, unless a registry is chosen.
        meta.layout
            .as_ref()
            .filter(|_| choice.image.is_none() && meta.reference.is_none()),
    ) {
        let (image, src) = open_layout(spec, None).with_context(|| format!("OCI layout {spec}"))?;
        if meta
            .manifest_digest
            .is_some_and(|d| d != image.manifest_digest)
        {
            bail!(
                "OCI layout {spec} holds image {}, but the index describes {}",
                image.manifest_digest,
                meta.manifest_digest
                    .map(|d| d.to_string())
                    .unwrap_or_default()
            );
        }
        Arc::new(src)
    } else {
        let r = choice
            .image
            .as_ref()
            .or(meta.pinned_reference.as_ref())
            .or(meta.reference.as_ref())
            .context("the index names neither a registry reference nor an OCI layout")?;
        let image: ImageRef = r
            .parse()
            .with_context(|| format!("invalid image reference {r:?}"))?;
        let opts = RegistryOptions {
            insecure_registries: choice.insecure.clone(),
            observer,
            ..Default::default()
        };
        Arc::new(
            RegistrySource::connect(&image, &opts).with_context(|| format!("registry for {r}"))?,
        )
    };
    if index.layer_count() > 0 {
        let layer = index.layer(0)?;
        let mut probe = [0u8; 1];
        source
            .read_at(&layer.digest(), 0, &mut probe)
            .with_context(|| format!("cannot read layer {} of the image", layer.digest()))?;
    }
    Ok(source)
}

/// The chunk cache of a mount over the image's source, with its prefetch
/// threads running and its profile being replayed or recorded; and what to
/// do with the recording when the mount ends.
fn content_for(
    index: Arc<Index>,
    choice: &SourceChoice,
    tuning: &Tuning,
    metrics: Arc<Metrics>,
) -> Result<(Arc<ContentCache>, Option<ProfileSave>)> {
    // Registry responses by status and retries, into the mount's metrics.
    let m = metrics.clone();
    let observer = Some(RequestObserver(Arc::new(move |event| match event {
        RequestEvent::Status(status) => m.count_http_status(status),
        RequestEvent::NoResponse => m.count_http_status(0),
        RequestEvent::Retry => m.count_retry(),
    })));
    let source = open_source(&index, choice, observer)?;
    let mut cache =
        ContentCache::new(index, source, tuning.cache_config()).with_metrics(metrics.clone());
    if let Some((dir, budget)) = &tuning.disk_cache {
        match DiskCache::open(dir, *budget, metrics) {
            Ok(disk) => cache = cache.with_disk(Arc::new(disk)),
            // Best effort: the mount works without it.
            Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "no disk cache"),
        }
    }
    let cache = Arc::new(cache);
    cache.start_prefetch();
    let save = start_profile(&cache, tuning)?;
    Ok((cache, save))
}

/// Where a mount's recording goes when its window closes or the mount ends.
#[derive(Debug, Clone)]
struct ProfileSave {
    path: PathBuf,
    /// The profile this mount replayed: the recording replaces it only if
    /// the workload no longer matches it.
    replayed: Option<Arc<AccessProfile>>,
}

/// Starts the mount's profile: replays the node's (or the index's) profile
/// if there is one, and records what readers touch, for the window from
/// the first read (a timer saves it then; the unmount saves what there is).
/// A profile file given by the user is replayed, never overwritten.
fn start_profile(cache: &Arc<ContentCache>, tuning: &Tuning) -> Result<Option<ProfileSave>> {
    let Some(path) = tuning.profile.path() else {
        return Ok(None);
    };
    let explicit = matches!(tuning.profile, ProfileMode::File(_));
    let manifest = cache.index().meta().manifest_digest;
    let loaded = AccessProfile::load(path)
        .map_err(anyhow::Error::from)
        .and_then(|p| check_profile_image(&p, path, manifest).map(|()| p));
    let replayed = match loaded {
        Ok(p) => Some((p, path.display().to_string())),
        Err(e) if is_not_found(&e) => match (explicit, cache.index().profile()) {
            // The node has none yet: the one shipped in the index, if any.
            (false, Some(p)) => Some((p.clone(), "the index".to_string())),
            _ => None,
        },
        Err(e) if explicit => return Err(e),
        Err(e) => {
            tracing::warn!("{e:#}; recording a new profile");
            None
        }
    };
    if let Some((p, from)) = &replayed {
        let jobs = cache.replay(p, tuning.profile_threads);
        tracing::info!(
            from,
            ranges = p.ranges.len(),
            bytes = p.bytes(),
            jobs,
            "replaying the startup profile"
        );
        if explicit {
            return Ok(None);
        }
    }
    let save = ProfileSave {
        path: path.to_path_buf(),
        replayed: replayed.map(|(p, _)| Arc::new(p)),
    };
    cache.start_recording();
    tracing::info!(profile = %path.display(), window = ?tuning.profile_window, "recording the startup reads");
    let (weak, timer_save, window) = (Arc::downgrade(cache), save.clone(), tuning.profile_window);
    std::thread::Builder::new()
        .name("clip-profile".into())
        .spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let Some(cache) = weak.upgrade() else { return };
            if !cache.is_recording() {
                return;
            }
            if cache
                .recording_since()
                .is_some_and(|t| t.elapsed() >= window)
            {
                save_profile(&cache, &timer_save);
                return;
            }
        })
        .context("starting the profile timer")?;
    Ok(Some(save))
}

/// Saves the recording, if one is running and noted anything (an empty
/// profile would stop every later mount from recording a useful one). After
/// a replay, only when the workload changed: less than 90 % of what was read
/// is in the replayed profile, or the replayed profile is more than twice
/// what was read.
fn save_profile(cache: &ContentCache, save: &ProfileSave) {
    let Some(p) = cache.finish_recording() else {
        return;
    };
    if p.ranges.is_empty() {
        return;
    }
    let read = p.bytes();
    if let Some(old) = &save.replayed {
        let covered = p.overlap_bytes(old);
        if covered.saturating_mul(10) >= read.saturating_mul(9)
            && old.bytes() <= read.saturating_mul(2)
        {
            tracing::info!(
                covered,
                read,
                "the replayed profile still fits the workload"
            );
            return;
        }
        tracing::info!(
            covered,
            read,
            replayed = old.bytes(),
            "the workload changed; replacing the startup profile"
        );
    }
    match p.save(&save.path) {
        Ok(()) => tracing::info!(
            profile = %save.path.display(),
            ranges = p.ranges.len(),
            bytes = read,
            "saved the startup profile"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot save the startup profile"),
    }
}

fn is_not_found(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<ProfileError>(),
        Some(ProfileError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound
    )
}

/// Fails if `p` names an image other than `manifest`.
fn check_profile_image(
    p: &AccessProfile,
    path: &Path,
    manifest: Option<crate::Digest>,
) -> Result<()> {
    match (p.manifest, manifest) {
        (Some(theirs), Some(ours)) if theirs != ours => bail!(
            "profile {} was recorded for image {theirs}, not {ours}",
            path.display()
        ),
        _ => Ok(()),
    }
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
    // Before any work (indexing, opening the index) a bad cid would waste.
    if let Some(cid) = &args.cid {
        mount::validate_cid(cid)?;
    }
    let clip = match (&args.clip, &args.image) {
        (Some(c), _) => c.clone(),
        (None, Some(r)) => index_for_image(&args, r)?,
        (None, None) => bail!("give --image REF or --clip FILE"),
    };
    // With --clip, --image/--layout choose where blobs come from.
    let choice = SourceChoice {
        image: args.image.clone().filter(|_| args.clip.is_some()),
        layout: args.layout.clone(),
        insecure: args.insecure_registry.clone(),
    };
    let tuning = Tuning::of(&args, ProfileMode::resolve(&args, &clip)?)?;
    if let Some(mnt) = &args.mount_point {
        let index =
            Arc::new(Index::open(&clip).with_context(|| format!("opening {}", clip.display()))?);
        let (cache, save) =
            content_for(index.clone(), &choice, &tuning, Arc::new(Metrics::new()))?;
        let fs = ClipFs::new(index, cache.clone(), tuning.fs_config())?;
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
        if let Some(save) = &save {
            save_profile(&cache, save);
        }
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
        a.extend(choice.to_args());
        a.extend(tuning.to_args());
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

/// Runs the per-image daemon (`clipctl __daemon [--insecure-registry H]…
/// [--prefetch-threads N] [--prefetch-min-kb K] <DaemonArgs>`).
pub fn run_daemon(args: DaemonCliArgs) -> Result<()> {
    let mut choice = SourceChoice::default();
    let mut tuning = Tuning::default();
    let (mut disk_dir, mut disk_bytes) = (None, None);
    let mut rest = Vec::new();
    let mut it = args.args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .map(|v| v.to_string_lossy().into_owned())
                .with_context(|| format!("{a:?} needs a value"))
        };
        match a.to_str() {
            Some("--insecure-registry") => choice.insecure.push(value()?),
            Some("--source-image") => choice.image = Some(value()?),
            Some("--source-layout") => choice.layout = Some(value()?),
            Some("--prefetch-threads") => {
                tuning.prefetch_threads = Some(value()?.parse().context("--prefetch-threads")?)
            }
            Some("--prefetch-min-kb") => {
                tuning.prefetch_min_kb = Some(value()?.parse().context("--prefetch-min-kb")?)
            }
            Some("--profile-auto") => tuning.profile = ProfileMode::Auto(value()?.into()),
            Some("--profile") => tuning.profile = ProfileMode::File(value()?.into()),
            Some("--profile-window") => {
                tuning.profile_window =
                    Duration::from_secs(value()?.parse().context("--profile-window")?)
            }
            Some("--profile-threads") => {
                tuning.profile_threads = value()?.parse().context("--profile-threads")?
            }
            Some("--disk-cache-dir") => disk_dir = Some(PathBuf::from(value()?)),
            Some("--disk-cache-bytes") => {
                disk_bytes = Some(value()?.parse().context("--disk-cache-bytes")?)
            }
            _ => rest.push(a),
        }
    }
    if let (Some(dir), Some(budget)) = (disk_dir, disk_bytes) {
        tuning.disk_cache = Some((dir, budget));
    }
    let dargs = DaemonArgs::parse(rest)?;
    let metrics = Arc::new(Metrics::new());
    let m = metrics.clone();
    // The cache, kept to save a profile still being recorded at unmount.
    type Slot = OnceLock<(Arc<ContentCache>, Option<ProfileSave>)>;
    let cache_slot: Arc<Slot> = Arc::default();
    let slot = cache_slot.clone();
    let fs = tuning.fs_config();
    let config = DaemonConfig {
        args: dargs,
        content: Box::new(move |index: &Arc<Index>| {
            let (cache, save) = content_for(index.clone(), &choice, &tuning, m.clone())
                .map_err(|e| format!("{e:#}"))?;
            let _ = slot.set((cache.clone(), save));
            Ok(cache as Arc<dyn ContentReader>)
        }),
        fs,
        metrics,
    };
    let served = mount::run_daemon(config);
    if let Some((cache, Some(save))) = cache_slot.get() {
        save_profile(cache, save);
    }
    served?;
    Ok(())
}
