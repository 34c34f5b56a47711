//! Shared by the archive verbs: a location is a local path or
//! `s3://BUCKET/KEY`; the `--s3-endpoint` flag; opening archives there; the
//! progress bar.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::archive::Archive;
use crate::node;
use crate::object::{FileWriter, ObjectRead, ObjectWrite};
use crate::s3::S3Url;
use crate::source::SourceError;

/// S3 settings shared by the archive verbs.
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// Endpoint of an S3-compatible store, e.g. http://127.0.0.1:9000
    /// (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's
    /// endpoint_url, else AWS S3). Credentials come from the environment or
    /// the AWS profile files.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
}

impl S3Args {
    /// Opens the object at `location` for range reads.
    pub fn open_object(&self, location: &str) -> Result<Arc<dyn ObjectRead>> {
        Ok(node::open_object(location, self.s3_endpoint.as_deref())?)
    }

    /// Opens and checks the archive at `location`. Errors name it.
    pub fn open_archive(&self, location: &str) -> Result<Archive> {
        // Errors of the object itself already name it.
        let object = self.open_object(location)?;
        Archive::open(object).with_context(|| location.to_string())
    }

    /// Starts writing the object at `location`, its front (`front_len`
    /// bytes) written last. Nothing appears there unless it is finished.
    pub fn create_object(
        &self,
        location: &str,
        front_len: u64,
    ) -> Result<Box<dyn ObjectWrite>, SourceError> {
        if S3Url::is_s3(location) {
            let client = node::s3_client(location, self.s3_endpoint.as_deref())?;
            Ok(Box::new(client.writer(front_len)))
        } else {
            Ok(Box::new(FileWriter::create(
                Path::new(location),
                front_len,
            )?))
        }
    }
}

/// Runs `work` while a progress bar (on a terminal only) shows `counter`
/// against `total`.
pub fn with_progress<T>(
    label: &str,
    total: u64,
    counter: &AtomicU64,
    work: impl FnOnce() -> T,
) -> T {
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        if std::io::stderr().is_terminal() {
            s.spawn(|| {
                let bar = indicatif::ProgressBar::new(total);
                let template = format!(
                    "{{spinner}} {label} [{{bar:40}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}}"
                );
                bar.set_style(
                    indicatif::ProgressStyle::with_template(&template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                while !done.load(Ordering::Relaxed) {
                    bar.set_position(counter.load(Ordering::Relaxed));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            });
        }
        let r = work();
        done.store(true, Ordering::Relaxed);
        r
    })
}
