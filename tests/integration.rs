//! The one integration-test binary (see tests/common for helpers).
mod archive;
mod cli;
mod common;
mod differential;
mod fleet;
mod hardening;
mod metrics;
mod mount;
mod stall;
