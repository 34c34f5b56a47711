//! The snapshotter's metadata: every snapshot by name (key), the images
//! clip serves, kept as one JSON file under the root (`metadata.json`,
//! replaced atomically after each change) so a restarted snapshotter finds
//! what it served. Snapshot data lives in `snapshots/<id>/{fs,work}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::SnapshotterError;
use crate::node::Provenance;

/// Name of the metadata file under the root.
pub(super) const METADATA_FILE: &str = "metadata.json";
/// Version of that file's shape.
const STORE_VERSION: u32 = 1;

/// A snapshot's kind, numbered as containerd's `snapshots.v1.Kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum Kind {
    /// Read-only, not committable.
    View,
    /// Writable, committable.
    Active,
    /// Read-only, a parent for others.
    Committed,
}

impl Kind {
    /// containerd's number for the kind.
    pub(super) fn proto(self) -> i32 {
        match self {
            Kind::View => 1,
            Kind::Active => 2,
            Kind::Committed => 3,
        }
    }
}

/// A committed layer clip serves from an image mount instead of a
/// directory: layer `depth` (1 = the bottom) of image `manifest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct RemoteLayer {
    /// Manifest digest of the image (a key of [`Store::images`]).
    pub manifest: String,
    /// How many layers this snapshot's chain has.
    pub depth: usize,
    /// How many layers the image has: `depth == layers` is its top, the
    /// only remote layer a container can stand on (clip mounts whole
    /// images).
    pub layers: usize,
}

/// One snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Snapshot {
    /// Names its directory `snapshots/<id>`.
    pub id: u64,
    pub kind: Kind,
    /// The parent's name, empty for none.
    #[serde(default)]
    pub parent: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Unix time, nanoseconds.
    pub created_ns: u128,
    pub updated_ns: u128,
    /// Served by clip, not unpacked: no directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteLayer>,
    /// Image key of the daemon this active/view snapshot holds (its
    /// mounts stand on the image mount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds: Option<String>,
}

/// An image clip serves: its index and where its blobs are.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ImageRecord {
    /// The reference pinned by digest (`repo@sha256:…`).
    pub reference: String,
    /// The `.clip` index.
    pub clip: PathBuf,
    /// Where the index and profile came from.
    pub provenance: Provenance,
    /// Layer digests, bottom first (from the index).
    pub layers: Vec<String>,
}

/// Everything the snapshotter knows, as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Store {
    version: u32,
    next_id: u64,
    /// Snapshots by name.
    pub snapshots: BTreeMap<String, Snapshot>,
    /// Images by manifest digest.
    pub images: BTreeMap<String, ImageRecord>,
    #[serde(skip)]
    path: PathBuf,
}

/// Now, in nanoseconds since the Unix epoch.
pub(super) fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

impl Store {
    /// Loads `<root>/metadata.json`, or an empty store when there is none.
    pub(super) fn open(root: &Path) -> Result<Store, SnapshotterError> {
        let path = root.join(METADATA_FILE);
        let mut store = match std::fs::read(&path) {
            Ok(bytes) => {
                let store: Store = serde_json::from_slice(&bytes).map_err(|source| {
                    SnapshotterError::Metadata {
                        path: path.clone(),
                        source,
                    }
                })?;
                if store.version != STORE_VERSION {
                    return Err(SnapshotterError::MetadataVersion {
                        path,
                        found: store.version,
                        supported: STORE_VERSION,
                    });
                }
                store
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Store {
                version: STORE_VERSION,
                next_id: 1,
                ..Store::default()
            },
            Err(e) => return Err(SnapshotterError::io("reading", &path)(e)),
        };
        store.path = path;
        Ok(store)
    }

    /// Writes the store (a temp file renamed over the old one, so a crash
    /// leaves the old or the new, never half of one).
    pub(super) fn save(&self) -> Result<(), SnapshotterError> {
        let tmp = self.path.with_extension("json.tmp");
        let json =
            serde_json::to_vec_pretty(self).map_err(|source| SnapshotterError::Metadata {
                path: self.path.clone(),
                source,
            })?;
        std::fs::write(&tmp, json).map_err(SnapshotterError::io("writing", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(SnapshotterError::io("renaming", &self.path))
    }

    /// A fresh snapshot id.
    pub(super) fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The snapshot named `name`.
    pub(super) fn get(&self, name: &str) -> Result<&Snapshot, SnapshotterError> {
        self.snapshots
            .get(name)
            .ok_or_else(|| SnapshotterError::NotFound(name.to_string()))
    }

    /// Whether some snapshot has `name` as its parent.
    pub(super) fn has_children(&self, name: &str) -> bool {
        self.snapshots.values().any(|s| s.parent == name)
    }
}
