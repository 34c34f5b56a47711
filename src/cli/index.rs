//! `clipctl index`: image (registry or OCI layout) → .clip index file.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;

use crate::format::{write_index_file, AccessProfile, IndexData, WriteOptions};
use crate::index::{build, IndexOptions, Progress, DEFAULT_CHUNK, DEFAULT_SPAN};
use crate::node;
use crate::oci::ReferrersVia;

use super::util::{human, parse_platform, parse_size};

/// Arguments of `clipctl index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// Image reference in a registry, e.g. 127.0.0.1:5000/clip/python:latest.
    #[arg(long, conflicts_with = "layout", required_unless_present = "layout")]
    pub image: Option<String>,
    /// OCI image layout directory, optionally with a tag: DIR[:TAG].
    #[arg(long)]
    pub layout: Option<String>,
    /// Where to write the index.
    #[arg(long)]
    pub out: PathBuf,
    /// Platform to pick from a multi-platform image (default: this host), e.g. linux/arm64.
    #[arg(long)]
    pub platform: Option<String>,
    /// Uncompressed distance between gzip checkpoints (e.g. 4M).
    #[arg(long, default_value_t = DEFAULT_SPAN.to_string())]
    pub span: String,
    /// Verification chunk size (e.g. 256K).
    #[arg(long, default_value_t = DEFAULT_CHUNK.to_string())]
    pub chunk_size: String,
    /// Registry host[:port] allowed over plain HTTP (loopback is always allowed). Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// Layers indexed in parallel (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not compress metadata sections.
    #[arg(long)]
    pub no_compress: bool,
    /// Embed this startup access profile (one recorded by `clipctl mount
    /// --profile FILE` on the image): every node's first mount of the index
    /// then fetches those bytes ahead of the process.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// Also publish the index in the image's repository, as an OCI artifact
    /// attached to the image (referrers API, or the `sha256-<hex>` tag
    /// schema), where `clipctl mount --image` finds it. Needs push access.
    #[arg(long, requires = "image")]
    pub push: bool,
}

/// Runs `clipctl index`.
pub fn run(args: IndexArgs) -> Result<()> {
    let span = parse_size(&args.span).context("--span")?;
    let chunk = parse_size(&args.chunk_size).context("--chunk-size")?;
    anyhow::ensure!(span >= 64 << 10, "--span must be at least 64K");
    anyhow::ensure!(
        (4 << 10..=16 << 20).contains(&chunk),
        "--chunk-size must be between 4K and 16M"
    );
    let profile = args
        .profile
        .as_deref()
        .map(AccessProfile::load)
        .transpose()?;
    let platform = parse_platform(args.platform.as_deref())?;
    let opened = node::open_image(
        args.image.as_deref(),
        args.layout.as_deref(),
        platform.as_ref(),
        &args.insecure_registry,
    )?;
    if let (Some(p), Some(path)) = (&profile, &args.profile) {
        let layers: Vec<_> = opened.image.layers.iter().map(|l| l.digest).collect();
        node::check_profile_fits(p, opened.image.manifest_digest, &layers)
            .with_context(|| format!("--profile {}", path.display()))?;
    }
    let mut opts = IndexOptions {
        span,
        chunk_size: chunk as u32,
        ..Default::default()
    };
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    let total: u64 = opened.image.layers.iter().map(|l| l.size).sum();
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let started = Instant::now();
    let data = std::thread::scope(|s| {
        if std::io::stderr().is_terminal() {
            s.spawn(|| show_progress(&progress, &done, total));
        }
        let r = build(
            &opened.image,
            opened.source.as_ref(),
            opened.meta.clone(),
            &opts,
            &progress,
        );
        done.store(true, Ordering::Relaxed);
        r
    })
    .context("indexing failed; no index written")?;
    let data = IndexData { profile, ..data };
    let size = write_index_file(
        &data,
        &args.out,
        WriteOptions {
            compress: !args.no_compress,
        },
    )
    .with_context(|| format!("writing {}", args.out.display()))?;
    let files = data.tree.nodes.len();
    println!(
        "indexed {} ({} layers, {} compressed, {} entries) in {:.2}s -> {} ({}, {:.2}% of the compressed image)",
        data.meta.manifest_digest.map(|d| d.to_string()).unwrap_or_default(),
        data.layers.len(),
        human(total),
        files,
        started.elapsed().as_secs_f64(),
        args.out.display(),
        human(size),
        if total > 0 { size as f64 * 100.0 / total as f64 } else { 0.0 },
    );
    if let (true, Some(reference)) = (args.push, &args.image) {
        let a = node::publish_index(reference, &args.insecure_registry, &args.out)
            .with_context(|| format!("{} was written but not published", args.out.display()))?;
        println!("published as artifact {} ({})", a.digest, via(a.via));
    }
    Ok(())
}

/// How a registry lists what was attached, for people.
pub(super) fn via(v: ReferrersVia) -> &'static str {
    match v {
        ReferrersVia::Api => "referrers API",
        ReferrersVia::TagSchema => "referrers tag schema",
    }
}

fn show_progress(progress: &Progress, done: &AtomicBool, total: u64) {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} indexing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !done.load(Ordering::Relaxed) {
        bar.set_position(progress.bytes_read.load(Ordering::Relaxed));
        std::thread::sleep(Duration::from_millis(100));
    }
    bar.finish_and_clear();
}
