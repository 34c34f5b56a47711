//! `clipctl rpull`: records an image in containerd, its layers served by
//! the clip snapshotter (nothing downloaded but manifest and config).

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::snapshotter::{self, RpullOptions};

use super::util::{human, parse_platform};

/// Arguments of `clipctl rpull`.
#[derive(Debug, Args)]
pub struct RpullArgs {
    /// Image reference.
    pub reference: String,
    /// containerd's gRPC socket.
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub address: PathBuf,
    /// containerd namespace (Kubernetes uses k8s.io).
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// The clip snapshotter's name in containerd's proxy_plugins.
    #[arg(long, default_value = "clip")]
    pub snapshotter: String,
    /// Registry host[:port] allowed over plain HTTP (loopback always is).
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
    /// Platform of a multi-platform image, e.g. linux/arm64.
    #[arg(long)]
    pub platform: Option<String>,
}

/// Runs `clipctl rpull`.
pub fn run(args: RpullArgs) -> Result<()> {
    let report = snapshotter::rpull(&RpullOptions {
        platform: parse_platform(args.platform.as_deref())?,
        reference: args.reference,
        address: args.address,
        namespace: args.namespace,
        snapshotter: args.snapshotter,
        insecure: args.insecure_registry,
    })?;
    println!(
        "{} {}: {} layers ({}) served lazily; fetched {}",
        report.name,
        report.manifest,
        report.layers,
        human(report.layer_bytes),
        human(report.fetched_bytes)
    );
    Ok(())
}
