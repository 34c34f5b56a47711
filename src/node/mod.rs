//! The node: how this machine serves images, between `cli` (arguments and
//! printing) and the serving modules (`cache`, `fuse`, `mount`, `oci`).
//! Everything an embedder needs to get what `clipctl mount` gets, without
//! copying CLI code:
//!
//! - where blobs come from: [`SourceChoice`] and [`open_source`] (a mirror,
//!   a moved layout, else where the image was indexed; the first layer is
//!   probed so an unreachable source fails the mount, not every read), and
//!   [`open_image`] / [`index_for_image`] for images not indexed yet;
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
//! - the per-image daemon: [`DaemonSpec`] (written by `mount` as
//!   `<image_dir>/daemon.json`) and [`run_daemon`], the `__daemon` entry.
//!
//! Imports `mount`, `cache`, `fuse`, `oci`, `format`, `index`, `metrics`,
//! `source` and `digest`; nothing below imports `node`.

mod daemon;
mod error;
mod profile;
mod source;
mod stack;
mod tuning;

pub use daemon::{mount_request, run_daemon, DaemonSpec, StackSpec};
pub use error::NodeError;
pub use profile::ProfileMode;
pub use source::{index_for_image, open_image, open_source, OpenedImage, SourceChoice};
pub use stack::{mount_at, ForegroundMount, ImageStack};
pub use tuning::{DiskTier, Tuning, DEFAULT_READ_AHEAD_KB};
