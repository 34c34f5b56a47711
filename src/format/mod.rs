//! The `.clip` index file (normative spec: `docs/format.md`).
mod model;
pub use model::*;
