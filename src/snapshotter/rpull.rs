//! `rpull`: records an image in containerd without downloading its layers,
//! like `ctr-remote image rpull` and `soci image rpull`, over containerd's
//! gRPC API. Under a lease: the manifest and config go into the content
//! store (with the garbage-collection labels containerd's own unpacker
//! sets), each layer is prepared through the named snapshotter with the
//! handshake labels (the clip snapshotter commits it and answers
//! ALREADY_EXISTS), then the image record points at the manifest.

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    CreateImageRequest, CreateRequest, DeleteRequest, Image, Info, UpdateImageRequest,
    UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::types::Descriptor;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::{labels, SnapshotterError};
use crate::digest::Digest;
use crate::node;
use crate::oci::{ImageRef, Platform};

/// containerd's label limit is 4096 bytes per label; stay under it.
const MAX_LAYERS_LABEL: usize = 4000;
/// Media type of a manifest that names none (Docker schema 2 always does).
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// What to pull and where to record it.
#[derive(Debug, Clone)]
pub struct RpullOptions {
    /// Image reference.
    pub reference: String,
    /// containerd's socket.
    pub address: PathBuf,
    /// containerd namespace (`default`; Kubernetes uses `k8s.io`).
    pub namespace: String,
    /// Snapshotter (proxy plugin) name in containerd's config.
    pub snapshotter: String,
    /// Registries allowed over plain HTTP.
    pub insecure: Vec<String>,
    /// Platform of a multi-platform image (the host's when `None`).
    pub platform: Option<Platform>,
}

/// What an rpull did.
#[derive(Debug, Clone)]
pub struct RpullReport {
    /// The image name recorded in containerd.
    pub name: String,
    /// Its manifest digest.
    pub manifest: Digest,
    /// Layers, all prepared by the snapshotter without download.
    pub layers: usize,
    /// Bytes fetched from the registry by rpull (manifest and config).
    pub fetched_bytes: u64,
    /// Compressed size of the layers (not fetched).
    pub layer_bytes: u64,
}

/// The manifest's own media type and its config descriptor.
fn manifest_parts(raw: &[u8]) -> Result<(String, Descriptor), SnapshotterError> {
    let bad = |why: &str| SnapshotterError::InvalidArgument(format!("image manifest: {why}"));
    let v: serde_json::Value = serde_json::from_slice(raw).map_err(|e| bad(&e.to_string()))?;
    let config = &v["config"];
    let config = Descriptor {
        media_type: config["mediaType"].as_str().unwrap_or_default().to_string(),
        digest: config["digest"]
            .as_str()
            .ok_or_else(|| bad("no config digest"))?
            .to_string(),
        size: config["size"]
            .as_i64()
            .ok_or_else(|| bad("no config size"))?,
        annotations: HashMap::new(),
    };
    let media_type = v["mediaType"].as_str().unwrap_or(OCI_MANIFEST).to_string();
    Ok((media_type, config))
}

/// containerd's chain ids of `diff_ids`: the first is its diff id, each
/// next one `sha256(previous + " " + diff id)`.
pub(super) fn chain_ids(diff_ids: &[Digest]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.to_string(),
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()).to_string(),
        };
        out.push(next);
    }
    out
}

