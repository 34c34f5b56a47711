//! The `clipctl` command line: argument parsing, progress display, human and
//! JSON output, exit codes. The only module that prints or uses `anyhow`;
//! everything else returns typed errors.
//!
//! Exit codes: 0 success, 1 error, 2 usage error (clap), 3 the named thing
//! (container id, daemon) does not exist.

mod archive_io;
mod create;
mod daemon;
mod daemonctl;
mod extract;
mod gc;
mod index;
mod inspect;
mod ls;
mod metrics;
mod mount;
mod profile;
mod ps;
mod push;
mod rpull;
mod snapshotter;
mod umount;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for "the named container or daemon does not exist".
pub const EXIT_NOT_FOUND: u8 = 3;

/// clipctl: lazy-loading container images over FUSE.
#[derive(Debug, Parser)]
#[command(name = "clipctl", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a metadata-only .clip index of an OCI image (registry or layout).
    Index(index::IndexArgs),
    /// Write a .clip archive (tree and file data) of a directory or an image, locally or to S3.
    Create(create::CreateArgs),
    /// Restore a .clip archive (local or in S3) into an empty directory.
    Extract(extract::ExtractArgs),
    /// Upload a .clip archive to S3.
    Push(push::PushArgs),
    /// Summarise a .clip index or archive: image, layers, checkpoints, sizes.
    Inspect(inspect::InspectArgs),
    /// List the file tree of a .clip index or archive, like `ls -l`.
    Ls(ls::LsArgs),
    /// Mount an image: a per-container overlay rootfs, or the read-only tree alone.
    Mount(mount::MountArgs),
    /// Remove a container's rootfs; the image mount goes with its last container.
    Umount(umount::UmountArgs),
    /// Startup profiles in the registry: publish one, list what is published.
    Profile(profile::ProfileArgs),
    /// List mounted images and containers.
    Ps(ps::PsArgs),
    /// Repair what a killed clipctl left; finish draining containers.
    Gc(gc::GcArgs),
    /// Show FUSE/fetch/cache latencies and counters of the running mount daemons.
    Metrics(metrics::MetricsArgs),
    /// Serve containerd's snapshots API: clip images as lazy snapshots.
    Snapshotter(snapshotter::SnapshotterArgs),
    /// Record an image in containerd; the clip snapshotter serves its layers.
    Rpull(rpull::RpullArgs),
    /// Manage image daemons: `restart` one without breaking its containers.
    #[command(name = "daemon")]
    DaemonCtl(daemonctl::DaemonCtlArgs),
    /// Internal: the long-lived mount daemon (started by `mount`).
    #[command(name = "__daemon", hide = true)]
    Daemon(daemon::DaemonArgs),
}

/// An error that carries its own exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodedError {
    /// Exit code to use.
    pub code: u8,
    /// Message shown to the user.
    pub message: String,
}

/// Parses the process arguments, runs the command and returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    util::init_logging(matches!(
        cli.command,
        Command::Daemon(_) | Command::Snapshotter(_)
    ));
    let result = match cli.command {
        Command::Index(a) => index::run(a),
        Command::Create(a) => create::run(a),
        Command::Extract(a) => extract::run(a),
        Command::Push(a) => push::run(a),
        Command::Inspect(a) => inspect::run(a),
        Command::Ls(a) => ls::run(a),
        Command::Mount(a) => mount::run(a),
        Command::Umount(a) => umount::run(a),
        Command::Profile(a) => profile::run(a),
        Command::Ps(a) => ps::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Metrics(a) => metrics::run(a),
        Command::Snapshotter(a) => snapshotter::run(a),
        Command::Rpull(a) => rpull::run(a),
        Command::Daemon(a) => daemon::run(a),
        Command::DaemonCtl(a) => daemonctl::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            let code = err.downcast_ref::<CodedError>().map_or(1, |c| c.code);
            // One line naming the cause: the context chain joined.
            let chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
            eprintln!("clipctl: error: {}", dedup_chain(&chain));
            ExitCode::from(code)
        }
    }
}

/// Maps "no such container" (or image) to its documented exit code.
fn coded(e: crate::mount::MountError) -> anyhow::Error {
    match e {
        crate::mount::MountError::UnknownCid(_) | crate::mount::MountError::UnknownImage(_) => {
            CodedError {
                code: EXIT_NOT_FOUND,
                message: e.to_string(),
            }
            .into()
        }
        other => other.into(),
    }
}

/// Joins an error chain, skipping causes whose text the previous message already contains.
fn dedup_chain(chain: &[String]) -> String {
    let mut out = String::new();
    for msg in chain {
        if !out.contains(msg.as_str()) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(msg);
        }
    }
    out
}
