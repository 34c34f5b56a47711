//! `clipctl extract`: a .clip archive (local or in S3) → a directory tree.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::archive::{self, ExtractOptions, ExtractProgress};

use super::archive_io::{with_progress, S3Args};
use super::util::human;

/// Arguments of `clipctl extract`.
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The archive: a file, or s3://BUCKET/KEY.
    #[arg(long, value_name = "F.clip|s3://BUCKET/KEY")]
    pub archive: String,
    /// Directory to extract into: must be empty or not exist.
    #[arg(long, value_name = "DIR")]
    pub output: PathBuf,
    /// Worker threads (default: number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Do not restore owners (the default when not running as root).
    #[arg(long)]
    pub no_same_owner: bool,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Runs `clipctl extract`.
pub fn run(args: ExtractArgs) -> Result<()> {
    let started = Instant::now();
    let archive = args.s3.open_archive(&args.archive)?;
    let mut opts = ExtractOptions::default();
    if let Some(t) = args.threads {
        opts.threads = t.max(1);
    }
    if args.no_same_owner {
        opts.same_owner = false;
    }
    let total = archive.index().layer(0)?.uncompressed_size();
    let progress = ExtractProgress::default();
    let summary = with_progress("extracting", total, &progress.bytes, || {
        archive::extract(&archive, &args.output, &opts, &progress)
    })
    .with_context(|| format!("extracting {} into {}", args.archive, args.output.display()))?;
    println!(
        "extracted {} entries ({} files, {}) into {} in {:.2}s",
        summary.entries,
        summary.files,
        human(summary.bytes),
        args.output.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
