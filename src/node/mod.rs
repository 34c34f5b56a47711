//! The node: how this machine serves images, between `cli` (arguments and
//! printing) and the serving modules (`cache`, `fuse`, `mount`, `oci`).
//! Everything an embedder needs to get what `clipctl mount` gets, without
//! copying CLI code:
//!
//! - where blobs come from: [`SourceChoice`] and [`open_source`] (a mirror,
//!   a moved layout, else where the image was indexed; the first layer is
//!   probed so an unreachable source fails the mount, not every read), and
//!   [`open_image`] for images not indexed yet;
//! - the fleet: [`prepare_mount`] finds a mount's index (the node's, one
//!   published in the registry, or one built now, as [`IndexPolicy`]
//!   says) and a published startup profile when the node has none, and
//!   says where they came from ([`Provenance`]); [`publish_index`] and
//!   [`push_profile`] attach them to the image as OCI artifacts, a daemon
//!   with `Tuning::profile_push` publishes what it records, [`published`]
//!   lists what is there;
//! - an image's serving stack from one [`Tuning`]: [`ImageStack::build`]
//!   opens the source, the chunk cache with its disk tier and prefetch
//!   threads, and the startup-profile session; [`ImageStack::filesystem`]
//!   is the FUSE filesystem over it, [`ImageStack::finish`] saves the
//!   profile. [`mount_at`] serves it at a directory in this process;
//! - the startup-profile policy ([`ProfileMode`]): a node profile
//!   (`<node-dir>/profiles/<manifest-hex>.json`, else the one embedded in
//!   the index) is replayed and recorded again, and replaced only when
//!   under 90 % of what was read is in it or it is over twice what was
//!   read; a profile file the user names is replayed, never overwritten;
//! - archives ([`ArchiveLocation`], [`prepare_archive`]): a `.clip`
//!   archive, local or in S3, mounts like an image: its embedded index is
//!   saved on the node (`<node-dir>/archives/<data-hex>.clip`, one range
//!   read of the archive's head) and its data section, read by range, is
//!   the blob source ([`SourceChoice::archive`]);
//! - the per-image daemon: [`DaemonSpec`] (written by `mount` as
//!   `<image_dir>/daemon.json`) and [`run_daemon`], the `__daemon` entry.
//!
//! Imports `mount`, `cache`, `fuse`, `oci`, `format`, `index`, `metrics`,
//! `archive`, `object`, `s3`, `source` and `digest`; nothing below imports
//! `node`.

mod archive;
mod daemon;
mod error;
mod fleet;
mod profile;
mod publish;
mod source;
mod stack;
mod tuning;

pub use archive::{
    archive_profile, open_object, prepare_archive, s3_client, ArchiveLocation, PreparedArchive,
};
pub use daemon::{archive_mount_request, mount_request, run_daemon, DaemonSpec, StackSpec};
pub use error::NodeError;
pub use fleet::{
    prepare_mount, published, IndexOrigin, IndexPolicy, MountPlan, Prepared, Provenance,
};
pub use profile::{check_profile_fits, ProfileMode};
pub use publish::{
    publish_index, push_profile, PublishTarget, ANNOTATION_INDEX_VERSION, ANNOTATION_NODE,
    ANNOTATION_PROFILE_BYTES, ANNOTATION_PROFILE_RANGES, ANNOTATION_PROFILE_VERSION,
    ANNOTATION_PROFILE_WINDOW, ANNOTATION_WRITER, ARTIFACT_TYPE_INDEX, ARTIFACT_TYPE_PROFILE,
};
pub use source::{open_image, open_source, OpenedImage, SourceChoice};
pub use stack::{mount_at, ForegroundMount, ImageStack};
pub use tuning::{DiskTier, Tuning, DEFAULT_READ_AHEAD_KB};
