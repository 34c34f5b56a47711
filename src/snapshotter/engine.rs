//! The snapshots API over the store, synchronous (the gRPC layer calls it
//! from worker threads). Two kinds of snapshots live side by side:
//!
//! - remote layers: on Prepare of a layer whose labels name its image and
//!   digest, the image's index is prepared (`node::prepare_mount`: the
//!   node's, a published one, else built) and the layer is committed under
//!   its target name with no data, then ALREADY_EXISTS tells containerd
//!   there is nothing to download;
//! - unpacked snapshots, as containerd's overlayfs snapshotter makes them:
//!   `snapshots/<id>/fs` (the upper dir, or the unpack target) and
//!   `snapshots/<id>/work`.
//!
//! An active or view snapshot's lower dirs are its ancestors' `fs` dirs
//! down to the first remote layer, which stands for its whole image: the
//! image's shared clip FUSE mount, held (`mount::hold_image`) by the
//! snapshot until Commit or Remove. containerd mounts the returned list.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use containerd_client::types::Mount;

use super::store::{now_ns, ImageRecord, Kind, RemoteLayer, Snapshot, Store};
use super::{labels, SnapshotterConfig, SnapshotterError};
use crate::digest::Digest;
use crate::format::Index;
use crate::mount::{self, HeldImage};
use crate::node::{self, MountPlan, ProfileMode, SourceChoice, StackSpec};
use crate::oci::ImageRef;
use crate::sync::lock;

/// Overlay options clip's own overlays use over a FUSE lower dir (no
/// index/redirect/metacopy: the lower is not a local filesystem).
const OVERLAY_OPTIONS: [&str; 4] = ["index=off", "redirect_dir=off", "metacopy=off", "xino=off"];

/// What a layer's labels ask for (the remote-snapshotter handshake).
#[derive(Debug, Clone)]
struct LayerRequest {
    /// The name to commit the layer under (its chain id).
    target: String,
    image_ref: String,
    layer_digest: String,
    manifest: Option<String>,
}

impl LayerRequest {
    fn from_labels(l: &BTreeMap<String, String>) -> Option<LayerRequest> {
        Some(LayerRequest {
            target: l.get(labels::SNAPSHOT_REF)?.clone(),
            image_ref: l.get(labels::IMAGE_REF)?.clone(),
            layer_digest: l.get(labels::LAYER_DIGEST)?.clone(),
            manifest: l.get(labels::MANIFEST_DIGEST).cloned(),
        })
    }
}

/// A lower layer of a snapshot's mounts.
enum Lower {
    Dir(PathBuf),
    /// The whole image of this manifest digest, served by clip.
    Image(String),
}

/// The snapshotter's state and operations.
#[derive(Debug)]
pub(super) struct Engine {
    cfg: SnapshotterConfig,
    store: Mutex<Store>,
    /// Serialises image preparation (one index per image, not one per
    /// concurrent layer request).
    preparing: Mutex<()>,
    /// Holder names of this root's snapshots: `snapshot:<tag>:<id>`.
    holder_tag: String,
}

impl Engine {
    /// Opens the store under `cfg.root`, creating the root.
    pub(super) fn open(cfg: SnapshotterConfig) -> Result<Engine, SnapshotterError> {
        let snaps = cfg.root.join("snapshots");
        std::fs::create_dir_all(&snaps).map_err(SnapshotterError::io("creating", &snaps))?;
        let root = cfg.root.canonicalize().unwrap_or_else(|_| cfg.root.clone());
        let mut holder_tag = Digest::of(root.as_os_str().as_encoded_bytes()).hex();
        holder_tag.truncate(12);
        Ok(Engine {
            store: Mutex::new(Store::open(&cfg.root)?),
            cfg,
            preparing: Mutex::new(()),
            holder_tag,
        })
    }

