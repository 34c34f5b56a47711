//! The gRPC face of the [`Engine`]: containerd's `Snapshots` service on a
//! unix socket, each call run on a plain thread (the engine blocks: the
//! registry client and the daemon start must not run inside the server's
//! runtime).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use containerd_client::services::v1::snapshots::{
    CleanupRequest, CommitSnapshotRequest, Info, ListSnapshotsRequest, ListSnapshotsResponse,
    MountsRequest, MountsResponse, PrepareSnapshotRequest, PrepareSnapshotResponse,
    RemoveSnapshotRequest, StatSnapshotRequest, StatSnapshotResponse, UpdateSnapshotRequest,
    UpdateSnapshotResponse, UsageRequest, UsageResponse, ViewSnapshotRequest, ViewSnapshotResponse,
};
use tonic::{Request, Response, Status};

use super::engine::Engine;
use super::filter::Filter;
use super::store::{Kind, Snapshot};
use super::SnapshotterError;

/// Infos per List response message.
const LIST_CHUNK: usize = 100;

/// The service containerd's proxy plugin talks to.
#[derive(Debug, Clone)]
pub(super) struct Service {
    pub engine: Arc<Engine>,
}

/// Runs `f` on its own thread and awaits its result as a gRPC reply.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SnapshotterError> + Send + 'static,
) -> Result<T, Status> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("snapshot-op".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Status::internal(format!("spawning a worker thread: {e}")))?;
    match rx.await {
        Ok(res) => res.map_err(|e| {
            match &e {
                SnapshotterError::AlreadyExists(_) | SnapshotterError::NotFound(_) => {
                    tracing::debug!(error = %e, "snapshot op")
                }
                _ => tracing::warn!(error = %e, "snapshot op failed"),
            }
            e.status()
        }),
        Err(_) => Err(Status::internal("snapshot worker thread panicked")),
    }
}

fn sorted(labels: HashMap<String, String>) -> BTreeMap<String, String> {
    labels.into_iter().collect()
}

fn timestamp(ns: u128) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ns / 1_000_000_000) as i64,
        nanos: (ns % 1_000_000_000) as i32,
    }
}

/// containerd's view of snapshot `s` named `name`.
pub(super) fn info(name: String, s: Snapshot) -> Info {
    Info {
        name,
        parent: s.parent,
        kind: s.kind.proto(),
        created_at: Some(timestamp(s.created_ns)),
        updated_at: Some(timestamp(s.updated_ns)),
        labels: s.labels.into_iter().collect(),
    }
}

type ListStream = tokio_stream::wrappers::ReceiverStream<Result<ListSnapshotsResponse, Status>>;

#[tonic::async_trait]
impl super::proto::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        r: Request<PrepareSnapshotRequest>,
    ) -> Result<Response<PrepareSnapshotResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let mounts =
            blocking(move || e.prepare(&r.key, &r.parent, sorted(r.labels), Kind::Active)).await?;
        Ok(Response::new(PrepareSnapshotResponse { mounts }))
    }

    async fn view(
        &self,
        r: Request<ViewSnapshotRequest>,
    ) -> Result<Response<ViewSnapshotResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let mounts =
            blocking(move || e.prepare(&r.key, &r.parent, sorted(r.labels), Kind::View)).await?;
        Ok(Response::new(ViewSnapshotResponse { mounts }))
    }

    async fn mounts(&self, r: Request<MountsRequest>) -> Result<Response<MountsResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let mounts = blocking(move || e.mounts(&r.key)).await?;
        Ok(Response::new(MountsResponse { mounts }))
    }

    async fn commit(&self, r: Request<CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        blocking(move || e.commit(&r.name, &r.key, sorted(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        blocking(move || e.remove(&r.key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<StatSnapshotRequest>,
    ) -> Result<Response<StatSnapshotResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let (name, s) = blocking(move || e.stat(&r.key)).await?;
        Ok(Response::new(StatSnapshotResponse {
            info: Some(info(name, s)),
        }))
    }

    async fn update(
        &self,
        r: Request<UpdateSnapshotRequest>,
    ) -> Result<Response<UpdateSnapshotResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let given = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without an info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let name = given.name.clone();
        let s =
            blocking(move || e.update_labels(&given.name, sorted(given.labels), &paths)).await?;
        Ok(Response::new(UpdateSnapshotResponse {
            info: Some(info(name, s)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        r: Request<ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let filter = Filter::parse(&r.filters);
        let all = blocking(move || Ok(e.list())).await?;
        let infos: Vec<Info> = all
            .into_iter()
            .map(|(name, s)| info(name, s))
            .filter(|i| filter.matches(i))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in infos.chunks(LIST_CHUNK) {
                let msg = ListSnapshotsResponse {
                    info: chunk.to_vec(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn usage(&self, r: Request<UsageRequest>) -> Result<Response<UsageResponse>, Status> {
        let (e, r) = (self.engine.clone(), r.into_inner());
        let (size, inodes) = blocking(move || e.usage(&r.key)).await?;
        Ok(Response::new(UsageResponse { size, inodes }))
    }

    async fn cleanup(&self, _r: Request<CleanupRequest>) -> Result<Response<()>, Status> {
        let e = self.engine.clone();
        blocking(move || e.cleanup()).await?;
        Ok(Response::new(()))
    }
}
