//! TODO(fuse): module being written.
