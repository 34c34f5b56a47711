//! Image indexing: streams every layer once, merges the layers' tar entries
//! into one tree ([`Merger`]) and hands the result to [`crate::format`].
//! Neighbours: [`crate::tar`] produces the entries, [`crate::format::Tree`]
//! is the merge's output.

mod merge;
pub use merge::{MergeError, Merger};
