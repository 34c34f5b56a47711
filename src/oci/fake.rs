//! Fake registry.