/// Pulls `opts.reference` into containerd lazily.
pub fn rpull(opts: &RpullOptions) -> Result<RpullReport, SnapshotterError> {
    let name = opts
        .reference
        .parse::<ImageRef>()
        .map_err(|e| SnapshotterError::InvalidArgument(e.to_string()))?
        .to_string();
    let image = node::open_image(
        Some(&opts.reference),
        None,
        opts.platform.as_ref(),
        &opts.insecure,
    )?
    .image;
    let (media_type, config) = manifest_parts(&image.manifest_raw)?;
    if image.diff_ids.len() != image.layers.len() {
        return Err(SnapshotterError::InvalidArgument(format!(
            "{name}: {} layers but {} diff_ids",
            image.layers.len(),
            image.diff_ids.len()
        )));
    }
    let chains = chain_ids(&image.diff_ids);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SnapshotterError::io("starting", "the gRPC runtime"))?;
    let target = Descriptor {
        media_type,
        digest: image.manifest_digest.to_string(),
        size: image.manifest_raw.len() as i64,
        annotations: HashMap::new(),
    };
    runtime.block_on(async {
        let channel = containerd_client::connect(&opts.address)
            .await
            .map_err(|e| SnapshotterError::Grpc {
                what: format!("connecting to containerd at {}", opts.address.display()),
                message: e.to_string(),
            })?;
        let mut c = Containerd::new(channel, &opts.namespace);
        c.lease = Some(c.create_lease().await?);
        let res = record(&mut c, opts, &name, &image, config, &chains, target).await;
        let lease = c.lease.take().expect("set above");
        let dropped = c.delete_lease(lease).await;
        res.and(dropped)
    })?;
    Ok(RpullReport {
        name,
        manifest: image.manifest_digest,
        layers: image.layers.len(),
        fetched_bytes: (image.manifest_raw.len() + image.config_raw.len()) as u64,
        layer_bytes: image.layers.iter().map(|l| l.size).sum(),
    })
}

/// Content, snapshots and the image record, under `c`'s lease.
async fn record(
    c: &mut Containerd,
    opts: &RpullOptions,
    name: &str,
    image: &crate::oci::ResolvedImage,
    config: Descriptor,
    chains: &[String],
    target: Descriptor,
) -> Result<(), SnapshotterError> {
    let top = chains.last().cloned().unwrap_or_default();
    let snapshot_gc = format!("containerd.io/gc.ref.snapshot.{}", opts.snapshotter);
    let config_labels = HashMap::from([(snapshot_gc, top)]);
    c.put_content(&config.digest, &image.config_raw, config_labels)
        .await?;
    let mut manifest_labels =
        HashMap::from([("containerd.io/gc.ref.content.config".into(), config.digest)]);
    for (i, l) in image.layers.iter().enumerate() {
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.to_string(),
        );
    }
    c.put_content(&target.digest, &image.manifest_raw, manifest_labels)
        .await?;
    let digests: Vec<String> = image.layers.iter().map(|l| l.digest.to_string()).collect();
    for (i, chain) in chains.iter().enumerate() {
        let mut layers_label = String::new();
        for d in &digests[i..] {
            if layers_label.len() + d.len() + 1 > MAX_LAYERS_LABEL {
                break;
            }
            if !layers_label.is_empty() {
                layers_label.push(',');
            }
            layers_label.push_str(d);
        }
        let labels = HashMap::from([
            (labels::SNAPSHOT_REF.to_string(), chain.clone()),
            (labels::IMAGE_REF.to_string(), name.to_string()),
            (labels::LAYER_DIGEST.to_string(), digests[i].clone()),
            (labels::MANIFEST_DIGEST.to_string(), target.digest.clone()),
            (labels::IMAGE_LAYERS.to_string(), layers_label),
        ]);
        let parent = if i == 0 { "" } else { &chains[i - 1] };
        c.prepare_remote(&opts.snapshotter, chain, parent, labels)
            .await?;
    }
    c.put_image(name, target).await
}

/// containerd's services on one channel, with the namespace and lease
/// headers on every request.
struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

fn grpc(what: impl Into<String>) -> impl FnOnce(Status) -> SnapshotterError {
    let what = what.into();
    move |s| SnapshotterError::Grpc {
        what,
        message: s.message().to_string(),
    }
}

