//! `clipctl create`: a directory or an image → a data-carrying .clip archive,
//! written locally or to S3.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::archive::{
    self, CreateOptions, CreateProgress, Input, DEFAULT_CHUNK, DEFAULT_FRAME, DEFAULT_LEVEL,
};
use crate::index::{build, IndexOptions, Progress};
use crate::node;

use super::archive_io::{with_progress, S3Args};
use super::util::{human, parse_platform, parse_size};

/// Arguments of `clipctl create`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("from").required(true).args(["input", "image", "layout"])))]
pub struct CreateArgs {
    /// Directory tree to archive.
    #[arg(long, value_name = "DIR")]
    pub input: Option<PathBuf>,
    /// Image in a registry to archive (its merged rootfs).
    #[arg(long, value_name = "REF")]
    pub image: Option<String>,
    /// OCI image layout to archive: DIR[:TAG].
    #[arg(long)]
    pub layout: Option<String>,
    /// Where to write: a file, or s3://BUCKET/KEY.
    #[arg(long, value_name = "F.clip|s3://BUCKET/KEY")]
    pub output: String,
    /// zstd level, 1-22.
    #[arg(long, default_value_t = DEFAULT_LEVEL)]
    pub level: i32,
    /// Uncompressed bytes per independently decodable frame (e.g. 1M).
    #[arg(long, default_value_t = DEFAULT_FRAME.to_string())]
    pub frame_size: String,
    /// Verification chunk size (e.g. 256K).
    #[arg(long, default_value_t = DEFAULT_CHUNK.to_string())]
    pub chunk_size: String,
    /// Compression threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Platform of a multi-platform image, e.g. linux/arm64.
    #[arg(long)]
    pub platform: Option<String>,
    /// Registry host[:port] allowed over plain HTTP (loopback always is). Repeatable.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Runs `clipctl create`.
pub fn run(args: CreateArgs) -> Result<()> {
    let mut opts = CreateOptions {
        level: args.level,
        frame_size: u32::try_from(parse_size(&args.frame_size).context("--frame-size")?)
            .context("--frame-size is too large")?,
        chunk_size: u32::try_from(parse_size(&args.chunk_size).context("--chunk-size")?)
            .context("--chunk-size is too large")?,
        ..Default::default()
    };
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    let started = Instant::now();
    let input = match &args.input {
        Some(dir) => Input::from_dir(dir).context("reading the input directory")?,
        None => {
            let platform = parse_platform(args.platform.as_deref())?;
            let opened = node::open_image(
                args.image.as_deref(),
                args.layout.as_deref(),
                platform.as_ref(),
                &args.insecure_registry,
            )?;
            let data = build(
                &opened.image,
                opened.source.as_ref(),
                opened.meta.clone(),
                &IndexOptions::default(),
                &Progress::default(),
            )
            .context("reading the image")?;
            Input::from_image(data, Arc::from(opened.source))?
        }
    };
    let (total, inodes) = (input.data_bytes(), input.inode_count());
    let progress = CreateProgress::default();
    let summary = with_progress("archiving", total, &progress.bytes_in, || {
        archive::create(input, &opts, &progress, |front| {
            args.s3.create_object(&args.output, front)
        })
    })
    .with_context(|| format!("creating {}; nothing written", args.output))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "created {} ({}: {inodes} inodes, {} of file data in {} frames -> {}, {:.1}%) in {secs:.2}s ({}/s)",
        args.output,
        human(summary.archive_len),
        human(summary.data_bytes),
        summary.frames,
        human(summary.stored_bytes),
        if summary.data_bytes > 0 {
            summary.stored_bytes as f64 * 100.0 / summary.data_bytes as f64
        } else {
            0.0
        },
        human((summary.data_bytes as f64 / secs.max(1e-9)) as u64),
    );
    Ok(())
}
