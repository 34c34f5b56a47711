//! containerd integration: a remote snapshotter serving clip images to
//! containerd (and through its CRI plugin, to Kubernetes nodes), and the
//! pull side that records an image in containerd without downloading its
//! layers ([`rpull`]).
//!
//! The snapshotter ([`serve`]) is containerd's snapshots API as a proxy
//! plugin on a unix socket, with the handshake the peer lazy-loaders use
//! (stargz, nydus, SOCI): Prepare of a layer whose labels name its image
//! and digest ([`labels`]) commits the layer with no data and answers
//! ALREADY_EXISTS, so containerd downloads nothing; a container's active
//! snapshot is an overlay whose lower dir is the image's clip FUSE mount
//! (one per image, shared, its daemon held by the snapshots that use it
//! and stopped with the last one) and whose upper and work dirs are under
//! the root. Layers clip cannot serve are unpacked by containerd into
//! ordinary overlay snapshots. State is `<root>/metadata.json`, so a
//! restarted snapshotter carries on.
//!
//! Sits beside `cli` on top of `node` (images, indexes, daemon specs) and
//! `mount` (daemons and holds); nothing imports `snapshotter` but `cli`.

mod engine;
mod error;
mod filter;
mod proto;
mod rpull;
mod service;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::SnapshotterError;
pub use rpull::{rpull, RpullOptions, RpullReport};

use crate::node::{IndexPolicy, Tuning};

/// The labels of the remote-snapshotter handshake.
pub mod labels {
    /// The name a prepared layer is committed under (its chain id).
    pub const SNAPSHOT_REF: &str = "containerd.io/snapshot.ref";
    /// The image reference the layer belongs to.
    pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
    /// The layer's (compressed) digest.
    pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    /// The image's manifest digest.
    pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";
    /// The image's layer digests from this one up (comma-separated).
    pub const IMAGE_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
}

/// Default socket of `clipctl snapshotter`.
pub const DEFAULT_ADDRESS: &str = "/run/clip/snapshotter.sock";
/// Default root (metadata, upper and work dirs).
pub const DEFAULT_ROOT: &str = "/var/lib/clip/snapshotter";

/// What the snapshotter serves with.
#[derive(Debug, Clone)]
pub struct SnapshotterConfig {
    /// Metadata and snapshot dirs.
    pub root: PathBuf,
    /// Run dir of the image daemons (shared with `clipctl mount`).
    pub run_dir: PathBuf,
    /// Node dir: indexes, profiles, the chunk cache (shared likewise).
    pub node_dir: PathBuf,
    /// Registries allowed over plain HTTP.
    pub insecure: Vec<String>,
    /// Where an image's index comes from.
    pub index: IndexPolicy,
    /// How image daemons serve (its `profile` is set per image).
    pub tuning: Tuning,
    /// Replay and record each image's node startup profile (`--profile
    /// auto` of `clipctl mount`), else none.
    pub profile: bool,
}

/// Serves the snapshots API on the unix socket `address` until SIGINT or
/// SIGTERM. Image daemons outlive it (a restarted snapshotter reuses
/// them); the socket is removed at exit.
pub fn serve(cfg: SnapshotterConfig, address: &Path) -> Result<(), SnapshotterError> {
    crate::mount::check_privileges()?;
    let engine = Arc::new(engine::Engine::open(cfg)?);
    engine.restore();
    if let Some(dir) = address.parent() {
        std::fs::create_dir_all(dir).map_err(SnapshotterError::io("creating", dir))?;
    }
    match std::fs::remove_file(address) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SnapshotterError::io("removing", address)(e))
        }
        _ => {}
    }
    let grpc = |what: &str, e: &dyn std::fmt::Display| SnapshotterError::Grpc {
        what: what.to_string(),
        message: e.to_string(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(SnapshotterError::io("starting", "the gRPC runtime"))?;
    let service = service::Service { engine };
    let res = runtime.block_on(async {
        let listener = tokio::net::UnixListener::bind(address)
            .map_err(SnapshotterError::io("listening on", address))?;
        tracing::info!(address = %address.display(), "clip snapshotter serving");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tonic::transport::Server::builder()
            .add_service(proto::snapshots_server::SnapshotsServer::new(service))
            .serve_with_incoming_shutdown(incoming, shutdown_signal())
            .await
            .map_err(|e| grpc("serving", &e))
    });
    let _ = std::fs::remove_file(address);
    res
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("clip snapshotter stopping");
}