impl Containerd {
    fn new(channel: Channel, namespace: &str) -> Containerd {
        Containerd {
            channel,
            namespace: namespace.to_string(),
            lease: None,
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = self.lease.as_ref().map(|l| l.parse()) {
            md.insert("containerd-lease", v);
        }
        r
    }

    async fn create_lease(&self) -> Result<String, SnapshotterError> {
        let id = format!(
            "clip-rpull-{}-{}",
            std::process::id(),
            super::store::now_ns()
        );
        // Expires by itself should rpull die before deleting it.
        let expire = humantime::format_rfc3339_seconds(
            std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
        );
        let msg = CreateRequest {
            id: id.clone(),
            labels: HashMap::from([("containerd.io/gc.expire".into(), expire.to_string())]),
        };
        LeasesClient::new(self.channel.clone())
            .create(self.req(msg))
            .await
            .map_err(grpc("creating a lease"))?;
        Ok(id)
    }

    async fn delete_lease(&self, id: String) -> Result<(), SnapshotterError> {
        let msg = DeleteRequest { id, sync: false };
        let mut req = self.req(msg);
        req.metadata_mut().remove("containerd-lease");
        LeasesClient::new(self.channel.clone())
            .delete(req)
            .await
            .map_err(grpc("deleting the lease"))?;
        Ok(())
    }

    /// Writes a blob with `labels` (or sets them on the blob already there).
    async fn put_content(
        &self,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotterError> {
        let msg = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: format!("clip-rpull-{digest}"),
            total: data.len() as i64,
            expected: digest.to_string(),
            offset: 0,
            data: data.to_vec(),
            labels: labels.clone(),
        };
        let mut client = ContentClient::new(self.channel.clone());
        let written = match client.write(self.req(tokio_stream::iter([msg]))).await {
            Ok(resp) => resp.into_inner().message().await.map(|_| ()),
            Err(s) => Err(s),
        };
        match written {
            Ok(()) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
                let msg = UpdateRequest {
                    info: Some(Info {
                        digest: digest.to_string(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                };
                client
                    .update(self.req(msg))
                    .await
                    .map_err(grpc(format!("labelling content {digest}")))?;
                Ok(())
            }
            Err(s) => Err(grpc(format!("writing content {digest}"))(s)),
        }
    }

    /// Prepares layer `chain` over `parent`; the snapshotter must answer
    /// that it exists (clip serves it) or the pull fails, undone.
    async fn prepare_remote(
        &self,
        snapshotter: &str,
        chain: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), SnapshotterError> {
        let mut client = SnapshotsClient::new(self.channel.clone());
        let key = format!("extract-{}-{chain}", super::store::now_ns());
        let msg = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
            parent: parent.to_string(),
            labels,
        };
        match client.prepare(self.req(msg)).await {
            Err(s) if s.code() == Code::AlreadyExists => {
                let stat = StatSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: chain.to_string(),
                };
                client
                    .stat(self.req(stat))
                    .await
                    .map_err(grpc(format!("layer {chain} after prepare")))?;
                Ok(())
            }
            Err(s) => Err(grpc(format!("preparing layer {chain} with {snapshotter}"))(
                s,
            )),
            Ok(_) => {
                let rm = RemoveSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key,
                };
                let _ = client.remove(self.req(rm)).await;
                Err(SnapshotterError::Grpc {
                    what: format!("layer {chain}"),
                    message: format!(
                        "snapshotter {snapshotter:?} cannot serve it lazily (see its log); \
                         pull the image with `ctr image pull --snapshotter {snapshotter}`"
                    ),
                })
            }
        }
    }

    /// Creates (or re-points) image `name` at `target`.
    async fn put_image(&self, name: &str, target: Descriptor) -> Result<(), SnapshotterError> {
        let image = Image {
            name: name.to_string(),
            target: Some(target),
            ..Default::default()
        };
        let mut client = ImagesClient::new(self.channel.clone());
        let created = CreateImageRequest {
            image: Some(image.clone()),
            source_date_epoch: None,
        };
        match client.create(self.req(created)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                let msg = UpdateImageRequest {
                    image: Some(image),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["target".into()],
                    }),
                    source_date_epoch: None,
                };
                client
                    .update(self.req(msg))
                    .await
                    .map_err(grpc(format!("updating image {name}")))?;
                Ok(())
            }
            Err(s) => Err(grpc(format!("creating image {name}"))(s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let ids = chain_ids(&[a, b]);
        assert_eq!(ids[0], a.to_string());
        let expect = Digest::of(format!("{a} {b}").as_bytes()).to_string();
        assert_eq!(ids[1], expect);
        assert!(chain_ids(&[]).is_empty());
    }
}
