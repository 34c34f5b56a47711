//! The one integration-test binary (see tests/common for helpers).
mod archive;
mod archive_mount;
mod cli;
mod common;
mod containerd;
mod differential;
mod faults;
mod fleet;
mod hardening;
mod host_safety;
mod lifecycle;
mod metrics;
mod mount;
mod stall;
mod store;
mod takeover;
