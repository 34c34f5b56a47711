//! Shared checks for the fuzz targets (see `invariants.rs`).

extern crate clip;

pub mod archive_invariants;
pub mod invariants;
pub mod read_invariants;
