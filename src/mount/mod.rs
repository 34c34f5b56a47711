//! TODO(mount): module being written.