    /// Re-holds the images of the snapshots that hold one (after a reboot
    /// or a dead daemon); failures are logged, Mounts tries again.
    pub(super) fn restore(&self) {
        let store = lock(&self.store);
        for (name, s) in store.snapshots.iter().filter(|(_, s)| s.holds.is_some()) {
            if let Err(e) = self.mounts_of(&store, name, s) {
                tracing::warn!(snapshot = %name, error = %e, "could not restore the image mount");
            }
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.cfg.root.join("snapshots").join(id.to_string())
    }

    fn holder(&self, id: u64) -> String {
        format!("snapshot:{}:{id}", self.holder_tag)
    }

    /// Prepare (active) or View: the mounts of a new snapshot `key` over
    /// `parent`. A layer clip serves is committed and answered with
    /// [`SnapshotterError::AlreadyExists`].
    pub(super) fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>, SnapshotterError> {
        if key.is_empty() {
            return Err(SnapshotterError::InvalidArgument(
                "empty snapshot key".into(),
            ));
        }
        if let (Kind::Active, Some(req)) = (kind, LayerRequest::from_labels(&labels)) {
            match self.commit_remote(parent, &labels, &req) {
                Ok(()) => return Err(SnapshotterError::AlreadyExists(req.target)),
                Err(e @ (SnapshotterError::AlreadyExists(_) | SnapshotterError::Io { .. })) => {
                    return Err(e)
                }
                Err(e) => tracing::warn!(
                    image = %req.image_ref, layer = %req.layer_digest, error = %e,
                    "clip cannot serve this layer; it is unpacked as usual"
                ),
            }
        }
        self.create_local(key, parent, labels, kind)
    }

    /// Commits layer `req` as a remote snapshot if clip can serve it.
    fn commit_remote(
        &self,
        parent: &str,
        labels: &BTreeMap<String, String>,
        req: &LayerRequest,
    ) -> Result<(), SnapshotterError> {
        let depth = {
            let store = lock(&self.store);
            if store.snapshots.contains_key(&req.target) {
                return Err(SnapshotterError::AlreadyExists(req.target.clone()));
            }
            remote_depth(&store, parent)?
        };
        let (manifest, image) = self.image_for(req)?;
        if image.layers.get(depth - 1) != Some(&req.layer_digest) {
            return Err(SnapshotterError::Precondition {
                name: req.target.clone(),
                reason: format!(
                    "layer {} is not layer {depth} of image {manifest}",
                    req.layer_digest
                ),
            });
        }
        let mut store = lock(&self.store);
        if store.snapshots.contains_key(&req.target) {
            return Err(SnapshotterError::AlreadyExists(req.target.clone()));
        }
        remote_depth(&store, parent)?;
        let now = now_ns();
        let snap = Snapshot {
            id: store.next_id(),
            kind: Kind::Committed,
            parent: parent.to_string(),
            labels: labels.clone(),
            created_ns: now,
            updated_ns: now,
            remote: Some(RemoteLayer {
                manifest: manifest.clone(),
                depth,
                layers: image.layers.len(),
            }),
            holds: None,
        };
        store.snapshots.insert(req.target.clone(), snap);
        store.images.entry(manifest).or_insert(image);
        store.save()
    }

    /// The image record of `req`'s image: known, or prepared now.
    fn image_for(&self, req: &LayerRequest) -> Result<(String, ImageRecord), SnapshotterError> {
        let _one_at_a_time = lock(&self.preparing);
        if let Some(m) = &req.manifest {
            if let Some(image) = lock(&self.store).images.get(m) {
                return Ok((m.clone(), image.clone()));
            }
        }
        let reference = pinned(&req.image_ref, req.manifest.as_deref())?;
        let prepared = node::prepare_mount(&MountPlan {
            node_dir: &self.cfg.node_dir,
            clip: None,
            image: Some(&reference),
            platform: None,
            insecure: &self.cfg.insecure,
            index: self.cfg.index,
            profile: true,
        })?;
        let index = Index::open(&prepared.clip).map_err(|source| node::NodeError::OpenIndex {
            path: prepared.clip.clone(),
            source,
        })?;
        let manifest = index
            .meta()
            .manifest_digest
            .map(|d| d.to_string())
            .unwrap_or_default();
        if req.manifest.as_ref().is_some_and(|m| *m != manifest) {
            return Err(SnapshotterError::Precondition {
                name: req.target.clone(),
                reason: format!("the index of {reference} is for manifest {manifest}"),
            });
        }
        let layers = (0..index.layer_count())
            .map(|i| index.layer(i).map(|l| l.digest().to_string()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(node::NodeError::IndexRecord)?;
        tracing::info!(image = %reference, index = %prepared.provenance.index, "serving image");
        let image = ImageRecord {
            reference: prepared.source_image.unwrap_or(reference),
            clip: prepared.clip,
            provenance: prepared.provenance,
            layers,
        };
        Ok((manifest, image))
    }

    /// A new unpacked snapshot (the fallback, and every container's own).
    fn create_local(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> Result<Vec<Mount>, SnapshotterError> {
        let mut store = lock(&self.store);
        if store.snapshots.contains_key(key) {
            return Err(SnapshotterError::AlreadyExists(key.to_string()));
        }
        if !parent.is_empty() && store.get(parent)?.kind != Kind::Committed {
            return Err(SnapshotterError::Precondition {
                name: parent.to_string(),
                reason: "a parent must be committed".into(),
            });
        }
        let id = store.next_id();
        let dir = self.dir(id);
        for d in [dir.join("fs"), dir.join("work")] {
            std::fs::create_dir_all(&d).map_err(SnapshotterError::io("creating", &d))?;
        }
        let now = now_ns();
        let mut snap = Snapshot {
            id,
            kind,
            parent: parent.to_string(),
            labels,
            created_ns: now,
            updated_ns: now,
            remote: None,
            holds: None,
        };
        let res = self
            .mounts_of(&store, key, &snap)
            .and_then(|(mounts, held)| {
                snap.holds = held.map(|h| h.image);
                store.snapshots.insert(key.to_string(), snap.clone());
                store.save().map(|()| mounts)
            });
        if res.is_err() {
            store.snapshots.remove(key);
            if let Some(image) = &snap.holds {
                let _ = mount::release_image(&self.cfg.run_dir, image, &self.holder(id));
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
        res
    }

    /// The mounts of active or view snapshot `s` (named `name`), holding
    /// its image when it stands on one.
    fn mounts_of(
        &self,
        store: &Store,
        name: &str,
        s: &Snapshot,
    ) -> Result<(Vec<Mount>, Option<HeldImage>), SnapshotterError> {
        if s.kind == Kind::Committed {
            return Err(SnapshotterError::Precondition {
                name: name.to_string(),
                reason: "a committed snapshot has no mounts".into(),
            });
        }
        let mut held = None;
        let mut lowers = Vec::new();
        for lower in self.lowers(store, &s.parent)? {
            lowers.push(match lower {
                Lower::Dir(d) => d,
                Lower::Image(manifest) => {
                    let h = self.hold(store, &manifest, s.id)?;
                    let mnt = h.mnt.clone();
                    held = Some(h);
                    mnt
                }
            });
        }
        let dir = self.dir(s.id);
        Ok((mounts(s.kind, &dir, &lowers), held))
    }

    /// Lower layers of a snapshot over `parent`, top first.
    fn lowers(&self, store: &Store, parent: &str) -> Result<Vec<Lower>, SnapshotterError> {
        let mut out = Vec::new();
        let mut name = parent;
        while !name.is_empty() {
            let s = store.get(name)?;
            if let Some(r) = &s.remote {
                if r.depth != r.layers {
                    return Err(SnapshotterError::Precondition {
                        name: name.to_string(),
                        reason: format!(
                            "layer {} of {} of image {}: clip mounts whole images",
                            r.depth, r.layers, r.manifest
                        ),
                    });
                }
                out.push(Lower::Image(r.manifest.clone()));
                break;
            }
            out.push(Lower::Dir(self.dir(s.id).join("fs")));
            name = &s.parent;
        }
        Ok(out)
    }

    /// Holds image `manifest`'s daemon for snapshot `id`: started (or
    /// restarted) if needed, shared by all snapshots of the image.
    fn hold(&self, store: &Store, manifest: &str, id: u64) -> Result<HeldImage, SnapshotterError> {
        let image = store.images.get(manifest).ok_or_else(|| {
            SnapshotterError::NotFound(format!("image {manifest} (metadata lost)"))
        })?;
        let mut tuning = self.cfg.tuning.clone();
        if self.cfg.profile {
            let index = Index::open(&image.clip).map_err(|source| node::NodeError::OpenIndex {
                path: image.clip.clone(),
                source,
            })?;
            tuning.profile = ProfileMode::resolve("auto", &self.cfg.node_dir, &index)?;
        }
        let stack = StackSpec {
            source: SourceChoice {
                image: Some(image.reference.clone()),
                layout: None,
                insecure: self.cfg.insecure.clone(),
                archive: None,
            },
            tuning,
            provenance: image.provenance.clone(),
        };
        let req = node::mount_request(
            self.holder(id),
            image.clip.clone(),
            self.cfg.run_dir.clone(),
            self.cfg.node_dir.clone(),
            stack,
        );
        Ok(mount::hold_image(&req)?)
    }

    /// Mounts of active or view snapshot `key`.
    pub(super) fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotterError> {
        let store = lock(&self.store);
        let s = store.get(key)?;
        Ok(self.mounts_of(&store, key, s)?.0)
    }

    /// Commits active snapshot `key` as `name`; its hold on an image goes.
    pub(super) fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), SnapshotterError> {
        let mut store = lock(&self.store);
        if store.get(key)?.kind != Kind::Active {
            return Err(SnapshotterError::Precondition {
                name: key.to_string(),
                reason: "only an active snapshot can be committed".into(),
            });
        }
        if store.snapshots.contains_key(name) {
            return Err(SnapshotterError::AlreadyExists(name.to_string()));
        }
        let mut s = store.snapshots.remove(key).expect("checked above");
        s.kind = Kind::Committed;
        s.labels.extend(labels);
        s.updated_ns = now_ns();
        let held = s.holds.take();
        let id = s.id;
        store.snapshots.insert(name.to_string(), s);
        store.save()?;
        if let Some(image) = held {
            mount::release_image(&self.cfg.run_dir, &image, &self.holder(id))?;
        }
        Ok(())
    }

    /// Removes snapshot `key` (not one with children): its data, its hold.
    pub(super) fn remove(&self, key: &str) -> Result<(), SnapshotterError> {
        let mut store = lock(&self.store);
        let s = store.get(key)?.clone();
        if store.has_children(key) {
            return Err(SnapshotterError::Precondition {
                name: key.to_string(),
                reason: "it has children".into(),
            });
        }
        if let Some(image) = &s.holds {
            mount::release_image(&self.cfg.run_dir, image, &self.holder(s.id))?;
        }
        let dir = self.dir(s.id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(SnapshotterError::io("removing", &dir)(e))
            }
            _ => {}
        }
        store.snapshots.remove(key);
        let manifest = s.remote.map(|r| r.manifest);
        if let Some(m) = manifest {
            let used = store
                .snapshots
                .values()
                .any(|o| o.remote.as_ref().is_some_and(|r| r.manifest == m));
            if !used {
                store.images.remove(&m);
            }
        }
        store.save()
    }

    /// A copy of snapshot `key`.
    pub(super) fn stat(&self, key: &str) -> Result<(String, Snapshot), SnapshotterError> {
        Ok((key.to_string(), lock(&self.store).get(key)?.clone()))
    }

    /// Replaces snapshot `key`'s labels (all of them, or those `paths`
    /// names as `labels` / `labels.<key>`).
    pub(super) fn update_labels(
        &self,
        key: &str,
        new: BTreeMap<String, String>,
        paths: &[String],
    ) -> Result<Snapshot, SnapshotterError> {
        let mut store = lock(&self.store);
        let s = store
            .snapshots
            .get_mut(key)
            .ok_or_else(|| SnapshotterError::NotFound(key.to_string()))?;
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            s.labels = new;
        } else {
            for p in paths {
                let k = p.strip_prefix("labels.").ok_or_else(|| {
                    SnapshotterError::InvalidArgument(format!("cannot update field {p:?}"))
                })?;
                match new.get(k) {
                    Some(v) => s.labels.insert(k.to_string(), v.clone()),
                    None => s.labels.remove(k),
                };
            }
        }
        s.updated_ns = now_ns();
        let out = s.clone();
        store.save()?;
        Ok(out)
    }

    /// Every snapshot, by name.
    pub(super) fn list(&self) -> Vec<(String, Snapshot)> {
        let store = lock(&self.store);
        store
            .snapshots
            .iter()
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect()
    }

    /// Disk use of snapshot `key`'s own data: (bytes, inodes).
    pub(super) fn usage(&self, key: &str) -> Result<(i64, i64), SnapshotterError> {
        let s = lock(&self.store).get(key)?.clone();
        if s.remote.is_some() {
            return Ok((0, 0));
        }
        Ok(disk_usage(&self.dir(s.id).join("fs")))
    }

    /// Removes snapshot dirs no snapshot owns (left by a crash).
    pub(super) fn cleanup(&self) -> Result<(), SnapshotterError> {
        let store = lock(&self.store);
        let snaps = self.cfg.root.join("snapshots");
        let rd = std::fs::read_dir(&snaps).map_err(SnapshotterError::io("listing", &snaps))?;
        for entry in rd.filter_map(Result::ok) {
            let owned = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| store.snapshots.values().any(|s| s.id == id));
            if !owned {
                let p = entry.path();
                std::fs::remove_dir_all(&p).map_err(SnapshotterError::io("removing", &p))?;
            }
        }
        Ok(())
    }
}

/// The chain depth of a remote layer over `parent`: 1 without one, else
/// the parent's + 1; an unpacked parent cannot carry a remote layer.
fn remote_depth(store: &Store, parent: &str) -> Result<usize, SnapshotterError> {
    if parent.is_empty() {
        return Ok(1);
    }
    match &store.get(parent)?.remote {
        Some(r) => Ok(r.depth + 1),
        None => Err(SnapshotterError::Precondition {
            name: parent.to_string(),
            reason: "unpacked parent: clip serves whole images".into(),
        }),
    }
}

/// `image_ref` pinned to `manifest` (`repo@sha256:…`) when it is known.
fn pinned(image_ref: &str, manifest: Option<&str>) -> Result<String, SnapshotterError> {
    let Some(m) = manifest else {
        return Ok(image_ref.to_string());
    };
    let bad = SnapshotterError::InvalidArgument;
    let mut r: ImageRef = image_ref
        .parse()
        .map_err(|e| bad(format!("image reference {image_ref:?}: {e}")))?;
    r.digest = Some(
        m.parse()
            .map_err(|e| bad(format!("manifest digest {m:?}: {e}")))?,
    );
    r.tag = None;
    Ok(r.to_string())
}

/// containerd's mount list for a snapshot of `kind` in `dir` over `lowers`
/// (top first), as its overlayfs snapshotter returns them.
fn mounts(kind: Kind, dir: &Path, lowers: &[PathBuf]) -> Vec<Mount> {
    let fs = dir.join("fs");
    let bind = |src: &Path, mode: &str| Mount {
        r#type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: vec![mode.into(), "rbind".into()],
    };
    let lowerdir = format!(
        "lowerdir={}",
        lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    );
    let overlay = |mut options: Vec<String>| {
        options.extend(OVERLAY_OPTIONS.iter().map(|o| o.to_string()));
        Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        }
    };
    match (kind, lowers) {
        (Kind::View, []) => vec![bind(&fs, "ro")],
        (Kind::View, [one]) => vec![bind(one, "ro")],
        (Kind::View, _) => vec![overlay(vec![lowerdir])],
        (_, []) => vec![bind(&fs, "rw")],
        _ => vec![overlay(vec![
            format!("workdir={}", dir.join("work").display()),
            format!("upperdir={}", fs.display()),
            lowerdir,
        ])],
    }
}

/// Bytes (allocated) and inodes under `dir`, not following links.
fn disk_usage(dir: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let (mut bytes, mut inodes) = (0i64, 0i64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.filter_map(Result::ok) {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            inodes += 1;
            bytes += (md.blocks() * 512) as i64;
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}
