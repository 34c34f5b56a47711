//! `clipctl push`: upload a local .clip archive to S3 (multipart, several
//! parts at once); the key shows nothing until the upload completes.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::archive::Archive;
use crate::object::{FileObject, ObjectRead};
use crate::s3::S3Url;

use super::archive_io::{with_progress, S3Args};
use super::util::human;

/// Bytes read from the file per write to the upload.
const READ_BUF: usize = 4 << 20;

/// Arguments of `clipctl push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The local archive.
    pub file: PathBuf,
    /// Destination: s3://BUCKET/KEY.
    pub url: String,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Runs `clipctl push`.
pub fn run(args: PushArgs) -> Result<()> {
    if !S3Url::is_s3(&args.url) {
        bail!(
            "push needs an s3://BUCKET/KEY destination, not {:?}",
            args.url
        );
    }
    let started = Instant::now();
    let object = Arc::new(FileObject::open(&args.file)?);
    let len = object.len();
    // Only archives go up: an index alone is useless without its registry.
    Archive::open(object.clone()).with_context(|| args.file.display().to_string())?;
    let sent = AtomicU64::new(0);
    let upload = || -> Result<u64> {
        let mut sink = args.s3.create_object(&args.url, 0)?;
        let mut file = std::fs::File::open(&args.file)?;
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    sink.abort();
                    return Err(e.into());
                }
            };
            if let Err(e) = sink.write(&buf[..n]) {
                sink.abort();
                return Err(e.into());
            }
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        if sent.load(Ordering::Relaxed) != len {
            sink.abort();
            bail!("{} changed while being uploaded", args.file.display());
        }
        Ok(sink.finish(&[])?)
    };
    let written = with_progress("uploading", len, &sent, upload)
        .with_context(|| format!("uploading {} to {}", args.file.display(), args.url))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "pushed {} to {} ({}) in {secs:.2}s",
        args.file.display(),
        args.url,
        human(written)
    );
    Ok(())
}
